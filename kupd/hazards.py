"""Upgrade hazards: facts of a node (or of the cluster) that make a target release fail on it, each
with the fix in its message. Pure: the member reports the node's facts, the planner evaluates them
against the target before the node's turn and refuses with the message.

The releases are Kubernetes' own notes:
- 1.35: the kubelet refuses to start on a cgroup v1 host unless its configuration says
  `failCgroupV1: false`; `--pod-infra-container-image` is gone.
- 1.36: the kubelet drops containerd 1.x (1.35 is the last release that supports it).
- a kubelet with swap on the host fails to start unless `failSwapOn: false`.
- an API version listed by the API server's `apiserver_requested_deprecated_apis` with a
  `removed_release` at or before the target is still used by some client: after the upgrade its
  requests fail.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kupd.errors import ValidationError
from kupd.versions import Version

CGROUP_V1 = "CgroupV1"
CONTAINERD_TOO_OLD = "ContainerdTooOld"
REMOVED_KUBELET_FLAG = "RemovedKubeletFlag"
SWAP_ON = "SwapWithoutFailSwapOnFalse"
DEPRECATED_API_IN_USE = "RemovedAPIStillRequested"

CGROUP_V1_REFUSED_SINCE = (1, 35)
CONTAINERD_2_REQUIRED_SINCE = (1, 36)

# Flags of the kubelet's command line that a release removed (the kubelet exits at an unknown flag),
# by the first minor without them. kubeadm writes flags to /var/lib/kubelet/kubeadm-flags.env.
REMOVED_KUBELET_FLAGS: Mapping[str, tuple[int, int]] = {
    "--network-plugin": (1, 24),
    "--cni-bin-dir": (1, 24),
    "--cni-conf-dir": (1, 24),
    "--cni-cache-dir": (1, 24),
    "--docker-endpoint": (1, 24),
    "--image-pull-progress-deadline": (1, 24),
    "--experimental-dockershim-root-directory": (1, 24),
    "--non-masquerade-cidr": (1, 24),
    "--container-runtime": (1, 27),
    "--pod-infra-container-image": (1, 35),
}


@dataclass(frozen=True)
class NodeFacts:
    """What a member reports about its host for these checks; None: unknown (not checked)."""

    cgroup_version: int | None = None
    fail_cgroup_v1: bool | None = None
    """The kubelet configuration's failCgroupV1 (None: not set, the release's default)."""
    containerd: Version | None = None
    kubelet_flags: tuple[str, ...] = ()
    """Flag names in kubeadm-flags.env (KUBELET_KUBEADM_ARGS), like --node-ip."""
    swap_on: bool | None = None
    fail_swap_on: bool | None = None
    """The kubelet configuration's failSwapOn (None: not set, true by default)."""


@dataclass(frozen=True)
class DeprecatedApi:
    """One series of apiserver_requested_deprecated_apis."""

    group: str
    version: str
    resource: str
    removed_release: str


@dataclass(frozen=True)
class Hazard:
    rule: str
    subject: str
    message: str


def node_hazards(node: str, facts: NodeFacts, target: Version, containerd_target: Version | None = None
                 ) -> list[Hazard]:
    """What would stop `target`'s kubelet on this node. `containerd_target`: spec.containerdVersion,
    installed with the kubelet."""
    out: list[Hazard] = []
    tk = target.minor_key
    if facts.cgroup_version == 1 and tk >= CGROUP_V1_REFUSED_SINCE and facts.fail_cgroup_v1 is not False:
        out.append(Hazard(CGROUP_V1, node,
                          f"{node} runs cgroup v1 and the kubelet {target} refuses to start on it: move the host to "
                          "cgroup v2 (boot with systemd.unified_cgroup_hierarchy=1), or set failCgroupV1: false in "
                          "/var/lib/kubelet/config.yaml to keep v1 for now"))
    containerd = containerd_target or facts.containerd
    if containerd is not None and containerd.major < 2 and tk >= CONTAINERD_2_REQUIRED_SINCE:
        out.append(Hazard(CONTAINERD_TOO_OLD, node,
                          f"{node} runs containerd {str(containerd).lstrip('v')} and the kubelet {target} needs "
                          "containerd 2.0 or newer: set spec.containerdVersion to a 2.x release, or upgrade "
                          "containerd on the node first"))
    for flag in facts.kubelet_flags:
        removed = REMOVED_KUBELET_FLAGS.get(flag)
        if removed is not None and tk >= removed:
            out.append(Hazard(REMOVED_KUBELET_FLAG, node,
                              f"{node} passes {flag} to the kubelet in /var/lib/kubelet/kubeadm-flags.env, removed in "
                              f"v{removed[0]}.{removed[1]}: the kubelet {target} would not start; remove the flag "
                              "there (and from the kubeadm configuration's kubeletExtraArgs)"))
    if facts.swap_on and facts.fail_swap_on is not False:
        out.append(Hazard(SWAP_ON, node,
                          f"{node} has swap on and its kubelet does not allow it: the kubelet {target} would not start "
                          "after the restart; turn swap off (swapoff -a and /etc/fstab), or set failSwapOn: false (and "
                          "memorySwap.swapBehavior) in /var/lib/kubelet/config.yaml"))
    return out


def api_hazards(requested: Sequence[DeprecatedApi], target: Version) -> list[Hazard]:
    """API versions still requested that the target no longer serves."""
    out: list[Hazard] = []
    for api in sorted(set(requested), key=lambda a: (a.group, a.version, a.resource)):
        try:
            removed = Version.parse(f"{api.removed_release}.0" if api.removed_release.count(".") == 1
                                    else api.removed_release)
        except ValidationError:
            continue
        if removed.minor_key <= target.minor_key:
            gv = f"{api.group}/{api.version}" if api.group else api.version
            out.append(Hazard(DEPRECATED_API_IN_USE, f"{api.resource}.{gv}",
                              f"clients still request {api.resource} in {gv}, removed in {api.removed_release}: "
                              "after the upgrade their requests fail; move them to the current API version (the "
                              "API server's audit log names the clients), or wait for the metric to clear"))
    return out


# -- parsers of what the facts come from ------------------------------------------------------

_SERIES = re.compile(r'^apiserver_requested_deprecated_apis\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)')
_LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')


def parse_deprecated_apis(metrics: str) -> list[DeprecatedApi]:
    """The series of apiserver_requested_deprecated_apis (Prometheus text) whose value is 1."""
    out: list[DeprecatedApi] = []
    for line in metrics.splitlines():
        m = _SERIES.match(line)
        if m is None or m.group("value") not in ("1", "1.0"):
            continue
        labels = dict(_LABEL.findall(m.group("labels")))
        if labels.get("removed_release"):
            out.append(DeprecatedApi(labels.get("group", ""), labels.get("version", ""),
                                     labels.get("resource", ""), labels["removed_release"]))
    return out


def parse_kubeadm_flags(text: str) -> tuple[str, ...]:
    """Flag names in /var/lib/kubelet/kubeadm-flags.env: KUBELET_KUBEADM_ARGS="--a=b --c=d"."""
    flags: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key != "KUBELET_KUBEADM_ARGS":
            continue
        for word in value.strip().strip('"').strip("'").split():
            if word.startswith("--"):
                flags.append(word.split("=", 1)[0])
    return tuple(flags)


def parse_swaps(text: str) -> bool:
    """Whether /proc/swaps lists an active swap area (its first line is a header)."""
    return any(line.strip() for line in text.splitlines()[1:])


def kubelet_config_bool(text: str, key: str) -> bool | None:
    """A top-level boolean of the kubelet's config.yaml (failSwapOn, failCgroupV1); None when unset
    or when the file does not parse (then the kubelet itself would not start either)."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, bool) else None


# -- the member Lease's wire form (annotation kupd.io/node-facts) -------------------------------

def encode(facts: NodeFacts) -> str:
    import json

    return json.dumps({"cgroupVersion": facts.cgroup_version, "failCgroupV1": facts.fail_cgroup_v1,
                       "containerd": str(facts.containerd) if facts.containerd else None,
                       "kubeletFlags": list(facts.kubelet_flags), "swapOn": facts.swap_on,
                       "failSwapOn": facts.fail_swap_on}, separators=(",", ":"), sort_keys=True)


def decode(text: str | None) -> NodeFacts | None:
    """A member's reported facts; None when absent or malformed (untrusted: nothing held against the
    node on a fact it did not state clearly)."""
    import json

    if not text or len(text) > 8192:
        return None
    try:
        d = json.loads(text)
    except ValueError:
        return None
    if not isinstance(d, dict):
        return None

    def opt_bool(key: str) -> bool | None:
        v = d.get(key)
        return v if isinstance(v, bool) else None

    cg = d.get("cgroupVersion")
    containerd: Version | None = None
    if isinstance(d.get("containerd"), str):
        try:
            containerd = Version.parse(d["containerd"])
        except ValidationError:
            containerd = None
    flags = d.get("kubeletFlags")
    return NodeFacts(
        cgroup_version=cg if cg in (1, 2) and not isinstance(cg, bool) else None,
        fail_cgroup_v1=opt_bool("failCgroupV1"),
        containerd=containerd,
        kubelet_flags=tuple(f for f in flags if isinstance(f, str) and _FLAG.fullmatch(f))[:64]
        if isinstance(flags, list) else (),
        swap_on=opt_bool("swapOn"),
        fail_swap_on=opt_bool("failSwapOn"),
    )


_FLAG = re.compile(r"--[a-z0-9][a-z0-9-]{0,80}")
