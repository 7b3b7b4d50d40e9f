"""kupd.notify: the sd_notify datagrams, read back from a socket the test owns."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kupd.notify import Notifier, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        yield sock, path
    finally:
        sock.close()


def recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_noop_without_notify_socket() -> None:
    n = Notifier(environ={})
    assert not n.enabled
    assert n.ready() is False
    assert n.status("x") is False
    assert n.watchdog() is False
    assert n.stopping() is False


def test_ready_status_watchdog_stopping(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier(environ={"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready(status="idle")
    assert recv(sock) == ["READY=1", "STATUS=idle"]
    assert n.status("upgrade-1: worker-2 drain\n(3 pods left)")
    assert recv(sock) == ["STATUS=upgrade-1: worker-2 drain (3 pods left)"]
    assert n.watchdog()
    assert recv(sock) == ["WATCHDOG=1"]
    assert n.stopping()
    assert recv(sock) == ["STOPPING=1"]
    n.close()


def test_identical_status_is_not_resent(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier(environ={"NOTIFY_SOCKET": path})
    n.status("a")
    n.status("a")
    n.status("b")
    assert recv(sock) == ["STATUS=a"]
    assert recv(sock) == ["STATUS=b"]


def test_long_status_is_clipped(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    Notifier(environ={"NOTIFY_SOCKET": path}).status("x" * 5000)
    (line,) = recv(sock)
    assert line.startswith("STATUS=x") and len(line) <= len("STATUS=") + 1024


def test_abstract_socket_address() -> None:
    name = f"kupd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier(environ={"NOTIFY_SOCKET": "@" + name}).ready()
        assert recv(sock) == ["READY=1"]
    finally:
        sock.close()


def test_send_failure_is_swallowed(tmp_path: Path) -> None:
    n = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.enabled
    assert n.watchdog() is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected
