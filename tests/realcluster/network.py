"""The real cluster's own network: a network namespace with a bridge, and a relay to its API server.

Every node of the tier is a systemd-nspawn container attached (`--network-bridge`) to a bridge
that lives in a network namespace the test creates and deletes. The machine's own network
namespace gets nothing: no interface, no address, no rule. Node and pod traffic stays in the
test's namespaces; the node addresses are the test hosts' own.

The test process reaches the control plane through `ApiRelay`: a TCP listener on 127.0.0.1 whose
connections are opened, on the far side, from a thread that has joined the cluster's namespace
(a socket belongs to the network namespace of the thread that creates it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
from pathlib import Path

CLONE_NEWNET = 0x40000000
SUBNET = "10.247.0"
GATEWAY = f"{SUBNET}.1"
PREFIX = 24
BRIDGE = "kupdbr0"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class Network:
    """`ip netns` namespace with a bridge; `wrap(argv)` runs a command (nspawn) inside it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = Path("/run/netns") / name

    def create(self) -> Network:
        self.delete()
        _ip("netns", "add", self.name)
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("-n", self.name, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", self.name, "addr", "add", f"{GATEWAY}/{PREFIX}", "dev", BRIDGE)
        _ip("-n", self.name, "link", "set", BRIDGE, "up")
        return self

    def delete(self) -> None:
        if self.path.exists():
            subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True, timeout=30)

    def wrap(self) -> list[str]:
        """The argv prefix that runs a command in this namespace (network only: nspawn sets up
        the rest, and creates the node's veth pair here, on the bridge)."""
        return ["nsenter", f"--net={self.path}"]


def _setns(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


class ApiRelay:
    """127.0.0.1:<port> on the machine -> target inside the cluster's network namespace."""

    def __init__(self, netns: Path, target: tuple[str, int]) -> None:
        self.netns = netns
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._requests: list[tuple[threading.Event, list[socket.socket | BaseException]]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._dialer = threading.Thread(target=self._dial_loop, name="relay-dialer", daemon=True)
        self._acceptor = threading.Thread(target=self._accept_loop, name="relay-accept", daemon=True)

    def start(self) -> ApiRelay:
        self._dialer.start()
        self._acceptor.start()
        return self

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._cond:
            self._cond.notify_all()

    def _dial_loop(self) -> None:
        _setns(self.netns)  # this thread only; its sockets live in the cluster's namespace
        while True:
            with self._cond:
                while not self._requests and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                done, box = self._requests.pop(0)
            try:
                box.append(socket.create_connection(self.target, timeout=10))
            except OSError as e:
                box.append(e)
            done.set()

    def _dial(self) -> socket.socket:
        done: threading.Event = threading.Event()
        box: list[socket.socket | BaseException] = []
        with self._cond:
            self._requests.append((done, box))
            self._cond.notify()
        done.wait(15)
        if not box or isinstance(box[0], BaseException):
            raise OSError(f"cannot reach {self.target}: {box[0] if box else 'timeout'}")
        return box[0]

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = self._dial()
        except OSError:
            client.close()
            return
        upstream.settimeout(None)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        t.start()
        pump(client, upstream)
        t.join()
        client.close()
        upstream.close()
