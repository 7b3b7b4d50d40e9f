"""`kupd plan -f cr.yaml`: the ordered plan of a DirectUpdate and its estimated duration.

With --kubeconfig or --context it plans against the live cluster's Nodes and kupd members (the
kubeconfig resolved as kubectl resolves it); without, against a cluster described on the command
line (--control-planes/--workers/--current). Nothing is written: the planner is pure and this is
a dry run of it. -o table (a row per wave), wide (a row per node), json or yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from kupd import planner
from kupd import protocol as p
from kupd.commands import common
from kupd.errors import ValidationError
from kupd.versions import Version


def register(sub: Any) -> None:
    ap: argparse.ArgumentParser = sub.add_parser(
        "plan", help="print the ordered plan of a DirectUpdate (dry run)",
        description="Print the waves kupd would run for a DirectUpdate — control plane first, canaries, then "
        "workers, one hop per minor — with start and end times estimated from --node-minutes. Plans against "
        "the live cluster with --kubeconfig or --context, else against the cluster the flags describe. Writes "
        "nothing. Exit 0 when the plan ends Succeeded, 1 when it cannot (the message says why).")
    ap.add_argument("-f", "--file", required=True, type=Path, metavar="FILE",
                    help="DirectUpdate manifest (YAML or JSON)")
    ap.add_argument("--kubeconfig", metavar="PATH",
                    help="plan against this cluster's Nodes and kupd members (with --context: the kubeconfig "
                         "resolved as kubectl does)")
    ap.add_argument("--context", metavar="NAME", help="plan against the cluster of this kubeconfig context")
    ap.add_argument("--control-planes", type=int, default=1, help="offline: control-plane nodes (default 1)")
    ap.add_argument("--workers", type=int, default=3, help="offline: worker nodes (default 3)")
    ap.add_argument("--current", default="v1.31.2", help="offline: the nodes' current version (default v1.31.2)")
    ap.add_argument("--node-labels", default="", help="offline: labels of every node, k=v,k2=v2")
    ap.add_argument("--node-minutes", type=float, default=10.0, help="expected minutes per node turn (default 10)")
    common.add_output_flag(ap)
    ap.set_defaults(func=run)


def _load(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for d in docs:
        if d.get("kind") == "DirectUpdate":
            return dict(d)
    raise ValidationError(str(path), "contains no DirectUpdate")


def _cluster_from_args(args: argparse.Namespace) -> tuple[list[planner.NodeView], dict[str, planner.MemberView]]:
    current = Version.parse(args.current, "--current")
    labels = dict(kv.split("=", 1) for kv in args.node_labels.split(",") if "=" in kv)
    nodes = [planner.NodeView(f"cp-{i}", {**labels, p.LABEL_CONTROL_PLANE: ""}, True)
             for i in range(1, args.control_planes + 1)]
    nodes += [planner.NodeView(f"worker-{i}", dict(labels), False) for i in range(1, args.workers + 1)]
    return nodes, {n.name: planner.MemberView(n.name, True, current) for n in nodes}


def _cluster_from_api(args: argparse.Namespace) -> tuple[list[planner.NodeView], dict[str, planner.MemberView]]:
    from kupd import k8s, untrusted

    api = common.api_client(args)
    nodes = []
    kubelets = {}
    for n in k8s.call(api.list, "list nodes", k8s.node_path()).get("items") or []:
        labels = n["metadata"].get("labels") or {}
        nodes.append(planner.NodeView(n["metadata"]["name"], labels, p.LABEL_CONTROL_PLANE in labels))
        kubelets[n["metadata"]["name"]] = untrusted.node_kubelet(n)
    members = {}
    leases = k8s.call(api.list, "list member leases",
                       k8s.lease_path("kupd-system"))
    for lease in leases.get("items") or []:
        m = p.decode_member_lease(lease, 60)
        if m is not None:
            # As the coordinator: the Node's version first; a dry run also takes what kupd says.
            members[m.node] = planner.MemberView(m.node, True, kubelets.get(m.node) or m.kubelet)
    return nodes, members


def run(args: argparse.Namespace) -> int:
    from kupd import dryrun
    from kupd.api.models import parse_directupdate_spec

    obj = _load(args.file)
    spec = parse_directupdate_spec(obj)
    live = bool(args.kubeconfig or args.context)
    nodes, members = _cluster_from_api(args) if live else _cluster_from_args(args)
    status, waves = dryrun.simulate(spec, nodes, members, args.node_minutes * 60)
    total = waves[-1].end_seconds if waves else 0.0
    rc = 0 if status.get("phase") == planner.OP_SUCCEEDED else 1
    if args.output in ("json", "yaml"):
        common.emit({"phase": status.get("phase"), "message": status.get("message"), "hops": status.get("hops"),
                     "estimatedSeconds": total,
                     "waves": [{"nodes": w.nodes, "versions": w.versions, "startSeconds": w.start_seconds,
                                "endSeconds": w.end_seconds} for w in waves]}, args.output)
        return rc
    name = obj.get("metadata", {}).get("name", "?")
    print(f"DirectUpdate {name}: {len(nodes)} nodes to {spec.version}, hops "
          f"{' -> '.join(status.get('hops') or []) or '-'}")
    roles = {e["name"]: e for e in status.get("nodes", [])}

    def tag(n: str) -> str:
        e = roles.get(n, {})
        return "control-plane" if e.get("role") == "ControlPlane" else ("canary" if e.get("canary") else "worker")

    if args.output == "wide":
        print(f"{'WAVE':>4}  {'START':>8}  {'END':>8}  {'NODE':<20} {'ROLE':<13} VERSIONS")
        for i, w in enumerate(waves, 1):
            for n, v in zip(w.nodes, w.versions, strict=True):
                print(f"{i:>4}  {_hm(w.start_seconds):>8}  {_hm(w.end_seconds):>8}  {n:<20} {tag(n):<13} "
                      f"{' -> '.join(v)}")
    else:
        print(f"{'WAVE':>4}  {'START':>8}  {'END':>8}  NODES")
        for i, w in enumerate(waves, 1):
            labels = [f"{n} ({tag(n)} -> {', '.join(v)})" for n, v in zip(w.nodes, w.versions, strict=True)]
            print(f"{i:>4}  {_hm(w.start_seconds):>8}  {_hm(w.end_seconds):>8}  {'; '.join(labels)}")
    skipped = [e["name"] for e in status.get("nodes", []) if e["phase"] == planner.SKIPPED]
    if skipped:
        print(f"skipped (already at target): {', '.join(skipped)}")
    if len(status.get("hops") or []) > 1 and not live:
        print("intermediate hops are shown at .0; the daemon uses the newest patch its package source offers")
    print(f"estimated duration: {_hm(total)} at {args.node_minutes:g} min per node turn; "
          f"result: {status.get('phase')} — {status.get('message', '')}")
    return rc


def _hm(seconds: float) -> str:
    m = round(seconds / 60)
    return f"{m // 60}h{m % 60:02d}m"
