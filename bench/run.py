"""`python -m bench.run --nodes 10 100 1000`: kupd at scale on the real local control plane.

For each N: a fresh control plane (etcd + kube-apiserver + disruption controller), one real
`kupd daemon` process as the control-plane node `cp-1` (it becomes the coordinator), N-1
simulated workers in this process (bench.fleet), an idle interval, then one DirectUpdate to
the next minor with a fixed simulated step duration. Once per invocation: one real daemon's
footprint and the planner's time for --planner-nodes nodes. Prints one table; --json writes
every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import measure
from bench.fleet import Fleet, api_client
from kupd import k8s
from kupd import protocol as p
from kupd.agent import step_sequence
from kupd.config import LeaseSettings
from kupd.sim.devcluster import ControlPlane, free_port
from kupd.sim.simcluster import SimCluster
from tests.paths import CRD_DIR, control_plane_binary

log = logging.getLogger("bench")

INITIAL = "v1.31.2"
TARGET = "v1.32.0"
AVAILABLE = ["v1.31.2", "v1.32.0"]
# Steps of SimulatedHost that take step_seconds; drain/uncordon are API calls, and the reboot
# step costs nothing when no reboot is required.
TIMED_STEPS = {p.Step.PREFLIGHT, p.Step.REPOSITORY, p.Step.KUBEADM_PACKAGE, p.Step.KUBEADM_UPGRADE,
               p.Step.KUBELET_PACKAGE, p.Step.RESTART, p.Step.VERIFY}


# The production lease durations (kupd/config.py defaults), so idle API load is what a cluster sees.
LEASE = LeaseSettings.model_validate({})


def default_concurrency(n: int) -> int:
    return 1 if n <= 10 else 10 if n <= 100 else 50


@dataclass
class RunResult:
    nodes: int
    concurrency: int
    step_seconds: float
    member_seconds: int = 0  # the active member lease (config member_duration_seconds)
    phase: str = ""
    wall_s: float = math.nan
    ideal_s: float = math.nan
    overhead_ratio: float = math.nan
    handoffs: int = 0
    handoff_p50_s: float = math.nan
    handoff_p99_s: float = math.nan
    handoff_max_s: float = math.nan
    # The handoff in three parts, p50 and p99 of each (s): the freed node's agent finished -> its
    # Lease carries the report (publish); -> the coordinator wrote the next grant (the grant
    # Lease's renewTime: its watch, its round, up to the write); -> that grant reached the agent.
    publish_s: tuple[float, float] = (math.nan, math.nan)
    coordinate_s: tuple[float, float] = (math.nan, math.nan)
    deliver_s: tuple[float, float] = (math.nan, math.nan)
    # A Lease PATCH (member renewals and reports, grants) as the API server timed it, p50 and p99:
    # every part of a handoff is such a write.
    lease_patch_s: tuple[float, float] = (math.nan, math.nan)
    node_p50_s: float = math.nan  # worker: grant reached the agent -> agent finished
    timed_node_s: float = math.nan  # the simulated steps alone
    cp_node_s: float = math.nan  # the coordinator's own node, granted -> Succeeded in status
    register_s: float = math.nan
    idle_s: float = math.nan
    idle_per_node_min: dict[str, float] = field(default_factory=dict)
    idle_total_per_node_min: float = math.nan  # kupd's, every verb, watch re-opens included
    idle_background_writes: int = 0  # the API server's own identity Lease renewals, subtracted
    idle_by_resource: dict[str, int] = field(default_factory=dict)
    rollout_per_node_min: dict[str, float] = field(default_factory=dict)
    rollout_by_resource: dict[str, int] = field(default_factory=dict)
    rollout_per_upgraded_node: dict[str, float] = field(default_factory=dict)
    status_writes: int = 0
    status_put_mean_s: float = math.nan  # the API server's own mean duration of PUT directupdates/status
    rollout_mean_request_s: dict[str, float] = field(default_factory=dict)
    status_bytes: int = 0
    coordinator_idle_cpu_s_per_min: float = math.nan
    coordinator_rollout_cpu_s: float = math.nan
    coordinator_rss_mb: float = math.nan
    coordinator_peak_rss_mb: float = math.nan
    fleet_cpu_s: float = math.nan
    renew_errors: int = 0
    upgraded_workers: int = 0  # workers whose agent finished


@dataclass
class DaemonResult:
    ready_s: float = math.nan
    idle_s: float = math.nan
    rss_mb: float = math.nan
    peak_rss_mb: float = math.nan
    idle_cpu_s_per_min: float = math.nan
    start_cpu_s: float = math.nan


def _wait(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise TimeoutError(f"{what} not within {timeout:.0f}s")


def _start_control_plane(workdir: Path) -> ControlPlane:
    cp = ControlPlane(workdir / "cp", control_plane_binary())
    cp.start()
    cp.install_crds(CRD_DIR)
    return cp


def _metrics(cp: ControlPlane) -> str:
    return measure.metrics_text(cp.server, cp.token("admin"), cp.ca_file)


def _scrape(cp: ControlPlane) -> measure.Counts:
    return measure.requests(_metrics(cp))


def _by_resource(c: measure.Counts) -> dict[str, int]:
    return {f"{verb} {res}": v for (verb, res), v in sorted(c.items(), key=lambda kv: -kv[1])}


def handoffs(timeline_finished: dict[str, float], timeline_granted: dict[str, float],
             initial_fill: int) -> list[tuple[float, str, str]]:
    """Pair every grant after the first `initial_fill` with the earliest slot freed before it.

    Returns (latency, the node whose finish freed the slot, the node granted it). A grant that
    comes before any unmatched finish (the coordinator granted a slot it had free) is not a handoff.
    """
    events = sorted([(t, 0, n) for n, t in timeline_finished.items()]
                    + [(t, 1, n) for n, t in timeline_granted.items()])
    free: list[tuple[float, str]] = []
    grants = 0
    out: list[tuple[float, str, str]] = []
    for t, kind, name in events:
        if kind == 0:
            free.append((t, name))
            continue
        grants += 1
        if grants <= initial_fill or not free:
            continue
        t_free, freed_by = free.pop(0)
        out.append((t - t_free, freed_by, name))
    return out


class BackgroundLeaseWrites:
    """Counts writes of the Leases in kube-system (kube-apiserver's identity Lease) from a watch,
    so that the idle figures are kupd's own."""

    def __init__(self, api: k8s.Client, seconds: float) -> None:
        self._count = 0
        self._marked = 0
        self._watch = api.watch(k8s.lease_path("kube-system"), resource_version="0", timeout_seconds=int(seconds))
        self._synced = False
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="background-leases", daemon=True).start()

    def _run(self) -> None:
        try:
            for ev in self._watch:
                if ev["type"] == "MODIFIED":
                    with self._lock:
                        self._count += 1
        except Exception as e:
            log.debug("background lease watch: %s", e)

    def mark(self) -> int:
        """Writes since the previous mark."""
        with self._lock:
            n, self._marked = self._count - self._marked, self._count
        return n

    def stop(self) -> None:
        self._watch.close()


def _start_daemon(sc: SimCluster, name: str, source: Path | None) -> None:
    """SimCluster.start, optionally with the `kupd` package imported from `source` (a patched copy)."""
    if source is None:
        sc.start(name)
        return
    import subprocess

    node = sc.nodes[name]
    with open(node.log, "ab") as out:
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "kupd", "daemon", "--config-dir", str(node.dir / "config.d")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=str(source), env=dict(os.environ, PYTHONPATH=str(source), **sc.extra_env))


def run_one(n: int, concurrency: int, step: float, idle: float, workdir: Path, workers: int = 48,
            settle: float | None = None, coordinator_source: Path | None = None,
            max_rollout: float = 0.0, member_seconds: int | None = None) -> RunResult:
    member = member_seconds or LEASE.member_duration_seconds
    res = RunResult(nodes=n, concurrency=concurrency, step_seconds=step, member_seconds=member)
    cp = _start_control_plane(workdir)
    sc = SimCluster(cp, workdir / "sim", step_seconds=step, initial_version=INITIAL, available=AVAILABLE,
                    member_seconds=member,
                    coordinator_seconds=LEASE.coordinator_duration_seconds,
                    coordinator_idle_seconds=LEASE.coordinator_idle_duration_seconds, log_level="warning")
    fleet: Fleet | None = None
    try:
        node = sc.add_node("cp-1", control_plane=True, start=False)
        _start_daemon(sc, "cp-1", coordinator_source)
        assert node.proc is not None
        pid = node.proc.pid
        api = api_client(cp.admin_kubeconfig)

        def coordinating() -> bool:
            try:
                lease = api.get(k8s.lease_path("kupd-system", p.COORDINATOR_LEASE))
                return bool((lease.get("spec") or {}).get("holderIdentity") == "cp-1")
            except k8s.ApiError:
                return False

        _wait(coordinating, 90, "cp-1 coordinating")
        names = [f"w-{i:04d}" for i in range(1, n)]
        fleet = Fleet(cp.admin_kubeconfig, names, step_seconds=step, initial_version=INITIAL,
                      member_duration=member, renew_fraction=LEASE.renew_fraction,
                      available=AVAILABLE, workers=workers, idle_renew=LEASE.member_idle_renew_seconds,
                      watch_seconds=LEASE.watch_seconds)
        t0 = time.monotonic()
        fleet.register(workers)
        fleet.start()
        res.register_s = time.monotonic() - t0
        assert fleet.informer is not None
        _wait(fleet.informer.synced.is_set, 60, "fleet informer")
        # Let registration's writes settle before measuring idle.
        time.sleep(10.0 if settle is None else settle)

        background = BackgroundLeaseWrites(api, idle + 120)
        m0, c0, f0 = _scrape(cp), measure.cpu_seconds(pid), time.process_time()
        background.mark()
        t_idle = time.monotonic()
        time.sleep(idle)
        m1, c1 = _scrape(cp), measure.cpu_seconds(pid)
        res.idle_background_writes = background.mark()
        res.idle_s = time.monotonic() - t_idle
        background.stop()
        idle_c = measure.diff(m1, m0)
        # Not kupd's: kube-apiserver renews its own identity Lease in kube-system every 10 s
        # (6 PUTs a minute, 0.06 per node per minute at N=100), counted here from its events.
        put = ("PUT", "leases")
        idle_c[put] = max(0, idle_c.get(put, 0) - res.idle_background_writes)
        res.idle_per_node_min = measure.per_node_minute(measure.by_verb(idle_c), n, res.idle_s)
        res.idle_total_per_node_min = sum(idle_c.values()) / n / (res.idle_s / 60)
        res.idle_by_resource = _by_resource(idle_c)
        res.coordinator_idle_cpu_s_per_min = (c1 - c0) / (res.idle_s / 60)

        body = {"apiVersion": k8s.API_VERSION, "kind": "DirectUpdate", "metadata": {"name": "bench"},
                "spec": {"version": TARGET, "concurrency": concurrency, "backup": {"required": False}}}
        t_start = time.monotonic()
        text = _metrics(cp)
        d1, b1 = measure.durations(text), measure.buckets(text, "PATCH", "leases")
        api.create(k8s.kupd_path(k8s.DIRECTUPDATES), body)

        def phase() -> str:
            assert fleet is not None and fleet.informer is not None
            du = fleet.informer.get("bench")
            return str(((du or {}).get("status") or {}).get("phase") or "")

        workers_waves = math.ceil((n - 1) / concurrency)
        timed = sum(1 for s in step_sequence([TARGET], False, False, "IfRequired") if s.step in TIMED_STEPS)
        res.timed_node_s = timed * step
        res.ideal_s = timed * step * (1 + workers_waves)
        last_log = [time.monotonic()]

        def ended() -> bool:
            ph = phase()
            if time.monotonic() - last_log[0] > 30:
                last_log[0] = time.monotonic()
                assert fleet is not None
                log.info("N=%d: %s, %d/%d workers finished after %.0f s", n, ph, len(fleet.timeline.finished),
                         n - 1, time.monotonic() - t_start)
            return ph in ("Succeeded", "Failed", "RequiresAttention")

        try:
            _wait(ended, max_rollout or max(120.0, 6 * res.ideal_s), "rollout end", every=0.05)
        except TimeoutError as e:
            log.error("%s", e)
        res.wall_s = time.monotonic() - t_start
        res.phase = phase()
        text, c2 = _metrics(cp), measure.cpu_seconds(pid)
        m2, d2, b2 = measure.requests(text), measure.durations(text), measure.buckets(text, "PATCH", "leases")
        res.rollout_mean_request_s = measure.mean_durations(d2, d1)
        res.lease_patch_s = (measure.bucket_quantile(b2, b1, 0.5), measure.bucket_quantile(b2, b1, 0.99))
        s2, n2 = d2.get(("PUT", "directupdates/status"), (0.0, 0.0))
        s1, n1 = d1.get(("PUT", "directupdates/status"), (0.0, 0.0))
        res.status_put_mean_s = (s2 - s1) / (n2 - n1) if n2 > n1 else math.nan
        res.overhead_ratio = res.wall_s / res.ideal_s
        roll_c = measure.diff(m2, m1)
        res.rollout_per_node_min = measure.per_node_minute(measure.by_verb(roll_c), n, res.wall_s)
        res.rollout_by_resource = _by_resource(roll_c)
        res.rollout_per_upgraded_node = {k: v / n for k, v in measure.by_verb(roll_c).items()}
        res.status_writes = roll_c.get(("PUT", "directupdates/status"), 0)
        du = fleet.informer.get("bench") or {}
        res.status_bytes = len(json.dumps(du, separators=(",", ":")))
        res.coordinator_rollout_cpu_s = c2 - c1
        mem = measure.memory(pid)
        res.coordinator_rss_mb = mem.get("VmRSS", 0) / 2**20
        res.coordinator_peak_rss_mb = mem.get("VmHWM", 0) / 2**20
        res.fleet_cpu_s = time.process_time() - f0

        tl = fleet.timeline
        with tl.lock:
            finished, granted, published = dict(tl.finished), dict(tl.granted), dict(tl.published)
            written = dict(tl.written)
        pairs = handoffs(finished, granted, initial_fill=min(concurrency, n - 1))
        lat = [x for x, _, _ in pairs]
        res.handoffs = len(lat)
        res.handoff_p50_s = measure.percentile(lat, 50)
        res.handoff_p99_s = measure.percentile(lat, 99)
        res.handoff_max_s = max(lat) if lat else math.nan
        parts = [(published[w] - finished[w], written[g] - published[w], granted[g] - written[g])
                 for _, w, g in pairs if w in published and g in written]

        def p50_p99(xs: list[float]) -> tuple[float, float]:
            return measure.percentile(xs, 50), measure.percentile(xs, 99)
        res.publish_s, res.coordinate_s, res.deliver_s = (p50_p99([x[i] for x in parts]) for i in range(3))
        res.renew_errors = fleet.renewer.errors
        res.upgraded_workers = len(finished)
        res.node_p50_s = measure.percentile([finished[w] - granted[w] for w in finished if w in granted], 50)
        sg, ss = tl.status_granted.get("cp-1"), tl.status_succeeded.get("cp-1")
        if sg is not None and ss is not None:
            res.cp_node_s = ss - sg
        if res.phase != "Succeeded":
            st = (du.get("status") or {})
            log.error("rollout ended %r: %s", res.phase, st.get("message"))
        return res
    finally:
        if fleet is not None:
            fleet.stop()
        sc.stop()
        cp.stop()


def daemon_footprint(idle: float, workdir: Path, env: dict[str, str] | None = None) -> DaemonResult:
    """One real `kupd daemon` (worker, simulated host, /metrics on): time to READY, idle RSS and CPU."""
    out = DaemonResult()
    cp = _start_control_plane(workdir)
    notify = measure.NotifySocket(workdir / "notify.sock")
    sc = SimCluster(cp, workdir / "sim", initial_version=INITIAL, available=AVAILABLE,
                    member_seconds=LEASE.member_duration_seconds,
                    coordinator_seconds=LEASE.coordinator_duration_seconds, log_level="warning",
                    extra_env={"NOTIFY_SOCKET": str(notify.path), **(env or {})})
    try:
        t0 = time.monotonic()
        node = sc.add_node("solo-1", control_plane=False,
                           extra={"metrics_address": f"127.0.0.1:{free_port()}"})
        assert node.proc is not None
        t_ready = notify.wait_for("READY", 120)
        if t_ready is None:
            raise TimeoutError("kupd daemon sent no READY=1 in 120 s")
        out.ready_s = t_ready - t0
        pid = node.proc.pid
        c_ready = measure.cpu_seconds(pid)
        out.start_cpu_s = c_ready
        time.sleep(idle)
        c1 = measure.cpu_seconds(pid)
        mem = measure.memory(pid)
        out.idle_s = time.monotonic() - t_ready
        out.rss_mb = mem.get("VmRSS", 0) / 2**20
        out.peak_rss_mb = mem.get("VmHWM", 0) / 2**20
        out.idle_cpu_s_per_min = (c1 - c_ready) / (out.idle_s / 60)
        return out
    finally:
        sc.stop()
        notify.close()
        cp.stop()


def status_writes(sizes: list[int], workdir: Path, repeat: int = 5) -> dict[int, dict[str, float]]:
    """For each size: the finished status of that many nodes (the largest a status gets), its
    size, and the time the real API server takes to store it (PUT directupdates/status, the
    client's median wall time over `repeat` writes; the coordinator writes it from its own thread)."""
    out: dict[int, dict[str, float]] = {}
    cp = _start_control_plane(workdir)
    try:
        api = api_client(cp.admin_kubeconfig)
        for n in sizes:
            name = f"size-{n}"
            body = {"apiVersion": k8s.API_VERSION, "kind": "DirectUpdate", "metadata": {"name": name},
                    "spec": {"version": TARGET, "concurrency": 50, "backup": {"required": False}}}
            obj = api.create(k8s.kupd_path(k8s.DIRECTUPDATES), body)
            status = measure.finished_status(n)
            times = []
            for _ in range(repeat):
                t0 = time.monotonic()
                path = k8s.kupd_path(k8s.DIRECTUPDATES, name, subresource="status")
                obj = api.replace(path, {**obj, "status": status})
                times.append(time.monotonic() - t0)
                status = {**status, "message": f"write {len(times)}"}
            stored = api.get(k8s.kupd_path(k8s.DIRECTUPDATES, name))
            out[n] = {"status_bytes": float(len(json.dumps(status, separators=(",", ":")))),
                      "object_bytes": float(len(json.dumps(stored, separators=(",", ":")))),
                      "put_s": statistics.median(times), "stored_nodes": float(len(stored["status"]["nodes"]))}
            api.delete(k8s.kupd_path(k8s.DIRECTUPDATES, name))
        return out
    finally:
        cp.stop()


# -- output -----------------------------------------------------------------------------------
def _f(x: float, fmt: str = "{:.3f}") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _verbs(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if v >= 0.005) or "0"


def table(runs: list[RunResult], daemon: DaemonResult | None, plan: dict[str, float] | None,
          sizes: dict[int, dict[str, float]] | None = None) -> str:
    head = ["figure"] + [f"N = {r.nodes}" for r in runs]
    rows: list[list[str]] = []

    def row(name: str, fn: Callable[[RunResult], str]) -> None:
        rows.append([name] + [fn(r) for r in runs])

    row("worker concurrency / step duration / active member lease",
        lambda r: f"{r.concurrency} / {r.step_seconds:g} s / {r.member_seconds} s")
    def result(r: RunResult) -> str:
        if r.phase in ("Succeeded", "Failed"):
            return r.phase
        return f"{r.phase or 'n/a'} ({r.upgraded_workers} of {r.nodes - 1} workers upgraded when stopped)"

    row("rollout result", result)
    row("handoff latency p50 / p99 / max (s)",
        lambda r: f"{_f(r.handoff_p50_s)} / {_f(r.handoff_p99_s)} / {_f(r.handoff_max_s)} ({r.handoffs} handoffs)")
    row("  of which, p50 / p99: report published; coordinator (watch, round) to the grant's write; "
        "grant delivered (s)",
        lambda r: "; ".join(f"{_f(a)} / {_f(b)}" for a, b in (r.publish_s, r.coordinate_s, r.deliver_s)))
    row("API server's own time of a Lease PATCH during the rollout, p50 / p99 (s)",
        lambda r: f"{_f(r.lease_patch_s[0])} / {_f(r.lease_patch_s[1])}")
    row("wall time / ideal time (s)", lambda r: f"{_f(r.wall_s, '{:.1f}')} / {_f(r.ideal_s, '{:.1f}')}")
    row("overhead ratio", lambda r: _f(r.overhead_ratio))
    row("node time: timed steps / worker p50 / coordinator's node (s)",
        lambda r: f"{_f(r.timed_node_s, '{:.2f}')} / {_f(r.node_p50_s, '{:.2f}')} / {_f(r.cp_node_s, '{:.2f}')}")
    row("API requests per node per minute, idle, all verbs", lambda r: _f(r.idle_total_per_node_min, "{:.3f}"))
    row("API requests per node per minute, idle (by verb)", lambda r: _verbs(r.idle_per_node_min))
    row("API requests per node per minute, rollout (by verb)", lambda r: _verbs(r.rollout_per_node_min))
    row("API requests per upgraded node, whole rollout (by verb)", lambda r: _verbs(r.rollout_per_upgraded_node))
    row("LIST requests, idle interval", lambda r: str(sum(v for k, v in r.idle_by_resource.items()
                                                          if k.startswith("LIST "))))
    row("DirectUpdate status writes / final object size",
        lambda r: f"{r.status_writes} / {r.status_bytes / 1024:.0f} KiB")
    row("API server mean time of a status PUT (s)", lambda r: _f(r.status_put_mean_s))
    row("API server mean time, busiest requests (ms)",
        lambda r: ", ".join(f"{k} {v * 1000:.0f}" for k, v in r.rollout_mean_request_s.items()) or "n/a")
    row("coordinator CPU s per minute, idle", lambda r: _f(r.coordinator_idle_cpu_s_per_min, "{:.2f}"))
    row("coordinator CPU s, rollout", lambda r: _f(r.coordinator_rollout_cpu_s, "{:.1f}"))
    row("coordinator RSS / peak RSS (MB)",
        lambda r: f"{_f(r.coordinator_rss_mb, '{:.0f}')} / {_f(r.coordinator_peak_rss_mb, '{:.0f}')}")
    row("bench fleet process CPU s (idle + rollout)", lambda r: _f(r.fleet_cpu_s, "{:.1f}"))
    if daemon is not None:
        row("one kupd daemon: start to READY (s)", lambda r: _f(daemon.ready_s, "{:.2f}"))
        row("one kupd daemon: idle RSS / peak (MB)",
            lambda r: f"{_f(daemon.rss_mb, '{:.1f}')} / {_f(daemon.peak_rss_mb, '{:.1f}')}")
        row("one kupd daemon: idle CPU s per minute", lambda r: _f(daemon.idle_cpu_s_per_min, "{:.2f}"))
    if plan is not None:
        row(f"planner, {int(plan['nodes'])} nodes: first / steady round (s)",
            lambda r: f"{_f(plan['first_s'])} / {_f(plan['steady_s'])}")
        row(f"planner, {int(plan['nodes'])} nodes: a turn ends, full / incremental round (s)",
            lambda r: f"{_f(plan['turn_full_s'])} / {_f(plan['turn_incremental_s'], '{:.4f}')} "
                      f"({plan['turn_evaluated']:.0f} nodes evaluated; nothing changed: "
                      f"{_f(plan['quiet_incremental_s'], '{:.4f}')})")
        row(f"planner, {int(plan['nodes'])} nodes: status size",
            lambda r: f"{plan['status_bytes'] / 1024:.0f} KiB")
    for n, sz in (sizes or {}).items():
        text = (f"{sz['status_bytes'] / 1024:.0f} KiB / {sz['object_bytes'] / 1024:.0f} KiB / "
                f"{sz['put_s']:.3f} s")
        rows.append([f"status of {n} finished nodes: size / stored object / PUT time"] + [text] * len(runs))
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[10, 100, 1000], help="cluster sizes to run")
    ap.add_argument("--concurrency", type=int, nargs="*", default=[],
                    help="worker concurrency per size (default: 1 up to 10 nodes, 10 up to 100, else 50)")
    ap.add_argument("--step-seconds", type=float, default=1.0, help="simulated duration of each host step")
    ap.add_argument("--idle-seconds", type=float, default=60.0, help="idle interval measured before the rollout")
    ap.add_argument("--daemon-idle-seconds", type=float, default=30.0,
                    help="how long the single real daemon idles before its RSS/CPU are read; 0 skips it")
    ap.add_argument("--planner-nodes", type=int, default=5000, help="0 skips the planner timing")
    ap.add_argument("--workers", type=int, default=48, help="fleet threads for registration and renewals")
    ap.add_argument("--status-nodes", type=int, nargs="*", default=[5000, 10000],
                    help="sizes at which to store a finished status on the real API server and time it")
    ap.add_argument("--coordinator-source", type=Path,
                    help="run the coordinator's daemon with the kupd package from this folder (a patched copy)")
    ap.add_argument("--max-rollout-seconds", type=float, default=0.0,
                    help="stop waiting for the rollout after this long and report what it did (default: 6 x ideal)")
    ap.add_argument("--member-seconds", type=int, nargs="*", default=[],
                    help="per size: the active member lease (member_duration_seconds; default the config's);"
                         " members renew at a third of it while an operation runs")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    ap.add_argument("--workdir", type=Path, help="keep control planes and logs here (default: a temp dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    for noisy in ("kupd", "urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="kupd-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    runs: list[RunResult] = []
    daemon: DaemonResult | None = None
    plan: dict[str, float] | None = None
    sizes: dict[int, dict[str, float]] | None = None
    try:
        if args.status_nodes:
            log.info("status writes: %s nodes", args.status_nodes)
            sizes = status_writes(args.status_nodes, root / "status")
        if args.planner_nodes:
            log.info("planner: %d nodes", args.planner_nodes)
            plan = measure.planner_time(args.planner_nodes)
        if args.daemon_idle_seconds > 0:
            log.info("one real daemon: %.0f s idle", args.daemon_idle_seconds)
            daemon = daemon_footprint(args.daemon_idle_seconds, root / "daemon")
        for i, n in enumerate(args.nodes):
            c = args.concurrency[i] if i < len(args.concurrency) else default_concurrency(n)
            log.info("N=%d: concurrency %d, step %.3g s", n, c, args.step_seconds)
            ms = args.member_seconds[i] if i < len(args.member_seconds) else None
            r = run_one(n, c, args.step_seconds, args.idle_seconds, root / f"n{n}", args.workers,
                        coordinator_source=args.coordinator_source, max_rollout=args.max_rollout_seconds,
                        member_seconds=ms)
            log.info("N=%d: %s in %.1f s (ideal %.1f s), handoff p99 %.3f s", n, r.phase, r.wall_s, r.ideal_s,
                     r.handoff_p99_s)
            runs.append(r)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(table(runs, daemon, plan, sizes))
    if args.json:
        args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs],
                                         "daemon": asdict(daemon) if daemon else None, "planner": plan,
                                         "status": sizes},
                                        indent=2, default=str))
    return 0 if all(r.phase == "Succeeded" for r in runs) else 1


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
