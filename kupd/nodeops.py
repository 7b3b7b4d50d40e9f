"""What an agent does to its own Node through the API: cordon, drain, wait Ready, uncordon.

Drain goes through the Eviction API, so PodDisruptionBudgets are honoured by the API server
itself; a refused eviction is reported with the blocking PDB and pod named. kupd marks a Node
it cordons, and uncordons only Nodes carrying its mark.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from kupd import k8s, selectors
from kupd.api.models import DrainPolicy
from kupd.errors import KupdError, NeedsAttention, PermanentError, RetryableError, ValidationError
from kupd.protocol import ANN_ATTENTION, ANN_CORDONED_BY

log = logging.getLogger(__name__)

DRAIN_REFUSED = "DrainRefused"
DRAIN_TIMED_OUT = "DrainTimedOut"


class DrainStopped(NeedsAttention):
    """The drain cannot go on without an operator: the node stays cordoned."""


@dataclass(frozen=True)
class DrainPlan:
    """Which of a node's pods a drain evicts, which it leaves, and which stop it (kubectl drain's filters)."""

    evict: tuple[dict[str, Any], ...]
    skipped: tuple[tuple[str, str], ...]
    """(pod, why) for DaemonSet pods, mirror pods and pods outside spec.drain.podSelector."""
    refused: tuple[tuple[str, str], ...]
    """(pod, why) for pods the policy does not allow evicting: the drain stops."""


def _controller(pod: dict[str, Any]) -> dict[str, Any] | None:
    for o in pod["metadata"].get("ownerReferences") or []:
        if isinstance(o, dict) and o.get("controller") is True:
            return o
    return None


def _finished(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def plan_drain(pods: list[dict[str, Any]], policy: DrainPolicy) -> DrainPlan:
    """kubectl drain's pod filters, in its order. Pure.

    - mirror (static) pods belong to the kubelet: skipped;
    - DaemonSet pods would be recreated at once on the cordoned node: skipped;
    - pods outside spec.drain.podSelector: skipped;
    - pods no controller manages are lost when evicted: refused unless `force`;
    - emptyDir data is lost when evicted: refused unless `deleteEmptyDirData`.
    A pod that has finished (Succeeded or Failed) loses nothing and is evicted either way.
    """
    pod_selector = selectors.parse(policy.pod_selector, "spec.drain.podSelector")
    evict: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    refused: list[tuple[str, str]] = []
    for p in pods:
        name = _pod_name(p)
        md = p["metadata"]
        if "kubernetes.io/config.mirror" in (md.get("annotations") or {}):
            skipped.append((name, "mirror pod"))
            continue
        ctrl = _controller(p)
        if ctrl is not None and ctrl.get("kind") == "DaemonSet":
            skipped.append((name, "DaemonSet pod"))
            continue
        if not pod_selector.matches(md.get("labels") or {}):
            skipped.append((name, "outside spec.drain.podSelector"))
            continue
        if not _finished(p):
            if ctrl is None and not policy.force:
                refused.append((name, "no controller manages it (set spec.drain.force to evict it; it is not "
                                      "recreated)"))
                continue
            uses_emptydir = any(isinstance(v, dict) and v.get("emptyDir") is not None
                                for v in (p.get("spec") or {}).get("volumes") or [])
            if uses_emptydir and not policy.delete_empty_dir_data:
                refused.append((name, "it has emptyDir data (set spec.drain.deleteEmptyDirData to evict it; "
                                      "the data is lost)"))
                continue
        evict.append(p)
    return DrainPlan(tuple(evict), tuple(skipped), tuple(refused))


def _pdb_of_refusal(err: k8s.ApiError) -> str:
    """The PDB a 429 from the Eviction API names in its causes ("The disruption budget web-pdb needs...")."""
    details = err.body.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    for cause in causes if isinstance(causes, list) else []:
        if isinstance(cause, dict) and cause.get("reason") == "DisruptionBudget":
            m = _BUDGET.match(str(cause.get("message", "")))
            if m:
                return m.group(1)
    return ""


_BUDGET = re.compile(r"The disruption budget ([a-z0-9][-a-z0-9.]{0,252}) ")


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
        return [p for p in listed.get("items") or [] if isinstance(p, dict) and isinstance(p.get("metadata"), dict)]

    def _blocking_pdb(self, pod: dict[str, Any]) -> str:
        md = pod["metadata"]
        pdbs = k8s.call(self.api.list, "list pdbs",
                         k8s.path("policy", "v1", "poddisruptionbudgets", namespace=md["namespace"]))
        for pdb in pdbs.get("items") or []:
            sel = (pdb.get("spec") or {}).get("selector")
            try:
                # policy/v1: a null selector selects no pod, an empty one every pod of the namespace.
                if sel is not None and selectors.from_label_selector(sel).matches(md.get("labels") or {}):
                    return str(pdb["metadata"]["name"])
            except ValidationError:
                continue
        return "unknown"

    def set_attention(self, message: str | None) -> None:
        """Write (or, with None, remove) the reason the node needs an operator, on the Node itself,
        where `kubectl describe node` shows it."""
        if message is None and ANN_ATTENTION not in (self.read_node()["metadata"].get("annotations") or {}):
            return
        value = message[:1000] if message is not None else None
        self._patch_node({"metadata": {"annotations": {ANN_ATTENTION: value}}}, f"annotate {self.node}")

    def drain(self, policy: DrainPolicy, report: Callable[[str, str], None],
              sleep: Callable[[float], object] = time.sleep) -> None:
        """Cordon, then evict the pods kubectl drain would, and wait until they are gone.

        `report(reason, message)` is called while a PDB blocks, so status names the blocker. A pod
        the policy may not evict, or a drain that outlasts its timeout, stops with DrainStopped:
        the node stays cordoned and the reason is written on the Node (kupd.io/attention).
        """
        self.cordon()
        deadline = time.monotonic() + policy.timeout_seconds
        blocked: dict[str, str] = {}  # pod -> PDB refusing its eviction
        backoff: dict[str, tuple[float, float]] = {}  # pod -> (next try at, current delay)
        last_report = ""
        while True:
            plan = plan_drain(self._pods(), policy)
            if plan.refused:
                shown = "; ".join(f"{n}: {why}" for n, why in plan.refused[:5])
                more = f" (and {len(plan.refused) - 5} more)" if len(plan.refused) > 5 else ""
                self._stop(DRAIN_REFUSED, f"drain of {self.node} stopped before evicting anything it may "
                                          f"not: {shown}{more}")
            pending = [p for p in plan.evict if not p["metadata"].get("deletionTimestamp")]
            if not plan.evict:
                self.set_attention(None)
                return
            now = time.monotonic()
            for p in pending:
                name = _pod_name(p)
                if backoff.get(name, (0.0, 0.0))[0] > now:
                    continue
                pdb = self._evict(p, policy)
                if pdb is None:
                    blocked.pop(name, None)
                    backoff.pop(name, None)
                    continue
                blocked[name] = pdb or self._blocking_pdb(p)
                # Exponential backoff per pod, 1 s doubling to 30 s: a PDB that will not allow it
                # soon is not asked every second.
                delay = min(30.0, max(1.0, backoff.get(name, (0.0, 0.5))[1] * 2))
                backoff[name] = (now + delay, delay)
            live = {_pod_name(p) for p in pending}
            blocked = {n: b for n, b in blocked.items() if n in live}
            if blocked:
                name, pdb = sorted(blocked.items())[0]
                ns = name.split("/", 1)[0]
                msg = f"eviction of pod {name} refused by PodDisruptionBudget {ns}/{pdb}"
                if len(blocked) > 1:
                    msg += f" (and {len(blocked) - 1} more pods blocked)"
                if msg != last_report:
                    report("DrainBlocked", msg)
                    last_report = msg
            if time.monotonic() > deadline:
                if policy.on_timeout == "ForceDelete":
                    for p in plan.evict:
                        md = p["metadata"]
                        k8s.call(self.api.delete, "force delete",
                                  k8s.path("", "v1", "pods", md["name"], md["namespace"]), gracePeriodSeconds=0)
                    continue
                left = ", ".join(sorted(_pod_name(p) for p in plan.evict)[:5])
                self._stop(DRAIN_TIMED_OUT, f"drain of {self.node} timed out after {policy.timeout_seconds}s; "
                                            + (last_report or f"pods still terminating: {left}")
                                            + "; the node is left cordoned")
            sleep(1.0)

    def _stop(self, reason: str, message: str) -> NoReturn:
        try:
            self.set_attention(f"{reason}: {message}")
        except KupdError as e:
            log.warning("could not annotate node %s: %s", self.node, e)
        raise DrainStopped(reason, message)

    def _evict(self, pod: dict[str, Any], policy: DrainPolicy) -> str | None:
        """Ask for the pod's eviction: None when accepted (or the pod is gone), else the PDB that
        refused it ("" when the refusal does not name one)."""
        name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
        body: dict[str, Any] = {"apiVersion": "policy/v1", "kind": "Eviction",
                                "metadata": {"name": name, "namespace": namespace}}
        if policy.grace_period_seconds >= 0:
            body["deleteOptions"] = {"gracePeriodSeconds": policy.grace_period_seconds}
        try:
            self.api.create(k8s.path("", "v1", "pods", name, namespace, "eviction"), body)
        except k8s.ApiError as e:
            if e.status == 429:
                return _pdb_of_refusal(e)
            if e.status == 404:
                return None
            raise k8s.map_error(e, f"evict {name}") from e
        except k8s.TRANSPORT_ERRORS as e:
            raise k8s.map_error(e, f"evict {name}") from e
        return None

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
