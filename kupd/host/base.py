"""The host interface: what the node agent needs from the machine it runs on.

Real hosts (apt or dnf, kubeadm, systemd) and the simulated host of the demo and cluster
tests implement it. Every method is idempotent: called again after a crash it finds the work
already done and returns, which is what lets the agent re-run an interrupted step safely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kupd.api.models import PackageSource


@dataclass(frozen=True)
class HostFacts:
    """What a member advertises in its lease."""

    package_manager: str  # "apt", "dnf", "yum" or "simulated"
    boot_id: str
    kubeadm: str | None  # Kubernetes form, v1.31.2; None when not installed
    kubelet: str | None
    kubectl: str | None
    containerd: str | None


class Host(Protocol):
    def facts(self) -> HostFacts: ...

    def preflight(self, version: str) -> None:
        """Check disk space, installed versions and that the target packages are available."""

    def set_package_source(self, source: PackageSource | None) -> None:
        """Use the DirectUpdate's spec.packageSource (upstream, mirror or air-gap bundle); None: the
        host's own configured source."""

    def newest_patch(self, minor: str) -> str:
        """The newest patch release the package source offers for a minor (\"v1.31\" -> \"v1.31.14\")."""

    def configure_repository(self, version: str) -> None:
        """Point the package source at the target version's minor."""

    def install_kubeadm(self, version: str) -> None: ...

    def kubeadm_upgrade(self, version: str, first_control_plane: bool, control_plane: bool) -> None:
        """`kubeadm upgrade apply` on the first control plane, `kubeadm upgrade node` elsewhere."""

    def install_kubelet(self, version: str, containerd: str | None) -> None:
        """kubelet and kubectl (and containerd when asked) at exact versions, held."""

    def restart_services(self) -> None:
        """daemon-reload and restart of kubelet (and containerd when it changed)."""

    def verify(self, version: str) -> None:
        """Services active and binaries at the target version; raises when not."""

    def reboot_required(self) -> bool: ...

    def reboot(self) -> None: ...
