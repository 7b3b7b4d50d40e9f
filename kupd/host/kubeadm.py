"""kubeadm: version, `upgrade plan` (parsed and recorded), `upgrade apply` and `upgrade node`.

The first control-plane node runs `kubeadm upgrade apply vX.Y.Z --yes`; every other node runs
`kubeadm upgrade node`. A successful upgrade leaves a marker in the state directory so that a
re-run after a crash returns without running kubeadm again. A kubeadm failure surfaces as the
runner's CommandError (rc and the tail of its output), and nothing after it runs.

kubeadm outlives the daemon. It runs in a session of its own with its output in a file (a pipe
to a dead daemon would kill it with SIGPIPE at its next line), and the unit's KillMode=process
leaves it running when the daemon dies. `upgrade apply` is not a step to repeat blindly: while
it runs, a record names its process; a daemon that finds the record (its predecessor died during
the apply) first waits for that kubeadm to finish, never starting a second one beside it, and
then runs `upgrade apply` again, whatever the cluster version says. The API server is upgraded
first, so after an interrupted apply /version already reports the target while the controller
manager, the scheduler, the kubelet configuration and the addons may not; the second apply
skips what is done (kubeadm leaves equal manifests alone) and finishes the rest.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from kupd import validate
from kupd.errors import CommandError, DeadlineExceeded, PermanentError, RetryableError
from kupd.fsutil import atomic_write, atomic_write_json
from kupd.host import parsers, runner
from kupd.versions import Version, check_one_minor_step, check_target

log = logging.getLogger(__name__)

VERSION_TIMEOUT = 30.0
PLAN_TIMEOUT = 300.0
APPLY_TIMEOUT = 1800.0  # kubeadm waits up to 5 minutes per static pod, and there are four
NODE_TIMEOUT = 900.0
RUNNING_RECORD = "kubeadm-running.json"


class Kubeadm:
    def __init__(self, path: str, state_dir: str, kubeconfig: str | None = None,
                 ignore_preflight_errors: tuple[str, ...] = ()) -> None:
        self.path = validate.safe_path(path, "kubeadm")
        self.state_dir = Path(validate.safe_path(state_dir, "stateDir"))
        self.kubeconfig = validate.safe_path(kubeconfig, "kubeconfig") if kubeconfig else None
        self.ignore_preflight_errors = tuple(validate.preflight_check(c) for c in ignore_preflight_errors)

    def _flags(self) -> list[str]:
        flags = [f"--kubeconfig={self.kubeconfig}"] if self.kubeconfig else []
        if self.ignore_preflight_errors:
            # What `kubeadm init/join` were told on this node (e.g. SystemVerification on a
            # cgroup v1 host): kubeadm's upgrade preflight runs the same checks again.
            flags.append("--ignore-preflight-errors=" + ",".join(self.ignore_preflight_errors))
        return flags

    def version(self) -> Version | None:
        """The installed kubeadm's version, or None when it is not installed."""
        if not Path(self.path).exists():
            return None
        result = runner.run([self.path, "version", "-o", "short"], timeout=VERSION_TIMEOUT)
        return parsers.kubeadm_version(result.stdout)

    def plan(self, version: str) -> parsers.UpgradePlan:
        """Run `kubeadm upgrade plan vX.Y.Z`, record its output and the parsed result."""
        validate.k8s_version(version)
        result = runner.run([self.path, "upgrade", "plan", version, *self._flags()], timeout=PLAN_TIMEOUT)
        plan = parsers.upgrade_plan(result.stdout)
        atomic_write(self.state_dir / f"kubeadm-plan-{version}.txt", result.stdout.encode(), 0o644)
        atomic_write_json(self.state_dir / f"kubeadm-plan-{version}.json", plan.to_json(), 0o644)
        return plan

    def _marker(self, version: str) -> Path:
        return self.state_dir / f"kubeadm-upgraded-{version}"

    def upgrade(self, version: str, first_control_plane: bool, control_plane: bool) -> bool:
        """Upgrade this node's kubeadm-managed parts; returns False when it was already done."""
        target = Version.parse(validate.k8s_version(version))
        if self._marker(version).exists():
            return False
        installed = self.version()
        if installed != target:
            raise PermanentError(
                f"kubeadm {installed or '(not installed)'} is installed; install kubeadm {target} first"
            )
        interrupted = self._record.exists()
        if interrupted:
            # Our predecessor died while kubeadm ran: see the module's docstring.
            self._wait_for_orphan()
        if first_control_plane:
            plan = None if interrupted else self.plan(version)
            if plan is not None and plan.cluster_version == target:
                log.info("cluster already at %s; kubeadm upgrade apply not needed", target)
            else:
                if plan is not None:
                    check_target(plan.cluster_version, target)
                    check_one_minor_step(plan.cluster_version, target)
                self._run([self.path, "upgrade", "apply", version, "--yes", *self._flags()], APPLY_TIMEOUT)
        else:
            # `upgrade node` fetches the cluster's configuration itself: on a control-plane node it
            # upgrades the static pods, on a worker the kubelet configuration. Re-running it is safe.
            self._run([self.path, "upgrade", "node", *self._flags()], NODE_TIMEOUT)
        atomic_write(self._marker(version), f"control_plane={control_plane}\n".encode(), 0o644)
        return True

    @property
    def _record(self) -> Path:
        return self.state_dir / RUNNING_RECORD

    def _run(self, argv: list[str], timeout: float) -> None:
        """Run a kubeadm upgrade detached (see the module's docstring), its process on record."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        what = argv[2]  # apply or node
        log_path = self.state_dir / f"kubeadm-{what}.log"

        def started(proc: runner.Process) -> None:
            atomic_write_json(self._record, {"pid": proc.pid, "startTicks": proc.start_ticks,
                                             "argv": argv[1:]}, 0o600)

        try:
            # Never killed mid-upgrade: past a deadline kupd waits for it to end, then reports.
            result = runner.run_detached(argv, str(log_path), timeout=timeout, started=started)
        except CommandError:
            log.error("%s failed; the node is left for the next attempt (output in %s)", " ".join(argv[:3]),
                      log_path)
            self._record.unlink(missing_ok=True)
            raise
        except DeadlineExceeded:
            self._record.unlink(missing_ok=True)  # it has ended: waited for past the deadline
            raise
        self._record.unlink(missing_ok=True)
        log.info("%s done in %.0fs", " ".join(argv[:3]), result.seconds)

    def _wait_for_orphan(self, poll: float = 2.0) -> None:
        """Wait until the kubeadm a dead daemon started is gone (the record may be unreadable:
        then there is nothing to wait for, and kubeadm runs again all the same)."""
        proc: runner.Process | None = None
        try:
            data = json.loads(self._record.read_text())
            proc = runner.Process(int(data["pid"]), int(data["startTicks"]))
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.warning("unreadable %s (%s); running kubeadm again", RUNNING_RECORD, e)
        if proc is not None and proc.alive():
            log.info("kubeadm (pid %d) from before this daemon started is still running; waiting for it "
                     "before running it again", proc.pid)
            deadline = time.monotonic() + APPLY_TIMEOUT
            while proc.alive():
                if time.monotonic() > deadline:
                    raise RetryableError(f"kubeadm (pid {proc.pid}) from before this daemon started still "
                                         f"runs after {APPLY_TIMEOUT:.0f}s", 60.0)
                time.sleep(poll)
        self._record.unlink(missing_ok=True)
