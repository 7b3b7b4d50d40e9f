"""Health gates that need I/O: control-plane pods Ready and Prometheus queries.

The coordinator asks `GateRunner`, which evaluates them on a thread of its own (never on the
reconcile thread: a Prometheus that does not answer must not delay grants and status) and hands
the planner one plain result; whether a gate is due, and what a failure does to the rollout, is
the planner's pure decision. A gate that has not answered counts as failing, with the reason.
Prometheus queries travel as an HTTP parameter only; nothing here starts a process.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from kupd import k8s
from kupd.api.models import HealthGates, PrometheusGate
from kupd.errors import KupdError

log = logging.getLogger(__name__)

GATE_SECONDS = 5.0
"""How often gates are evaluated while an operation has them (each costs queries)."""
MAX_ANSWER = 4 * 1024 * 1024
"""Bytes of a Prometheus answer read at most: an answer is a verdict, not a data dump."""


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
                body = json.loads(r.read(MAX_ANSWER))
        except TimeoutError:
            return f"prometheus query {q.name} did not answer within {gate.timeout_seconds}s"
        except (urllib.error.URLError, OSError, ValueError, RecursionError) as e:
            if isinstance(getattr(e, "reason", None), TimeoutError):
                return f"prometheus query {q.name} did not answer within {gate.timeout_seconds}s"
            return f"prometheus query {q.name}: {type(e).__name__}: {e}"[:500]
        if not isinstance(body, dict):
            return f"prometheus query {q.name}: the answer is not a JSON object"
        if body.get("status") != "success":
            return f"prometheus query {q.name}: {str(body.get('error', 'failed'))[:300]}"
        data = body.get("data")
        result = (data.get("result") if isinstance(data, dict) else None) or []
        if not isinstance(result, list):
            return f"prometheus query {q.name}: the answer's data.result is not a list"
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


def deadline(gates: HealthGates) -> float:
    """How long one evaluation of `gates` may take before it counts as not answering."""
    prom = gates.prometheus
    return 15.0 + (len(prom.queries) * prom.timeout_seconds if prom is not None else 0)


def _names(gates: HealthGates) -> str:
    parts = (["control-plane pods"] if gates.control_plane_pods else []) + [
        f"prometheus query {q.name}" for q in (gates.prometheus.queries if gates.prometheus else [])]
    return ", ".join(parts) or "none"


class GateRunner:
    """Evaluates external gates on a thread of its own; `check` never blocks.

    At most one evaluation runs at a time. Until the first one answers, and whenever the
    running one is older than its deadline, the gates count as failing and say so."""

    def __init__(self, evaluate: Callable[[HealthGates], str | None], interval: float = GATE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._evaluate = evaluate
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._key = ""
        self._running_since: float | None = None
        self._answered_at: float | None = None
        self._result: str | None = None
        self.evaluations = 0

    def __call__(self, gates: HealthGates | None) -> str | None:
        return self.check(gates)

    def check(self, gates: HealthGates | None) -> str | None:
        """The latest verdict on `gates` (None: passing), starting a new evaluation when due."""
        if gates is None:
            return None
        key = gates.model_dump_json()
        now = self._clock()
        with self._lock:
            if key != self._key:
                # Other gates (another operation, or an edited spec): earlier answers do not count.
                self._key, self._answered_at, self._result = key, None, None
                if self._running_since is not None:
                    self._running_since = now  # the stale evaluation's answer is dropped
            due = self._answered_at is None or now - self._answered_at >= self._interval
            if self._running_since is None and due:
                self._running_since = now
                self.evaluations += 1
                threading.Thread(target=self._run, args=(key, gates), name="health-gates", daemon=True).start()
            limit = deadline(gates)
            if self._running_since is not None and now - self._running_since > limit:
                return f"health gates did not answer within {limit:g}s ({_names(gates)})"
            if self._answered_at is None:
                return f"waiting for the health gates' first answer ({_names(gates)})"
            return self._result

    def _run(self, key: str, gates: HealthGates) -> None:
        try:
            result = self._evaluate(gates)
        except Exception as e:  # a gate's failure is a verdict, never the coordinator's crash
            log.warning("health gates: %s", e)
            result = f"health gates: {type(e).__name__}: {str(e)[:300]}"
        with self._lock:
            if key == self._key:
                self._result, self._answered_at = result, self._clock()
            self._running_since = None
