"""A real kubeadm cluster in systemd-nspawn nodes: containerd, the kubelet, pods, kubeadm init/join.

What a node in a container needs, and why (each measured on this machine; see
docs/development/testing.md):
- every capability, and the system calls runc uses (nspawn filters keyctl and others);
- cgroups of its own: the node boots inside a per-node cgroup of each v1 controller
  (`nspawn.NodeCgroups`), so its cgroup namespace shows it only its own subtree, and its
  controllers are mounted afresh read-write (nspawn mounts them read-only);
- /dev/kmsg (the kubelet's OOM watcher opens it): an empty file (kind links /dev/console, which
  --console=pipe leaves out; a link to /dev/null would make ProtectKernelLogs= deny /dev/null);
- the kernel tunables the kubelet sets (vm.overcommit_memory, kernel.panic, ...): /proc/sys is
  the machine's and read-only here; a file of the node's own is bound over each, so the kubelet
  writes into the file and the machine's kernel is left alone;
- a network of its own (`network.Network`): an interface on the test's bridge, a static address;
- containerd with `restrict_oom_score_adj` (packages.CONTAINERD_CONFIG): the machine withholds
  CAP_SYS_RESOURCE, so no oom_score_adj below containerd's own can be set;
- kubeadm's SystemVerification preflight ignored, and `failCgroupV1: false` for the kubelet: the
  machine's kernel mounts cgroup v1.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.realcluster import artifacts, network
from tests.realcluster.artifacts import Artifacts, Release
from tests.system import nspawn

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "kupdrc.0123456789abcdef"
POD_SUBNET = "10.244.0.0/16"
SERVICE_SUBNET = "10.96.0.0/16"
CP_IP = f"{network.SUBNET}.10"
NET_PREFIX = "kupd-rc-"  # + the test process's pid: the cluster's network namespace
BUNDLE = "/srv/kupd-bundle"  # where the nodes see the repositories (world-readable, unlike the cache)
KUPD_PYTHON = "/usr/lib/kupd/venv/bin/python3.11"
SYSCALLS = "@keyring @privileged @raw-io @clock @module @swap @reboot @obsolete @cpu-emulation @debug"
# The kubelet's kernel tunables (pkg/kubelet/cm: setupKernelTunables).
TUNABLES = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
            "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
IGNORED_PREFLIGHT = (
    "SystemVerification",  # cgroup v1, and no kernel config to read in a container
    "FileContent--proc-sys-net-bridge-bridge-nf-call-iptables",  # no br_netfilter: no kube-proxy here
    "FileContent--proc-sys-net-ipv4-ip_forward",
    "Swap",
)

BOOT_UNITS_MASKED = ("systemd-modules-load.service", "systemd-remount-fs.service")

PREP = f"""#!/bin/sh
# What a kubeadm node inside systemd-nspawn needs before containerd and the kubelet start.
set -eu
. /etc/kupd-test/node.env
# cgroup v1 controllers, read-write, in the node's own cgroup namespace and mount namespace.
for c in cpuset cpu cpuacct devices freezer blkio pids memory; do
  umount /sys/fs/cgroup/$c 2>/dev/null || true
  mkdir -p /sys/fs/cgroup/$c
  mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c
done
# The kubelet opens /dev/kmsg (its OOM watcher reads kernel messages); nspawn gives the node
# none. kind links it to /dev/console, which a node booted with --console=pipe lacks; a link to
# /dev/null would make systemd's ProtectKernelLogs= (kupd's unit has it) deny /dev/null itself.
# An empty file reads as no news.
rm -f /dev/kmsg
: > /dev/kmsg
chmod 0400 /dev/kmsg
# The kubelet's kernel tunables: a file of the node's own over each (the kernel is the machine's).
mkdir -p /run/kupd-test/sysctl
for t in {" ".join(TUNABLES)}; do
  f=/run/kupd-test/sysctl/$(echo $t | tr / .)
  cat /proc/sys/$t > $f
  mount --bind $f /proc/sys/$t
done
ip link set lo up
ip addr replace $NODE_IP/{network.PREFIX} dev host0
ip link set host0 up
ip route replace default via {network.GATEWAY}
"""

PREP_UNIT = """[Unit]
Description=kupd test node: cgroups, /dev/kmsg, kernel tunables, network
DefaultDependencies=no
After=local-fs.target systemd-tmpfiles-setup.service
Before=network.target network-online.target containerd.service kubelet.service kupd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/kupd-test-node-prep

[Install]
WantedBy=multi-user.target
"""


@dataclass
class ClusterNode:
    node: nspawn.Node
    ip: str
    control_plane: bool
    pod_subnet: str

    @property
    def name(self) -> str:
        return self.node.name

    def run(self, argv: list[str], **kw: Any) -> Any:
        return self.node.run(argv, **kw)

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> Any:
        """kubectl as the cluster's administrator, on the first control-plane node."""
        return self.node.run(["kubectl", "--kubeconfig=/etc/kubernetes/admin.conf", *args], check=check,
                             timeout=timeout)


def make_nodes(names: list[str], workdir: Path, net: network.Network, arts: Artifacts) -> list[ClusterNode]:
    base = nspawn.base_image()
    out = []
    hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
    ips = {n: f"{network.SUBNET}.{10 + i}" for i, n in enumerate(names)}
    hosts += [f"{ip} {n}" for n, ip in ips.items()]
    image_dir = next(iter(arts.images.values())).parent
    for i, name in enumerate(names):
        node = nspawn.make_node(name, workdir, base)
        node.own_cgroups = True
        node.launcher = net.wrap()
        node.extra_args = [
            "--capability=all",
            f"--system-call-filter={SYSCALLS}",
            f"--network-bridge={network.BRIDGE}",
            f"--bind-ro={arts.bundle}:{BUNDLE}",
            f"--bind-ro={image_dir}:/srv/kupd-images",
        ]
        node.write("/etc/hosts", "\n".join(hosts) + "\n")
        # No way out of the cluster's network: the base image's Debian sources would only time out.
        for f in ("etc/apt/sources.list", *(str(p.relative_to(node.root)) for p in
                                            (node.root / "etc/apt/sources.list.d").glob("*"))):
            (node.root / f).unlink(missing_ok=True)
        node.write("/etc/kupd-test/node.env", f"NODE_IP={ips[name]}\n")
        node.write("/usr/local/sbin/kupd-test-node-prep", PREP, mode=0o755)
        node.write("/etc/systemd/system/kupd-test-node-prep.service", PREP_UNIT)
        # Boot units with nothing to do in a container (no modules to load, nspawn mounts the
        # root): masked, because with three nodes booting at once on a loaded machine they failed
        # now and then with 219/CGROUP and left the node "degraded".
        for unit in BOOT_UNITS_MASKED:
            masked = node.root / "etc/systemd/system" / unit
            masked.unlink(missing_ok=True)
            masked.symlink_to("/dev/null")
        wants = node.root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            (wants / "kupd-test-node-prep.service").symlink_to("/etc/systemd/system/kupd-test-node-prep.service")
        out.append(ClusterNode(node, ips[name], control_plane=i == 0, pod_subnet=f"10.244.{i}.0/24"))
    return out


PACKAGE_SOURCE = {"type": "bundle", "bundle": {"path": BUNDLE, "manifest": f"{BUNDLE}/manifest.sha256"}}


def install_kupd(cn: ClusterNode, deb: Path) -> None:
    """kupd's .deb by apt, as on any node (it starts, and waits for its credential)."""
    cn.node.copy_in(deb, f"/var/cache/kupd-test/{deb.name}")
    cn.run(["apt-get", "install", "-y", f"/var/cache/kupd-test/{deb.name}"], timeout=300)


def install_packages(cn: ClusterNode, release: Release) -> None:
    """The release's packages from its minor's repository, configured by kupd's own code."""
    script = ("import sys; from kupd.host import sources; "
              "sources.configure('/', 'deb', sources.PackageSource(kind='bundle', bundle=sys.argv[2]), sys.argv[1])")
    cn.run([KUPD_PYTHON, "-I", "-c", script, release.stamp, BUNDLE])
    cn.run(["apt-get", "update"], timeout=300)
    pins = [f"{n}={release.package_version}" for n in ("kubeadm", "kubelet", "kubectl")]
    cn.run(["apt-get", "install", "-y", *pins, f"containerd={release.containerd.lstrip('v')}-1"], timeout=600)
    cn.run(["apt-mark", "hold", "kubeadm", "kubelet", "kubectl"])
    cn.run(["systemctl", "enable", "--now", "containerd"])
    cn.run(["systemctl", "is-active", "containerd"])


def import_images(cn: ClusterNode, arts: Artifacts) -> None:
    """Every image both releases need, so that kubeadm never pulls (nothing could be pulled)."""
    for key in sorted(arts.images):
        archive = f"/srv/kupd-images/{arts.images[key].name}"
        cn.run(["ctr", "-n", "k8s.io", "images", "import", "--no-unpack", archive], timeout=600)


def cni_config(cn: ClusterNode) -> str:
    return json.dumps({
        "cniVersion": "1.0.0",
        "name": "kupd-rc",
        "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": cn.pod_subnet}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}}],
    }, indent=1)


KUBELET_CONFIG = {
    "apiVersion": "kubelet.config.k8s.io/v1beta1",
    "kind": "KubeletConfiguration",
    "cgroupDriver": "cgroupfs",
    "failCgroupV1": False,
    "failSwapOn": False,
    "protectKernelDefaults": False,
    # The nodes' disk is the machine's, shared with everything else on it, so the kubelet must not
    # judge it (kind's nodes do the same): no eviction for disk and no image garbage collection.
    # With the machine's disk 85 % full, image GC deleted the imported images (there is no registry
    # to pull them from again) and the workloads never started.
    "evictionHard": {"nodefs.available": "0%", "nodefs.inodesFree": "0%", "imagefs.available": "0%"},
    "imageGCHighThresholdPercent": 100,
}


def node_registration(cn: ClusterNode) -> dict[str, Any]:
    return {
        "name": cn.name,
        "criSocket": "unix:///run/containerd/containerd.sock",
        "kubeletExtraArgs": [{"name": "node-ip", "value": cn.ip}],
        "ignorePreflightErrors": list(IGNORED_PREFLIGHT),
    }


def init_config(cn: ClusterNode, release: Release) -> str:
    init = {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "InitConfiguration",
        "bootstrapTokens": [{"token": TOKEN, "ttl": "24h0m0s"}],
        "localAPIEndpoint": {"advertiseAddress": cn.ip, "bindPort": 6443},
        "nodeRegistration": node_registration(cn),
    }
    cluster = yaml.safe_load(artifacts.cluster_config(release))
    cluster.update({
        "clusterName": "kupd-rc",
        "controlPlaneEndpoint": f"{cn.ip}:6443",
        "apiServer": {"certSANs": ["127.0.0.1", cn.ip]},
        "networking": {"podSubnet": POD_SUBNET, "serviceSubnet": SERVICE_SUBNET},
    })
    return yaml.safe_dump_all([init, cluster, KUBELET_CONFIG], sort_keys=False)


def join_config(cn: ClusterNode) -> str:
    join = {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "JoinConfiguration",
        "discovery": {"bootstrapToken": {"apiServerEndpoint": f"{CP_IP}:6443", "token": TOKEN,
                                         "unsafeSkipCAVerification": True}},
        "nodeRegistration": node_registration(cn),
    }
    return yaml.safe_dump(join, sort_keys=False)


def kubeadm_init(cp: ClusterNode, release: Release) -> None:
    cp.node.write("/etc/kupd-test/kubeadm-init.yaml", init_config(cp, release))
    cp.node.write("/etc/cni/net.d/10-kupd-rc.conflist", cni_config(cp))
    cp.run(["kubeadm", "init", "--config=/etc/kupd-test/kubeadm-init.yaml", "--v=1"], timeout=900)


def kubeadm_join(cn: ClusterNode) -> None:
    cn.node.write("/etc/kupd-test/kubeadm-join.yaml", join_config(cn))
    cn.node.write("/etc/cni/net.d/10-kupd-rc.conflist", cni_config(cn))
    cn.run(["kubeadm", "join", "--config=/etc/kupd-test/kubeadm-join.yaml", "--v=1"], timeout=900)


def wait_ready(cp: ClusterNode, names: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        r = cp.kubectl("get", "nodes", "-o", "json", check=False)
        if r.returncode == 0:
            items = json.loads(r.stdout)["items"]
            ready = {i["metadata"]["name"] for i in items if any(
                c["type"] == "Ready" and c["status"] == "True" for c in i["status"].get("conditions", []))}
            if ready >= set(names):
                return
            last = f"ready: {sorted(ready)}"
        else:
            last = r.stderr[-500:]
        time.sleep(2)
    raise nspawn.NodeError(f"nodes not Ready after {timeout}s ({last})")


def admin_kubeconfig(cp: ClusterNode, relay_port: int) -> dict[str, Any]:
    """admin.conf, pointed at the relay on the machine's loopback (the certificate names 127.0.0.1)."""
    cfg: dict[str, Any] = yaml.safe_load((cp.node.root / "etc/kubernetes/admin.conf").read_text())
    cfg["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{relay_port}"
    return cfg


@contextlib.contextmanager
def real_cluster(names: list[str], workdir: Path, arts: Artifacts, release: Release, net_name: str,
                 kupd_deb: Path) -> Iterator[tuple[list[ClusterNode], network.ApiRelay]]:
    """Nodes booted and joined into a Ready cluster at `release`; torn down afterwards."""
    net = network.Network(net_name).create()
    nodes = make_nodes(names, workdir, net, arts)
    relay: network.ApiRelay | None = None
    failed = False
    try:
        def prepare(cn: ClusterNode) -> None:
            try:
                cn.node.boot()
            except nspawn.NodeError as e:
                # Seen once with three nodes booting at once on a loaded machine: a boot unit
                # (systemd-tmpfiles-setup) failed. Run the failed units again, once, and say so.
                if "booted degraded" not in str(e):
                    raise
                print(f"{cn.name}: {e}\nstarting the failed units again", flush=True)
                cn.run(["sh", "-c", "for u in $(systemctl --failed --no-legend --plain | cut -d' ' -f1); do "
                        "systemctl reset-failed $u; systemctl restart $u; done"], timeout=120)
                cn.node.wait_running()
            install_kupd(cn, kupd_deb)
            install_packages(cn, release)
            import_images(cn, arts)

        # The nodes in parallel: most of it waits on the disk and on dpkg, not on the CPU.
        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
            for f in [pool.submit(prepare, cn) for cn in nodes]:
                f.result()
        kubeadm_init(nodes[0], release)
        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
            for f in [pool.submit(kubeadm_join, cn) for cn in nodes[1:]]:
                f.result()
        wait_ready(nodes[0], names)
        relay = network.ApiRelay(net.path, (CP_IP, 6443)).start()
        yield nodes, relay
    except BaseException:
        failed = True
        print(diagnostics(nodes), flush=True)
        raise
    finally:
        if relay is not None:
            relay.close()
        # A leak fails the run, but never hides the failure that is already on its way out.
        teardown(nodes, net, report_only=failed)


def sweep_stale(prefix: str = NET_PREFIX) -> list[str]:
    """What an earlier run killed outright (SIGKILL, a lost machine session) left behind: its
    nodes, their cgroups, its network namespace. Only namespaces named `<prefix><pid>` whose pid
    is no longer running are touched, so a run under way is never disturbed. Returns what it removed."""
    removed = []
    netns_dir = Path("/run/netns")
    for ns in sorted(netns_dir.glob(f"{prefix}*")) if netns_dir.is_dir() else []:
        owner = ns.name[len(prefix):]
        if not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue
        inode = ns.stat().st_ino
        # The nodes' systemd-nspawn processes run in that namespace (the nodes in their own):
        # SIGKILL each one's container init first, which takes its whole PID namespace down.
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if (proc / "ns/net").stat().st_ino != inode:
                    continue
                if (proc / "comm").read_text().strip() != "systemd-nspawn":
                    continue
                children = (proc / "task" / proc.name / "children").read_text().split()
            except OSError:
                continue
            for pid in [*children, proc.name]:
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
            removed.append(f"systemd-nspawn {proc.name} of {ns.name}")
        time.sleep(2)
        net = network.Network(ns.name)
        net.delete()
        removed.append(f"network namespace {ns.name}")
    # Node cgroups with nobody left in them (ours are named kupd-node-rc-...).
    for base in nspawn.NodeCgroups("rc-").paths():
        for stale in sorted(base.parent.glob("kupd-node-rc-*")):
            with contextlib.suppress(nspawn.NodeError):
                remove_cgroup_tree(stale)
                removed.append(f"cgroup {stale}")
    return removed


def remove_cgroup_tree(path: Path) -> None:
    """Remove a node's cgroup with its subtree, only if no process is anywhere in it (a live
    node's init is in every one of its cgroups: a run under way is never touched)."""
    dirs = [path, *(d for d in path.rglob("*") if d.is_dir())]
    if any((d / "cgroup.procs").read_text().strip() for d in dirs if (d / "cgroup.procs").exists()):
        raise nspawn.NodeError(f"{path} is in use")
    for d in sorted((d for d in path.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        with contextlib.suppress(OSError):
            d.rmdir()
    try:
        path.rmdir()
    except OSError as e:
        raise nspawn.NodeError(f"{path}: {e}") from e


def diagnostics(nodes: list[ClusterNode], lines: int = 80) -> str:
    """What a failure report needs from each node: failed units, the journals of kupd, the kubelet
    and containerd, and the containers. Best effort: a node that is gone says so."""
    out = []
    for cn in nodes:
        out.append(f"===== {cn.name}")
        try:
            out.append(cn.run(["systemctl", "--failed", "--no-legend", "--plain"], check=False, timeout=30).stdout)
            for unit, n in (("kupd", lines * 3), ("kubelet", lines), ("containerd", lines // 2)):
                out.append(f"----- journal of {unit} (last {n} lines)")
                out.append(cn.node.journal("-u", unit, "-n", str(n)))
            out.append("----- crictl ps -a")
            out.append(cn.run(["crictl", "ps", "-a"], check=False, timeout=30).stdout)
        except Exception as e:  # the node may be down: the report still gets the others
            out.append(f"(no diagnostics: {e})\n{cn.node.console_tail(2000)}")
    return "\n".join(out)


def teardown(nodes: list[ClusterNode], net: network.Network, report_only: bool = False) -> None:
    """Every node killed (their state is thrown away, so no clean power-off: that takes minutes),
    their cgroups removed, the network namespace deleted; then checked, so that a leak fails the
    test run instead of piling up on the machine."""
    errors = []
    for cn in nodes:
        try:
            cn.node.terminate()
        except Exception as e:
            errors.append(f"{cn.name}: {e}")
    net.delete()
    errors += leftovers(nodes, net)
    if errors:
        message = "the real cluster was not cleaned up: " + "; ".join(errors)
        if report_only:
            print(message, flush=True)
            return
        raise nspawn.NodeError(message)


def leftovers(nodes: list[ClusterNode], net: network.Network) -> list[str]:
    found = []
    for cn in nodes:
        if cn.node.proc is not None and cn.node.proc.poll() is None:
            found.append(f"{cn.name}: systemd-nspawn {cn.node.proc.pid} still running")
        found += [f"{cn.name}: cgroup {p} left" for p in nspawn.NodeCgroups(cn.node.cgroup_name).paths() if p.exists()]
    if net.path.exists():
        found.append(f"network namespace {net.name} left")
    return found


def main(argv: list[str]) -> int:
    """python -m tests.realcluster.cluster [N]: a cluster of N nodes (default 3) to poke at; Ctrl-C ends it."""
    count = int(argv[0]) if argv else 3
    arts = artifacts.build()
    names = ["rc-cp-1"] + [f"rc-w-{i}" for i in range(1, count)]
    workdir = nspawn.cache_dir() / "nodes" / "realcluster-manual"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    deb = Path(subprocess.run([str(ROOT / "packaging/build-deb.sh")], capture_output=True, text=True,
                              check=True).stdout.strip().splitlines()[-1])
    with real_cluster(names, workdir, arts, artifacts.FROM, "kupd-rc-manual", deb) as (nodes, relay):
        print(f"cluster up: {[n.name for n in nodes]}; API relay 127.0.0.1:{relay.port}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
