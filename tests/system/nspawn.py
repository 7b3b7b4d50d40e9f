"""systemd-nspawn nodes for the system tier: a debootstrapped Debian booting real systemd.

The base root file system is built once with debootstrap and cached under
``$KUPD_CACHE`` (default ``$HOME/.cache/kupd``) in a folder named after a hash of what goes
into it (suite, mirror, package list), so changing the list builds a new one and an old cache
is never reused by mistake. Each node gets its own copy (``cp --reflink=auto -a``) and boots
with ``systemd-nspawn --boot --register=no --keep-unit`` in the background: no machined
registration is needed, which is what makes this work inside a container without a systemd
host. Commands run inside a node through ``nsenter`` into the namespaces of the node's PID 1
(found by its root directory), with a clean environment.

The system tier's nodes share the host's network namespace, so they reach the test control
plane on 127.0.0.1 and must not listen on the same ports. The real-cluster tier gives each node a
network of its own (`launcher` runs nspawn inside the test's namespace) and cgroups of its own
(`own_cgroups`, see `NodeCgroups`).

Usage from a shell (warms the cache, boots a node for poking around):
    python -m tests.system.nspawn base [SUITE]
    python -m tests.system.nspawn boot NAME
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "bookworm"
# Releases the system tier boots (Debian's archive serves both; the host's debootstrap knows them).
SUITES = ("bookworm", "trixie")
# The packages kupd's .deb depends on are in the base image, so `apt-get install ./kupd.deb`
# inside a node needs no network; the rest is what a minimal kubeadm node has. No
# python3-systemd: kupd writes to journald itself (kupd/journal.py), and the tests prove it.
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "apt",
    "python3",
    "python3-apt",
    "ca-certificates",
    "iproute2",
    "procps",
    "gnupg",
    "etcd-client",  # etcdctl, for the etcd snapshot of the first control-plane node
)
NSPAWN_TIMEOUT = 120.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class NodeError(RuntimeError):
    """A node did not do what the test needed; the message says what and shows the output."""


def cache_dir() -> Path:
    base = os.environ.get("KUPD_CACHE") or str(Path.home() / ".cache" / "kupd")
    return Path(base)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt already uses (the only one reachable)."""
    pattern = re.compile(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+/debian)/?(?:\s|$)", re.M)
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        if f.is_file():
            m = pattern.search(f.read_text(errors="replace"))
            if m:
                return m.group(1)
    return "http://deb.debian.org/debian"


def base_key(mirror: str, suite: str = SUITE, extra: Sequence[str] = ()) -> str:
    text = "\n".join([suite, mirror, "minbase", *sorted(BASE_PACKAGES), *sorted(extra)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise NodeError(
            f"missing tools {missing}: install the Debian packages listed in .ci/apt-packages.txt "
            "(debootstrap, systemd-container, util-linux)"
        )


def base_image(suite: str = SUITE, extra: Sequence[str] = ()) -> Path:
    """The cached debootstrapped root of `suite` (with `extra` packages too, e.g. cloud-init);
    built (a few minutes, once) when missing."""
    _require("debootstrap", "systemd-nspawn", "nsenter")
    mirror = debian_mirror()
    prefix = "nspawn-base" if suite == SUITE else f"nspawn-base-{suite}"
    if extra:
        prefix += "-" + "-".join(sorted(extra))
    root = cache_dir() / f"{prefix}-{base_key(mirror, suite, extra)}"
    if (root / ".complete").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / ".nspawn-base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".complete").exists():
            return root
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join((*BASE_PACKAGES, *extra))}",
            suite,
            str(tmp),
            mirror,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=False)
        if proc.returncode != 0:
            raise NodeError(f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr}")
        _prepare_base(tmp)
        (tmp / ".complete").write_text(" ".join(argv) + "\n")
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    return root


def _prepare_base(root: Path) -> None:
    # No getty on a console nobody reads, no first-boot wizard, a clean apt cache.
    for unit in ("getty@tty1.service", "console-getty.service"):
        with contextlib.suppress(FileNotFoundError):
            (root / "etc/systemd/system/getty.target.wants" / unit).unlink()
    (root / "etc/machine-id").write_text("")
    with contextlib.suppress(FileNotFoundError):
        (root / "var/lib/dbus/machine-id").unlink()
    # Node-local apt: never prompt; the base image's sources stay (they are the host's mirror).
    (root / "etc/apt/apt.conf.d/90kupd-test").write_text(
        'APT::Get::Assume-Yes "true";\nAPT::Install-Recommends "false";\nDpkg::Use-Pty "false";\n'
    )
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)


V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")


class NodeCgroups:
    """A cgroup of the node's own in each cgroup v1 controller, beneath this process's cgroup.

    nspawn gives the node a cgroup namespace rooted where nspawn starts. Started inside these
    cgroups, the node's view of every hierarchy begins at its own: the kubelet's /kubepods and
    containerd's cgroups of one node are then apart from another node's, and from the machine's
    (whose own cgroups are only ever added to, under the cgroup this test already runs in).
    """

    def __init__(self, name: str, base: Path = Path("/sys/fs/cgroup")) -> None:
        self.name = f"kupd-node-{name}"
        self.base = base

    def paths(self) -> list[Path]:
        out = []
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(","):
                if c in V1_CONTROLLERS and (self.base / c).is_dir():
                    out.append(self.base / c / path.lstrip("/") / self.name)
        return out

    def create(self) -> None:
        for path in self.paths():
            path.mkdir(exist_ok=True)
            if path.parent.name and (path / "cpuset.cpus").exists():
                # A new v1 cpuset has no CPUs nor memory nodes: nothing could run in it.
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if not (path / f).read_text().strip():
                        (path / f).write_text((path.parent / f).read_text())

    def enter(self) -> None:
        """In the child before exec: move it into the node's cgroups."""
        for path in self.paths():
            (path / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self, timeout: float = 30) -> None:
        """Remove the node's cgroups, deepest first, once no process is left in them."""
        deadline = time.monotonic() + timeout
        for path in self.paths():
            while path.exists():
                dirs = sorted((d for d in path.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts))
                for d in [*dirs, path]:
                    with contextlib.suppress(OSError):
                        d.rmdir()
                if path.exists():
                    if time.monotonic() > deadline:
                        raise NodeError(f"cgroup {path} still busy after {timeout}s")
                    time.sleep(0.5)


@dataclass
class Node:
    """One booted container. `run()` executes inside it; `reboot()` restarts it like a power cycle."""

    name: str
    root: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    boots: int = 0
    extra_args: list[str] = field(default_factory=list)
    own_cgroups: bool = False
    launcher: list[str] = field(default_factory=list)
    """argv prefix that execs systemd-nspawn (e.g. nsenter into a network namespace)."""
    """Boot inside cgroups of the node's own (see `NodeCgroups`), for nodes that run containers."""

    # --- lifecycle -------------------------------------------------------------------------
    def boot(self, timeout: float = NSPAWN_TIMEOUT) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise NodeError(f"{self.name} is already running")
        argv = [
            *self.launcher,
            "systemd-nspawn",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--quiet",
            "--console=pipe",
            "--resolv-conf=copy-host",
            "--timezone=off",
            f"--machine={self.name}",
            f"--hostname={self.name}",
            "-D",
            str(self.root),
            *self.extra_args,
        ]
        self.boots += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        log.write(f"\n===== boot {self.boots}: {' '.join(argv)}\n".encode())
        log.flush()
        cgroups = NodeCgroups(self.cgroup_name) if self.own_cgroups else None
        if cgroups is not None:
            cgroups.create()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={"PATH": PATH, "SYSTEMD_NSPAWN_TMPFS_TMP": "1"},
            # Into the node's cgroups before exec, so nspawn's cgroup namespace is rooted there.
            preexec_fn=cgroups.enter if cgroups is not None else None,
        )
        log.close()
        self.wait_running(timeout)

    def leader(self) -> int:
        """PID (in our namespace) of the node's systemd: the child of systemd-nspawn that is PID 1
        of its own PID namespace."""
        if self.proc is None or self.proc.poll() is not None:
            raise NodeError(f"{self.name}: systemd-nspawn is not running\n{self.console_tail()}")
        candidates: list[int] = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            ppid = re.search(r"^PPid:\s+(\d+)$", status, re.M)
            nspid = re.search(r"^NSpid:\s+(.*)$", status, re.M)
            if ppid and int(ppid.group(1)) == self.proc.pid and nspid and nspid.group(1).split()[-1] == "1":
                candidates.append(int(entry))
        if len(candidates) != 1:
            raise NodeError(f"{self.name}: expected one PID 1 under nspawn {self.proc.pid}, found {candidates}")
        return candidates[0]

    def wait_running(self, timeout: float = NSPAWN_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise NodeError(
                    f"{self.name}: systemd-nspawn exited with {self.proc.returncode}\n{self.console_tail()}"
                )
            try:
                r = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=30)
            except NodeError as e:
                last = str(e)
                time.sleep(0.3)
                continue
            state = r.stdout.strip()
            if state == "running":
                return
            if state == "degraded":
                failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"], check=False)
                units = [line.split()[0] for line in failed.stdout.splitlines() if line.strip()]
                logs = "".join(self.journal("-u", u, "-n", "20") for u in units[:3])
                raise NodeError(f"{self.name} booted degraded:\n{failed.stdout}\n{logs}")
            last = f"{state} {r.stderr.strip()}"
            time.sleep(0.3)
        raise NodeError(
            f"{self.name} did not reach 'running' in {timeout}s (last: {last})\n{self.console_tail()}"
        )

    def stop(self, timeout: float = 60) -> None:
        """Clean power-off: SIGTERM to nspawn makes the node's systemd shut down."""
        if self.proc is None or self.proc.poll() is not None:
            self._remove_cgroups()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(NodeError):
                os.kill(self.leader(), signal.SIGKILL)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._remove_cgroups()

    def terminate(self, timeout: float = 30) -> None:
        """Stop now, not cleanly: SIGKILL the node's PID 1, which takes every process of its PID
        namespace with it (containers included), then nspawn; then remove its cgroups. For nodes
        whose state is thrown away: a clean power-off of a kubelet node takes minutes."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(NodeError, ProcessLookupError):
                os.kill(self.leader(), signal.SIGKILL)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._remove_cgroups()

    @property
    def cgroup_name(self) -> str:
        # Named after the root too: two clusters' nodes of the same name must never share cgroups.
        return f"{self.name}-{hashlib.sha256(str(self.root).encode()).hexdigest()[:8]}"

    def _remove_cgroups(self) -> None:
        if self.own_cgroups:
            NodeCgroups(self.cgroup_name).remove()

    def reboot(self, timeout: float = NSPAWN_TIMEOUT) -> None:
        """`systemctl reboot` inside; nspawn exits 133 ("reboot requested") and we boot it again."""
        if self.proc is None:
            raise NodeError(f"{self.name} was never booted")
        self.run(["systemctl", "reboot"], check=False, timeout=30)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired as e:
            raise NodeError(f"{self.name} did not shut down for reboot\n{self.console_tail()}") from e
        if rc != 133:
            raise NodeError(f"{self.name}: nspawn exited {rc}, not 133 (reboot)\n{self.console_tail()}")
        self.boot(timeout)

    def power_cycle(self, timeout: float = NSPAWN_TIMEOUT) -> None:
        """Pull the plug: SIGKILL nspawn and everything in the node, then boot again."""
        if self.proc is not None and self.proc.poll() is None:
            pid1 = self.leader()
            os.kill(pid1, signal.SIGKILL)  # takes the node's PID namespace down with it
            self.proc.wait(30)
        self.boot(timeout)

    def console_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # --- inside the node -------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 300,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        pid = self.leader()
        full = [
            "nsenter",
            f"--target={pid}",
            "--mount",
            "--uts",
            "--ipc",
            "--net",  # the node's own namespace where it has one (the system tier's share the machine's)
            "--pid",
            "--cgroup",
            "--root",
            "--wd",
            "/usr/bin/env",
            "-i",
            f"PATH={PATH}",
            "LANG=C.UTF-8",
            "DEBIAN_FRONTEND=noninteractive",
            "SYSTEMD_PAGER=",
            "SYSTEMD_COLORS=0",
            *argv,
        ]
        try:
            proc = subprocess.run(
                full, capture_output=True, text=True, timeout=timeout, input=input_text, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise NodeError(f"{self.name}: {list(argv)} timed out after {timeout}s") from e
        if check and proc.returncode != 0:
            raise NodeError(
                f"{self.name}: {list(argv)} exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
            )
        return proc

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file into the node's file system (from the host side; no chroot escape: the
        path is joined under the node's root after refusing '..')."""
        if ".." in Path(path).parts or not path.startswith("/"):
            raise ValueError(path)
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def copy_in(self, src: Path, dest: str) -> None:
        if ".." in Path(dest).parts or not dest.startswith("/"):
            raise ValueError(dest)
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check)

    def journal(self, *args: str) -> str:
        return self.run(["journalctl", "--no-pager", "-o", "cat", *args], check=False).stdout


def make_node(name: str, workdir: Path, base: Path | None = None) -> Node:
    """A fresh copy of the base image under workdir/name, with its own machine id."""
    base = base or base_image()
    root = workdir / name
    if root.exists():
        shutil.rmtree(root)
    subprocess.run(["cp", "--reflink=auto", "-a", str(base), str(root)], check=True, timeout=600)
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    (root / "etc/hostname").write_text(name + "\n")
    return Node(name=name, root=root, log_path=workdir / f"{name}.console.log")


@contextlib.contextmanager
def booted_nodes(names: Sequence[str], workdir: Path, suite: str = SUITE, extra: Sequence[str] = (),
                 prepare: Callable[[Node], None] | None = None) -> Iterator[list[Node]]:
    """Boot copies of the base image; `prepare` runs on each node's root before it boots."""
    base = base_image(suite, extra)
    nodes = [make_node(n, workdir, base) for n in names]
    try:
        for n in nodes:
            if prepare is not None:
                prepare(n)
            n.boot()
        yield nodes
    finally:
        for n in nodes:
            with contextlib.suppress(Exception):
                n.stop()


def main(argv: list[str]) -> int:
    if argv[:1] == ["base"]:
        print(base_image(*argv[1:2]))
        return 0
    if len(argv) == 2 and argv[0] == "boot":
        workdir = cache_dir() / "nodes"
        workdir.mkdir(parents=True, exist_ok=True)
        node = make_node(argv[1], workdir)
        node.boot()
        print(f"{node.name} booted, leader pid {node.leader()}, root {node.root}; Ctrl-C stops it")
        try:
            assert node.proc is not None
            node.proc.wait()
        except KeyboardInterrupt:
            node.stop()
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
