"""Kubernetes versions, upgrade hops and the version-skew rules kupd enforces before acting."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from kupd.errors import ValidationError

_RE = re.compile(r"^v?([0-9]{1,4})\.([0-9]{1,4})\.([0-9]{1,4})$")  # ASCII digits only


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str, field: str = "version") -> Version:
        m = _RE.match(text.strip()) if isinstance(text, str) else None
        if not m:
            raise ValidationError(field, f"{str(text)[:40]!r} is not a version like v1.31.2")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))

    @classmethod
    def from_package(cls, text: str) -> Version:
        """The Kubernetes version inside a package version: 1.31.2-1.1 or 1.31.2-150500.1.1 -> v1.31.2."""
        upstream = text.split(":", 1)[-1].split("-", 1)[0]
        return cls.parse(upstream)

    @property
    def minor_key(self) -> tuple[int, int]:
        return (self.major, self.minor)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return (self.major, self.minor, self.patch) < (other.major, other.minor, other.patch)

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}"


class SkewError(ValidationError):
    """A requested change breaks a Kubernetes version-skew rule; `rule` names it."""

    def __init__(self, rule: str, message: str, field: str = "spec.version") -> None:
        super().__init__(field, f"{message} (rule: {rule})")
        self.rule = rule


def check_target(current: Version, target: Version, field: str = "spec.version") -> None:
    """Refuse downgrades and major-version changes. Multi-minor targets are allowed: they become hops."""
    if target < current:
        raise SkewError("no-downgrade", f"target {target} is older than the installed {current}", field)
    if target.major != current.major:
        raise SkewError("same-major", f"cannot change major version {current} -> {target}", field)


def minors_between(current: Version, target: Version) -> list[tuple[int, int]]:
    """The minors an upgrade passes through, excluding the current one: v1.30.x -> v1.32.y gives 1.31, 1.32."""
    check_target(current, target)
    return [(current.major, m) for m in range(current.minor + 1, target.minor + 1)]


def check_kubelet_not_newer(kubelet: Version, apiserver: Version) -> None:
    """kubelet must never be newer than the API server it talks to."""
    if kubelet.minor_key > apiserver.minor_key:
        raise SkewError(
            "kubelet-not-newer-than-apiserver",
            f"kubelet {kubelet} would be newer than the API server {apiserver}",
        )


def check_one_minor_step(current: Version, to: Version) -> None:
    """kubeadm upgrades one minor at a time."""
    if to.minor_key > (current.major, current.minor + 1):
        raise SkewError("one-minor-at-a-time", f"cannot skip a minor from {current} to {to}")


def check_node_upgrade(
    target: Version,
    kubeadm: Version | None,
    kubelet: Version | None,
    apiserver: Version | None = None,
) -> None:
    """The skew rules for one node before anything runs: no downgrade and no skipped minor for the
    installed kubeadm and kubelet, and (when the API server's version is known) a kubelet never
    newer than the API server it will talk to."""
    for installed in (kubeadm, kubelet):
        if installed is not None:
            check_target(installed, target)
            check_one_minor_step(installed, target)
    if apiserver is not None:
        check_kubelet_not_newer(target, apiserver)
