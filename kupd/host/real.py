"""The real host: apt or dnf packages, kubeadm, systemd, and the Node as the API server sees it.

`RealHostConfig.root` is "/" on a node. The host tests set it to a throwaway directory: apt,
dpkg, dnf and rpm then operate on that root, and the Kubernetes binaries are run from inside
it, so the tests run this same code. systemctl and the cluster are reached from outside the
root (tests pass a recording systemctl and a fake `ClusterView`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kupd import k8s, skew, validate
from kupd.api import models
from kupd.errors import CommandError, PermanentError, RetryableError
from kupd.fsutil import atomic_write
from kupd.host import hazardfacts, packages, parsers, runner, sources
from kupd.host.base import HostFacts
from kupd.host.kubeadm import Kubeadm
from kupd.host.packages import InstallReport, NoSpace, PackageManager, PackageNotFound
from kupd.host.sources import PackageSource
from kupd.host.systemd import Systemd
from kupd.versions import Version, check_kubelet_not_newer, check_node_upgrade

log = logging.getLogger(__name__)

K8S_PACKAGES = ("kubeadm", "kubelet", "kubectl")


@dataclass(frozen=True)
class NodeStatus:
    ready: bool
    kubelet_version: str


class ClusterView(Protocol):
    """What the host needs to know from the API server."""

    def apiserver_version(self) -> Version: ...

    def apiserver_versions(self) -> dict[str, Version]:
        """Each control-plane node's API server version, from its kube-apiserver mirror pod."""

    def node_status(self, name: str) -> NodeStatus: ...


class KubeClusterView:
    """ClusterView through kupd's API client and a kubeconfig (the kubelet's, by default)."""

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = validate.safe_path(kubeconfig, "kubeconfig")

    def _get(self, path: str, what: str, **query: str) -> dict[str, Any]:
        # A client per call: the kubelet's client certificate rotates, and the file names the current one.
        api = k8s.api_client(self.kubeconfig)
        try:
            return api.get(path, **query)
        except k8s.TRANSPORT_ERRORS as e:
            # Whatever the API answers (even a refusal: the kubelet's credential may be mid-rotation),
            # the verify step waits for it; its deadline is the step's, not this call's.
            raise RetryableError(f"cannot read {what}: {e}", 10.0) from e
        finally:
            api.close()

    def apiserver_version(self) -> Version:
        info = self._get("/version", "the API server version")
        return Version.parse(str(info.get("gitVersion", "")).split("+")[0].split("-")[0])

    def apiserver_versions(self) -> dict[str, Version]:
        pods = self._get(k8s.path("", "v1", "pods", namespace="kube-system"), "the kube-apiserver mirror pods",
                         labelSelector="component=kube-apiserver")
        items = pods.get("items")
        return skew.apiservers_from_mirror_pods([p for p in items if isinstance(p, dict)]
                                                if isinstance(items, list) else [])

    def node_status(self, name: str) -> NodeStatus:
        node = self._get(k8s.node_path(name), f"Node {name}")
        info = (node.get("status") or {}).get("nodeInfo") or {}
        return NodeStatus(k8s.ready(node), str(info.get("kubeletVersion", "")))


@dataclass(frozen=True)
class RealHostConfig:
    node_name: str
    """This node's name as the API server knows it."""
    root: str = "/"
    """Root the package manager operates on and the Kubernetes binaries live in; tests only."""
    package_manager: str | None = None
    """apt, dnf or yum; None detects it from the root."""
    source: PackageSource = field(default_factory=PackageSource)
    """Where the Kubernetes packages come from."""
    kubeconfig: str | None = "/etc/kubernetes/kubelet.conf"
    """Kubeconfig for the API server version and Node Ready checks; None disables them."""
    kubeadm: str = "/usr/bin/kubeadm"
    kubelet: str = "/usr/bin/kubelet"
    kubectl: str = "/usr/bin/kubectl"
    containerd: str = "/usr/bin/containerd"
    containerd_package: str = "containerd"
    """containerd.io on Docker's repositories."""
    systemctl: str = "/usr/bin/systemctl"
    """Outside the root: the machine's systemctl."""
    state_dir: str = "/var/lib/kupd/host"
    """Inside the root: plan records, markers."""
    boot_id_file: str = "/proc/sys/kernel/random/boot_id"
    min_free_mb: int = 1024
    """Free space preflight asks for under /var of the root."""
    apt_sandbox_user: str | None = None
    """APT::Sandbox::User; tests set "root" because their repositories sit in private temp dirs."""
    releasever: str | None = None
    services: tuple[str, ...] = ("containerd.service", "kubelet.service")
    """Units verify expects active."""
    kubeadm_ignore_preflight_errors: tuple[str, ...] = ()
    """kubeadm preflight checks `kubeadm upgrade plan/apply/node` ignore, as `kubeadm init/join` were
    told on this node: SystemVerification on a cgroup v1 host (kubeadm >= 1.35 refuses cgroup v1
    unless told, even with the kubelet's failCgroupV1: false)."""
    node_ready_timeout: float = 300.0
    node_ready_poll: float = 5.0

    def __post_init__(self) -> None:
        validate.node_name(self.node_name)
        for name in ("root", "kubeadm", "kubelet", "kubectl", "containerd", "systemctl", "state_dir",
                     "boot_id_file"):
            validate.safe_path(getattr(self, name), name)
        if self.kubeconfig:
            validate.safe_path(self.kubeconfig, "kubeconfig")
        validate.package_name(self.containerd_package, "containerdPackage")
        for check in self.kubeadm_ignore_preflight_errors:
            validate.preflight_check(check)


class RealHost:
    def __init__(
        self,
        config: RealHostConfig,
        cluster: ClusterView | None = None,
        package_manager: PackageManager | None = None,
    ) -> None:
        self.config = config
        self.root = os.path.abspath(config.root)
        options = {k: v for k, v in (("sandbox_user", config.apt_sandbox_user),
                                      ("releasever", config.releasever)) if v}
        self.pm = package_manager or packages.create(config.package_manager, self.root, **options)
        self.family: sources.Family = "deb" if self.pm.name == "apt" else "rpm"
        if cluster is None and config.kubeconfig:
            cluster = KubeClusterView(self._in_root(config.kubeconfig))
        self.cluster = cluster
        self.state_dir = Path(self._in_root(config.state_dir))
        self.kubeadm = Kubeadm(self._in_root(config.kubeadm), str(self.state_dir),
                               ignore_preflight_errors=config.kubeadm_ignore_preflight_errors)
        self.systemd = Systemd(config.systemctl)
        self.source = config.source
        # path -> (the file's identity when run, the version it printed); see _binary_version.
        self._versions: dict[str, tuple[tuple[int, ...], str]] = {}

    @classmethod
    def from_settings(cls, settings: Any, node: str) -> RealHost:
        """The daemon's wiring: the machine's root, the daemon's credentials for the Node checks.

        An optional `settings.real` table (pydantic model or mapping) may set any RealHostConfig
        field by name; its `source` is a packageSource mapping as in a DirectUpdate.
        """
        fields: dict[str, Any] = {"kubeconfig": settings.kubeconfig,
                                  "state_dir": os.path.join(settings.state_dir, "host")}
        real = getattr(settings, "real", None)
        if real is not None:
            extra = real.model_dump() if hasattr(real, "model_dump") else dict(real)
            if isinstance(extra.get("source"), Mapping):
                extra["source"] = PackageSource.from_model(
                    models.parse_spec(models.PackageSource, extra["source"], root="real.source"))
            for key in ("services", "kubeadm_ignore_preflight_errors"):
                if isinstance(extra.get(key), list):
                    extra[key] = tuple(extra[key])
            fields.update({k: v for k, v in extra.items() if v is not None or k == "kubeconfig"})
        return cls(RealHostConfig(node_name=node, **fields))

    def set_package_source(self, source: models.PackageSource | None) -> None:
        """Use the package source of the DirectUpdate being run (its spec.packageSource)."""
        self.source = PackageSource.from_model(source) if source is not None else self.config.source

    def _in_root(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/")) if self.root != "/" else path

    # -- facts ------------------------------------------------------------------------------------

    def _binary_version(self, path: str, args: list[str], parse: Any) -> str | None:
        """The binary's version, run once per version of the file: the member Lease carries these
        and is renewed every few seconds during an operation, and running kubeadm, the kubelet,
        kubectl and containerd each time cost ~0.5 s of CPU per renewal on a real node (100+ MB Go
        binaries). A package upgrade replaces the file (a new inode), a copy over it changes its
        mtime and ctime: the key sees both. A failure is not cached."""
        full = self._in_root(path)
        if not os.access(full, os.X_OK):
            return None
        try:
            st = os.stat(full)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._versions.get(full)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            version = str(parse(runner.run([full, *args], timeout=30.0).stdout))
        except (CommandError, PermanentError) as e:
            log.warning("cannot read the version of %s: %s", full, e)
            return None
        self._versions[full] = (key, version)
        return version

    def installed_versions(self) -> dict[str, str | None]:
        c = self.config
        return {
            "kubeadm": self._binary_version(c.kubeadm, ["version", "-o", "short"], parsers.kubeadm_version),
            "kubelet": self._binary_version(c.kubelet, ["--version"], parsers.kubelet_version),
            "kubectl": self._binary_version(c.kubectl, ["version", "--client"], parsers.kubectl_version),
            "containerd": self._binary_version(c.containerd, ["--version"], parsers.containerd_version),
        }

    def facts(self) -> HostFacts:
        try:
            boot_id = Path(self.config.boot_id_file).read_text().strip()
        except OSError:
            boot_id = ""
        v = self.installed_versions()
        return HostFacts(self.pm.name, boot_id, v["kubeadm"], v["kubelet"], v["kubectl"], v["containerd"],
                         hazardfacts.read(self.root, v["containerd"]))

    # -- steps ------------------------------------------------------------------------------------

    def preflight(self, version: str) -> None:
        target = Version.parse(validate.k8s_version(version))
        var = Path(self.root) / "var"
        free_mb = shutil.disk_usage(var if var.exists() else self.root).free // (1 << 20)
        if free_mb < self.config.min_free_mb:
            raise NoSpace(f"only {free_mb} MiB free under {var}; the upgrade needs "
                          f"{self.config.min_free_mb} MiB", 300.0)
        v = self.installed_versions()
        check_node_upgrade(
            target,
            Version.parse(v["kubeadm"]) if v["kubeadm"] else None,
            Version.parse(v["kubelet"]) if v["kubelet"] else None,
        )
        source = self.source
        if source.kind == "bundle":
            assert source.bundle is not None
            sources.verify_bundle(source.bundle, sources.minor_of(version), self.family,
                                  source.manifest_sha256, source.manifest)
        if self._repository_minor() == sources.minor_of(version):
            self.pm.refresh()
            self._pins(version, K8S_PACKAGES)
        # Otherwise the target minor's repository is not configured yet: configure_repository
        # checks availability right after switching, before any package changes.

    def _repository_minor(self) -> str | None:
        names = (sources.APT_SOURCES, sources.APT_LIST) if self.family == "deb" else (sources.DNF_REPO,)
        for name in names:
            try:
                return sources.configured_minor((Path(self.root) / name).read_text())
            except FileNotFoundError:
                continue
        return None

    def newest_patch(self, minor: str, source: Mapping[str, Any] | None = None) -> str:
        """Asks the minor's repository of `source` (a DirectUpdate's spec.packageSource; None: this
        node's configured one) through a scratch root of its own, so neither the node's package
        source nor the source the agent is using for its turn is read or changed: the coordinator
        calls this from its own thread."""
        parsed = Version.parse(validate.k8s_version(minor + ".0", "minor"))
        src = (PackageSource.from_model(models.parse_spec(models.PackageSource, source, "spec.packageSource"))
               if source else self.config.source)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix="probe-", dir=self.state_dir))
        try:
            sources.configure(str(probe), self.family, src, str(parsed))
            options = {"sandbox_user": self.config.apt_sandbox_user or "",
                       "releasever": self.config.releasever or "0"}
            pm = packages.create(self.pm.name, str(probe), **{k: v for k, v in options.items() if v})
            pm.refresh()
            offered = pm.available("kubeadm")
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        patches = []
        for pv in offered:
            try:
                v = Version.from_package(pv)
            except PermanentError:
                continue
            if v.minor_key == parsed.minor_key:
                patches.append(v)
        if not patches:
            raise PackageNotFound("kubeadm", minor, offered)
        return str(max(patches))

    def configure_repository(self, version: str) -> None:
        validate.k8s_version(version)
        changed = sources.configure(self.root, self.family, self.source, version)
        log.info("package repository for %s %s", sources.minor_of(version),
                 "configured" if changed else "already configured")
        self.pm.refresh()
        self._pins(version, K8S_PACKAGES)

    def _pins(self, version: str, names: tuple[str, ...]) -> dict[str, str]:
        return {n: packages.resolve(self.pm, n, version) for n in names}

    def install_kubeadm(self, version: str) -> None:
        validate.k8s_version(version)
        self._record("kubeadm", self.pm.install(self._pins(version, ("kubeadm",))))
        self._expect_binary("kubeadm", version)

    def kubeadm_upgrade(self, version: str, first_control_plane: bool, control_plane: bool) -> None:
        validate.k8s_version(version)
        self.kubeadm.upgrade(version, first_control_plane, control_plane or first_control_plane)

    def install_kubelet(self, version: str, containerd: str | None) -> None:
        target = Version.parse(validate.k8s_version(version))
        if containerd:
            validate.containerd_version(containerd)
        if self.cluster is not None:
            check_kubelet_not_newer(target, self._apiserver_for_kubelet())
        pins = self._pins(version, ("kubelet", "kubectl"))
        if containerd:
            name = self.config.containerd_package
            pins[name] = packages.resolve(self.pm, name, containerd)
            if self.pm.installed(name) != pins[name]:
                # Written before the install, so a crash between install and restart still restarts it.
                atomic_write(self._containerd_marker, pins[name].encode(), 0o644)
        self._record("kubelet", self.pm.install(pins))
        self._expect_binary("kubelet", version)
        self._expect_binary("kubectl", version)

    def _apiserver_for_kubelet(self) -> Version:
        """The API server this node's new kubelet must not be newer than, read from the control-plane
        nodes' mirror pods, never through a load balancer: on a control-plane node its own API server
        (kubeadm upgrades it first, in the same turn); elsewhere the oldest of them."""
        assert self.cluster is not None
        versions = self.cluster.apiserver_versions()
        if self.config.node_name in versions:
            return versions[self.config.node_name]
        if not versions:
            # No API server runs as a kubeadm static pod (an external or hand-run control plane): then
            # there is no load balancer to look behind either, and /version is the only source.
            log.warning("no kube-apiserver mirror pod in kube-system (label component=kube-apiserver); "
                        "checking the kubelet against the API server's /version instead")
            return self.cluster.apiserver_version()
        return min(versions.values())

    @property
    def _containerd_marker(self) -> Path:
        return self.state_dir / "containerd-restart-pending"

    def restart_services(self) -> None:
        self.systemd.daemon_reload()
        if self._containerd_marker.exists():
            self.systemd.restart("containerd.service")
        self.systemd.restart("kubelet.service")
        self._containerd_marker.unlink(missing_ok=True)

    def verify(self, version: str) -> None:
        validate.k8s_version(version)
        for unit in self.config.services:
            state = self.systemd.state(unit)
            if state != "active":
                raise RetryableError(f"{unit} is {state}, not active", 10.0)
        for name in K8S_PACKAGES:
            self._expect_binary(name, version)
        if self.cluster is None:
            return
        deadline = time.monotonic() + self.config.node_ready_timeout
        while True:
            status = self.cluster.node_status(self.config.node_name)
            if status.ready and status.kubelet_version == version:
                return
            if time.monotonic() >= deadline:
                raise RetryableError(
                    f"Node {self.config.node_name} is {'Ready' if status.ready else 'not Ready'} at "
                    f"kubelet {status.kubelet_version}; waiting for Ready at {version}", 15.0)
            time.sleep(self.config.node_ready_poll)

    def _expect_binary(self, name: str, version: str) -> None:
        found = self.installed_versions()[name]
        if found != version:
            raise PermanentError(f"{name} reports {found or 'nothing'} after the upgrade to {version}")

    def reboot_required(self) -> bool:
        if (Path(self.root) / "run/reboot-required").exists():
            return True
        tool = Path(self._in_root("/usr/bin/needs-restarting"))
        if self.family == "rpm" and self.root == "/" and tool.exists():
            # needs-restarting -r exits 1 when a reboot is needed.
            return runner.run([str(tool), "-r"], check=False, timeout=120.0).returncode == 1
        return False

    def reboot(self) -> None:
        self.systemd.reboot()

    def _record(self, step: str, report: InstallReport) -> None:
        line = json.dumps({"time": time.time(), "step": step, **asdict(report)}) + "\n"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "packages.log", "a", encoding="utf-8") as f:
            f.write(line)
        log.info("%s packages: %s", step, report)
