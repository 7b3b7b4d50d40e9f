"""`kupd demo`: a real local control plane, simulated nodes each run by a real `kupd daemon`,
and a DirectUpdate upgraded live in the terminal. Needs a control-plane binary (kupd-testcp, which
`scripts/demo.sh` builds and hands in) and kupd's CRDs."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kupd.errors import KupdError
from kupd.sim import devcluster
from kupd.sim.simcluster import SimCluster

TERMINAL = ("Succeeded", "Failed")
# Where the packages install the CRDs (packaging/install-tree.sh).
INSTALLED_CRDS = "/usr/share/kupd/crds"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="upgrade a local control plane with simulated nodes, live in the terminal",
        description="Start a real etcd and kube-apiserver (the test control-plane build), a kupd daemon per "
        "simulated node, apply a DirectUpdate and show the upgrade live. Needs a source checkout "
        "(scripts/demo.sh builds the control plane first).")
    p.add_argument("--control-planes", type=int, default=1, help="control-plane nodes (default 1)")
    p.add_argument("--workers", type=int, default=3, help="worker nodes (default 3)")
    p.add_argument("--from-version", default="v1.31.2", help="version the nodes start at")
    p.add_argument("--to-version", default="v1.32.1", help="target version")
    p.add_argument("--concurrency", type=int, default=2, help="workers upgraded at once")
    p.add_argument("--step-seconds", type=float, default=0.4, help="how long each simulated step takes")
    p.add_argument("--no-backup", action="store_true", help="skip the etcd snapshot before the control plane")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, state) afterwards")
    p.add_argument("--timeout", type=float, default=600, help="give up after this many seconds")
    p.add_argument("--control-plane-binary", default=os.environ.get("KUPD_TESTCP"),
                   help="the kupd-testcp binary (etcd + kube-apiserver + controller manager); default $KUPD_TESTCP")
    p.add_argument("--crds", default=INSTALLED_CRDS, help=f"folder of kupd's CRDs (default {INSTALLED_CRDS})")
    p.set_defaults(func=run)


def spec_summary(spec: dict[str, Any]) -> str:
    """The applied spec in a few short lines: version, concurrency, backup store."""
    backup = spec.get("backup") or {}
    store = backup.get("store") or {}
    if backup.get("required") is False and not store:
        where = "off"
    else:
        if not store:
            where = "the daemons' configured store"
        elif store.get("type") == "file":
            where = f"file {store.get('path')}"
        else:
            where = f"{store.get('type')} {store.get('bucket', '')}/{store.get('prefix', '')}".rstrip("/")
        where += " (required)" if backup.get("required", True) else " (optional)"
    return (f"  version      {spec.get('version')}\n"
            f"  concurrency  {spec.get('concurrency', 1)}\n"
            f"  etcd backup  {where}")


def run(args: argparse.Namespace) -> int:
    if not args.control_plane_binary:
        raise KupdError("kupd demo needs --control-plane-binary (or $KUPD_TESTCP); scripts/demo.sh builds one")
    binary, crds = Path(args.control_plane_binary), Path(args.crds)
    if not binary.is_file():
        raise KupdError(f"control-plane binary {binary} does not exist")
    if not crds.is_dir():
        raise KupdError(f"CRD folder {crds} does not exist")
    work = Path(tempfile.mkdtemp(prefix="kupd-demo-"))
    print(f"kupd demo: work folder {work}")
    print("starting a real etcd + kube-apiserver + disruption controller ...", flush=True)
    cp = devcluster.ControlPlane(work / "control-plane", binary)
    sc: SimCluster | None = None
    try:
        cp.start()
        cp.install_crds(crds)
        print(f"control plane up at {cp.server}; kubeconfig {cp.admin_kubeconfig}", flush=True)
        sc = SimCluster(cp, work / "nodes", step_seconds=args.step_seconds, initial_version=args.from_version)
        for i in range(1, args.control_planes + 1):
            sc.add_node(f"cp-{i}", control_plane=True)
        for i in range(1, args.workers + 1):
            sc.add_node(f"worker-{i}")
        print(f"started {len(sc.nodes)} kupd daemons on simulated nodes at {args.from_version}", flush=True)
        _wait_members(cp, len(sc.nodes))
        spec: dict[str, Any] = {"version": args.to_version, "concurrency": args.concurrency}
        if args.no_backup:
            spec["backup"] = {"required": False}
        else:
            store = work / "backups"
            store.mkdir()
            pki = cp.etcd_pki
            spec["backup"] = {"required": True, "store": {"type": "file", "path": str(store)},
                              "etcd": {"endpoints": [cp.etcd_endpoint], "caFile": str(pki / "ca.crt"),
                                       "certFile": str(pki / "healthcheck-client.crt"),
                                       "keyFile": str(pki / "healthcheck-client.key")}}
        manifest = {"apiVersion": "kupd.io/v1alpha1", "kind": "DirectUpdate", "metadata": {"name": "demo"},
                    "spec": spec}
        cp.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))
        print(f"applied DirectUpdate demo:\n{spec_summary(spec)}", flush=True)
        from kupd.commands.live import LiveView

        started = time.monotonic()
        obj: dict[str, Any] = {}
        with LiveView(sys.stdout) as view:
            while time.monotonic() - started < args.timeout:
                out = cp.kubectl("get", "directupdate", "demo", "-o", "json", check=False)
                if out.returncode == 0:
                    obj = json.loads(out.stdout)
                    view.show([obj], datetime.now(UTC))
                    if (obj.get("status") or {}).get("phase") in TERMINAL:
                        break
                time.sleep(0.5)
        st = obj.get("status") or {}
        print()
        print(cp.kubectl("get", "directupdates").stdout.rstrip())
        print(f"\nresult: {st.get('phase')} in {time.monotonic() - started:.1f}s — {st.get('message', '')}")
        return 0 if st.get("phase") == "Succeeded" else 1
    finally:
        if sc is not None:
            sc.stop()
        cp.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _wait_members(cp: devcluster.ControlPlane, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cp.kubectl("get", "leases", "-n", "kupd-system", "-o", "name", check=False)
        if out.returncode == 0 and out.stdout.count("kupd-node-") >= count:
            return
        time.sleep(0.5)
    raise TimeoutError(f"fewer than {count} kupd members joined in {timeout:.0f}s")
