"""The node agent: runs its own node's steps once the coordinator grants it a turn.

The steps form an explicit sequence (see `step_sequence`); each is checkpointed before it
starts and after it ends. Errors are values of two kinds: a RetryableError (the API server is
away, a lock is held) waits and tries again without spending an attempt, so a granted node
finishes while the API is down; any other error spends an attempt, and after `maxAttempts`
the node gives up (Failed, with the step and the reason) and the coordinator stops the rollout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kupd import logsetup
from kupd.api.models import Backup
from kupd.checkpoint import Checkpoint, CheckpointStore, StepRecord
from kupd.config import DEFAULT_STEP_DEADLINES
from kupd.errors import CommandError, DeadlineExceeded, KupdError, NeedsAttention, RetryableError
from kupd.host import runner
from kupd.host.base import Host
from kupd.nodeops import NodeOps
from kupd.protocol import Grant, Report, Step, TurnPhase
from kupd.rfc3339 import now as utcnow

log = logging.getLogger(__name__)

BackupFn = Callable[[Backup], dict[str, Any]]
DRAIN_MARGIN = 300.0  # a drain step's deadline is at least its own timeout plus this


def default_deadline(step: str) -> float:
    return DEFAULT_STEP_DEADLINES.get(step, 1800.0)


@dataclass(frozen=True)
class StepRef:
    key: str  # "<hop>/<step>", the checkpoint key
    hop: str
    step: Step


def step_sequence(versions: list[str], backup: bool, control_plane: bool, reboot: str) -> list[StepRef]:
    """The ordered steps of one grant. Pure.

    The node is drained once, before the first kubelet change, and uncordoned once, after the
    last hop is verified: a worker walking several hops is out of service only once.
    """
    out: list[StepRef] = []
    for i, hop in enumerate(versions):
        first, last = i == 0, i == len(versions) - 1
        names = [Step.PREFLIGHT]
        if backup and first:
            names.append(Step.BACKUP)
        names += [Step.REPOSITORY, Step.KUBEADM_PACKAGE, Step.KUBEADM_UPGRADE]
        if first:
            names.append(Step.DRAIN)
        names += [Step.KUBELET_PACKAGE, Step.RESTART]
        if reboot != "Never" and last:
            names.append(Step.REBOOT)
        names.append(Step.VERIFY)
        if last:
            names.append(Step.UNCORDON)
        out += [StepRef(f"{hop}/{n}", hop, n) for n in names]
    return out


class Agent:
    def __init__(self, node: str, host: Host, nodeops: NodeOps, store: CheckpointStore,
                 backup_fn: BackupFn | None = None, on_report: Callable[[], None] | None = None,
                 retry_delay: float = 2.0, deadline: Callable[[str], float] = default_deadline) -> None:
        self.node = node
        self.deadline = deadline
        self.host = host
        self.nodeops = nodeops
        self.store = store
        self.backup_fn = backup_fn
        self.on_report = on_report or (lambda: None)
        self.retry_delay = retry_delay
        self.cp = store.load()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._reason = ""
        self._held = False
        self.step_seconds: dict[str, float] = {}

    # -- what the member lease publishes -------------------------------------------------
    def report(self) -> Report | None:
        cp = self.cp
        g = cp.grant
        if g is None:
            return None
        current = next((k for k, s in cp.steps.items() if s.state == "started"), "")
        last = current or next((k for k, s in reversed(cp.steps.items()) if s.state != "pending"), "")
        return Report(operation=g.operation, uid=g.uid, epoch=g.epoch, versions=g.versions,
                      phase=cp.phase, step=last.split("/", 1)[-1], attempts=cp.steps[last].attempts if last else 0,
                      started_at=cp.started_at, finished_at=cp.finished_at, message=cp.message, reason=cp.reason,
                      backup=cp.backup_record, step_seconds=self.step_seconds, granted_at=g.granted_at)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- grants ----------------------------------------------------------------------------
    def offer(self, grant: Grant | None) -> None:
        """Look at the grant in this node's grant Lease; start work if it is a turn we have not done."""
        if grant is None:
            return
        with self._lock:
            if self._held:
                return  # the process is about to restart; the next one takes the grant
            if grant.epoch > self.cp.max_epoch_seen:
                self.cp.max_epoch_seen = grant.epoch
            if self.busy:
                return
            if grant.epoch < self.cp.max_epoch_seen:
                log.info("ignoring a grant of epoch %s older than epoch %s", grant.epoch, self.cp.max_epoch_seen)
                return
            if self.cp.corrupt:
                self._report_corrupt(grant)
                return
            same = self.cp.same_work(grant)
            current = self.cp.grant
            if same and current is not None and self.cp.phase == TurnPhase.FAILED \
                    and grant.granted_at != current.granted_at:
                # A retry: a new grant for the same work. Steps already done stay done.
                log.info("retrying %s from its failed step", grant.operation)
                for rec in self.cp.steps.values():
                    if rec.state != "done":
                        rec.state, rec.attempts = "pending", 0
                self.cp.phase, self.cp.finished_at, self.cp.grant = TurnPhase.UPGRADING, "", grant
                self.store.save(self.cp)
                self._start()
                return
            if same and self.cp.phase in (TurnPhase.SUCCEEDED, TurnPhase.FAILED):
                return  # done already; the coordinator has not caught up with our report yet
            if not (same and self.cp.active):
                self.cp = Checkpoint(grant=grant, phase=TurnPhase.UPGRADING, started_at=utcnow(),
                                     max_epoch_seen=self.cp.max_epoch_seen)
            elif current is not None:
                # The same turn re-stamped by a new coordinator: only its epoch is new.
                self.cp.grant = current.with_epoch(grant.epoch)
            self.store.save(self.cp)
            self._start()

    def _report_corrupt(self, grant: Grant) -> None:
        """The checkpoint was unreadable: which steps of this turn ran is unknown. Rather than guess,
        the turn ends Failed, naming the file, so an operator looks at the node first; a retry then
        runs every step again (each finds its effect present and does not repeat it)."""
        msg = (f"CheckpointCorrupt: {self.store.path} could not be read and was moved to {self.cp.corrupt}; "
               "check the node's disk and journal, then retry the node (kupd.io/retry-nodes)")
        log.error("%s", msg)
        now = utcnow()
        self.cp = Checkpoint(grant=grant, phase=TurnPhase.FAILED, started_at=now, finished_at=now, message=msg,
                             reason="CheckpointCorrupt", max_epoch_seen=grant.epoch)
        self.store.save(self.cp)
        self.on_report()

    def quiesce(self) -> bool:
        """Take no new turn from now on if no step runs; True then (the process may end safely)."""
        with self._lock:
            if self.busy:
                return False
            self._held = True
            return True

    def resume(self) -> bool:
        """After a restart: carry on with an unfinished grant, API or not."""
        if self.cp.active and not self.busy and self.cp.grant is not None:
            log.info("resuming %s at %s", self.cp.grant.operation, self.cp.grant.versions)
            self._start()
            return True
        return False

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="agent", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    # -- execution -------------------------------------------------------------------------
    def _set(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self.cp, k, v)
        self.store.save(self.cp)
        self.on_report()

    def _run(self) -> None:
        cp = self.cp
        grant = cp.grant
        if grant is None:
            return
        work = grant.work
        self.host.set_package_source(work.package_source)
        for ref in step_sequence(grant.versions, grant.backup, grant.control_plane, work.reboot):
            rec = cp.step(ref.key)
            if rec.state == "done":
                continue
            # journalctl -u kupd KUPD_OPERATION=... KUPD_STEP=drain finds these records.
            with logsetup.log_context(operation=grant.operation, step=ref.step):
                if not self._run_step(ref, rec, work.max_attempts):
                    return
        self._set(phase=TurnPhase.SUCCEEDED, finished_at=utcnow(), message=f"at {grant.versions[-1]}", reason="")

    def _run_step(self, ref: StepRef, rec: StepRecord, max_attempts: int) -> bool:
        """Run one step to success (True) or until the node gives up or stops (False)."""
        cp = self.cp
        while True:
            if self._stop.is_set():
                return False
            if rec.state != "started" or rec.attempts == 0:
                rec.attempts += 1
            rec.state, rec.started_at = "started", rec.started_at or utcnow()
            if ref.step == Step.REBOOT and not rec.boot_id:
                rec.boot_id = self.host.facts().boot_id
            self._set(message=f"{ref.hop}: {ref.step}", reason="")
            t0 = time.monotonic()
            try:
                self._do_within_deadline(ref, rec.boot_id)
            except DeadlineExceeded as e:
                # A hung step ends the turn at once (another attempt would hang the same way): the
                # node is Failed with the step named, so the operation says RequiresAttention and
                # kupd.io/retry-nodes runs the step again once the cause is fixed.
                log.error("step %s: %s", ref.key, e)
                rec.message = str(e)
                self._set(phase=TurnPhase.FAILED, finished_at=utcnow(), message=str(e), reason="StepDeadlineExceeded")
                return False
            except RetryableError as e:
                if ref.step == Step.BACKUP:
                    # An etcd or store that stays away must fail the operation before any
                    # node changes, not hold it forever: backups spend attempts like failures.
                    if self._fail_attempt(ref, rec, KupdError(str(e)), max_attempts):
                        return False
                    continue
                # Not the node's fault (API away, lock held): wait, spend no attempt.
                log.warning("step %s waiting: %s", ref.key, e)
                self._set(message=f"{ref.hop}: {ref.step}: waiting: {e}", reason="Waiting")
                self._stop.wait(max(e.delay, self.retry_delay))
                continue
            except NeedsAttention as e:
                log.error("step %s stopped: %s", ref.key, e)
                rec.message = str(e)
                self._set(phase="Failed", finished_at=utcnow(), message=f"step {ref.step}: {e}", reason=e.reason)
                return False
            except (KupdError, OSError) as e:
                if self._fail_attempt(ref, rec, e, max_attempts):
                    return False
                continue
            rec.state, rec.finished_at = "done", utcnow()
            rec.seconds = round(time.monotonic() - t0, 3)
            self.step_seconds[ref.step] = self.step_seconds.get(ref.step, 0.0) + rec.seconds
            self.store.save(cp)
            log.info("step %s done in %.1fs", ref.key, rec.seconds, extra=logsetup.event(logsetup.STEP_DONE))
            return True

    def _do_within_deadline(self, ref: StepRef, boot_id: str) -> None:
        seconds = self._deadline(ref.step)

        def overrun(msg: str) -> None:
            self._set(message=f"{ref.hop}: {ref.step}: {msg}", reason="DeadlineExceeded")

        with runner.deadline(seconds, ref.step, on_overrun=overrun):
            try:
                self._steps[ref.step](ref.hop, boot_id)
            except DeadlineExceeded:
                raise
            except Exception as e:
                # Whatever a step's own code made of the deadline (a wrapped error), it is the deadline.
                left = runner.remaining()
                if left is not None and left <= 0:
                    raise DeadlineExceeded(ref.step, seconds, _describe(e)) from e
                raise

    def _deadline(self, step: str) -> float:
        seconds = self.deadline(step)
        if step == Step.DRAIN and self.cp.grant is not None:
            seconds = max(seconds, self.cp.grant.work.drain.timeout_seconds + DRAIN_MARGIN)
        return seconds

    def _sleep(self, seconds: float) -> bool:
        """The waits inside a step: they end when the daemon stops or at the step's deadline."""
        return runner.sleep(seconds, self._stop)

    def _fail_attempt(self, ref: StepRef, rec: StepRecord, e: BaseException, max_attempts: int) -> bool:
        """Record a failed attempt; True when the node gives up (Failed)."""
        msg = _describe(e)
        log.error("step %s failed (attempt %d/%d): %s", ref.key, rec.attempts, max_attempts, msg,
                  extra=logsetup.event(logsetup.STEP_FAILED))
        rec.message = msg
        if rec.attempts >= max_attempts:
            self._set(phase=TurnPhase.FAILED, finished_at=utcnow(),
                      message=f"step {ref.step} failed after {rec.attempts} attempts: {msg}", reason="StepFailed")
            return True
        rec.state = "pending"
        self._set(message=f"{ref.hop}: {ref.step}: attempt {rec.attempts} failed: {msg}", reason="Retrying")
        self._stop.wait(self.retry_delay)
        return False

    # -- the steps: one handler each, called with the hop's version and the boot the step began in
    @property
    def _grant(self) -> Grant:
        if self.cp.grant is None:
            raise KupdError("no grant to work on")
        return self.cp.grant

    @property
    def _steps(self) -> dict[Step, Callable[[str, str], None]]:
        return {
            Step.PREFLIGHT: lambda hop, _: self.host.preflight(hop),
            Step.BACKUP: self._backup,
            Step.REPOSITORY: lambda hop, _: self.host.configure_repository(hop),
            Step.KUBEADM_PACKAGE: lambda hop, _: self.host.install_kubeadm(hop),
            Step.KUBEADM_UPGRADE: lambda hop, _: self.host.kubeadm_upgrade(
                hop, self._grant.first_control_plane, self._grant.control_plane),
            Step.DRAIN: self._drain,
            Step.KUBELET_PACKAGE: lambda hop, _: self.host.install_kubelet(hop, self._grant.work.containerd_version),
            Step.RESTART: lambda hop, _: self.host.restart_services(),
            Step.REBOOT: self._reboot,
            Step.VERIFY: self._verify,
            Step.UNCORDON: lambda hop, _: self.nodeops.uncordon(),
        }

    def _backup(self, hop: str, boot_id: str) -> None:
        if self.backup_fn is None:
            raise KupdError("this daemon has no backup store configured")
        self.cp.backup_record = self.backup_fn(self._grant.work.backup_config)

    def _drain(self, hop: str, boot_id: str) -> None:
        self.nodeops.drain(self._grant.work.drain, lambda reason, msg: self._set(message=msg, reason=reason),
                           sleep=self._sleep)

    def _reboot(self, hop: str, boot_id: str) -> None:
        if self.host.facts().boot_id != boot_id:
            return  # we are past the reboot
        if self._grant.work.reboot == "Always" or self.host.reboot_required():
            self.host.reboot()
            while self.host.facts().boot_id == boot_id:
                # A real reboot ends this process; the checkpoint carries us on after boot.
                if self._sleep(5):
                    raise RetryableError("stopping during reboot")

    def _verify(self, hop: str, boot_id: str) -> None:
        self.host.verify(hop)
        self.nodeops.wait_ready(hop, sleep=self._sleep)


def _describe(e: BaseException) -> str:
    if isinstance(e, CommandError):
        return str(e)
    return f"{e}" if isinstance(e, KupdError) else f"{type(e).__name__}: {e}"
