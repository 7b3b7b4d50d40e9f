"""`kupd plan -f cr.yaml`: the ordered plan of a DirectUpdate and its estimated duration.

With --kubeconfig it plans against the live cluster's Nodes and kupd members; without, against
a cluster described on the command line (--control-planes/--workers/--current). Nothing is
written: the planner is pure and this is a dry run of it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from kupd import planner
from kupd import protocol as p
from kupd.errors import ValidationError
from kupd.versions import Version


def register(sub: Any) -> None:
    ap: argparse.ArgumentParser = sub.add_parser("plan", help="print the ordered plan of a DirectUpdate (dry run)")
    ap.add_argument("-f", "--file", required=True, type=Path, help="DirectUpdate manifest (YAML or JSON)")
    ap.add_argument("--kubeconfig", help="plan against this cluster's Nodes and kupd members")
    ap.add_argument("--control-planes", type=int, default=1, help="without --kubeconfig: control-plane nodes")
    ap.add_argument("--workers", type=int, default=3, help="without --kubeconfig: worker nodes")
    ap.add_argument("--current", default="v1.31.2", help="without --kubeconfig: the nodes' current version")
    ap.add_argument("--node-labels", default="", help="without --kubeconfig: labels of every node, k=v,k2=v2")
    ap.add_argument("--node-minutes", type=float, default=10.0, help="expected minutes per node turn")
    ap.add_argument("-o", "--output", choices=("table", "json"), default="table")
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


def _cluster_from_api(kubeconfig: str) -> tuple[list[planner.NodeView], dict[str, planner.MemberView]]:
    from kupd import k8s, untrusted

    api = k8s.api_client(kubeconfig)
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
    nodes, members = _cluster_from_api(args.kubeconfig) if args.kubeconfig else _cluster_from_args(args)
    status, waves = dryrun.simulate(spec, nodes, members, args.node_minutes * 60)
    total = waves[-1].end_seconds if waves else 0.0
    if args.output == "json":
        json.dump({"phase": status.get("phase"), "message": status.get("message"), "hops": status.get("hops"),
                   "estimatedSeconds": total,
                   "waves": [{"nodes": w.nodes, "versions": w.versions, "startSeconds": w.start_seconds,
                              "endSeconds": w.end_seconds} for w in waves]}, sys.stdout, indent=1)
        print()
        return 0 if status.get("phase") == planner.OP_SUCCEEDED else 1
    name = obj.get("metadata", {}).get("name", "?")
    print(f"DirectUpdate {name}: {len(nodes)} nodes to {spec.version}, hops "
          f"{' -> '.join(status.get('hops') or []) or '-'}")
    roles = {e["name"]: e for e in status.get("nodes", [])}
    print(f"{'WAVE':>4}  {'START':>8}  {'END':>8}  NODES")
    for i, w in enumerate(waves, 1):
        labels = []
        for n, v in zip(w.nodes, w.versions, strict=True):
            e = roles.get(n, {})
            tag = "control-plane" if e.get("role") == "ControlPlane" else ("canary" if e.get("canary") else "worker")
            labels.append(f"{n} ({tag} -> {', '.join(v)})")
        print(f"{i:>4}  {_hm(w.start_seconds):>8}  {_hm(w.end_seconds):>8}  {'; '.join(labels)}")
    skipped = [e["name"] for e in status.get("nodes", []) if e["phase"] == planner.SKIPPED]
    if skipped:
        print(f"skipped (already at target): {', '.join(skipped)}")
    if len(status.get("hops") or []) > 1 and not args.kubeconfig:
        print("intermediate hops are shown at .0; the daemon uses the newest patch its package source offers")
    print(f"estimated duration: {_hm(total)} at {args.node_minutes:g} min per node turn; "
          f"result: {status.get('phase')} — {status.get('message', '')}")
    return 0 if status.get("phase") == planner.OP_SUCCEEDED else 1


def _hm(seconds: float) -> str:
    m = round(seconds / 60)
    return f"{m // 60}h{m % 60:02d}m"
