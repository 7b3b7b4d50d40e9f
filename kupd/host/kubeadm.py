"""kubeadm: version, `upgrade plan` (parsed and recorded), `upgrade apply` and `upgrade node`.

The first control-plane node runs `kubeadm upgrade apply vX.Y.Z --yes`; every other node runs
`kubeadm upgrade node`. A successful upgrade leaves a marker in the state directory so that a
re-run after a crash returns without running kubeadm again. A kubeadm failure surfaces as the
runner's CommandError (rc and the tail of stderr), and nothing after it runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kupd import validate
from kupd.errors import CommandError, PermanentError
from kupd.fsutil import atomic_write, atomic_write_json
from kupd.host import parsers, runner
from kupd.versions import Version, check_one_minor_step, check_target

log = logging.getLogger(__name__)

VERSION_TIMEOUT = 30.0
PLAN_TIMEOUT = 300.0
APPLY_TIMEOUT = 1800.0  # kubeadm waits up to 5 minutes per static pod, and there are four
NODE_TIMEOUT = 900.0


class Kubeadm:
    def __init__(self, path: str, state_dir: str, kubeconfig: str | None = None) -> None:
        self.path = validate.safe_path(path, "kubeadm")
        self.state_dir = Path(validate.safe_path(state_dir, "stateDir"))
        self.kubeconfig = validate.safe_path(kubeconfig, "kubeconfig") if kubeconfig else None

    def _flags(self) -> list[str]:
        return [f"--kubeconfig={self.kubeconfig}"] if self.kubeconfig else []

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
        if first_control_plane:
            plan = self.plan(version)
            if plan.cluster_version == target:
                log.info("cluster already at %s; kubeadm upgrade apply not needed", target)
            else:
                check_target(plan.cluster_version, target)
                check_one_minor_step(plan.cluster_version, target)
                self._run([self.path, "upgrade", "apply", version, "--yes", *self._flags()], APPLY_TIMEOUT)
        else:
            # `upgrade node` fetches the cluster's configuration itself: on a control-plane node it
            # upgrades the static pods, on a worker the kubelet configuration. Re-running it is safe.
            self._run([self.path, "upgrade", "node", *self._flags()], NODE_TIMEOUT)
        atomic_write(self._marker(version), f"control_plane={control_plane}\n".encode(), 0o644)
        return True

    def _run(self, argv: list[str], timeout: float) -> None:
        try:
            # Never killed mid-upgrade: past a deadline kupd waits for it to end, then reports.
            result = runner.run(argv, timeout=timeout, stop="wait")
        except CommandError:
            log.error("%s failed; the node is left for the next attempt", " ".join(argv[:3]))
            raise
        output = (result.stdout + result.stderr).encode()
        atomic_write(self.state_dir / f"kubeadm-{argv[2]}.log", output, 0o644)
