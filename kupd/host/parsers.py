"""Pure parsers of the output of kubeadm, kubelet, kubectl, containerd, dnf and systemctl.

No I/O here: each function takes the text a command printed and returns typed data or raises
`OutputError` naming the command whose output did not have the expected shape. They are
tested on captured output of the real commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kupd.errors import PermanentError
from kupd.versions import Version


class OutputError(PermanentError):
    """A command printed something kupd does not understand; acting on a guess would be unsafe."""

    def __init__(self, command: str, text: str) -> None:
        snippet = text.strip().splitlines()[-1][:120] if text.strip() else "(no output)"
        super().__init__(f"unexpected output from {command}: {snippet!r}")
        self.command = command


_K8S = r"v?([0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4})"


def kubeadm_version(text: str) -> Version:
    """`kubeadm version -o short` -> v1.31.2."""
    m = re.fullmatch(r"\s*" + _K8S + r"\s*", text)
    if not m:
        raise OutputError("kubeadm version -o short", text)
    return Version.parse(m.group(1))


def kubelet_version(text: str) -> Version:
    """`kubelet --version` -> "Kubernetes v1.31.2"."""
    m = re.search(r"^Kubernetes " + _K8S + r"\s*$", text, re.MULTILINE)
    if not m:
        raise OutputError("kubelet --version", text)
    return Version.parse(m.group(1))


def kubectl_version(text: str) -> Version:
    """`kubectl version --client` -> "Client Version: v1.31.2" (plus a Kustomize line)."""
    m = re.search(r"^Client Version:\s*" + _K8S + r"\s*$", text, re.MULTILINE)
    if not m:
        raise OutputError("kubectl version --client", text)
    return Version.parse(m.group(1))


def containerd_version(text: str) -> str:
    """`containerd --version` -> "1.7.22" from any of the upstream, Docker and Debian builds.

    Debian prints "1.6.20~ds1": the upstream version is the part before "~" or "+".
    """
    m = re.search(r"^containerd\s+\S+\s+v?([0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4})[~+\-.\w]*\s", text + " ", re.MULTILINE)
    if not m:
        raise OutputError("containerd --version", text)
    return m.group(1)


@dataclass(frozen=True)
class PlanComponent:
    component: str
    node: str | None
    current: str
    target: str


@dataclass(frozen=True)
class UpgradePlan:
    """What `kubeadm upgrade plan` reported: the versions and the component table."""

    cluster_version: Version
    kubeadm_version: Version
    target_version: Version | None
    components: tuple[PlanComponent, ...]
    apply_command: str | None

    @property
    def up_to_date(self) -> bool:
        return self.apply_command is None and not self.components

    def to_json(self) -> dict[str, object]:
        return {
            "clusterVersion": str(self.cluster_version),
            "kubeadmVersion": str(self.kubeadm_version),
            "targetVersion": str(self.target_version) if self.target_version else None,
            "applyCommand": self.apply_command,
            "components": [
                {"component": c.component, "node": c.node, "current": c.current, "target": c.target}
                for c in self.components
            ],
        }


def upgrade_plan(text: str) -> UpgradePlan:
    """`kubeadm upgrade plan` text output, both the pre-1.31 table and the one with a NODE column."""

    def field(label: str) -> str | None:
        m = re.search(r"^\[upgrade/versions\] " + re.escape(label) + r":\s*(\S+)\s*$", text, re.MULTILINE)
        return m.group(1) if m else None

    cluster, kubeadm, target = field("Cluster version"), field("kubeadm version"), field("Target version")
    if cluster is None or kubeadm is None:
        raise OutputError("kubeadm upgrade plan", text)
    components: list[PlanComponent] = []
    header: list[str] | None = None
    for line in text.splitlines():
        cells = line.split()
        if cells[:1] == ["COMPONENT"]:
            header = cells
            continue
        if header is None:
            continue
        if not cells or line.startswith("_"):
            header = None
            continue
        components.append(_plan_row(header, line, cells))
    apply = re.search(r"^\s*(kubeadm upgrade apply \S+)\s*$", text, re.MULTILINE)
    return UpgradePlan(
        cluster_version=Version.parse(cluster),
        kubeadm_version=Version.parse(kubeadm),
        target_version=Version.parse(target) if target else None,
        components=tuple(components),
        apply_command=apply.group(1) if apply else None,
    )


def _plan_row(header: list[str], line: str, cells: list[str]) -> PlanComponent:
    if "NODE" in header:
        # The NODE cell is empty for cluster-wide components (kube-proxy, CoreDNS).
        if len(cells) == 4:
            return PlanComponent(cells[0], cells[1], cells[2], cells[3])
        if len(cells) == 3:
            return PlanComponent(cells[0], None, cells[1], cells[2])
    else:
        # "kubelet     3 x v1.28.9   v1.29.4": CURRENT may carry a count.
        if len(cells) >= 3:
            return PlanComponent(cells[0], None, " ".join(cells[1:-1]), cells[-1])
    raise OutputError("kubeadm upgrade plan", line)


@dataclass(frozen=True)
class PackageVersion:
    name: str
    arch: str
    version: str  # [epoch:]version-release
    repo: str
    installed: bool


def dnf_list(text: str) -> list[PackageVersion]:
    """`dnf list --showduplicates NAME` -> every installed and available version."""
    out: list[PackageVersion] = []
    installed = False
    for line in text.splitlines():
        if line.startswith("Installed Packages"):
            installed = True
            continue
        if line.startswith("Available Packages"):
            installed = False
            continue
        cells = line.split()
        if len(cells) != 3 or "." not in cells[0]:
            continue
        name, _, arch = cells[0].rpartition(".")
        out.append(PackageVersion(name, arch, cells[1], cells[2].lstrip("@"), installed))
    return out


def rpm_query(text: str) -> dict[str, str]:
    """`rpm -q --qf '%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n' NAMES...` -> name -> version.

    Packages that are not installed print "package X is not installed" and are left out.
    An epoch of 0 is dropped, which is how dnf spells versions too.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        cells = line.split()
        if len(cells) != 2 or line.startswith("package "):
            continue
        name, evr = cells
        if evr.startswith("0:"):
            evr = evr[2:]
        out[name] = evr
    return out


def systemctl_is_active(text: str) -> str:
    """`systemctl is-active UNIT` prints one state word (active, inactive, failed, activating...)."""
    word = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not re.fullmatch(r"[a-z-]+", word):
        raise OutputError("systemctl is-active", text)
    return word


def rpm_version_key(evr: str) -> tuple[int, list[tuple[int, int | str]]]:
    """A sort key close to rpmvercmp: epoch first, then numeric and alphabetic segments in turn."""
    epoch, _, rest = evr.rpartition(":") if ":" in evr else ("0", "", evr)
    if not re.fullmatch(r"[0-9]{0,9}", epoch):
        raise OutputError("rpm (bad epoch)", evr)
    parts: list[tuple[int, int | str]] = []
    for seg in re.findall(r"[0-9]+|[A-Za-z]+|~", rest):
        if seg == "~":
            parts.append((-1, 0))
        elif seg.isdigit():
            parts.append((2, int(seg)))
        else:
            parts.append((1, seg))
    return (int(epoch or 0), parts)
