"""Prometheus metrics of one daemon, named kupd_<subsystem>_<name>; see docs/usage/metrics.md."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from kupd import __version__
from kupd.backup import metrics as _backup_metrics  # noqa: F401  (registered: see below)
from kupd.protocol import STEPS, Report

# The backup metrics are registered with every daemon from its start (gauges at 0 until its first
# backup), so dashboards and alert rules find them on every node, not only after a backup ran here.

COORDINATOR_LEADER = Gauge("kupd_coordinator_leader", "1 while this daemon holds the coordinator lease.")
COORDINATOR_EPOCH = Gauge("kupd_coordinator_epoch", "Epoch (lease transitions) of the coordinator lease held.")
AGENT_STEP = Gauge("kupd_agent_step", "1 for the step this node's agent is in, else 0.", ["step"])
AGENT_PHASE = Gauge("kupd_agent_phase", "1 for the agent's current phase.", ["phase"])
STEP_SECONDS = Histogram("kupd_agent_step_duration_seconds", "Duration of node steps.", ["step"],
                         buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600))
UPGRADES = Counter("kupd_agent_upgrades_total", "Node upgrades finished, by result.", ["result"])
STATE_CHANGE = Gauge("kupd_agent_state_change_timestamp_seconds", "When the agent's phase or step last changed.")

_last: tuple[str, str] = ("", "")
_observed: dict[str, float] = {}


def serve(address: str) -> None:
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1")


def coordinator(leading: bool, epoch: int) -> None:
    COORDINATOR_LEADER.set(1 if leading else 0)
    COORDINATOR_EPOCH.set(max(epoch, 0))


def agent_report(r: Report) -> None:
    global _last
    key = (r.phase, r.step)
    if key == _last:
        return
    _last = key
    STATE_CHANGE.set(time.time())
    for s in STEPS:
        AGENT_STEP.labels(step=s).set(1 if s == r.step and r.phase == "Upgrading" else 0)
    for ph in ("Upgrading", "Succeeded", "Failed"):
        AGENT_PHASE.labels(phase=ph).set(1 if ph == r.phase else 0)
    for step, secs in r.step_seconds.items():
        done = _observed.get(step, 0.0)
        if secs > done:
            STEP_SECONDS.labels(step=step).observe(secs - done)
            _observed[step] = secs
    if r.phase in ("Succeeded", "Failed"):
        UPGRADES.labels(result=r.phase.lower()).inc()


OPERATION_PHASES = ("Pending", "Running", "Paused", "Succeeded", "Failed", "RequiresAttention")
NODE_PHASES = ("Pending", "Granted", "Upgrading", "Succeeded", "Failed", "Skipped", "Lost")
OPERATION_PHASE = Gauge("kupd_coordinator_operation_phase",
                        "1 for the phase of each DirectUpdate as this coordinator last wrote it, else 0.",
                        ["operation", "phase"])
OPERATION_NODES = Gauge("kupd_coordinator_operation_nodes",
                        "Selected nodes of each DirectUpdate by node phase, as this coordinator last wrote them.",
                        ["operation", "phase"])
OPERATION_STATE_CHANGE = Gauge("kupd_coordinator_operation_state_change_timestamp_seconds",
                               "When this coordinator last changed the phase of the DirectUpdate.", ["operation"])
STATUS_REFUSED = Counter("kupd_coordinator_status_writes_refused_total",
                         "Status writes of a DirectUpdate the API server refused as invalid (a kupd defect).",
                         ["operation"])
OPERATION_PROGRESS = Gauge(
    "kupd_coordinator_operation_progress_timestamp_seconds",
    "When a node of the DirectUpdate last changed phase or step, as this coordinator saw it "
    "(or when this daemon started coordinating it).", ["operation"])
# Handoffs take from well under a second (the next node is granted in the round that saw the turn
# end) to minutes (canary bake times, health gates, a pause).
HANDOFF_GAP = Histogram(
    "kupd_coordinator_handoff_gap_seconds",
    "How long a slot stayed free: from the coordinator seeing a node's turn end to its next grant.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600))
MEMBER_RENEW = Gauge("kupd_member_lease_renew_timestamp_seconds",
                     "When this daemon last renewed its member Lease.")
BUILD_INFO = Gauge("kupd_build_info", "Always 1; the kupd version in the label.", ["version"])
BUILD_INFO.labels(version=__version__).set(1)

TURN_OVER = ("Succeeded", "Failed", "Skipped")
# A lost node still holds its slot: its return to Upgrading is no new grant.
IN_TURN = ("Granted", "Upgrading", "Lost")
_op_phase: dict[str, str] = {}


@dataclass
class _Progress:
    """What the coordinator last saw of one operation's nodes, to time progress and handoffs."""

    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)
    freed: list[float] = field(default_factory=list)  # monotonic times of turns ended, not yet re-granted


_progress: dict[str, _Progress] = {}


def member_renewed() -> None:
    MEMBER_RENEW.set(time.time())


def operation_status(name: str, status: Mapping[str, Any]) -> None:
    """Called by the coordinator after every status write of a DirectUpdate."""
    phase = str(status.get("phase") or "Pending")
    if _op_phase.get(name) != phase:
        _op_phase[name] = phase
        OPERATION_STATE_CHANGE.labels(operation=name).set(time.time())
    for ph in OPERATION_PHASES:
        OPERATION_PHASE.labels(operation=name, phase=ph).set(1 if ph == phase else 0)
    counts = dict.fromkeys(NODE_PHASES, 0)
    for e in status.get("nodes") or []:
        if e.get("phase") in counts:
            counts[e["phase"]] += 1
    for ph, n in counts.items():
        OPERATION_NODES.labels(operation=name, phase=ph).set(n)
    _node_progress(name, status, time.monotonic())


def _node_progress(name: str, status: Mapping[str, Any], now: float) -> None:
    nodes = {str(e.get("name")): (str(e.get("phase") or ""), str(e.get("step") or ""))
             for e in status.get("nodes") or [] if isinstance(e, Mapping)}
    seen = _progress.get(name)
    if seen is None:
        # First sight (a new operation, or this daemon just took over): the clock starts now.
        _progress[name] = _Progress(nodes)
        OPERATION_PROGRESS.labels(operation=name).set(time.time())
        return
    if nodes == seen.nodes:
        return
    OPERATION_PROGRESS.labels(operation=name).set(time.time())
    before = seen.nodes
    # Turns that ended free a slot; the turns granted next fill the oldest free slots first.
    seen.freed += [now for n, (ph, _) in nodes.items()
                   if ph in TURN_OVER and before.get(n, ("", ""))[0] in IN_TURN]
    for n, (ph, _) in nodes.items():
        if ph in IN_TURN and before.get(n, ("", ""))[0] not in IN_TURN and seen.freed:
            HANDOFF_GAP.observe(now - seen.freed.pop(0))
    seen.nodes = nodes


def forget_operations(keep: Collection[str]) -> None:
    """Drop the series of DirectUpdates that no longer exist (all but `keep`): a deleted operation's
    series must not live on until the coordinator changes."""
    for name in [n for n in _op_phase if n not in keep]:
        for gauge, phases in ((OPERATION_PHASE, OPERATION_PHASES), (OPERATION_NODES, NODE_PHASES)):
            for ph in phases:
                with contextlib.suppress(KeyError):
                    gauge.remove(name, ph)
        for labelled in (OPERATION_STATE_CHANGE, OPERATION_PROGRESS, STATUS_REFUSED):
            with contextlib.suppress(KeyError):
                labelled.remove(name)
        del _op_phase[name]
        _progress.pop(name, None)


def status_refused(name: str) -> None:
    _op_phase.setdefault(name, "")  # so forget_operations drops the series with the operation
    STATUS_REFUSED.labels(operation=name).inc()


def coordinator_stopped() -> None:
    """Drop the per-operation series when this daemon stops coordinating: the new coordinator has them."""
    for g in (OPERATION_PHASE, OPERATION_NODES, OPERATION_STATE_CHANGE, OPERATION_PROGRESS, STATUS_REFUSED):
        g.clear()
    _op_phase.clear()
    _progress.clear()
