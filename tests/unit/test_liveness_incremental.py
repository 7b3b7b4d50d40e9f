"""The coordinator's views are built incrementally (kupd/liveness.py: only what the informers'
journals say changed, and members whose time ran out), and so is its index of grant Leases
(kupd/grants.py): after any sequence of changes they must equal those built from scratch at the
same moment."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kupd import k8s
from kupd import protocol as p
from kupd.grants import GrantLeases
from kupd.liveness import Liveness

NS = "kupd-system"
NODES = [f"n{i}" for i in range(6)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Cluster:
    """Two informer caches fed by hand (no API: the journal and the views are what is tested)."""

    def __init__(self) -> None:
        self.rv = 0
        self.nodes = k8s.Informer("nodes", cast(Any, None), "/api/v1/nodes", lambda: None)
        self.leases = k8s.Informer("leases", cast(Any, None), "/leases", lambda: None)

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def node(self, name: str, version: str, ready: bool, cp: bool) -> dict[str, Any]:
        labels = {p.LABEL_CONTROL_PLANE: ""} if cp else {}
        return {"metadata": {"name": name, "resourceVersion": self._next_rv(), "labels": labels},
                "status": {"nodeInfo": {"kubeletVersion": version},
                           "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}

    def member(self, node: str, duration: object, phase: str | None, bad: bool, rv: str | None = None,
               kupd: str = "0.1.0") -> dict[str, Any]:
        anns: dict[str, str] = {p.ANN_KUPD_VERSION: kupd}
        if phase is not None:
            anns[p.ANN_REPORT] = p.Report("op", "u", 1, ["v1.31.2"], phase).encode()
        if bad:
            anns[p.ANN_REPORT] = "[not a report"
        return {"metadata": {"name": p.member_lease_name(node), "namespace": NS,
                             "resourceVersion": rv or self._next_rv(), "annotations": anns},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": duration,
                         "renewTime": "2026-12-01T10:00:00.000000Z"}}

    def grant(self, node: str, value: str) -> dict[str, Any]:
        return {"metadata": {"name": p.grant_lease_name(node), "namespace": NS, "resourceVersion": self._next_rv(),
                             "annotations": {p.ANN_GRANT: value}}, "spec": {"holderIdentity": node}}


@st.composite
def steps(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    step = st.one_of(
        st.tuples(st.just("node"), st.sampled_from(NODES), st.sampled_from(["v1.31.0", "v1.31.2", "bogus"]),
                  st.booleans(), st.booleans()),
        st.tuples(st.just("delete-node"), st.sampled_from(NODES)),
        st.tuples(st.just("member"), st.sampled_from(NODES), st.sampled_from([20, 60, 3, 100000, "x", None]),
                  st.sampled_from([None, "Upgrading", "Failed", "Succeeded"]), st.booleans()),
        st.tuples(st.just("put-member"), st.sampled_from(NODES), st.sampled_from([20, 60])),
        st.tuples(st.just("delete-member"), st.sampled_from(NODES)),
        st.tuples(st.just("grant"), st.sampled_from(NODES), st.sampled_from(["", "{}", '{"epoch": 1}'])),
        st.tuples(st.just("delete-grant"), st.sampled_from(NODES)),
        # Deleted and created again with a resourceVersion seen before and other content.
        st.tuples(st.just("recreate-member"), st.sampled_from(NODES), st.sampled_from(["Upgrading", "Succeeded"]),
                  st.sampled_from(["0.1.0", "0.2.0"])),
        # An event older than what the cache holds (ignored), and churn of other Leases (enough
        # names to start the journal over).
        st.tuples(st.just("stale-member"), st.sampled_from(NODES)),
        st.tuples(st.just("churn"), st.integers(1, 120)),
        st.tuples(st.just("relist")),
        st.tuples(st.just("tick"), st.sampled_from([0.0, 0.5, 2.9, 3.0, 5.0, 19.9, 20.0, 61.0])),
        st.tuples(st.just("views")),
    )
    return draw(st.lists(step, min_size=1, max_size=60))


@settings(max_examples=300, deadline=None)
@given(steps())
def test_incremental_views_equal_views_built_from_scratch(ops: list[tuple[Any, ...]]) -> None:
    clock = Clock()
    with pytest.MonkeyPatch.context() as m:
        m.setattr("kupd.liveness.time.monotonic", clock)
        m.setattr("kupd.k8s.informer.time.monotonic", clock)
        c = Cluster()
        live = Liveness(c.nodes, c.leases, 20)
        grants = GrantLeases(cast(Any, None), NS, c.leases, cast(Any, None))
        for op in ops:
            kind = op[0]
            if kind == "node":
                c.nodes._apply("MODIFIED", c.node(op[1], op[2], op[3], op[4]))
            elif kind == "delete-node":
                if c.nodes.get(op[1]) is not None:
                    c.nodes._apply("DELETED", c.nodes.get(op[1]) or {})
            elif kind == "member":
                c.leases._apply("MODIFIED", c.member(op[1], op[2], op[3], op[4]))
            elif kind == "put-member":
                c.leases.put(c.member(op[1], op[2], "Upgrading", False))
            elif kind == "delete-member":
                key = f"{NS}/{p.member_lease_name(op[1])}"
                if c.leases.get(key) is not None:
                    c.leases._apply("DELETED", c.leases.get(key) or {})
            elif kind == "grant":
                c.leases._apply("MODIFIED", c.grant(op[1], op[2]))
            elif kind == "delete-grant":
                key = f"{NS}/{p.grant_lease_name(op[1])}"
                if c.leases.get(key) is not None:
                    c.leases._apply("DELETED", c.leases.get(key) or {})
            elif kind == "recreate-member":
                key = f"{NS}/{p.member_lease_name(op[1])}"
                old = c.leases.get(key)
                if old is not None:
                    c.leases._apply("DELETED", old)
                    c.leases._apply("ADDED", c.member(op[1], 20, op[2], False, rv=old["metadata"]["resourceVersion"],
                                                      kupd=op[3]))
            elif kind == "stale-member":
                key = f"{NS}/{p.member_lease_name(op[1])}"
                if c.leases.get(key) is not None:
                    c.leases._apply("MODIFIED", c.member(op[1], 60, "Failed", False, rv="0"))
            elif kind == "churn":
                for i in range(op[1]):
                    other = {"metadata": {"name": f"other-{c.rv}-{i}", "namespace": NS,
                                          "resourceVersion": c._next_rv()}}
                    c.leases._apply("ADDED", other)
                    c.leases._apply("DELETED", other)
            elif kind == "relist":
                c.nodes._replace(c.nodes.items())
                c.leases._replace(c.leases.items())
            elif kind == "tick":
                clock.now += op[1]
            else:
                got = live.views()
                fresh = Liveness(c.nodes, c.leases, 20)
                assert got == fresh.views()
                assert [live.kupd_version(n) for n in NODES] == [fresh.kupd_version(n) for n in NODES]
                assert grants.values() == p.grant_values(c.leases.items())
        assert live.views() == Liveness(c.nodes, c.leases, 20).views()
        assert grants.values() == p.grant_values(c.leases.items())


def test_a_member_whose_time_runs_out_is_seen_dead_without_any_change(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr("kupd.liveness.time.monotonic", clock)
    monkeypatch.setattr("kupd.k8s.informer.time.monotonic", clock)
    c = Cluster()
    c.nodes._apply("ADDED", c.node("n0", "v1.31.0", True, False))
    c.leases._apply("ADDED", c.member("n0", 20, None, False))
    live = Liveness(c.nodes, c.leases, 20)
    assert live.views()[1]["n0"].alive
    clock.now += 19.9
    assert live.views()[1]["n0"].alive
    clock.now += 0.1
    assert not live.views()[1]["n0"].alive


def test_the_journal_reports_what_changed_and_starts_over_on_a_relist() -> None:
    c = Cluster()
    seq, keys = c.nodes.changes(-1)
    assert keys is None  # nothing read yet: read everything
    c.nodes._apply("ADDED", c.node("n0", "v1.31.0", True, False))
    c.nodes._apply("ADDED", c.node("n1", "v1.31.0", True, False))
    c.nodes._apply("MODIFIED", c.node("n0", "v1.31.2", True, False))
    seq2, keys = c.nodes.changes(seq)
    assert keys == ["n1", "n0"]  # oldest change first, each key once
    assert c.nodes.changes(seq2) == (seq2, [])
    c.nodes._replace(c.nodes.items())
    assert c.nodes.changes(seq2)[1] is None


def test_a_lease_created_again_under_a_resource_version_seen_before_is_read_again() -> None:
    c = Cluster()
    c.leases._apply("ADDED", c.member("n0", 20, "Upgrading", False, rv="5", kupd="0.1.0"))
    live = Liveness(c.nodes, c.leases, 20)
    assert live.views()[1]["n0"].report.phase == "Upgrading"  # type: ignore[union-attr]
    c.leases._apply("DELETED", c.leases.get(f"{NS}/{p.member_lease_name('n0')}") or {})
    c.leases._apply("ADDED", c.member("n0", 20, "Succeeded", False, rv="5", kupd="0.2.0"))
    assert live.views()[1]["n0"].report.phase == "Succeeded"  # type: ignore[union-attr]
    assert live.kupd_version("n0") == "0.2.0"
