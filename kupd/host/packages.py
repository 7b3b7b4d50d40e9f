"""The package-manager interface the real host uses, and the factory that picks apt, dnf or yum.

A backend resolves the exact package version for a Kubernetes or containerd version,
installs exact pins (releasing and re-applying holds around them), and reports what
changed. It never upgrades or removes packages it was not asked about.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kupd import validate
from kupd.errors import PermanentError, RetryableError

#: The packages kupd holds so that an unattended `apt upgrade` cannot move them.
HELD = ("kubeadm", "kubelet", "kubectl")
#: Dependencies of the Kubernetes packages, from the same repository, that a new kubeadm or kubelet
#: may require at a newer version. No other installed package is ever upgraded or removed.
DEPENDENCY_UPGRADES = ("cri-tools", "kubernetes-cni")


class PackageNotFound(PermanentError):
    """The package source does not offer the requested version."""

    def __init__(self, name: str, wanted: str, available: list[str]) -> None:
        shown = ", ".join(available[-8:]) if available else "none"
        super().__init__(f"{name} {wanted} is not in the package repository (available: {shown})")
        self.package = name
        self.wanted = wanted


class PackageLocked(RetryableError):
    """Another process (unattended-upgrades, an operator's apt) holds the package-manager lock."""


class RepositoryError(RetryableError):
    """The repository could not be fetched (unreachable, bad signature, not yet published)."""


class UnsignedRepository(PermanentError):
    """The repository is not signed by the configured key; kupd will not install from it."""


class NoSpace(RetryableError):
    """The disk filled up during a package operation; free space, then the next attempt continues."""


@dataclass(frozen=True)
class PackageChange:
    name: str
    old: str | None
    new: str | None


@dataclass(frozen=True)
class InstallReport:
    changes: tuple[PackageChange, ...] = ()
    unheld: tuple[str, ...] = ()
    held: tuple[str, ...] = ()
    extra: tuple[str, ...] = field(default=())  # dependencies installed or upgraded along the way

    @property
    def changed(self) -> bool:
        return bool(self.changes)


class PackageManager(Protocol):
    name: str  # "apt", "dnf" or "yum"

    def refresh(self) -> None:
        """Fetch the repository indexes."""

    def installed(self, package: str) -> str | None:
        """The installed package version, or None."""

    def available(self, package: str) -> list[str]:
        """Every version the repositories offer, oldest first."""

    def is_held(self, package: str) -> bool: ...

    def install(self, pins: Mapping[str, str], hold: tuple[str, ...] = HELD) -> InstallReport:
        """Install exactly these package versions. Packages in `hold` are unheld, installed, held."""


def upstream_of(package_version: str) -> str:
    """The upstream part of a package version: 1:1.7.22-1 -> 1.7.22, 1.6.20~ds1-1 -> 1.6.20."""
    v = package_version.split(":", 1)[-1].rsplit("-", 1)[0] if "-" in package_version else (
        package_version.split(":", 1)[-1]
    )
    for sep in ("~", "+"):
        v = v.split(sep, 1)[0]
    return v


def pick(package: str, upstream: str, available: list[str]) -> str:
    """The newest package version whose upstream part is `upstream`; `available` is oldest first."""
    upstream = upstream.removeprefix("v")
    matches = [v for v in available if upstream_of(v) == upstream]
    if not matches:
        raise PackageNotFound(package, upstream, available)
    return matches[-1]


def resolve(pm: PackageManager, package: str, upstream: str) -> str:
    validate.package_name(package)
    version = pick(package, upstream, pm.available(package))
    return validate.package_version(version)


def detect(root: str = "/") -> str:
    """apt on Debian/Ubuntu, dnf on Fedora/RHEL 8+, yum on older RHEL: by what the root has."""
    r = Path(root)
    if (r / "var/lib/dpkg/status").exists():
        return "apt"
    for name in ("dnf", "yum"):
        for d in ("usr/bin", "bin"):
            if os.access(r / d / name, os.X_OK):
                return name
    raise PermanentError(f"no supported package manager (apt, dnf, yum) found under {root}")


def create(kind: str | None, root: str = "/", **options: str) -> PackageManager:
    """The backend for `kind` ("apt", "dnf", "yum"; None detects it) operating on `root`."""
    kind = kind or detect(root)
    if kind == "apt":
        from kupd.host.apt import AptManager

        return AptManager(root, sandbox_user=options.get("sandbox_user"))
    if kind in ("dnf", "yum"):
        from kupd.host.dnf import DnfManager

        return DnfManager(root, command=kind, releasever=options.get("releasever"))
    raise PermanentError(f"unknown package manager {kind!r}; expected apt, dnf or yum")
