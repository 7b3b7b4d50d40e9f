"""What an agent does to its own Node through the API: cordon, drain, wait Ready, uncordon.

Drain goes through the Eviction API, so PodDisruptionBudgets are honoured by the API server
itself; a refused eviction is reported with the blocking PDB and pod named. kupd marks a Node
it cordons, and uncordons only Nodes carrying its mark.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kupd import kube
from kupd.errors import PermanentError, RetryableError
from kupd.planner import selector_matches
from kupd.protocol import ANN_CORDONED_BY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DrainPolicy:
    timeout_seconds: int = 600
    grace_period_seconds: int = -1
    delete_emptydir_data: bool = False
    pod_selector: dict[str, str] | None = None
    on_timeout: str = "RequiresAttention"  # or ForceDelete

    @classmethod
    def from_spec(cls, drain: dict[str, Any] | None) -> DrainPolicy:
        d = drain or {}
        sel = d.get("podSelector")
        return cls(
            timeout_seconds=int(d.get("timeoutSeconds", 600)),
            grace_period_seconds=int(d.get("gracePeriodSeconds", -1)),
            delete_emptydir_data=bool(d.get("deleteEmptyDirData", False)),
            pod_selector=_parse_selector(sel) if sel else None,
            on_timeout=str(d.get("onTimeout", "RequiresAttention")),
        )


def _parse_selector(text: str) -> dict[str, str]:
    """The equality form of a label selector (`app=web,tier=db`), which is what podSelector accepts."""
    out: dict[str, str] = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        out[k.strip()] = v.strip().lstrip("=")
    return out


class NodeOps:
    def __init__(self, api: client.ApiClient, node: str) -> None:
        self.core = client.CoreV1Api(api)
        self.policy_api = client.PolicyV1Api(api)
        self.node = node

    def read_node(self) -> Any:
        return kube.call(self.core.read_node, f"read node {self.node}", self.node)

    def cordon(self) -> None:
        node = self.read_node()
        anns = node.metadata.annotations or {}
        if node.spec.unschedulable and anns.get(ANN_CORDONED_BY) != "kupd":
            log.info("node %s was already cordoned by someone else; kupd will leave it cordoned", self.node)
            return
        if node.spec.unschedulable:
            return
        body = {"metadata": {"annotations": {ANN_CORDONED_BY: "kupd"}}, "spec": {"unschedulable": True}}
        kube.call(self.core.patch_node, f"cordon {self.node}", self.node, body)

    def uncordon(self) -> None:
        node = self.read_node()
        anns = node.metadata.annotations or {}
        if anns.get(ANN_CORDONED_BY) != "kupd":
            return
        body = {"metadata": {"annotations": {ANN_CORDONED_BY: None}}, "spec": {"unschedulable": None}}
        kube.call(self.core.patch_node, f"uncordon {self.node}", self.node, body)

    def _pods(self) -> list[Any]:
        pods = kube.call(self.core.list_pod_for_all_namespaces, "list pods",
                         field_selector=f"spec.nodeName={self.node}").items
        out = []
        for p in pods:
            anns = p.metadata.annotations or {}
            if "kubernetes.io/config.mirror" in anns:
                continue  # static pods belong to the kubelet, not to the API
            if any(o.kind == "DaemonSet" for o in p.metadata.owner_references or []):
                continue  # the DaemonSet controller would recreate them at once
            if self._policy_selector and not selector_matches(
                    {"matchLabels": self._policy_selector}, p.metadata.labels or {}):
                continue
            out.append(p)
        return out

    _policy_selector: dict[str, str] | None = None

    def _blocking_pdb(self, pod: Any) -> str:
        pdbs = kube.call(self.policy_api.list_namespaced_pod_disruption_budget, "list pdbs",
                         pod.metadata.namespace).items
        for pdb in pdbs:
            sel = pdb.spec.selector
            sel_d = {"matchLabels": sel.match_labels or {},
                     "matchExpressions": [{"key": e.key, "operator": e.operator, "values": e.values}
                                          for e in sel.match_expressions or []]} if sel else {}
            if selector_matches(sel_d, pod.metadata.labels or {}):
                return f"{pdb.metadata.namespace}/{pdb.metadata.name}"
        return "unknown"

    def drain(self, policy: DrainPolicy, report: Callable[[str, str], None],
              sleep: Callable[[float], object] = time.sleep) -> None:
        """Cordon, then evict every pod that is not a DaemonSet or mirror pod, and wait until gone.

        `report(reason, message)` is called while a PDB blocks, so status names the blocker.
        """
        self.cordon()
        self._policy_selector = policy.pod_selector
        deadline = time.monotonic() + policy.timeout_seconds
        blocked_msg = ""
        while True:
            pods = self._pods()
            if not pods:
                return
            for p in pods:
                if p.metadata.deletion_timestamp:
                    continue
                if not policy.delete_emptydir_data and any(
                        v.empty_dir is not None for v in p.spec.volumes or []):
                    raise PermanentError(
                        f"pod {p.metadata.namespace}/{p.metadata.name} uses emptyDir data; "
                        "set spec.drain.deleteEmptyDirData to evict it")
                self._evict(p, policy)
            remaining = [p for p in self._pods() if not p.metadata.deletion_timestamp]
            blocked = []
            for p in remaining:
                blocked.append((p, self._blocking_pdb(p)))
            if blocked:
                p, pdb = blocked[0]
                msg = (f"eviction of pod {p.metadata.namespace}/{p.metadata.name} refused by "
                       f"PodDisruptionBudget {pdb}")
                if msg != blocked_msg:
                    report("DrainBlocked", msg)
                    blocked_msg = msg
            if time.monotonic() > deadline:
                if policy.on_timeout == "ForceDelete":
                    for p in self._pods():
                        kube.call(self.core.delete_namespaced_pod, "force delete", p.metadata.name,
                                  p.metadata.namespace, grace_period_seconds=0)
                    continue
                raise PermanentError(f"drain timed out after {policy.timeout_seconds}s: "
                                     + (blocked_msg or "pods still terminating"))
            sleep(1.0 if not blocked else 3.0)

    def _evict(self, pod: Any, policy: DrainPolicy) -> None:
        opts = None
        if policy.grace_period_seconds >= 0:
            opts = client.V1DeleteOptions(grace_period_seconds=policy.grace_period_seconds)
        body = client.V1Eviction(
            metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=pod.metadata.namespace),
            delete_options=opts)
        try:
            self.core.create_namespaced_pod_eviction(pod.metadata.name, pod.metadata.namespace, body)
        except ApiException as e:
            if e.status == 429:
                return  # a PDB forbids it now; the caller reports and tries again
            if e.status == 404:
                return
            raise kube.map_error(e, f"evict {pod.metadata.name}") from e
        except Exception as e:
            raise kube.map_error(e, f"evict {pod.metadata.name}") from e

    def wait_ready(self, version: str, timeout: float = 300, sleep: Callable[[float], object] = time.sleep) -> None:
        """Wait until the Node is Ready and reports kubeletVersion == version."""
        deadline = time.monotonic() + timeout
        last = ""
        api_down = False
        while True:
            try:
                node = self.read_node()
                api_down = False
                kv = node.status.node_info.kubelet_version if node.status and node.status.node_info else ""
                ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
                if ready and kv == version:
                    return
                last = f"Ready={ready} kubeletVersion={kv or '?'}"
            except RetryableError as e:
                last, api_down = str(e), True
            if time.monotonic() > deadline:
                msg = f"node {self.node} not Ready at {version} after {timeout:.0f}s: {last}"
                # An unreachable API is not the node's fault: wait for it rather than fail the node.
                raise RetryableError(msg) if api_down else PermanentError(msg)
            sleep(1.0)
