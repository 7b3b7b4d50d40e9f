"""Chaos on the real control plane: spec edits, nodes leaving and joining, skewed clocks, dead
members, hung steps and corrupt checkpoints, with real `kupd daemon` processes on simulated hosts.

Each scenario runs under the invariant monitor (limits, control plane before workers, no
unexplained stall, no unexplained cordon) and ends in a state that says what happened: the
target reached, or RequiresAttention/Failed naming the node and the cause.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kupd.sim.devcluster import ControlPlane
from kupd.sim.simcluster import SimCluster
from tests.cluster import harness
from tests.cluster.harness import Monitor, apply_du, effects_once, get_du, wait_members, wait_phase, wait_registered
from tests.paths import CRD_DIR, control_plane_binary

NO_BACKUP = {"required": False}
ROOT = Path(__file__).resolve().parents[2]
ENDS = ("Succeeded", "Failed", "RequiresAttention")


def _reason_pattern() -> re.Pattern[str]:
    crd = yaml.safe_load((ROOT / "crds" / "directupdates.kupd.io.yaml").read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    return re.compile(status["properties"]["conditions"]["items"]["properties"]["reason"]["pattern"])


def _entry(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next((e for e in st.get("nodes") or [] if e["name"] == name), {})


def _until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except Exception as e:  # the API may be busy; try again
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what} not seen within {timeout}s (last: {str(last)[:2000]})")


def _status(sim: SimCluster, name: str) -> dict[str, Any]:
    st: dict[str, Any] = get_du(sim.cp, name).get("status") or {}
    return st


def _upgrading(sim: SimCluster, du: str, node: str, step: str | None = None) -> Callable[[], Any]:
    def check() -> Any:
        st = _status(sim, du)
        e = _entry(st, node)
        if e.get("phase") == "Upgrading" and (step is None or e.get("step") == step):
            return True
        raise AssertionError(json.dumps(st)[:2000])  # shown if it never comes
    return check


def _kubelet(sim: SimCluster, node: str) -> str:
    return str(sim.nodes[node].state()["versions"]["kubelet"])


# -- 1. a status the API server refuses must not wedge anything ----------------------------------

@pytest.mark.parametrize("spec", [
    pytest.param({"version": "v1.30.0"}, id="older-than-the-cluster"),
    pytest.param({"version": "v1.32.0", "nodeSelector": {"matchExpressions": [
        {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}]}},
        id="workers-past-the-control-plane"),
])
def test_a_refused_target_fails_with_a_valid_status_and_the_next_operation_runs(
        sim: SimCluster, spec: dict[str, Any]) -> None:
    sim.add_node("cp-1", control_plane=True)
    sim.add_node("w-1")
    mon = Monitor(sim.cp).start()
    try:
        apply_du(sim.cp, "refused", {**spec, "backup": NO_BACKUP})
        st = wait_phase(sim.cp, "refused", ENDS, timeout=60)
        assert st["phase"] == "Failed", st
        pattern = _reason_pattern()
        for c in st["conditions"]:
            assert pattern.match(c["reason"]), c
        valid = next(c for c in st["conditions"] if c["type"] == "Valid")
        assert valid["status"] == "False" and "rule:" in valid["message"], valid
        # A later operation is not held up by the failed one.
        apply_du(sim.cp, "next", {"version": "v1.32.0", "backup": NO_BACKUP})
        st = wait_phase(sim.cp, "next", ENDS, timeout=120)
        assert st["phase"] == "Succeeded", st
    finally:
        mon.stop()
    mon.assert_invariants(concurrency=1)


# -- 2. raising spec.version mid-rollout ---------------------------------------------------------

def test_raising_the_version_mid_rollout_replans_the_hops(sim: SimCluster) -> None:
    sim.step_seconds = 0.2
    sim.add_node("cp-1", control_plane=True)
    sim.add_node("cp-2", control_plane=True)
    sim.add_node("w-1")
    sim.add_node("w-2")
    wait_registered(sim)
    mon = Monitor(sim.cp).start()
    try:
        apply_du(sim.cp, "raise", {"version": "v1.32.0", "backup": NO_BACKUP})
        _until(lambda: _entry(_status(sim, "raise"), "cp-1").get("phase") == "Succeeded", 90, "cp-1 done")
        sim.cp.kubectl("patch", "directupdate", "raise", "--type=merge", "-p", '{"spec":{"version":"v1.33.0"}}')
        # Lowering it is refused by the API server itself (a CEL transition rule).
        low = sim.cp.kubectl("patch", "directupdate", "raise", "--type=merge", "-p",
                             '{"spec":{"version":"v1.32.1"}}', check=False)
        assert low.returncode != 0 and "never lowered" in low.stderr, low
        st = wait_phase(sim.cp, "raise", ENDS, timeout=240)
    finally:
        mon.stop()
    assert st["phase"] == "Succeeded", st
    # The hop already begun is kept; the new target is one more hop.
    assert st["hops"] == ["v1.32.0", "v1.33.0"], st["hops"]
    mon.assert_invariants(concurrency=1)
    for name in sim.nodes:
        assert _kubelet(sim, name) == "v1.33.0", name
        effects_once(sim, name)
    upgrades = [e for e in sim.nodes["cp-1"].state()["effects"] if e.startswith("kubeadm upgrade")]
    assert upgrades == ["kubeadm upgrade apply v1.32.0", "kubeadm upgrade apply v1.33.0"]
    # Control plane first at the new hop too: no worker reached v1.33 before both control-plane nodes.
    assert all(mon.grant_times[w] >= mon.grant_times["cp-2"] for w in ("w-1", "w-2"))


def test_a_spec_edited_after_the_operation_ended_is_said_to_be_ignored(sim: SimCluster) -> None:
    sim.step_seconds = 0.1
    sim.add_node("cp-1", control_plane=True)
    wait_registered(sim)
    apply_du(sim.cp, "ended", {"version": "v1.32.0", "backup": NO_BACKUP})
    st = wait_phase(sim.cp, "ended", ENDS, timeout=90)
    assert st["phase"] == "Succeeded", st
    sim.cp.kubectl("patch", "directupdate", "ended", "--type=merge", "-p", '{"spec":{"version":"v1.33.0"}}')

    def said() -> Any:
        conds = {c["type"]: c for c in _status(sim, "ended").get("conditions") or []}
        return conds.get("SpecApplied")
    cond = _until(said, 30, "Condition SpecApplied")
    assert cond["status"] == "False" and cond["reason"] == "OperationEnded", cond
    assert "apply a new DirectUpdate" in cond["message"]
    st = _status(sim, "ended")
    assert st["phase"] == "Succeeded" and st["observedGeneration"] == 2, st
    time.sleep(2)
    assert _kubelet(sim, "cp-1") == "v1.32.0", "an ended operation was acted on"


# -- 3. a node that leaves the selection or the cluster keeps its slot ----------------------------

def test_a_node_leaving_the_selection_in_flight_keeps_its_slot(sim: SimCluster) -> None:
    sim.add_node("cp-1", control_plane=True, extra={"simulated": {"node_labels": {"pool": "a"}}})
    slow = sim.add_node("w-1", extra={"simulated": {"node_labels": {"pool": "b"}}})
    for name in ("w-2", "w-3"):
        sim.add_node(name, extra={"simulated": {"node_labels": {"pool": "a"}}})
    slow.faults({"hang": {"kubelet-package": 8}})
    mon = Monitor(sim.cp).start()
    try:
        apply_du(sim.cp, "leave", {"version": "v1.32.0", "concurrency": 1, "backup": NO_BACKUP,
                                   "nodeSelector": {"matchExpressions": [
                                       {"key": "pool", "operator": "In", "values": ["a", "b"]}]}})
        # cp-1 first, then w-1 (by name) holds the only worker slot.
        _until(_upgrading(sim, "leave", "w-1", "kubelet-package"), 90, "w-1 upgrading")
        sim.cp.kubectl("patch", "directupdate", "leave", "--type=merge", "-p",
                       json.dumps({"spec": {"nodeSelector": {"matchExpressions": None,
                                                             "matchLabels": {"pool": "a"}}}}))
        st = wait_phase(sim.cp, "leave", ENDS, timeout=120)
        assert st["phase"] == "Succeeded", st
        # The departed node's turn is recorded as over, not left "Upgrading" in a finished operation.
        assert not [e for e in st["nodes"] if e["phase"] in ("Granted", "Upgrading", "Lost")], st["nodes"]
        # Nothing of it leaks into the next operation.
        apply_du(sim.cp, "after", {"version": "v1.32.0", "concurrency": 1, "backup": NO_BACKUP})
        st = wait_phase(sim.cp, "after", ENDS, timeout=60)
        assert st["phase"] == "Succeeded", st
    finally:
        mon.stop()
    mon.assert_invariants(concurrency=1)


def test_a_node_deleted_in_flight_is_a_lost_turn_that_names_it(sim: SimCluster) -> None:
    sim.add_node("cp-1", control_plane=True)
    doomed = sim.add_node("w-1")
    sim.add_node("w-2")
    doomed.faults({"hang": {"kubelet-package": 60}})
    mon = Monitor(sim.cp).start()
    try:
        apply_du(sim.cp, "gone", {"version": "v1.32.0", "concurrency": 1, "backup": NO_BACKUP})
        _until(_upgrading(sim, "gone", "w-1", "kubelet-package"), 90, "w-1 upgrading")
        # The machine goes away mid-turn: its daemon dies and its Node is deleted.
        sim.kill("w-1", signal.SIGKILL)
        sim.cp.kubectl("delete", "node", "w-1")
        started = time.monotonic()
        st = wait_phase(sim.cp, "gone", ("RequiresAttention", "Succeeded", "Failed"), timeout=60)
        assert st["phase"] == "RequiresAttention" and "w-1" in st["message"], st
        assert time.monotonic() - started <= sim.member_seconds + 15
        assert _entry(st, "w-2").get("phase") == "Pending", "w-2 was granted while w-1 held the slot"
        # A new operation is not held silently by the lost turn: it names the node too.
        sim.cp.kubectl("delete", "directupdate", "gone", "--wait=true")
        apply_du(sim.cp, "next", {"version": "v1.32.0", "concurrency": 1, "backup": NO_BACKUP})
        st = wait_phase(sim.cp, "next", ("RequiresAttention", "Succeeded", "Failed"), timeout=60)
        assert st["phase"] == "RequiresAttention" and "w-1" in st["message"], st
        # The runbook: a machine gone for good has its Leases deleted; that declares its turn over.
        sim.cp.kubectl("-n", "kupd-system", "delete", "lease", "kupd-node-w-1", "kupd-grant-w-1",
                       "--ignore-not-found")
        st = wait_phase(sim.cp, "next", ("Succeeded", "Failed"), timeout=90)
        assert st["phase"] == "Succeeded", st
    finally:
        mon.stop()
    mon.assert_invariants(concurrency=1)


# -- 4. a control-plane node joining mid-rollout waits for the workers in flight -----------------

def test_a_control_plane_node_joining_mid_rollout_waits_for_workers_in_flight(sim: SimCluster) -> None:
    sim.add_node("cp-1", control_plane=True)
    for name in ("w-1", "w-2"):
        sim.add_node(name).faults({"hang": {"kubelet-package": 5}})
    mon = Monitor(sim.cp).start()
    try:
        apply_du(sim.cp, "join", {"version": "v1.32.0", "concurrency": 2, "backup": NO_BACKUP})
        _until(lambda: _upgrading(sim, "join", "w-1")() and _upgrading(sim, "join", "w-2")(), 90,
               "both workers upgrading")
        sim.add_node("cp-2", control_plane=True)
        st = wait_phase(sim.cp, "join", ("Succeeded", "Failed"), timeout=120)
    finally:
        mon.stop()
    assert st["phase"] == "Succeeded", st
    mon.assert_invariants(concurrency=2)
    assert mon.grant_times["cp-2"] >= max(mon.done_times["w-1"], mon.done_times["w-2"])
    assert _kubelet(sim, "cp-2") == "v1.32.0"


# -- 5. liveness: skewed clocks, dead members, corrupt checkpoints, hung steps ------------------

def test_member_clocks_skewed_both_ways(sim: SimCluster) -> None:
    """A node whose clock is 5 minutes behind is still eligible; one 5 minutes ahead that dies is
    found lost within a lease duration of the coordinator's own clock."""
    sim.add_node("cp-1", control_plane=True)
    sim.add_node("w-behind", extra={"simulated": {"clock_offset_seconds": -300}})
    ahead = sim.add_node("w-ahead", extra={"simulated": {"clock_offset_seconds": 300}})
    ahead.faults({"hang": {"kubelet-package": 60}})
    mon = Monitor(sim.cp).start()
    try:
        apply_du(sim.cp, "skew", {"version": "v1.32.0", "concurrency": 2, "backup": NO_BACKUP})
        _until(lambda: _entry(_status(sim, "skew"), "w-behind").get("phase") == "Succeeded", 90,
               "the node 5 minutes behind upgraded")
        _until(_upgrading(sim, "skew", "w-ahead", "kubelet-package"), 60, "w-ahead upgrading")
        sim.kill("w-ahead", signal.SIGKILL)
        killed = time.monotonic()
        _until(lambda: _entry(_status(sim, "skew"), "w-ahead").get("phase") == "Lost", 60, "w-ahead lost")
        took = time.monotonic() - killed
        assert took <= sim.member_seconds + 10, f"a dead member 5 minutes ahead was found lost after {took:.0f}s"
        st = _status(sim, "skew")
        assert st["phase"] == "RequiresAttention" and "w-ahead" in st["message"], st
        ahead.faults({})
        sim.start("w-ahead")
        st = wait_phase(sim.cp, "skew", ("Succeeded", "Failed"), timeout=120)
        assert st["phase"] == "Succeeded", st
    finally:
        mon.stop()
    mon.assert_invariants(concurrency=2)


def test_a_dead_member_on_a_pending_node_is_named(sim: SimCluster) -> None:
    sim.add_node("cp-1", control_plane=True)
    sim.add_node("w-1")
    sim.add_node("w-2")
    mon = Monitor(sim.cp).start()
    try:
        # Every member registered first: the operation must name w-2, not a node still starting.
        wait_members(sim.cp, ["cp-1", "w-1", "w-2"])
        sim.kill("w-2", signal.SIGKILL)
        killed = time.monotonic()
        apply_du(sim.cp, "dead", {"version": "v1.32.0", "concurrency": 1, "backup": NO_BACKUP})
        st = wait_phase(sim.cp, "dead", ENDS, timeout=60)
        assert st["phase"] == "RequiresAttention" and "w-2" in st["message"], st
        assert time.monotonic() - killed <= sim.member_seconds + 20
        cond = next(c for c in st["conditions"] if c["type"] == "RequiresAttention")
        assert cond["status"] == "True" and "w-2" in cond["message"], cond
        # The message follows what happens: once w-1 is done it does not still say "upgrading w-1".
        _until(lambda: _entry(_status(sim, "dead"), "w-1").get("phase") == "Succeeded", 60, "w-1 done")
        time.sleep(2)
        st = _status(sim, "dead")
        assert "upgrading w-1" not in st["message"], st["message"]
        sim.start("w-2")
        st = wait_phase(sim.cp, "dead", ("Succeeded", "Failed"), timeout=90)
        assert st["phase"] == "Succeeded", st
    finally:
        mon.stop()
    mon.assert_invariants(concurrency=1)


CORRUPT = {
    "empty": b"",
    "truncated": None,  # the first half of the real checkpoint
    "wrong-schema": json.dumps({"uid": 7, "steps": {"v1.32.0/drain": {"state": "done", "bogus": 1}},
                                "versions": "v1.32.0", "phase": ["Upgrading"]}).encode(),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_checkpoint_is_moved_aside_and_named(sim: SimCluster, kind: str) -> None:
    sim.add_node("cp-1", control_plane=True)
    w = sim.add_node("w-1")
    w.faults({"hang": {"kubelet-package": 5}})
    mon = Monitor(sim.cp).start()
    try:
        apply_du(sim.cp, "corrupt", {"version": "v1.32.0", "backup": NO_BACKUP})
        _until(_upgrading(sim, "corrupt", "w-1", "kubelet-package"), 90, "w-1 upgrading")
        sim.kill("w-1", signal.SIGKILL)
        path = w.dir / "state" / "checkpoint.json"
        data = CORRUPT[kind]
        if data is None:
            data = path.read_bytes()[: path.stat().st_size // 2]
        path.write_bytes(data)
        w.faults({})
        sim.start("w-1")
        time.sleep(5)
        assert sim.alive("w-1"), "the daemon died on a corrupt checkpoint"
        aside = sorted(path.parent.glob("checkpoint.json.corrupt*"))
        assert len(aside) == 1 and aside[0].read_bytes() == data, aside
        assert not path.exists() or path.read_bytes() != data
        st = wait_phase(sim.cp, "corrupt", ENDS, timeout=60)
        assert st["phase"] == "RequiresAttention", st
        e = _entry(st, "w-1")
        assert e["phase"] == "Failed" and "CheckpointCorrupt" in e["message"] and str(aside[0]) in e["message"], e
        assert "w-1" in st["message"] and "CheckpointCorrupt" in st["message"], st["message"]
        # The runbook: look at the node, then retry it; its steps run again and find their effects.
        sim.cp.kubectl("annotate", "directupdate", "corrupt", "kupd.io/retry-nodes=w-1")
        st = wait_phase(sim.cp, "corrupt", ("Succeeded", "Failed"), timeout=90)
        assert st["phase"] == "Succeeded", st
    finally:
        mon.stop()
    mon.assert_invariants(concurrency=1)
    effects_once(sim, "w-1")
    assert _kubelet(sim, "w-1") == "v1.32.0"


def test_a_hung_step_meets_its_deadline_and_the_node_can_be_retried(sim: SimCluster) -> None:
    sim.add_node("cp-1", control_plane=True)
    w = sim.add_node("w-1", extra={"steps": {"deadline_seconds": {"kubelet-package": 3}}})
    w.faults({"hang": {"kubelet-package": 3600}})
    mon = Monitor(sim.cp).start()
    try:
        apply_du(sim.cp, "hung", {"version": "v1.32.0", "backup": NO_BACKUP})
        st = wait_phase(sim.cp, "hung", ENDS, timeout=60)
        assert st["phase"] == "RequiresAttention", st
        e = _entry(st, "w-1")
        assert e["phase"] == "Failed" and e["step"] == "kubelet-package", e
        assert "deadline" in e["message"], e
        # The step was stopped, not left running behind the Failed report.
        w.faults({})
        sim.cp.kubectl("annotate", "directupdate", "hung", "kupd.io/retry-nodes=w-1")
        st = wait_phase(sim.cp, "hung", ("Succeeded", "Failed"), timeout=60)
        assert st["phase"] == "Succeeded", st
    finally:
        mon.stop()
    mon.assert_invariants(concurrency=1)
    effects_once(sim, "w-1")


# -- one version per process --------------------------------------------------------------------

def test_the_daemon_restarts_itself_into_an_upgraded_package_when_no_step_runs(
        sim: SimCluster, tmp_path: Path) -> None:
    """w-1's daemon runs from a copy of the package; the copy is upgraded in place while w-1 is in
    the middle of its turn. The daemon finishes the turn in the old version, then runs the new one
    in the same process."""
    pkg = tmp_path / "site"
    shutil.copytree(ROOT / "kupd", pkg / "kupd", ignore=shutil.ignore_patterns("__pycache__"))
    sim.add_node("cp-1", control_plane=True)
    # PYTHONSAFEPATH: not the current folder (this repository) first on sys.path, the copy.
    sim.extra_env = {"PYTHONPATH": str(pkg), "PYTHONSAFEPATH": "1"}
    w = sim.add_node("w-1")
    sim.extra_env = {}
    w.faults({"hang": {"kubelet-package": 4}})
    assert w.proc is not None
    pid = w.proc.pid

    def lease() -> tuple[str, str]:
        out = sim.cp.kubectl("-n", "kupd-system", "get", "lease", "kupd-node-w-1", "-o", "json", check=False)
        if out.returncode != 0:
            return "", ""
        anns = json.loads(out.stdout)["metadata"].get("annotations") or {}
        report = json.loads(anns.get("kupd.io/report") or "{}")
        return str(anns.get("kupd.io/version", "")), str(report.get("phase", ""))

    old = _until(lambda: lease()[0], 30, "w-1's member lease")
    apply_du(sim.cp, "selfupgrade", {"version": "v1.32.0", "backup": NO_BACKUP})
    _until(_upgrading(sim, "selfupgrade", "w-1", "kubelet-package"), 90, "w-1 upgrading")
    init = pkg / "kupd" / "__init__.py"
    new_init = init.with_suffix(".new")
    new_init.write_text(init.read_text().replace(f'__version__ = "{old}"', f'__version__ = "{old}+upgraded"'))
    new_init.replace(init)  # how dpkg, rpm and pip put a file in place
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        version, phase = lease()
        seen.append((version, phase))
        if version == f"{old}+upgraded":
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"w-1 never ran the upgraded package: {seen[-5:]}")
    assert all(ph != "Upgrading" for v, ph in seen if v != old), "restarted in the middle of a step"
    assert [ph for v, ph in seen if v == old][-1] == "Succeeded", seen[-5:]
    assert sim.alive("w-1") and w.proc is not None and w.proc.pid == pid, "not restarted in place"
    st = wait_phase(sim.cp, "selfupgrade", ENDS, timeout=60)
    assert st["phase"] == "Succeeded", st
    effects_once(sim, "w-1")
    assert "restarting in place to run the upgraded kupd" in w.log.read_text()


# -- a forced watch expiry (410 Gone) while the daemons watch ---------------------------------------

@pytest.fixture
def expiring() -> Iterator[ControlPlane]:
    """A control plane of its own whose watches expire for real: no watch cache (watches are served
    from etcd) and etcd compacted every 2 s, so every watch re-opened from a resourceVersion older
    than that gets 410 Gone from the API server."""
    workdir = Path(tempfile.mkdtemp(prefix="kupd-cp-410-"))
    cp = ControlPlane(workdir, control_plane_binary(),
                      apiserver_args=["--watch-cache=false", "--etcd-compaction-interval=2s"])
    try:
        cp.start()
        cp.install_crds(CRD_DIR)
        yield cp
    finally:
        cp.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_watches_expiring_with_410_gone_mid_rollout(expiring: ControlPlane, tmp_path: Path) -> None:
    sim = SimCluster(expiring, tmp_path / "sim", step_seconds=2.5)
    watch = {"lease": {"watch_seconds": 30}}  # the shortest re-open period the settings allow
    try:
        sim.add_node("cp-1", control_plane=True, extra=watch)
        for name in ("w-1", "w-2"):
            sim.add_node(name, extra=watch)
        wait_registered(sim)
        mon = Monitor(expiring).start()
        try:
            apply_du(expiring, "expiring", {"version": "v1.32.0", "concurrency": 1, "backup": NO_BACKUP})
            st = wait_phase(expiring, "expiring", ENDS, timeout=300)
        finally:
            mon.stop()
        assert st["phase"] == "Succeeded", st
        mon.assert_invariants(concurrency=1)
        for name in sim.nodes:
            assert _kubelet(sim, name) == "v1.32.0", name
            effects_once(sim, name)
        # The watches did expire (and were recovered by a relist), in the coordinator and the workers.
        expired = {name: node.log.read_text(errors="replace").count("expired (410 Gone)")
                   for name, node in sim.nodes.items()}
        assert expired["cp-1"] >= 1 and expired["w-1"] + expired["w-2"] >= 1, expired
    finally:
        sim.stop()
        for name, node in sim.nodes.items():
            if node.log.exists():
                print(f"==== {name} daemon log (tail)\n{node.log.read_text(errors='replace')[-3000:]}")
        harness.cleanup(expiring)
