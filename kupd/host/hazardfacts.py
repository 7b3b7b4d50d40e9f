"""The host facts behind the upgrade-hazard checks (kupd/hazards.py), read from the node's files.

Everything here reads files under `root` (the node's / in production, a throwaway tree in tests):
cgroup v2 is the unified hierarchy's `cgroup.controllers` at /sys/fs/cgroup; swap is what
/proc/swaps lists; the kubelet's settings are kubeadm's /var/lib/kubelet/config.yaml and
/var/lib/kubelet/kubeadm-flags.env. A file that is missing or unreadable leaves its fact unknown,
and an unknown fact is never held against the node.
"""

from __future__ import annotations

from pathlib import Path

from kupd import hazards
from kupd.errors import KupdError
from kupd.versions import Version

CGROUP_ROOT = "sys/fs/cgroup"
SWAPS = "proc/swaps"
KUBELET_CONFIG = "var/lib/kubelet/config.yaml"
KUBEADM_FLAGS = "var/lib/kubelet/kubeadm-flags.env"
_LIMIT = 1 << 20  # these files are small; a huge one is not what kupd expects there


def _read(root: Path, rel: str) -> str | None:
    try:
        with open(root / rel, encoding="utf-8", errors="replace") as f:
            return f.read(_LIMIT)
    except OSError:
        return None


def read(root: str = "/", containerd: str | None = None) -> hazards.NodeFacts:
    base = Path(root)
    cgroup: int | None = None
    if (base / CGROUP_ROOT / "cgroup.controllers").is_file():
        cgroup = 2
    elif (base / CGROUP_ROOT).is_dir() and any((base / CGROUP_ROOT).iterdir()):
        cgroup = 1
    config = _read(base, KUBELET_CONFIG)
    flags = _read(base, KUBEADM_FLAGS)
    swaps = _read(base, SWAPS)
    parsed: Version | None = None
    if containerd:
        try:
            parsed = Version.parse(containerd)
        except KupdError:
            parsed = None
    return hazards.NodeFacts(
        cgroup_version=cgroup,
        fail_cgroup_v1=hazards.kubelet_config_bool(config, "failCgroupV1") if config is not None else None,
        containerd=parsed,
        kubelet_flags=hazards.parse_kubeadm_flags(flags) if flags is not None else (),
        swap_on=hazards.parse_swaps(swaps) if swaps is not None else None,
        fail_swap_on=hazards.kubelet_config_bool(config, "failSwapOn") if config is not None else None,
    )
