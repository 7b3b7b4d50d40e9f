"""Kubernetes' version-skew policy as pure functions, one per rule.

Source: https://kubernetes.io/releases/version-skew-policy/ . Each function returns the rule it
breaks as a `Violation` (or None), so the planner can ask "would this grant break a rule?" before
it grants, and `kupd plan` can say which rule holds a wave back. Only minors matter: patches of
one minor are always compatible.

The rules:
- kube-apiserver instances of an HA control plane are at most one minor apart;
- kube-controller-manager, kube-scheduler (kubeadm runs them beside each API server, at its version
  and talking to it) are not newer than the API server they talk to, and at most one minor older;
- kubelet is never newer than any API server, and at most three minors older than the newest one
  (two when the API server is older than 1.28, which introduced the wider skew, or the kubelet is
  older than 1.25);
- kube-proxy (a DaemonSet that `kubeadm upgrade apply` moves to the new minor at once) is never
  newer than an API server, and at most three minors apart from the kubelet on its node (two under
  the same conditions as the kubelet);
- kubectl is within one minor of every API server, older or newer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kupd.errors import ValidationError
from kupd.versions import Version

KUBELET_NOT_NEWER = "kubelet-not-newer-than-apiserver"
KUBELET_TOO_OLD = "kubelet-too-old-for-apiserver"
PROXY_NOT_NEWER = "kube-proxy-not-newer-than-apiserver"
PROXY_VS_KUBELET = "kube-proxy-within-skew-of-kubelet"
KUBECTL_WITHIN_ONE = "kubectl-within-one-minor-of-apiserver"
APISERVERS_WITHIN_ONE = "apiservers-within-one-minor"
COMPONENT_VS_APISERVER = "component-within-one-minor-below-apiserver"

# The first release whose policy allows a kubelet (or kube-proxy) three minors behind the API server,
# and the oldest kubelet that the wider skew applies to.
WIDE_SKEW_SINCE = 28
WIDE_SKEW_OLDEST = 25


@dataclass(frozen=True)
class Violation:
    rule: str
    subject: str
    """What breaks the rule: a node name, or `control plane`."""
    message: str

    def __str__(self) -> str:
        return f"{self.message} (rule: {self.rule})"


def _minor_gap(newer: Version, older: Version) -> int:
    """How many minors `older` is behind `newer` (negative when it is ahead). Same major assumed:
    a major change is refused before any skew question arises (versions.check_target)."""
    return (newer.major - older.major) * 1000 + newer.minor - older.minor


def max_node_lag(apiserver: Version, node_component: Version) -> int:
    """How many minors a kubelet or kube-proxy may be behind `apiserver`."""
    if apiserver.minor >= WIDE_SKEW_SINCE and node_component.minor >= WIDE_SKEW_OLDEST:
        return 3
    return 2


def kubelet(node: str, version: Version, apiservers: Sequence[Version]) -> Violation | None:
    """A kubelet against every API server it may talk to (through a load balancer: any of them)."""
    if not apiservers:
        return None
    oldest, newest = min(apiservers), max(apiservers)
    if version.minor_key > oldest.minor_key:
        return Violation(KUBELET_NOT_NEWER, node,
                         f"kubelet {version} on {node} would be newer than the API server {oldest}")
    lag = _minor_gap(newest, version)
    allowed = max_node_lag(newest, version)
    if lag > allowed:
        return Violation(KUBELET_TOO_OLD, node,
                         f"kubelet {version} on {node} would be {lag} minors behind the API server {newest} "
                         f"(at most {allowed} allowed)")
    return None


def kube_proxy(node: str, proxy: Version, kubelet_version: Version,
               apiservers: Sequence[Version]) -> Violation | None:
    """kube-proxy on `node` against the API servers and the kubelet beside it."""
    if apiservers and proxy.minor_key > min(apiservers).minor_key:
        return Violation(PROXY_NOT_NEWER, node,
                         f"kube-proxy {proxy} on {node} would be newer than the API server {min(apiservers)}")
    gap = abs(_minor_gap(proxy, kubelet_version))
    older = min(proxy, kubelet_version)
    allowed = max_node_lag(max(proxy, kubelet_version), older)
    if gap > allowed:
        return Violation(PROXY_VS_KUBELET, node,
                         f"kube-proxy {proxy} and kubelet {kubelet_version} on {node} would be {gap} minors "
                         f"apart (at most {allowed} allowed)")
    return None


def kubectl(node: str, version: Version, apiservers: Sequence[Version]) -> Violation | None:
    """kubectl within one minor, older or newer, of every API server."""
    for a in sorted(set(apiservers)):
        if abs(_minor_gap(a, version)) > 1:
            return Violation(KUBECTL_WITHIN_ONE, node,
                             f"kubectl {version} on {node} would be more than one minor from the API server {a}")
    return None


def apiservers(versions: Mapping[str, Version]) -> Violation | None:
    """The API servers of an HA control plane at most one minor apart."""
    if not versions:
        return None
    oldest = min(versions, key=lambda n: versions[n])
    newest = max(versions, key=lambda n: versions[n])
    if _minor_gap(versions[newest], versions[oldest]) > 1:
        return Violation(APISERVERS_WITHIN_ONE, "control plane",
                         f"API servers {versions[newest]} on {newest} and {versions[oldest]} on {oldest} "
                         "would be more than one minor apart")
    return None


def component(node: str, name: str, version: Version, apiserver: Version) -> Violation | None:
    """kube-controller-manager or kube-scheduler against the API server it talks to."""
    gap = _minor_gap(apiserver, version)
    if gap < 0 or gap > 1:
        return Violation(COMPONENT_VS_APISERVER, node,
                         f"{name} {version} on {node} would talk to the API server {apiserver}; it must be "
                         "at the same minor or one older")
    return None


@dataclass(frozen=True)
class ClusterVersions:
    """The versions that matter for skew at one moment, as the planner sees or foresees them.

    `apiservers` are the control-plane nodes' API servers (a node whose `kubeadm upgrade` has run
    counts at its new version, its kubelet may still be old); `kubelets` every node's kubelet;
    `kube_proxy` the DaemonSet's version (None: unknown); `kubectls` where kubectl is installed.
    """

    apiservers: Mapping[str, Version]
    kubelets: Mapping[str, Version]
    kube_proxy: Version | None = None
    kubectls: Mapping[str, Version] = field(default_factory=dict)

    def with_apiserver(self, node: str, version: Version) -> ClusterVersions:
        return ClusterVersions({**self.apiservers, node: version}, self.kubelets, self.kube_proxy, self.kubectls)

    def with_kubelet(self, node: str, version: Version) -> ClusterVersions:
        return ClusterVersions(self.apiservers, {**self.kubelets, node: version}, self.kube_proxy,
                               {**self.kubectls, node: version} if node in self.kubectls else self.kubectls)


def violations(c: ClusterVersions, *, include_kubectl: bool = True) -> list[Violation]:
    """Every rule the cluster breaks, the control plane's first."""
    out: list[Violation] = []
    if (v := apiservers(c.apiservers)) is not None:
        out.append(v)
    servers = list(c.apiservers.values())
    for node, version in sorted(c.kubelets.items()):
        # A control-plane node's kubelet talks to the API server beside it (kubeadm's upgrade order
        # moves both in one turn, and its ControlPlaneKubeletLocalMode points kubelet.conf there);
        # every other kubelet may reach any API server through the load balancer.
        own = [c.apiservers[node]] if node in c.apiservers else servers
        if (v := kubelet(node, version, own)) is not None:
            out.append(v)
        if c.kube_proxy is not None and (v := kube_proxy(node, c.kube_proxy, version, servers)) is not None:
            out.append(v)
    if include_kubectl:
        for node, version in sorted(c.kubectls.items()):
            if (v := kubectl(node, version, servers)) is not None:
                out.append(v)
    return out


def oldest_kubelet_minor(apiserver: Version) -> int:
    """The oldest kubelet minor that may talk to `apiserver`: a kubelet older than that must be
    upgraded before an API server may move to `apiserver`."""
    wide = apiserver.minor >= WIDE_SKEW_SINCE and apiserver.minor - 3 >= WIDE_SKEW_OLDEST
    return max(0, apiserver.minor - (3 if wide else 2))


def control_plane_move(c: ClusterVersions, node: str, to: Version) -> list[Violation]:
    """The rules broken if `node`'s control plane moved to `to`: its API server, and kube-proxy, which
    `kubeadm upgrade apply` moves to the new minor for the whole cluster. Left out: kubectl (a client;
    reported, not enforced) and kube-proxy newer than an API server not yet upgraded, which every
    kubeadm HA upgrade goes through and kupd cannot avoid."""
    after = ClusterVersions({**c.apiservers, node: to}, c.kubelets,
                            max(to, c.kube_proxy) if c.kube_proxy is not None else to)
    return [v for v in violations(after, include_kubectl=False) if v.rule != PROXY_NOT_NEWER]


def apiservers_from_mirror_pods(pods: Sequence[Mapping[str, object]]) -> dict[str, Version]:
    """Each control-plane node's API server version, from kubeadm's kube-apiserver static pods as
    the API shows them (mirror pods in kube-system, label component=kube-apiserver): the image tag
    of their kube-apiserver container. Asking /version instead goes through whatever endpoint the
    kubeconfig names, and behind a load balancer any one of the API servers answers. Pods whose
    image has no version tag (a digest, a custom build) are left out."""
    out: dict[str, Version] = {}
    for pod in pods:
        spec = pod.get("spec")
        if not isinstance(spec, Mapping):
            continue
        node = spec.get("nodeName")
        containers = spec.get("containers")
        if not isinstance(node, str) or not isinstance(containers, list):
            continue
        for c in containers:
            if not isinstance(c, Mapping) or c.get("name") != "kube-apiserver":
                continue
            image = c.get("image")
            if not isinstance(image, str) or "@" in image or ":" not in image.rsplit("/", 1)[-1]:
                continue
            tag = image.rsplit(":", 1)[1].split("-", 1)[0].split("_", 1)[0]
            try:
                out[node] = Version.parse(tag)
            except ValidationError:
                continue
    return out
