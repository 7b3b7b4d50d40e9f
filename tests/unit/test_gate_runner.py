"""Health gates are evaluated off the reconcile thread (kupd.health.GateRunner): a gate that does
not answer never blocks the caller, counts as failing, and says so."""

from __future__ import annotations

import threading
import time
from typing import Any

from kupd.api.models import HealthGates
from kupd.health import GateRunner, deadline

GATES = HealthGates.model_validate({"prometheus": {"url": "http://p:9090", "timeoutSeconds": 30, "queries": [
    {"name": "silent", "query": "up", "expect": "NonEmpty"}]}}, by_alias=True, by_name=False)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _wait(cond: Any) -> None:
    end = time.monotonic() + 5
    while not cond():
        assert time.monotonic() < end
        time.sleep(0.01)


def test_a_gate_that_does_not_answer_never_blocks_and_counts_as_failing() -> None:
    release = threading.Event()
    calls: list[HealthGates] = []

    def evaluate(gates: HealthGates) -> str | None:
        calls.append(gates)
        release.wait(10)
        return None

    clock = Clock()
    runner = GateRunner(evaluate, interval=5, clock=clock)
    started = time.monotonic()
    for _ in range(50):
        verdict = runner.check(GATES)
        assert verdict is not None and "waiting" in verdict and "prometheus query silent" in verdict
    assert time.monotonic() - started < 1.0
    _wait(lambda: len(calls) == 1)
    assert runner.evaluations == 1  # one evaluation at a time, however often asked
    clock.t += deadline(GATES) + 1
    verdict = runner.check(GATES)
    assert verdict is not None and "did not answer within 45s" in verdict and "silent" in verdict
    release.set()
    _wait(lambda: runner.check(GATES) is None)
    # The next evaluation starts only after the interval; meanwhile the last answer holds.
    assert runner.evaluations == 1
    clock.t += 6
    assert runner.check(GATES) is None
    assert runner.evaluations == 2


def test_a_failing_or_crashing_gate_is_a_verdict() -> None:
    def evaluate(gates: HealthGates) -> str | None:
        raise RuntimeError("boom")

    runner = GateRunner(evaluate, clock=Clock())
    runner.check(GATES)
    _wait(lambda: "RuntimeError: boom" in (runner.check(GATES) or ""))


def test_other_gates_do_not_inherit_an_earlier_answer() -> None:
    answers = {"a": "query a failed", "b": None}

    def evaluate(gates: HealthGates) -> str | None:
        assert gates.prometheus is not None
        return answers[gates.prometheus.queries[0].name]

    def gates(name: str) -> HealthGates:
        return HealthGates.model_validate({"prometheus": {"url": "http://p", "queries": [
            {"name": name, "query": "up"}]}}, by_alias=True, by_name=False)

    runner = GateRunner(evaluate, clock=Clock())
    runner.check(gates("a"))
    _wait(lambda: runner.check(gates("a")) == "query a failed")
    assert "waiting" in (runner.check(gates("b")) or "")
    _wait(lambda: runner.check(gates("b")) is None)
    assert runner.check(None) is None
