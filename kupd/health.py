"""Health gates that need I/O: control-plane pods Ready and Prometheus queries.

The coordinator runs these (cached for a few seconds) and hands the planner one plain result;
whether a gate is due, and what a failure does to the rollout, is the planner's pure decision.
Prometheus queries travel as an HTTP parameter only; nothing here starts a process.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request

from kupd import k8s
from kupd.api.models import HealthGates, PrometheusGate
from kupd.errors import KupdError

log = logging.getLogger(__name__)


def control_plane_pods(api: k8s.Client) -> str | None:
    """None when every kube-system pod labelled tier=control-plane is Ready, else what is not."""
    pods = k8s.call(api.list, "list control-plane pods", k8s.path("", "v1", "pods", namespace="kube-system"),
                     labelSelector="tier=control-plane")
    for pod in pods.get("items") or []:
        if not k8s.ready(pod):
            return f"control-plane pod kube-system/{pod['metadata']['name']} is not Ready"
    return None


def prometheus(gate: PrometheusGate) -> str | None:
    """None when every query returns what it must, else the first failing query, named."""
    base = gate.url.rstrip("/")
    for q in gate.queries:
        url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': q.query})}"
        try:
            with urllib.request.urlopen(url, timeout=gate.timeout_seconds) as r:  # noqa: S310 - http(s) checked by schema
                body = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError) as e:
            return f"prometheus query {q.name}: {type(e).__name__}: {e}"[:500]
        if body.get("status") != "success":
            return f"prometheus query {q.name}: {body.get('error', 'failed')}"[:500]
        result = (body.get("data") or {}).get("result") or []
        if q.expect == "Empty" and result:
            return f"prometheus query {q.name} returned {len(result)} series; expected none"
        if q.expect == "NonEmpty" and not result:
            return f"prometheus query {q.name} returned no series; expected some"
    return None


def evaluate(api: k8s.Client, gates: HealthGates) -> str | None:
    """The first failing external gate, or None."""
    try:
        if gates.control_plane_pods:
            failing = control_plane_pods(api)
            if failing:
                return failing
    except KupdError as e:
        return f"control-plane pods: {e}"
    if gates.prometheus is not None:
        return prometheus(gates.prometheus)
    return None
