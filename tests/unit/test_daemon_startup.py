"""First boot of `kupd daemon`, read back from the sd_notify socket the test owns: READY at once,
STATUS saying which credential is missing or unusable, a poll instead of an exit, and nothing but
STOPPING on the way down. (The waits for the API server and the Node run against the real API
server in tests/cluster/test_daemon_startup.py; the unit under real systemd in tests/system.)"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kupd import config
from kupd import daemon as daemon_mod
from kupd.daemon import Daemon
from kupd.notify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()


def messages_until(sock: socket.socket, predicate: object, timeout: float = 5) -> list[str]:
    """Datagrams (one string each) up to and including the first that satisfies `predicate`."""
    assert callable(predicate)
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = sock.recv(4096).decode()
        got.append(msg)
        if predicate(msg):
            return got
    raise AssertionError(f"no matching message in {got}")


def drain(sock: socket.socket) -> list[str]:
    sock.settimeout(0.2)
    out = []
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except TimeoutError:
        return out


def start(tmp_path: Path, path: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Daemon, threading.Thread, list[int]]:
    monkeypatch.setattr(daemon_mod, "CREDENTIAL_POLL_SECONDS", 0.05)
    settings = config.parse({"node_name": "node-1", "kubeconfig": str(tmp_path / "kubeconfig"),
                             "state_dir": str(tmp_path / "state"), "metrics_address": ""})
    d = Daemon(settings, Notifier(environ={"NOTIFY_SOCKET": path}))
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(d.run()), daemon=True)
    t.start()
    return d, t, rc


def test_ready_at_once_then_waits_for_a_credential_without_exiting(
        tmp_path: Path, listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = listener
    d, t, rc = start(tmp_path, path, monkeypatch)
    first = sock.recv(4096).decode().split("\n")
    assert first[0] == "READY=1", first
    waiting = messages_until(sock, lambda m: "waiting for a credential" in m)
    assert f"{tmp_path / 'kubeconfig'} does not exist" in waiting[-1]
    assert "kupd enroll node-1" in waiting[-1]
    time.sleep(0.3)  # several polls later it still runs: no exit, so no restart by systemd
    assert t.is_alive() and rc == []
    # A credential that cannot be used is reported as such, and still polled.
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    unusable = messages_until(sock, lambda m: "waiting for a usable credential" in m)
    assert "no context given and no current-context set" in unusable[-1]
    assert t.is_alive()
    d.stop()
    t.join(5)
    assert rc == [0]
    tail = drain(sock)
    assert tail and tail[-1].startswith("STOPPING=1"), tail
    assert not any("READY=1" in m for m in tail), tail


def test_stop_before_anything_sends_stopping_and_no_second_ready(
        tmp_path: Path, listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = listener
    d, t, rc = start(tmp_path, path, monkeypatch)
    messages_until(sock, lambda m: "waiting for a credential" in m)
    d.stop()
    t.join(5)
    assert rc == [0]
    everything = drain(sock)
    assert sum("READY=1" in m for m in everything) == 0, everything
    assert everything[-1].startswith("STOPPING=1")
