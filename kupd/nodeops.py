"""What an agent does to its own Node through the API: cordon, drain, wait Ready, uncordon.

Drain goes through the Eviction API, so PodDisruptionBudgets are honoured by the API server
itself; a refused eviction is reported with the blocking PDB and pod named. kupd marks a Node
it cordons, and uncordons only Nodes carrying its mark.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kupd import k8s, selectors
from kupd.api.models import DrainPolicy
from kupd.errors import PermanentError, RetryableError
from kupd.protocol import ANN_CORDONED_BY

log = logging.getLogger(__name__)


class NodeOps:
    def __init__(self, api: k8s.Client, node: str) -> None:
        self.api = api
        self.node = node
        self._path = k8s.node_path(node)

    def read_node(self) -> dict[str, Any]:
        node: dict[str, Any] = k8s.call(self.api.get, f"read node {self.node}", self._path)
        return node

    def _patch_node(self, body: dict[str, Any], what: str) -> None:
        # Built-in kinds take a strategic merge patch; for these maps it equals a merge patch.
        k8s.call(self.api.patch, what, self._path, body, kind="strategic")

    def cordon(self) -> None:
        node = self.read_node()
        anns = node["metadata"].get("annotations") or {}
        unschedulable = bool((node.get("spec") or {}).get("unschedulable"))
        if unschedulable and anns.get(ANN_CORDONED_BY) != "kupd":
            log.info("node %s was already cordoned by someone else; kupd will leave it cordoned", self.node)
            return
        if unschedulable:
            return
        body = {"metadata": {"annotations": {ANN_CORDONED_BY: "kupd"}}, "spec": {"unschedulable": True}}
        self._patch_node(body, f"cordon {self.node}")

    def uncordon(self) -> None:
        node = self.read_node()
        anns = node["metadata"].get("annotations") or {}
        if anns.get(ANN_CORDONED_BY) != "kupd":
            return
        body = {"metadata": {"annotations": {ANN_CORDONED_BY: None}}, "spec": {"unschedulable": None}}
        self._patch_node(body, f"uncordon {self.node}")

    def _pods(self) -> list[dict[str, Any]]:
        listed = k8s.call(self.api.list, "list pods", k8s.path("", "v1", "pods"),
                           fieldSelector=f"spec.nodeName={self.node}")
        out = []
        for p in listed.get("items") or []:
            md = p["metadata"]
            anns = md.get("annotations") or {}
            if "kubernetes.io/config.mirror" in anns:
                continue  # static pods belong to the kubelet, not to the API
            if any(o.get("kind") == "DaemonSet" for o in md.get("ownerReferences") or []):
                continue  # the DaemonSet controller would recreate them at once
            if self._policy_selector and not selectors.matches(
                    {"matchLabels": self._policy_selector}, md.get("labels") or {}):
                continue
            out.append(p)
        return out

    _policy_selector: dict[str, str] | None = None

    def _blocking_pdb(self, pod: dict[str, Any]) -> str:
        md = pod["metadata"]
        pdbs = k8s.call(self.api.list, "list pdbs",
                         k8s.path("policy", "v1", "poddisruptionbudgets", namespace=md["namespace"]))
        for pdb in pdbs.get("items") or []:
            if selectors.matches((pdb.get("spec") or {}).get("selector"), md.get("labels") or {}):
                return f"{pdb['metadata']['namespace']}/{pdb['metadata']['name']}"
        return "unknown"

    def drain(self, policy: DrainPolicy, report: Callable[[str, str], None],
              sleep: Callable[[float], object] = time.sleep) -> None:
        """Cordon, then evict every pod that is not a DaemonSet or mirror pod, and wait until gone.

        `report(reason, message)` is called while a PDB blocks, so status names the blocker.
        """
        self.cordon()
        self._policy_selector = selectors.parse_equality(policy.pod_selector) if policy.pod_selector else None
        deadline = time.monotonic() + policy.timeout_seconds
        blocked_msg = ""
        while True:
            pods = self._pods()
            if not pods:
                return
            for p in pods:
                if p["metadata"].get("deletionTimestamp"):
                    continue
                if not policy.delete_empty_dir_data and any(
                        v.get("emptyDir") is not None for v in (p.get("spec") or {}).get("volumes") or []):
                    raise PermanentError(
                        f"pod {_pod_name(p)} uses emptyDir data; "
                        "set spec.drain.deleteEmptyDirData to evict it")
                self._evict(p, policy)
            remaining = [p for p in self._pods() if not p["metadata"].get("deletionTimestamp")]
            blocked = []
            for p in remaining:
                blocked.append((p, self._blocking_pdb(p)))
            if blocked:
                p, pdb = blocked[0]
                msg = f"eviction of pod {_pod_name(p)} refused by PodDisruptionBudget {pdb}"
                if msg != blocked_msg:
                    report("DrainBlocked", msg)
                    blocked_msg = msg
            if time.monotonic() > deadline:
                if policy.on_timeout == "ForceDelete":
                    for p in self._pods():
                        md = p["metadata"]
                        k8s.call(self.api.delete, "force delete",
                                  k8s.path("", "v1", "pods", md["name"], md["namespace"]), gracePeriodSeconds=0)
                    continue
                raise PermanentError(f"drain timed out after {policy.timeout_seconds}s: "
                                     + (blocked_msg or "pods still terminating"))
            sleep(1.0 if not blocked else 3.0)

    def _evict(self, pod: dict[str, Any], policy: DrainPolicy) -> None:
        name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
        body: dict[str, Any] = {"apiVersion": "policy/v1", "kind": "Eviction",
                                "metadata": {"name": name, "namespace": namespace}}
        if policy.grace_period_seconds >= 0:
            body["deleteOptions"] = {"gracePeriodSeconds": policy.grace_period_seconds}
        try:
            self.api.create(k8s.path("", "v1", "pods", name, namespace, "eviction"), body)
        except k8s.ApiError as e:
            if e.status == 429:
                return  # a PDB forbids it now; the caller reports and tries again
            if e.status == 404:
                return
            raise k8s.map_error(e, f"evict {name}") from e
        except k8s.TRANSPORT_ERRORS as e:
            raise k8s.map_error(e, f"evict {name}") from e

    def wait_ready(self, version: str, timeout: float = 300, sleep: Callable[[float], object] = time.sleep) -> None:
        """Wait until the Node is Ready and reports kubeletVersion == version."""
        deadline = time.monotonic() + timeout
        last = ""
        api_down = False
        while True:
            try:
                node = self.read_node()
                api_down = False
                kv = ((node.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion") or ""
                ready = k8s.ready(node)
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


def _pod_name(pod: dict[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
