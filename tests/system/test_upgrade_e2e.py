"""End to end on real hosts: three systemd-nspawn Debian nodes run the installed kupd .deb
under systemd (`host = "real"`), join the real local control plane, and a DirectUpdate upgrades
their Kubernetes packages (v1.30.5 -> v1.31.2) with apt from a local signed repository, while one
daemon is killed with SIGKILL and another node reboots. The invariants are checked by watching
the API.

What stands in here, and why (docs/development/testing.md, "What the system tier stands in"):
the packages' kubeadm prints a captured `kubeadm upgrade plan` and does nothing else, kubelet and
containerd are `sleep infinity` units, and `StandInKubelet` (a thread of the test) posts each
Node's status. This tier is about the .deb under systemd: apt inside the node, reboots, the
journal and sd_notify. The real kubeadm, kubelet and containerd run in tests/realcluster. The
nodes share the machine's kernel, so /proc/sys/kernel/random/boot_id does not change when a node
reboots; the stand-in kubelet reports a per-boot id instead.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kupd import k8s
from kupd.protocol import LABEL_CONTROL_PLANE
from kupd.sim.devcluster import ControlPlane
from tests.cluster.harness import Monitor, api_for, apply_du, wait_phase
from tests.host import repo_builder
from tests.paths import CRD_DIR
from tests.system import nspawn
from tests.system.conftest import install_deb

FROM, TO = "1.30.5", "1.31.2"
NAMES = ["e2e-cp-1", "e2e-w-1", "e2e-w-2"]
BACKUP_DIR = "/srv/etcd-backups"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
KUBELET_UNIT = """[Unit]
Description=stand-in kubelet for the kupd system test (the package ships only a fake binary)
[Service]
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def installed_version(node: nspawn.Node, package: str) -> str:
    """From the node's dpkg database, read on the host side (works while the node reboots)."""
    status = (node.root / "var/lib/dpkg/status").read_text(errors="replace")
    for stanza in status.split("\n\n"):
        # A held package (kupd holds them) reads "hold ok installed".
        if re.search(rf"^Package: {re.escape(package)}$", stanza, re.M) and \
                re.search(r"^Status: (install|hold) ok installed$", stanza, re.M):
            m = re.search(r"^Version: (\S+)$", stanza, re.M)
            if m:
                return m.group(1).split("-")[0]
    return ""


class StandInKubelet:
    """What the kubelet would do for the API: register each Node, report it Ready at the kubelet
    version installed on that node, with a boot id that changes on every boot of the node."""

    def __init__(self, cp: ControlPlane, nodes: list[nspawn.Node]) -> None:
        self.api = api_for(cp)
        self.nodes = nodes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> StandInKubelet:
        for node in self.nodes:
            labels = {"kubernetes.io/hostname": node.name}
            if node.name.startswith("e2e-cp"):
                labels[LABEL_CONTROL_PLANE] = ""
            body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name, "labels": labels}}
            try:
                self.api.create(k8s.node_path(), body)
            except k8s.ApiError as e:
                if e.status != 409:
                    raise
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for node in self.nodes:
                running = node.proc is not None and node.proc.poll() is None
                version = installed_version(node, "kubelet")
                body: dict[str, Any] = {"status": {
                    "conditions": [{"type": "Ready", "status": "True" if running else "Unknown",
                                    "reason": "KubeletReady" if running else "NodeStatusUnknown",
                                    "message": "stand-in kubelet"}],
                    "nodeInfo": {"kubeletVersion": f"v{version}", "kubeProxyVersion": "", "machineID": "",
                                 "systemUUID": "", "bootID": f"{node.name}-boot-{node.boots}",
                                 "kernelVersion": "", "osImage": "Debian GNU/Linux 12 (bookworm)",
                                 "containerRuntimeVersion": "containerd://1.7.20", "operatingSystem": "linux",
                                 "architecture": "amd64"}}}
                with contextlib.suppress(Exception):  # the API may be away on purpose
                    self.api.patch(k8s.node_path(node.name, subresource="status"), body, "strategic")
            self._stop.wait(1.0)


def node_kubeconfig(cp: ControlPlane) -> str:
    cfg = yaml.safe_load(cp.admin_kubeconfig.read_text())
    cfg["clusters"][0]["cluster"]["certificate-authority"] = "/etc/kupd/ca.crt"
    return yaml.safe_dump(cfg)


def configure(node: nspawn.Node, cp: ControlPlane, repo_url: str, key: Path) -> None:
    # The v1.30 packages from the local repository, as on a node installed a release ago.
    node.copy_in(key, "/etc/apt/keyrings/kupd-test-k8s.asc")
    node.write("/etc/apt/sources.list.d/kubernetes.list",
               f"deb [signed-by=/etc/apt/keyrings/kupd-test-k8s.asc] {repo_url}/v1.30/deb/ /\n")
    node.run(["apt-get", "update"], timeout=300)
    node.run(["apt-get", "install", "-y", "kubeadm", "kubelet", "kubectl"], timeout=300)
    node.run(["apt-mark", "hold", "kubeadm", "kubelet", "kubectl"])
    node.write("/etc/systemd/system/kubelet.service", KUBELET_UNIT)
    # kupd verifies that containerd and kubelet are active after the upgrade: a stand-in for both.
    node.write("/etc/systemd/system/containerd.service", KUBELET_UNIT.replace("kubelet", "containerd"))
    node.run(["systemctl", "daemon-reload"])
    node.run(["systemctl", "enable", "--now", "kubelet.service", "containerd.service"])
    # Credential and config, as cloud-init/user-data.yaml writes them.
    node.copy_in(cp.ca_file, "/etc/kupd/ca.crt")
    node.write("/etc/kupd/kubeconfig", node_kubeconfig(cp), mode=0o600)
    is_cp = node.name.startswith("e2e-cp")
    if is_cp:
        # kubeadm's etcd client certificates, where kupd's backup looks for them by default.
        for name in ("ca.crt", "healthcheck-client.crt", "healthcheck-client.key"):
            node.copy_in(cp.etcd_pki / name, f"/etc/kubernetes/pki/etcd/{name}")
        # What the fake kubeadm prints for `kubeadm upgrade plan` (a capture of the real one).
        node.copy_in(FIXTURES / "kubeadm-upgrade-plan-v1.31.txt", "/etc/kupd-test/plan.txt")
        # The file store is a mounted share in real life; it must exist before the backup.
        node.run(["install", "-d", "-m", "0700", BACKUP_DIR])
    node.write("/etc/kupd/config.d/50-system-test.toml", "\n".join([
        f'node_name = "{node.name}"',
        'kubeconfig = "/etc/kupd/kubeconfig"',
        'host = "real"',
        f"control_plane = {'true' if is_cp else 'false'}",
        'coordinator_eligible = "control-plane"',
        # The nodes share the host's network: each needs its own metrics port.
        f'metrics_address = "127.0.0.1:{free_port()}"',
        'log_level = "debug"',
        "",
    ]))


@pytest.fixture(scope="module")
def cluster(
    control_plane: ControlPlane, deb_package: Path, nspawn_base: Path, node_workdir: Path, tmp_path_factory: Any
) -> Iterator[tuple[ControlPlane, list[nspawn.Node]]]:
    control_plane.install_crds(CRD_DIR)
    repos = repo_builder.build_deb_repos(tmp_path_factory.mktemp("k8s-repos"))
    server = repo_builder.Server(repos.base)
    kubelet: StandInKubelet | None = None
    try:
        with nspawn.booted_nodes(NAMES, node_workdir) as nodes:
            for node in nodes:
                install_deb(node, deb_package)
                node.systemctl("stop", "kupd")  # no config yet
                configure(node, control_plane, server.url, repos.key.public_asc)
            kubelet = StandInKubelet(control_plane, nodes).start()
            for node in nodes:
                node.systemctl("restart", "kupd")  # Type=notify: returns once READY=1
            yield control_plane, nodes
    finally:
        if kubelet:
            kubelet.stop()
        server.close()


def test_daemons_join_the_cluster(cluster: tuple[ControlPlane, list[nspawn.Node]]) -> None:
    cp, nodes = cluster
    deadline = time.monotonic() + 120
    want = {f"kupd-node-{n.name}" for n in nodes}
    seen: set[str] = set()
    while time.monotonic() < deadline and seen != want:
        out = cp.kubectl("get", "leases", "-n", "kupd-system", "-o", "json", check=False).stdout
        seen = {i["metadata"]["name"] for i in json.loads(out or '{"items": []}')["items"]} & want
        time.sleep(1)
    assert seen == want, f"member leases: {sorted(seen)}; journal of {nodes[0].name}:\n" + nodes[0].journal(
        "-u", "kupd", "-n", "80"
    )


def test_directupdate_survives_kill_and_reboot(cluster: tuple[ControlPlane, list[nspawn.Node]]) -> None:
    cp, nodes = cluster
    by_name = {n.name: n for n in nodes}
    monitor = Monitor(cp).start()
    apply_du(cp, "system-e2e", {
        "version": f"v{TO}",
        "concurrency": 1,
        "packageSource": {"type": "mirror", "mirror": {"url": cluster_repo_url(nodes[0])}},
        "backup": {"required": True, "store": {"type": "file", "path": BACKUP_DIR},
                   "etcd": {"endpoints": [cp.etcd_endpoint]}},
        "drain": {"timeoutSeconds": 60},
    })
    faults: dict[str, str] = {}
    statuses: dict[str, str] = {}

    def tick(st: dict[str, Any]) -> None:
        for entry in st.get("nodes") or []:
            name, phase = entry["name"], entry["phase"]
            node = by_name.get(name)
            if node is None or phase != "Upgrading":
                continue
            if name == "e2e-w-1" and "kill" not in faults:
                faults["kill"] = entry.get("step", "")
                # Main process only: signalling the unit's other processes fails with EIO inside nspawn.
                node.run(["systemctl", "kill", "--kill-who=main", "-s", "KILL", "kupd"])
            elif name == "e2e-w-2" and "reboot" not in faults:
                faults["reboot"] = entry.get("step", "")
                node.reboot()
            if name not in statuses:
                out = node.run(["systemctl", "status", "--no-pager", "kupd"], check=False).stdout
                m = re.search(r"^\s*Status: \"(.*)\"$", out, re.M)
                if m:
                    statuses[name] = m.group(1)

    try:
        st = wait_phase(cp, "system-e2e", ("Succeeded", "Failed", "RequiresAttention"), timeout=900, tick=tick)
    finally:
        monitor.stop()
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)[:4000]
    assert set(faults) == {"kill", "reboot"}, f"the faults did not all happen: {faults}"
    monitor.assert_invariants(concurrency=1)
    for node in nodes:
        assert node.run(["dpkg-query", "-W", "-f", "${Version}", "kubelet"]).stdout.startswith(TO)
        assert node.run(["dpkg-query", "-W", "-f", "${Version}", "kubeadm"]).stdout.startswith(TO)
        assert node.run(["systemctl", "is-active", "kupd"]).stdout.strip() == "active"
    # systemctl status showed what kupd was doing while it did it.
    assert statuses, "no STATUS line seen in `systemctl status kupd` during the upgrade"
    # journald: structured fields find the steps.
    w1 = by_name["e2e-w-1"]
    drains = w1.journal("-u", "kupd", "KUPD_STEP=drain", f"KUPD_NODE={w1.name}")
    assert drains.strip(), w1.journal("-u", "kupd", "-n", "100")
    assert w1.journal("-u", "kupd", "KUPD_OPERATION=system-e2e").strip()


def cluster_repo_url(node: nspawn.Node) -> str:
    """The local repository's base URL, as configured on the nodes (same for all)."""
    text = (node.root / "etc/apt/sources.list.d/kubernetes.list").read_text()
    m = re.search(r"(http://127\.0\.0\.1:\d+)/v1\.30/deb/", text)
    assert m, text
    return m.group(1)

