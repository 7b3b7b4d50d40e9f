"""Backups that work by default: the README's simplest DirectUpdate, a store configured once in the
daemon's settings, a DirectUpdate's own store over it, and policy BestEffort. Real `kupd daemon`
processes, the real API server, real etcd snapshots of the test control plane's etcd."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from kupd.sim.simcluster import SimCluster
from tests.cluster.harness import apply_du, wait_phase

ROOT = Path(__file__).resolve().parents[2]


def cond(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == kind)


def test_readme_simple_example_succeeds_with_the_daemons_default_settings(sim: SimCluster) -> None:
    """examples/directupdate-simple.yaml as the README applies it; the daemons have no backup store."""
    example = yaml.safe_load((ROOT / "examples" / "directupdate-simple.yaml").read_text())
    assert example["spec"] == {"version": "v1.31.2"}
    # The nodes start one patch below the example's version.
    sim.initial_version = "v1.31.1"
    sim.available = ["v1.31.1", *sim.available]
    cp1 = sim.add_node("cp-1", control_plane=True)
    sim.add_node("w-1")
    sim.cp.kubectl("apply", "-f", str(ROOT / "examples" / "directupdate-simple.yaml"))
    st = wait_phase(sim.cp, example["metadata"]["name"], ("Succeeded", "Failed", "RequiresAttention"), timeout=180)
    assert st["phase"] == "Succeeded", st
    b = st["backup"]
    assert b["verified"] is True and b["uploaded"] is False and b["node"] == "cp-1", b
    assert "no backup store is configured" in b["message"]
    kept = Path(b["location"].removeprefix("file://"))
    assert kept.parent == cp1.dir / "state" / "backup" / "snapshots"
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == b["sha256"]
    assert kept.stat().st_mode & 0o077 == 0
    assert cond(st, "BackupSucceeded")["reason"] == "LocalSnapshotOnly"
    uploaded = cond(st, "BackupUploaded")
    assert uploaded["status"] == "False" and uploaded["reason"] == "NoStoreConfigured"
    # The snapshot came before any change on the node.
    assert sim.nodes["cp-1"].state()["versions"]["kubelet"] == "v1.31.2"


def test_store_in_the_daemons_settings_and_the_directupdates_own_store(sim: SimCluster, tmp_path: Path) -> None:
    daemon_store, du_store = tmp_path / "daemon-store", tmp_path / "du-store"
    daemon_store.mkdir()
    du_store.mkdir()
    sim.add_node("cp-1", control_plane=True,
                 extra={"backup": {"store": {"type": "file", "path": str(daemon_store)}}})
    sim.add_node("w-1")
    apply_du(sim.cp, "settings-store", {"version": "v1.31.3"})
    st = wait_phase(sim.cp, "settings-store", ("Succeeded", "Failed", "RequiresAttention"), timeout=180)
    assert st["phase"] == "Succeeded", st
    assert st["backup"]["uploaded"] is True and st["backup"]["location"].startswith(f"file://{daemon_store}")
    assert len(list(daemon_store.rglob("etcd-*.db"))) == 1
    assert cond(st, "BackupUploaded")["status"] == "True"

    apply_du(sim.cp, "own-store", {"version": "v1.32.0",
                                   "backup": {"policy": "Required", "store": {"type": "file", "path": str(du_store)}}})
    st = wait_phase(sim.cp, "own-store", ("Succeeded", "Failed", "RequiresAttention"), timeout=180)
    assert st["phase"] == "Succeeded", st
    assert st["backup"]["location"].startswith(f"file://{du_store}")
    assert len(list(daemon_store.rglob("etcd-*.db"))) == 1, "the DirectUpdate's store replaces the daemon's"


def test_best_effort_goes_on_when_the_upload_fails_and_required_does_not(sim: SimCluster, tmp_path: Path) -> None:
    missing = str(tmp_path / "not-mounted")  # a store directory that does not exist: the upload fails
    sim.add_node("cp-1", control_plane=True)
    sim.add_node("w-1")
    apply_du(sim.cp, "best", {"version": "v1.31.3",
                              "backup": {"policy": "BestEffort", "store": {"type": "file", "path": missing}}})
    st = wait_phase(sim.cp, "best", ("Succeeded", "Failed", "RequiresAttention"), timeout=180)
    assert st["phase"] == "Succeeded", st
    assert st["backup"]["verified"] is True and st["backup"]["uploaded"] is False
    assert "the upload failed" in st["backup"]["message"]
    assert cond(st, "BackupUploaded")["reason"] == "UploadFailed"

    apply_du(sim.cp, "strict", {"version": "v1.32.0", "maxAttempts": 1,
                                "backup": {"policy": "Required", "store": {"type": "file", "path": missing}}})
    st = wait_phase(sim.cp, "strict", ("Succeeded", "Failed"), timeout=180)
    assert st["phase"] == "Failed" and "backup failed on cp-1" in st["message"], st
    assert sim.nodes["cp-1"].state()["versions"]["kubelet"] == "v1.31.3", "no change after a failed backup"
