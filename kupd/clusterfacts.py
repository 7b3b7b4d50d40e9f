"""The I/O half of the cluster preflight: read what kupd/preflight.py judges.

The coordinator calls `gather` before an operation's first grant (cached for a few seconds): the
Nodes and member Leases it already watches, plus one list each of the control-plane pods, the
PodDisruptionBudgets and the pods on the nodes to drain, and the API server's own etcd check.
Everything read here is untrusted: a malformed object is skipped, never allowed to fail the round.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from kupd import k8s, preflight, selectors
from kupd.errors import KupdError, ValidationError

log = logging.getLogger(__name__)


def node_health(node: Mapping[str, Any]) -> preflight.NodeHealth:
    md = node.get("metadata") or {}
    conds = (node.get("status") or {}).get("conditions") or []
    true = {c.get("type") for c in conds if isinstance(c, dict) and c.get("status") == "True"}
    return preflight.NodeHealth(str(md.get("name", "")), "Ready" in true,
                                tuple(p for p in preflight.PRESSURES if p in true))


def _pod(p: Mapping[str, Any]) -> preflight.PodHealth | None:
    md, spec = p.get("metadata"), p.get("spec")
    if not isinstance(md, dict) or not isinstance(spec, dict):
        return None
    labels = md.get("labels") if isinstance(md.get("labels"), dict) else {}
    return preflight.PodHealth(str(md.get("namespace", "")), str(md.get("name", "")), str(spec.get("nodeName", "")),
                               k8s.ready(dict(p)), {str(k): str(v) for k, v in (labels or {}).items()})


def _budget(b: Mapping[str, Any]) -> preflight.Budget | None:
    md, spec, status = b.get("metadata"), b.get("spec"), b.get("status")
    if not isinstance(md, dict) or not isinstance(spec, dict):
        return None
    try:
        sel = spec.get("selector")
        # policy/v1: a null selector selects no pod, an empty one every pod of the namespace.
        selector = selectors.from_label_selector(sel) if sel is not None else None
    except ValidationError:
        return None

    def amount(v: object) -> int | str | None:
        return v if isinstance(v, int | str) and not isinstance(v, bool) else None

    expected = status.get("expectedPods") if isinstance(status, dict) else 0
    return preflight.Budget(str(md.get("namespace", "")), str(md.get("name", "")), selector,
                            amount(spec.get("minAvailable")), amount(spec.get("maxUnavailable")),
                            expected if isinstance(expected, int) else 0)


def _items(listed: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    items = listed.get("items")
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def etcd_problem(api: k8s.Client) -> str | None:
    """The API server's own etcd readiness check (/readyz/etcd): None when it passes."""
    try:
        api.get("/readyz/etcd")
    except k8s.ApiError as e:
        return str(e.message or e.reason)[:300]
    except ValueError:
        return None  # it passed: the body is the plain text "ok", not JSON
    except k8s.TRANSPORT_ERRORS as e:
        return f"the API server did not answer: {type(e).__name__}"
    return None


def gather(api: k8s.Client, nodes: Iterable[Mapping[str, Any]], members: Mapping[str, preflight.MemberHealth],
           targeted: Collection[str]) -> preflight.ClusterFacts:
    """Read the facts for `targeted` nodes. An API failure reading one kind is logged and leaves
    that kind empty: the checks that need it then find nothing, and the next round reads again."""
    control_plane: list[preflight.PodHealth] = []
    budgets: list[preflight.Budget] = []
    pods: list[preflight.PodHealth] = []
    try:
        listed = k8s.call(api.list, "list control-plane pods",
                           k8s.path("", "v1", "pods", namespace="kube-system"), labelSelector="tier=control-plane")
        control_plane = [p for i in _items(listed) if (p := _pod(i)) is not None]
        listed = k8s.call(api.list, "list pdbs", k8s.path("policy", "v1", "poddisruptionbudgets"))
        budgets = [b for i in _items(listed) if (b := _budget(i)) is not None]
        if budgets:
            for node in sorted(targeted):
                listed = k8s.call(api.list, "list pods", k8s.path("", "v1", "pods"),
                                   fieldSelector=f"spec.nodeName={node}")
                pods += [p for i in _items(listed) if (p := _pod(i)) is not None]
    except KupdError as e:
        log.warning("preflight facts: %s", e)
    return preflight.ClusterFacts(
        nodes={h.name: h for n in nodes if (h := node_health(n)).name},
        members=members, control_plane_pods=control_plane, etcd_problem=etcd_problem(api),
        budgets=budgets, pods=pods)
