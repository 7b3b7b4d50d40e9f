"""Step deadlines, corrupt checkpoints, one version per process and metrics of deleted
operations: the node side's defences, without subprocesses or an API server."""

from __future__ import annotations

import ast
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from kupd import config, metrics, oneversion
from kupd import protocol as p
from kupd.agent import Agent
from kupd.api.models import NodeWork, parse_directupdate_spec
from kupd.checkpoint import Checkpoint, CheckpointStore
from kupd.errors import DeadlineExceeded, ValidationError
from kupd.host import runner
from kupd.nodeops import NodeOps
from kupd.sim.simulated import SimulatedHost

ROOT = Path(__file__).resolve().parents[2]


# -- deadlines ----------------------------------------------------------------------------------

def test_a_wait_inside_a_deadline_ends_at_it() -> None:
    t0 = time.monotonic()
    with runner.deadline(0.3, "drain"), pytest.raises(DeadlineExceeded) as e:
        runner.sleep(30)
    assert time.monotonic() - t0 < 2
    assert e.value.step == "drain" and str(e.value) == "step drain exceeded its deadline of 0.3s"
    # Outside a deadline a wait is just a wait, and nothing is left behind by the block.
    assert runner.remaining() is None
    runner.sleep(0.01)


def test_step_deadlines_default_and_override() -> None:
    s = config.parse({"steps": {"deadline_seconds": {"kubelet-package": 3}}})
    assert s.steps.deadline("kubelet-package") == 3
    assert s.steps.deadline("kubeadm-upgrade") == config.DEFAULT_STEP_DEADLINES["kubeadm-upgrade"]
    assert set(config.DEFAULT_STEP_DEADLINES) == {str(s) for s in p.Step}
    with pytest.raises(ValidationError, match="unknown step"):
        config.parse({"steps": {"deadline_seconds": {"kubelet": 3}}})
    with pytest.raises(ValidationError):
        config.parse({"steps": {"deadline_seconds": {"drain": 0}}})


def _work(versions: list[str] | None = None) -> NodeWork:
    return parse_directupdate_spec({"version": "v1.32.0", "maxAttempts": 3}).node_work(
        versions or ["v1.32.0"], control_plane=False, first_control_plane=False, backup=False)


def _grant(**kw: Any) -> p.Grant:
    base: dict[str, Any] = {"operation": "op", "uid": "uid-1", "epoch": 1, "granted_at": "2026-11-27T12:00:00Z",
                            "work": _work()}
    return p.Grant(**{**base, **kw})


def _agent(tmp_path: Path, host: Any = None, **kw: Any) -> tuple[Agent, list[p.Report | None]]:
    reports: list[p.Report | None] = []
    agent: Agent
    agent = Agent("w-1", host, cast(NodeOps, None), CheckpointStore(tmp_path / "state"),
                  on_report=lambda: reports.append(agent.report()), retry_delay=0.01, **kw)
    return agent, reports


def _wait(cond: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_hung_step_fails_the_node_at_its_deadline_naming_the_step(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "host.json", step_seconds=0.0, available=["v1.31.2", "v1.32.0"])
    (tmp_path / "host.json.faults.json").write_text(json.dumps({"hang": {"preflight": 3600}}))
    agent, _ = _agent(tmp_path, host, deadline=lambda step: 0.3 if step == "preflight" else 60)
    t0 = time.monotonic()
    agent.offer(_grant())
    _wait(lambda: agent.cp.phase == "Failed")
    assert time.monotonic() - t0 < 5
    r = agent.report()
    assert r is not None and r.phase == "Failed" and r.step == "preflight" and r.reason == "StepDeadlineExceeded"
    assert r.message.startswith("step preflight exceeded its deadline of 0.3s")
    # Only one attempt: a hung step would hang again.
    assert agent.cp.steps["v1.32.0/preflight"].attempts == 1
    _wait(lambda: not agent.busy)
    # A retry (a new grant for the same work) runs the step again, now without the hang.
    (tmp_path / "host.json.faults.json").write_text("{}")
    agent.offer(_grant(granted_at="2026-11-27T12:05:00Z"))
    _wait(lambda: agent.cp.steps["v1.32.0/preflight"].state == "done")
    agent.stop()


# -- corrupt checkpoints ------------------------------------------------------------------------

GOOD = Checkpoint(grant=p.Grant("op", "u", 2, "2026-11-27T12:00:00Z", _work()), phase="Upgrading")

CORRUPT = {
    "empty": b"",
    "truncated": json.dumps({"operation": "op", "uid": "u", "versions": ["v1.32.0"]}).encode()[:20],
    "not an object": b"[]",
    "wrong types": json.dumps({"uid": 7, "versions": "v1.32.0", "phase": ["Upgrading"]}).encode(),
    "bad grant": json.dumps({"grant": {"operation": "op", "uid": 5}, "phase": "Upgrading"}).encode(),
    "old-style of the wrong shape": json.dumps({"uid": "u", "versions": 5, "spec": {"version": "v1.32.0"}}).encode(),
    "bad step": json.dumps({"steps": {"v1.32.0/drain": {"state": 5}}}).encode(),
    "unknown phase": json.dumps({"phase": "Exploded"}).encode(),
    "active without grant": json.dumps({"phase": "Upgrading"}).encode(),
    "not utf-8": b"\xff\xfe{",
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_checkpoint_is_moved_aside_not_deleted(tmp_path: Path, kind: str) -> None:
    store = CheckpointStore(tmp_path)
    store.path.write_bytes(CORRUPT[kind])
    cp = store.load()
    aside = list(tmp_path.glob("checkpoint.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == CORRUPT[kind]
    assert cp.corrupt == str(aside[0]) and not cp.active and cp.grant is None
    # The fresh checkpoint is stored and keeps the note over a restart.
    assert store.load() == cp


def test_unknown_fields_of_a_newer_kupd_are_not_corruption(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(GOOD)
    data = json.loads(store.path.read_text())
    data["added_later"] = {"x": 1}
    store.path.write_text(json.dumps(data))
    assert store.load() == GOOD
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_the_next_turn_after_a_corrupt_checkpoint_reports_it_and_a_retry_runs(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "checkpoint.json").write_bytes(b"{\"uid\": ")
    host = SimulatedHost(tmp_path / "host.json", step_seconds=0.0, available=["v1.31.2", "v1.32.0"])
    agent, reports = _agent(tmp_path, host, deadline=lambda step: 60)
    assert agent.cp.corrupt
    agent.offer(_grant())
    r = agent.report()
    assert r is not None and r.phase == "Failed" and r.reason == "CheckpointCorrupt"
    assert str(tmp_path / "state" / "checkpoint.json") in r.message and agent.cp.corrupt == ""
    assert str(next((tmp_path / "state").glob("checkpoint.json.corrupt-*"))) in r.message
    assert reports and not agent.busy
    # kupd.io/retry-nodes: a new grant for the same work runs every step from the first.
    agent.offer(_grant(granted_at="2026-11-27T12:05:00Z"))
    _wait(lambda: agent.cp.steps.get("v1.32.0/preflight") is not None
          and agent.cp.steps["v1.32.0/preflight"].state == "done")
    agent.stop()


# -- one version per process --------------------------------------------------------------------

def _lazy_kupd_imports(module: str) -> set[str]:
    """kupd modules imported inside functions of `module`."""
    tree = ast.parse(Path(importlib.import_module(module).__file__ or "").read_text())
    out: set[str] = set()
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kupd"):
                out.add(node.module)
                # `from kupd.host import simulated` imports a module too.
                pkg = importlib.import_module(node.module)
                if hasattr(pkg, "__path__"):
                    out.update(f"{node.module}.{a.name}" for a in node.names
                               if importlib.util.find_spec(f"{node.module}.{a.name}") is not None)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith("kupd"))
    return out


@pytest.fixture(scope="module")
def preloaded() -> list[str]:
    # Module scope: before the unit tier's subprocess guard, since croniter runs `file` at import.
    return oneversion.preload(backends=False)


def test_the_daemon_imports_every_module_it_can_need_at_start(preloaded: list[str]) -> None:
    loaded = preloaded
    assert "kupd.agent" in loaded and "kupd.coordinator" in loaded and "kupd.daemon" in loaded
    for module in loaded:
        missing = {m for m in _lazy_kupd_imports(module) if m not in sys.modules}
        assert not missing, f"{module} imports {missing} lazily and preload() did not load them"


def test_a_replaced_package_file_is_noticed(tmp_path: Path) -> None:
    marker = tmp_path / "__init__.py"
    marker.write_text('__version__ = "1"\n')
    watch = oneversion.PackageWatch(marker)
    assert not watch.changed()
    new = tmp_path / "new.py"
    new.write_text('__version__ = "2"\n')
    os.replace(new, marker)  # how dpkg, rpm and pip put a file in place
    assert watch.changed()


def test_an_agent_quiesces_only_when_no_step_runs(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "host.json", step_seconds=0.0, available=["v1.31.2", "v1.32.0"])
    (tmp_path / "host.json.faults.json").write_text(json.dumps({"hang": {"preflight": 3600}}))
    agent, _ = _agent(tmp_path, host, deadline=lambda step: 1.0)
    agent.offer(_grant())
    _wait(lambda: agent.busy)
    assert not agent.quiesce()
    _wait(lambda: not agent.busy)  # the hung step ends at its deadline
    assert agent.quiesce()
    before = agent.cp
    agent.offer(_grant(uid="uid-2", operation="next"))
    assert agent.cp is before and not agent.busy, "a quiesced agent took a new turn"


# -- metrics of deleted operations --------------------------------------------------------------

def test_series_of_a_deleted_operation_are_removed() -> None:
    metrics.operation_status("gone", {"phase": "Running", "nodes": [{"phase": "Upgrading"}]})
    metrics.operation_status("kept", {"phase": "Running"})
    sample = REGISTRY.get_sample_value
    assert sample("kupd_coordinator_operation_phase", {"operation": "gone", "phase": "Running"}) == 1
    metrics.forget_operations({"kept"})
    for name in ("kupd_coordinator_operation_phase", "kupd_coordinator_operation_nodes"):
        assert sample(name, {"operation": "gone", "phase": "Running"}) is None
        assert sample(name, {"operation": "gone", "phase": "Upgrading"}) is None
    for name in ("kupd_coordinator_operation_state_change_timestamp_seconds",
                 "kupd_coordinator_operation_progress_timestamp_seconds"):
        assert sample(name, {"operation": "gone"}) is None
    assert sample("kupd_coordinator_operation_phase", {"operation": "kept", "phase": "Running"}) == 1
    metrics.forget_operations(set())

