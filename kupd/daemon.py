"""`kupd daemon`: one process per node holding the three roles — member, coordinator, agent.

Wiring only: every decision lives in the planner, the agent's step sequence and the host
backends; this module builds them from the settings and runs their loops.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from kupd import enroll, k8s, logsetup, metrics, oneversion
from kupd import protocol as p
from kupd.agent import Agent, BackupFn
from kupd.api import models
from kupd.checkpoint import CheckpointStore
from kupd.config import Settings
from kupd.coordinator import Coordinator
from kupd.election import Elector
from kupd.errors import KupdError
from kupd.fsutil import atomic_write
from kupd.host.base import Host
from kupd.member import Member
from kupd.nodeops import NodeOps
from kupd.notify import Notifier, watchdog_interval

log = logging.getLogger(__name__)

CREDENTIAL_POLL_SECONDS = 5.0
NODE_POLL_SECONDS = (3.0, 30.0)  # first and longest pause between reads of the own Node


def make_host(settings: Settings, node: str) -> Host:
    if settings.host == "simulated":
        from kupd.sim.simulated import SimulatedHost

        sim = settings.simulated
        state = sim.state_file or f"{settings.state_dir}/simulated-host.json"
        return SimulatedHost(state, sim.step_seconds, sim.initial_version, sim.available_versions)
    from kupd.host.real import RealHost

    return RealHost.from_settings(settings, node)


def make_backup_fn(api: k8s.Client, settings: Settings, node: str) -> BackupFn:
    """The agent's backup step: snapshot the local etcd, verify, upload (when a store is configured:
    the DirectUpdate's, else this daemon's [backup.store]), and return status.backup.

    Under policy BestEffort a failure is returned as an unverified record, never raised: the
    operation goes on and the coordinator puts the reason in a Warning Condition."""

    def backup(spec_backup: models.Backup) -> dict[str, Any]:
        from kupd.backup import BackupFailed, BackupRetryable, reason_of
        from kupd.backup.run import BEST_EFFORT, BackupConfig, BackupDefaults, load_credentials, take_backup
        from kupd.clock import SystemClock

        defaults = BackupDefaults.from_settings(settings.backup, work_dir=f"{settings.state_dir}/backup")
        cfg = BackupConfig.from_model(spec_backup, defaults=defaults)
        try:
            # Credentials are read at use, never kept or logged.
            creds = load_credentials(cfg.store, api)
            record = take_backup(cfg, creds, settings.cluster_name, node, SystemClock())
        except (BackupFailed, BackupRetryable, KupdError) as e:
            if cfg.policy != BEST_EFFORT:
                raise
            log.warning("etcd backup failed under policy BestEffort; going on: %s", e)
            return models.to_wire(models.BackupRecord(location="", verified=False, uploaded=False, node=node,
                                                      message=f"{reason_of(e)}: {str(e)[:1500]}"))
        return dict(record.to_status())

    return backup


def node_clock(settings: Settings) -> Callable[[], datetime]:
    """The node's wall clock as its member Lease shows it: a simulated node may skew it (the
    coordinator never trusts it anyway)."""
    offset = timedelta(seconds=settings.simulated.clock_offset_seconds if settings.host == "simulated" else 0)
    return lambda: datetime.now(UTC) + offset


class Daemon:
    def __init__(self, settings: Settings, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.node = settings.node_name or socket.gethostname().split(".")[0]
        self.notifier = notifier or Notifier()
        self._stop = threading.Event()
        self._waiting_for = ""
        self._token_times: tuple[datetime, datetime] | None = None
        self.coordinator: Coordinator | None = None
        self._wake = threading.Event()
        self._restart = False
        self._package: oneversion.PackageWatch | None = None

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())

    # -- first boot: what the daemon waits for before it can take part ---------------------------
    def _waiting(self, what: str, detail: str) -> None:
        """STATUS says what kupd waits for; the log says it once per change, not once per poll."""
        text = f"waiting for {what}: {detail}"
        self.notifier.status(text)
        if text != self._waiting_for:
            log.warning("%s", text, extra=logsetup.event(logsetup.DAEMON_WAITING))
            self._waiting_for = text

    def _pause(self, seconds: float) -> bool:
        """Sleep up to `seconds`, pinging the watchdog; False when the daemon is stopping."""
        wd = watchdog_interval()
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self.notifier.watchdog()
            self._stop.wait(min(left, wd / 2) if wd else left)
        return False

    def _credential(self) -> k8s.Client | None:
        """A client from the kubeconfig, polling while there is none or it is unusable.

        A node provisioned before it is enrolled has no credential yet: exiting would make systemd
        restart kupd every few seconds, forever; polling keeps one quiet process whose STATUS says
        what is missing. None when the daemon is asked to stop first.
        """
        path = self.settings.kubeconfig
        while not self._stop.is_set():
            if not os.path.exists(path):
                self._waiting("a credential", f"{path} does not exist (`kupd enroll {self.node}` writes it)")
            else:
                try:
                    return k8s.api_client(path)
                except (KupdError, ValueError, OSError) as e:  # ssl.SSLError is an OSError
                    self._waiting("a usable credential", f"{path}: {e}")
            self._pause(CREDENTIAL_POLL_SECONDS)
        return None

    def _own_token(self, api: k8s.Client) -> k8s.Client:
        """Exchange an enrolment token for the node's own (first start) and renew it at half its
        life (enroll.rotation_due). The token goes to STATE_DIR/token, which the kubeconfig then
        names as its tokenFile: the client re-reads it on every request, so a renewal needs no
        restart. Returns the client to use from now on. Certificates and static tokens are left
        alone; a failed renewal is retried on a later tick while the current token works."""
        path = Path(self.settings.kubeconfig)
        token_file = str(Path(self.settings.state_dir) / "token")
        try:
            doc = yaml.safe_load(path.read_text())
            inline, named = enroll.current_token(doc, path.resolve().parent)
            token = inline or (Path(named).read_text().strip() if named else None)
        except (OSError, yaml.YAMLError) as e:
            log.warning("cannot read the credential %s to renew its token: %s", path, e)
            return api
        times = enroll.token_times(token) if token else None
        self._token_times = times
        if times is None or not enroll.rotation_due(times, datetime.now(UTC)):
            return api
        try:
            new = enroll.request_token(api, self.node, enroll.NODE_TOKEN_SECONDS)
        except KupdError as e:
            log.warning("cannot renew the node's token (%s); the current one expires %s", e, times[1].isoformat())
            return api
        atomic_write(token_file, new.encode(), mode=0o600)
        self._token_times = enroll.token_times(new)
        expires = self._token_times[1].isoformat() if self._token_times else "?"
        if named == token_file:
            log.info("renewed the node's token; it expires %s", expires, extra=logsetup.event(logsetup.TOKEN_RENEWED))
            return api
        enroll.write_private(path, yaml.safe_dump(enroll.use_token_file(doc, token_file), sort_keys=False))
        log.info("exchanged the enrolment token for the node's own (%s, expires %s); %s now reads it",
                 token_file, expires, path, extra=logsetup.event(logsetup.TOKEN_RENEWED))
        return k8s.api_client(str(path))

    def _token_due(self) -> bool:
        return self._token_times is not None and enroll.rotation_due(self._token_times, datetime.now(UTC))

    def _control_plane(self, api: k8s.Client) -> bool | None:
        """This node's role: from the config, else from its Node's label once the Node exists.
        None when the daemon is asked to stop first."""
        if self.settings.control_plane is not None:
            return self.settings.control_plane
        delay = NODE_POLL_SECONDS[0]
        while not self._stop.is_set():
            try:
                node = k8s.call(api.get, "read own node", k8s.node_path(self.node))
                return p.LABEL_CONTROL_PLANE in (node["metadata"].get("labels") or {})
            except k8s.NotFound:
                self._waiting("the Node", f"Node {self.node} is not registered yet (kubeadm join)")
            except k8s.Forbidden as e:
                self._waiting("permission", f"{e} (`kupd enroll {self.node}` grants it)")
            except KupdError as e:
                self._waiting("the API server", str(e))
            self._pause(delay)
            delay = min(delay * 2, NODE_POLL_SECONDS[1])
        return None

    def run(self) -> int:
        logsetup.set_defaults(node=self.node)
        s = self.settings
        # Everything this process may need, imported now: after a package upgrade it must not mix
        # modules of the new version into the old one. It restarts itself instead (see _run).
        oneversion.preload(backends=s.host == "real" and s.control_plane is not False)
        self._package = oneversion.PackageWatch()
        # READY as soon as the daemon runs, so `systemctl start`, `apt install` and cloud-init's
        # `enable --now` return at once; STATUS says what kupd still waits for. Never sent later.
        self.notifier.ready(f"starting on {self.node}")
        try:
            rc = self._run()
        finally:
            if not self._restart:
                self.notifier.stopping("stopping")
        if self._restart:
            # Not STOPPING=1: the service goes on in the same process (same PID), which says READY again.
            self.notifier.status("restarting to run the upgraded kupd")
            oneversion.reexec()
        return rc

    def _run(self) -> int:
        s = self.settings
        if s.metrics_address:
            metrics.serve(s.metrics_address)
        api = self._credential()
        if api is None:
            return 0
        api = self._own_token(api)
        host = make_host(s, self.node)
        store = CheckpointStore(s.state_dir)
        nodeops = NodeOps(api, self.node)

        member_holder: list[Member] = []

        def on_report() -> None:
            if member_holder:
                member_holder[0].poke()
            r = agent.report()
            if r is not None:
                metrics.agent_report(r)
                self.notifier.status(f"{r.operation}: {r.phase} {r.step} {r.message}"[:200])

        agent = Agent(self.node, host, nodeops, store, backup_fn=make_backup_fn(api, s, self.node),
                      on_report=on_report, deadline=s.steps.deadline)
        if s.host == "simulated":
            from kupd.sim.simkubelet import SimKubelet
            from kupd.sim.simulated import SimulatedHost

            assert isinstance(host, SimulatedHost)
            SimKubelet(api, self.node, host, bool(s.control_plane), s.simulated.node_labels).start()
        # An unfinished grant resumes before anything that needs the API: a granted node
        # finishes without it. Its role is in the checkpoint, so no API read is needed first.
        control_plane = agent.cp.grant.control_plane if agent.cp.active and agent.cp.grant \
            else self._control_plane(api)
        if control_plane is None:
            agent.stop()
            return 0
        lease = s.lease
        member = Member(api, lease.namespace, self.node, lease.member_duration_seconds,
                        lease.member_duration_seconds * lease.renew_fraction, host.facts, agent.report,
                        control_plane, idle_renew=lease.member_idle_renew_seconds, clock=node_clock(s))
        member_holder.append(member)
        member.start()
        agent.resume()

        # The agent watches its own grant Lease, by name: one small object, whatever the cluster's size.
        grant_key = f"{lease.namespace}/{p.grant_lease_name(self.node)}"

        def offer() -> None:
            obj = grants.get(grant_key)
            if obj is not None:
                agent.offer(p.Grant.decode(p.grant_value(obj)))

        grants = k8s.Informer("grant", api, k8s.lease_path(lease.namespace), offer,
                               watch_seconds=lease.watch_seconds,
                               fieldSelector=f"metadata.name={p.grant_lease_name(self.node)}").start()

        eligible = s.coordinator_eligible == "any" or (s.coordinator_eligible == "control-plane" and control_plane)
        elector = Elector(api, lease.namespace, self.node, lease.coordinator_duration_seconds,
                          idle_duration=lease.coordinator_idle_duration_seconds)
        elector.idle = True
        activity = self._watch_activity(api, member, elector)
        self.notifier.status(f"member of the cluster as {self.node}"
                             + (", coordinator candidate" if eligible else ""))
        log.info("kupd daemon started on %s (control plane: %s, coordinator candidate: %s)",
                 self.node, control_plane, eligible, extra=logsetup.event(logsetup.DAEMON_STARTED))
        wd = watchdog_interval()
        while not self._stop.is_set():
            tick = elector.duration * lease.renew_fraction
            if wd:
                tick = min(tick, wd / 2)
            if eligible:
                self._elect(api, elector, host)
            metrics.coordinator(elector.leading, elector.epoch)
            # A grant that arrived while the agent was still busy with an earlier one gets no
            # second watch event: look at the grant Lease again on every tick.
            offer()
            if self._token_due():
                self._own_token(api)  # rewrites the token file the client reads
            self.notifier.watchdog()
            self._restart_when_safe(agent)
            self._wake.wait(tick)
            self._wake.clear()
        log.info("stopping", extra=logsetup.event(logsetup.DAEMON_STOPPING))
        if self.coordinator:
            self.coordinator.stop()
        elector.release()
        agent.stop()
        member.stop()
        grants.stop()
        activity.stop()
        return 0

    def _watch_activity(self, api: k8s.Client, member: Member, elector: Elector) -> k8s.Informer:
        """Whether an operation is active: one small object, written only when operations start or
        end, watched by name. It sets how often this member renews and the coordinator Lease's
        duration (docs/development/protocol.md, "Idle and active")."""
        lease = self.settings.lease
        key = f"{lease.namespace}/{p.ACTIVITY_LEASE}"

        def on_activity() -> None:
            active = bool(p.activity_value(activity.get(key)))
            member.set_active(active)
            if elector.idle == active:
                elector.idle = not active
                self._wake.set()

        activity = k8s.Informer("activity", api, k8s.lease_path(lease.namespace), on_activity,
                                watch_seconds=lease.watch_seconds, fieldSelector=f"metadata.name={p.ACTIVITY_LEASE}")
        return activity.start()

    def _restart_when_safe(self, agent: Agent) -> None:
        """Once kupd's package changed on disk and no step runs (none will start), end the loop to
        run the new version in this process (run() re-executes it after a clean stop)."""
        if self._package is None or not self._package.changed() or not agent.quiesce():
            return
        log.info("kupd's package changed on disk and no step runs: restarting to run the new version")
        self._restart = True
        self.stop()

    def _elect(self, api: k8s.Client, elector: Elector, host: Host) -> None:
        try:
            leading = elector.try_acquire_or_renew()
        except KupdError as e:
            log.warning("coordinator election: %s", e)
            leading = elector.leading
        if leading and self.coordinator is None:
            # Imported here: only the coordinator runs them, and every daemon's memory counts.
            from kupd import health
            from kupd.clock import SystemClock
            from kupd.scheduler import Scheduler

            log.info("coordinating at epoch %d", elector.epoch, extra=logsetup.event(logsetup.COORDINATOR_ELECTED))
            self.coordinator = Coordinator(api, self.settings.lease.namespace, self.node,
                                           self.settings.lease.member_duration_seconds, elector,
                                           host.newest_patch, on_plan=metrics.operation_status,
                                           scheduler=Scheduler(api, SystemClock(), host.newest_patch),
                                           gates=health.GateRunner(functools.partial(health.evaluate, api)),
                                           watch_seconds=self.settings.lease.watch_seconds,
                                           on_operations=metrics.forget_operations,
                                           on_refused=metrics.status_refused)
            self.coordinator.start()
        elif not leading and self.coordinator is not None:
            log.info("no longer coordinator", extra=logsetup.event(logsetup.COORDINATOR_LOST))
            self.coordinator.stop()
            self.coordinator = None
            metrics.coordinator_stopped()
