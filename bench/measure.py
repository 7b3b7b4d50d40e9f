"""What the bench reads: the API server's own request counters, /proc, sd_notify, the planner."""

from __future__ import annotations

import math
import os
import re
import socket
import ssl
import statistics
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kupd import incremental, planner
from kupd.api.models import parse_directupdate_spec
from kupd.protocol import Report
from kupd.versions import Version

_LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Counts = Counter[tuple[str, str]]  # (verb, resource[/subresource]) -> requests


_DURATION = re.compile(
    r"^apiserver_request_duration_seconds_(?P<kind>sum|count)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
Durations = dict[tuple[str, str], tuple[float, float]]  # (verb, resource) -> (seconds summed, requests)


def metrics_text(server: str, token: str, ca_file: str | Path) -> str:
    """The API server's /metrics (one fetch; the parsers below read what they need of it)."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    req = urllib.request.Request(f"{server}/metrics", headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    with urllib.request.urlopen(req, timeout=30, context=ctx) as r:  # noqa: S310 - our own API server
        return str(r.read().decode())


def durations(text: str) -> Durations:
    """apiserver_request_duration_seconds sum and count by verb and resource (WATCH left out)."""
    sums: dict[tuple[str, str], float] = {}
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = _DURATION.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group("labels")))
        resource, verb = labels.get("resource", ""), labels.get("verb", "")
        if not resource or verb == "WATCH":
            continue
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        target = sums if m.group("kind") == "sum" else counts
        target[(verb, resource)] = target.get((verb, resource), 0.0) + float(m.group("value"))
    return {k: (sums.get(k, 0.0), counts[k]) for k in counts}


_BUCKET = re.compile(r"^apiserver_request_duration_seconds_bucket\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
Buckets = dict[float, float]  # upper bound (le) -> requests at or under it


def buckets(text: str, verb: str, resource: str) -> Buckets:
    """The API server's own latency histogram of one verb on one resource (every scope summed)."""
    out: Buckets = {}
    for line in text.splitlines():
        m = _BUCKET.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group("labels")))
        if labels.get("verb") != verb or labels.get("resource") != resource or labels.get("subresource"):
            continue
        le = float(labels["le"]) if labels.get("le") not in (None, "+Inf") else math.inf
        out[le] = out.get(le, 0.0) + float(m.group("value"))
    return out


def bucket_quantile(after: Buckets, before: Buckets, q: float) -> float:
    """The q-quantile (0..1) of the requests between two scrapes, interpolated within its bucket
    as Prometheus' histogram_quantile does; NaN when there were none."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return math.nan
    rank = q * counts[-1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_bound, prev_count = bound, count
    return prev_bound


def mean_durations(after: Durations, before: Durations, top: int = 6) -> dict[str, float]:
    """Mean seconds per request over an interval, for the most frequent (verb, resource) pairs."""
    rows = []
    for k, (s, c) in after.items():
        s0, c0 = before.get(k, (0.0, 0.0))
        if c - c0 > 0:
            rows.append((c - c0, f"{k[0]} {k[1]}", (s - s0) / (c - c0)))
    rows.sort(reverse=True)
    return {name: mean for _, name, mean in rows[:top]}


def requests(text: str) -> Counts:
    """apiserver_request_total from the API server's /metrics, summed by verb and resource.

    Requests without a resource (/metrics, /readyz, discovery) are left out.
    """
    out: Counts = Counter()
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group("labels")))
        resource = labels.get("resource", "")
        if not resource:
            continue
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        out[(labels.get("verb", ""), resource)] += int(float(m.group("value")))
    return out


def diff(after: Counts, before: Counts) -> Counts:
    out: Counts = Counter()
    for k, v in after.items():
        d = v - before.get(k, 0)
        if d > 0:
            out[k] = d
    return out


def by_verb(c: Counts) -> dict[str, int]:
    out: Counter[str] = Counter()
    for (verb, _), v in c.items():
        out[verb] += v
    return dict(sorted(out.items()))


def per_node_minute(c: dict[str, int], nodes: int, seconds: float) -> dict[str, float]:
    return {k: v / nodes / (seconds / 60.0) for k, v in c.items()}


# -- /proc ----------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (threads included), from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(line.split()[1]) * 1024
    return out


# -- sd_notify --------------------------------------------------------------------------------
class NotifySocket:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def wait_for(self, key: str, timeout: float) -> float | None:
        """Monotonic time at which a datagram carrying `key` arrived, or None on timeout."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return None
            if any(line.split("=", 1)[0] == key for line in data.decode(errors="replace").splitlines()):
                return time.monotonic()
        return None

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


# -- statistics -----------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


# -- planner ----------------------------------------------------------------------------------
def planner_time(nodes: int, concurrency: int = 50, repeat: int = 5) -> dict[str, float]:
    """Seconds one `planner.plan` call takes for `nodes` nodes (1 control plane + workers).

    first: the first round (empty status: entries are made, the control plane is granted);
    steady: a round mid-rollout (control plane done, `concurrency` workers in flight), which
    is what the coordinator runs on every change. Also the size of the status it writes.
    """
    import json

    now = datetime(2026, 1, 1, tzinfo=UTC)
    old, new = Version.parse("v1.31.2"), Version.parse("v1.32.0")
    names = ["cp-1"] + [f"w-{i:05d}" for i in range(1, nodes)]
    views = [planner.NodeView(n, {"kubernetes.io/hostname": n}, n == "cp-1") for n in names]
    members = {n: planner.MemberView(n, True, old) for n in names}
    spec = parse_directupdate_spec({"version": str(new), "concurrency": concurrency, "backup": {"required": False}})
    op = planner.Operation("bench", "uid-1", 1, spec, {})

    def run(op: planner.Operation) -> tuple[float, planner.Plan]:
        t0 = time.perf_counter()
        result = planner.plan(op, views, members, epoch=1, coordinator="cp-1", now=now)
        return time.perf_counter() - t0, result

    firsts = []
    for _ in range(repeat):
        t, first = run(op)
        firsts.append(t)
    members["cp-1"] = planner.MemberView("cp-1", True, new, Report("bench", "uid-1", 1, [str(new)], "Succeeded",
                                                                   step="uncordon"))
    _, second = run(planner.Operation("bench", "uid-1", 1, spec, first.status))
    steady_op = planner.Operation("bench", "uid-1", 1, spec, second.status)
    steadies = [run(steady_op)[0] for _ in range(repeat)]
    in_flight = sum(1 for e in second.status["nodes"] if e["phase"] in planner.IN_FLIGHT)
    # A turn ends: what the coordinator runs when a node reports Succeeded (its slot goes to the
    # next node). Full: `plan`; incremental: the same round with the memo kept since the last one.
    memo = incremental.Incremental()
    status = second.status
    for _ in range(2):
        status = memo.plan(planner.Operation("bench", "uid-1", 1, spec, status), views, members, epoch=1,
                           coordinator="cp-1", now=now).status
    quiet = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        memo.plan(planner.Operation("bench", "uid-1", 1, spec, status), views, members, epoch=1,
                  coordinator="cp-1", now=now)
        quiet.append(time.perf_counter() - t0)
    full_turns, inc_turns, evaluated = [], [], []
    for _ in range(max(repeat, 5)):
        e = next(x for x in status["nodes"] if x["phase"] in planner.IN_FLIGHT)
        members[e["name"]] = planner.MemberView(e["name"], True, new, Report(
            "bench", "uid-1", 1, [str(new)], "Succeeded", step="uncordon", granted_at=e["grant"]["grantedAt"]))
        op_turn = planner.Operation("bench", "uid-1", 1, spec, status)
        full_turns.append(run(op_turn)[0])
        t0 = time.perf_counter()
        status = memo.plan(op_turn, views, members, epoch=1, coordinator="cp-1", now=now).status
        inc_turns.append(time.perf_counter() - t0)
        evaluated.append(memo.evaluated)
    return {
        "nodes": float(nodes),
        "first_s": statistics.median(firsts),
        "steady_s": statistics.median(steadies),
        "turn_full_s": statistics.median(full_turns),
        "turn_incremental_s": statistics.median(inc_turns),
        "quiet_incremental_s": statistics.median(quiet),
        "turn_evaluated": float(statistics.median(evaluated)),
        "in_flight": float(in_flight),
        "status_bytes": float(len(json.dumps(second.status, separators=(",", ":")))),
    }


def finished_status(nodes: int) -> dict[str, Any]:
    """The status of a `nodes`-node DirectUpdate once every node has finished, as the planner
    writes it (compact entries): the largest a status gets."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    names = ["cp-1"] + [f"w-{i:05d}" for i in range(1, nodes)]
    views = [planner.NodeView(n, {"kubernetes.io/hostname": n}, n == "cp-1") for n in names]
    members = {n: planner.MemberView(n, True, Version.parse("v1.31.2")) for n in names}
    spec = parse_directupdate_spec({"version": "v1.32.0", "concurrency": 50, "backup": {"required": False}})
    status = planner.plan(planner.Operation("bench", "uid-1", 1, spec, {}), views, members, epoch=1,
                          coordinator="cp-1", now=now).status
    out = []
    for e in status["nodes"]:
        done = {**e, "phase": planner.SUCCEEDED, "attempts": 1, "step": "uncordon", "message": "upgraded to v1.32.0",
                "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:07Z"}
        planner.compact(done)
        out.append(done)
    return {**status, "nodes": out, "phase": "Succeeded",
            "summary": {**status["summary"], "pending": 0, "upgrading": 0, "succeeded": nodes}}
