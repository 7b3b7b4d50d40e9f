"""What the coordinator reads for the planner besides Nodes and Leases, each at its own pace: the
newest patch of every intermediate minor (the package source), the cluster preflight's facts,
the removed API versions clients still request, and the external health gates' verdict.

Each is cached here so a round (every second while an operation runs) costs no request for
most of them; the readers themselves are handed in (daemon.py wires them).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from kupd import hazards, k8s, planner, preflight
from kupd.api.models import DirectUpdateSpec, HealthGates, to_wire
from kupd.errors import KupdError
from kupd.versions import Version

log = logging.getLogger(__name__)

PREFLIGHT_SECONDS = 5.0
RESOLVE_RETRY_SECONDS = 30.0
DEPRECATED_APIS_SECONDS = 60.0

Minor = tuple[int, int]
# (Nodes, member health by node, the nodes to check) -> the preflight's facts: clusterfacts.gather.
GatherFacts = Callable[[list[dict[str, Any]], dict[str, preflight.MemberHealth], list[str]],
                       preflight.ClusterFacts]


class PlanInputs:
    """`newest_patch(minor, package source)` resolves a hop; `gather` reads the preflight's facts;
    `metrics()` returns the API server's /metrics text; `gates` evaluates health gates (None: none)."""

    def __init__(self, newest_patch: Callable[[str, dict[str, Any] | None], str], gather: GatherFacts,
                 metrics: Callable[[], str], gates: Callable[[HealthGates], str | None] | None = None) -> None:
        self.newest_patch = newest_patch
        self.gather = gather
        self.metrics = metrics
        self.evaluate_gates = gates
        # (package source, minor) -> (newest patch, error, when asked)
        self._resolved: dict[tuple[str, Minor], tuple[str, str | None, float]] = {}
        self._preflight_cache: tuple[float, preflight.ClusterFacts] | None = None
        self._apis_cache: tuple[float, list[hazards.DeprecatedApi] | None] | None = None

    def hops(self, spec: DirectUpdateSpec | None, status: dict[str, Any], members: dict[str, planner.MemberView],
             name: str) -> tuple[dict[Minor, str], dict[Minor, str]]:
        """The newest patch of each intermediate minor in the operation's own package source, and
        why a minor could not be resolved; asked when the operation's hops are planned: at its
        start, and when spec.version was raised past them."""
        if spec is None:
            return {}, {}
        try:
            target = Version.parse(spec.version)
            hops = status.get("hops") or []
            if hops and Version.parse(str(hops[-1])) >= target:
                return {}, {}
            versions = [m.kubelet for m in members.values() if m.kubelet]
            if versions and min(versions) < target:
                return self._resolve(planner.hop_minors(min(versions), target)[:-1], to_wire(spec.package_source))
        except KupdError as e:
            # An invalid version or a downgrade: the planner's validation says so in a Condition.
            log.info("not resolving hops for %s: %s", name, e)
        return {}, {}

    def _resolve(self, hops_needed: list[Minor], source: dict[str, Any] | None
                 ) -> tuple[dict[Minor, str], dict[Minor, str]]:
        """Each minor's newest patch in the operation's own package source, and why a minor could
        not be resolved. A failure is asked again after RESOLVE_RETRY_SECONDS, not every round."""
        key = json.dumps(source or {}, sort_keys=True)
        resolved: dict[Minor, str] = {}
        errors: dict[Minor, str] = {}
        for mk in hops_needed:
            cached = self._resolved.get((key, mk))
            if cached is None or (cached[1] is not None and time.monotonic() - cached[2] > RESOLVE_RETRY_SECONDS):
                try:
                    cached = (self.newest_patch(f"v{mk[0]}.{mk[1]}", source), None, time.monotonic())
                except KupdError as e:
                    log.warning("resolving v%d.%d: %s", mk[0], mk[1], e)
                    cached = ("", str(e)[:500], time.monotonic())
                self._resolved[(key, mk)] = cached
            if cached[1] is None:
                resolved[mk] = cached[0]
            else:
                errors[mk] = cached[1]
        return resolved, errors

    def preflight(self, status: dict[str, Any], members: dict[str, planner.MemberView],
                  nodes: list[dict[str, Any]], kupd_version: Callable[[str], str]) -> preflight.ClusterFacts | None:
        """The cluster preflight's facts, until the operation has passed it; read at most every
        PREFLIGHT_SECONDS (it lists pods and budgets). `kupd_version(node)`: what its member claims."""
        if any(c.get("type") == "Preflight" and c.get("status") == "True" for c in status.get("conditions") or []):
            return None
        now = time.monotonic()
        if self._preflight_cache is not None and now - self._preflight_cache[0] < PREFLIGHT_SECONDS:
            return self._preflight_cache[1]
        health = {n: preflight.MemberHealth(n, m.alive, kupd_version(n)) for n, m in members.items()}
        facts = self.gather(nodes, health, _targeted(status, nodes))
        self._preflight_cache = (now, facts)
        return facts

    def deprecated_apis(self, status: dict[str, Any]) -> list[hazards.DeprecatedApi] | None:
        """The removed API versions clients still request, from the API server's
        apiserver_requested_deprecated_apis, while a control-plane hop may still come; read at most
        every DEPRECATED_APIS_SECONDS (the metrics are large). None: unknown, nothing refused."""
        entries = status.get("nodes") or []
        if entries and all(e.get("role") != "ControlPlane" or e.get("phase") in planner.DONE for e in entries):
            return None
        now = time.monotonic()
        if self._apis_cache is None or now - self._apis_cache[0] >= DEPRECATED_APIS_SECONDS:
            try:
                apis: list[hazards.DeprecatedApi] | None = hazards.parse_deprecated_apis(self.metrics())
            except k8s.TRANSPORT_ERRORS as e:
                log.warning("reading the API server's metrics for removed APIs still in use: %s", e)
                apis = None
            self._apis_cache = (now, apis)
        return self._apis_cache[1]

    def gates(self, gates: HealthGates | None) -> str | None:
        """External health gates' latest verdict. `evaluate_gates` (health.GateRunner, wired by the
        daemon) answers at once and evaluates off this thread: a gate that does not answer must not
        delay grants and status."""
        if gates is None or self.evaluate_gates is None:
            return None
        return self.evaluate_gates(gates)


def _targeted(status: dict[str, Any], nodes: Iterable[dict[str, Any]]) -> list[str]:
    """The nodes the preflight checks: those of the status still to do, or every Node before any is."""
    return [e["name"] for e in status.get("nodes") or [] if e.get("phase") not in planner.DONE] or [
        str(n["metadata"]["name"]) for n in nodes]
