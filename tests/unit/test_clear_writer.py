"""Grant clears on their own thread (grants.ClearWriter): asking returns at once whatever the
API server's latency, each node is cleared once however often it is asked, and a delivery that
settles a node first never has a clear land after it."""

from __future__ import annotations

import threading
import time

from kupd.errors import KupdError
from kupd.grants import ClearWriter


class Writes:
    """The clears made, in order; `gate` holds each write until it is set (a slow API server)."""

    def __init__(self) -> None:
        self.done: list[str] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        self.fail_once: set[str] = set()

    def __call__(self, node: str) -> None:
        self.started.set()
        assert self.gate.wait(10)
        if node in self.fail_once:
            self.fail_once.discard(node)
            raise KupdError(f"clearing {node}: refused")
        self.done.append(node)


def wait_for(cond: object, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_clears_do_not_wait_for_the_api_server_and_are_made_once_each() -> None:
    writes = Writes()
    w = ClearWriter(writes)
    w.start()
    try:
        t0 = time.monotonic()
        for node in ["a", "b", "a", "c", "b"]:
            w.clear(node)
        assert time.monotonic() - t0 < 0.5, "asking for a clear must not wait for the write"
        assert writes.started.wait(5)
        writes.gate.set()
        wait_for(lambda: len(writes.done) == 3)
        time.sleep(0.1)
        assert writes.done == ["a", "b", "c"]
    finally:
        w.stop()


def test_settling_drops_a_clear_not_begun_and_waits_for_one_under_way() -> None:
    writes = Writes()
    w = ClearWriter(writes)
    w.start()
    try:
        w.clear("a")
        w.clear("b")
        assert writes.started.wait(5)  # "a" is being written, "b" waits
        assert w.settle("b") is False  # dropped: a grant to "b" now stays
        settled = threading.Event()
        waited: list[bool] = []
        t = threading.Thread(target=lambda: (waited.append(w.settle("a")), settled.set()))
        t.start()
        assert not settled.wait(0.2), "settle returned while the clear of a was under way"
        writes.gate.set()
        assert settled.wait(5) and waited == [True]
        time.sleep(0.1)
        assert writes.done == ["a"]
    finally:
        w.stop()


def test_a_failed_clear_is_logged_and_can_be_asked_again() -> None:
    writes = Writes()
    writes.fail_once.add("a")
    writes.gate.set()
    w = ClearWriter(writes)
    w.start()
    try:
        w.clear("a")
        wait_for(lambda: not writes.fail_once and w.backlog() == 0)
        w.clear("a")  # the next round sees the Lease still set and asks again
        wait_for(lambda: writes.done == ["a"])
    finally:
        w.stop()
