"""First boot of a real `kupd daemon` process against the real API server: READY at once, then
STATUS says what it waits for (the API server, permission, its Node) while it keeps running, and
nothing but STOPPING when SIGTERM comes during a wait. The sd_notify datagrams are read from a
socket the test owns (systemd's side of the protocol; tests/system runs it under systemd)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kupd import k8s
from kupd.sim.devcluster import ControlPlane
from tests.cluster.harness import api_for

NODE = "startup-node-1"
USER = "kupd-startup-test"


class Daemon:
    """`python -m kupd daemon` with NOTIFY_SOCKET pointing at a socket this test reads."""

    def __init__(self, workdir: Path, kubeconfig: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.d").mkdir(exist_ok=True)
        (workdir / "config.d" / "10.toml").write_text(
            f'node_name = "{NODE}"\nkubeconfig = "{kubeconfig}"\nstate_dir = "{workdir / "state"}"\n'
            f'host = "simulated"\nmetrics_address = ""\n'
            f'[simulated]\nstate_file = "{workdir / "state" / "sim.json"}"\n')
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(workdir / "notify.sock"))
        self.sock.settimeout(1)
        self.log = workdir / "daemon.log"
        self.messages: list[str] = []
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kupd", "daemon", "--config-dir", str(workdir / "config.d")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env=dict(os.environ, NOTIFY_SOCKET=str(workdir / "notify.sock")))

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}:\n{self.log.read_text()}"
                continue
            self.messages.append(msg)
            if text in msg:
                return msg
        raise AssertionError(f"no {text!r} in {self.messages}\n{self.log.read_text()[-3000:]}")

    def terminate(self) -> list[str]:
        """SIGTERM; the datagrams sent after it."""
        os.kill(self.proc.pid, signal.SIGTERM)
        assert self.proc.wait(30) == 0, self.log.read_text()[-3000:]
        tail = []
        self.sock.settimeout(0.2)
        try:
            while True:
                tail.append(self.sock.recv(4096).decode())
        except TimeoutError:
            pass
        self.sock.close()
        return tail

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for d in started:
            d.kill()


def test_waits_for_the_api_server(tmp_path: Path, daemons: list[Daemon]) -> None:
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c"}}]}))
    d = Daemon(tmp_path / "d", cfg)
    daemons.append(d)
    assert d.wait_for("READY=1").split("\n")[0] == "READY=1"
    assert "API unreachable" in d.wait_for("waiting for the API server")
    time.sleep(4)  # a retry later it still runs, still says so
    assert d.proc.poll() is None
    tail = d.terminate()
    assert tail and tail[-1].startswith("STOPPING=1"), tail
    assert not any("READY=1" in m for m in tail), tail


def test_waits_for_permission_then_for_its_node(crds: ControlPlane, tmp_path: Path, daemons: list[Daemon]) -> None:
    api = api_for(crds)
    node_path = k8s.node_path(NODE)
    try:
        api.delete(node_path)
    except k8s.ApiError as e:
        assert e.status == 404
    cfg = crds.cert_kubeconfig(USER, [])
    d = Daemon(tmp_path / "d", cfg)
    daemons.append(d)
    d.wait_for("READY=1")
    assert "forbidden" in d.wait_for("waiting for permission")
    # May read Nodes but not create one: only the test registers the Node, as kubeadm join would.
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": USER},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": USER},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": USER},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]}
    crds.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List",
                                                              "items": [role, binding]}))
    try:
        assert f"Node {NODE} is not registered yet" in d.wait_for("waiting for the Node", timeout=60)
        api.create(k8s.node_path(), {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
        d.wait_for(f"member of the cluster as {NODE}", timeout=60)
        assert sum("READY=1" in m for m in d.messages) == 1, d.messages
        tail = d.terminate()
        assert tail and tail[-1].startswith("STOPPING=1"), tail
        assert not any("READY=1" in m for m in tail), tail
    finally:
        crds.kubectl("delete", "clusterrolebinding,clusterrole", USER, "--ignore-not-found")
        try:
            api.delete(node_path)
        except k8s.ApiError as e:
            assert e.status == 404
