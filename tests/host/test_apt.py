"""RealHost on apt: real apt (python-apt) and dpkg against generated repositories, in throwaway roots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from kupd.api import models
from kupd.errors import CommandError, RetryableError, ValidationError
from kupd.host.apt import AptManager
from kupd.host.base import Host
from kupd.host.packages import NoSpace, PackageLocked, PackageNotFound, RepositoryError, UnsignedRepository
from kupd.host.real import NodeStatus, RealHost, RealHostConfig
from kupd.host.sources import PackageSource
from kupd.versions import SkewError, Version
from tests.host import repo_builder as rb

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> rb.Repos:
    return rb.build_deb_repos(tmp_path_factory.mktemp("deb-repos"))


@pytest.fixture(scope="module")
def server(repos: rb.Repos) -> Iterator[rb.Server]:
    s = rb.Server(repos.base.parent)
    yield s
    s.close()


@dataclass
class FakeCluster:
    apiserver: str = "v1.31.2"
    ready: bool = True
    kubelet: str = "v1.31.2"

    def apiserver_version(self) -> Version:
        return Version.parse(self.apiserver)

    def node_status(self, name: str) -> NodeStatus:
        return NodeStatus(self.ready, self.kubelet)


def make_host(root: Path, source: PackageSource, tools: Path, cluster: FakeCluster | None = None) -> RealHost:
    config = RealHostConfig(
        node_name="node-1",
        root=str(root),
        package_manager="apt",
        source=source,
        kubeconfig=None,
        systemctl=str(rb.fake_systemctl(tools)),
        apt_sandbox_user="root",
        min_free_mb=1,
        node_ready_timeout=0.2,
        node_ready_poll=0.05,
    )
    return RealHost(config, cluster=cluster or FakeCluster())


def as_host(host: RealHost) -> Host:
    """mypy --strict checks here that RealHost implements the Host protocol exactly."""
    return host


def mirror(server: rb.Server) -> PackageSource:
    return PackageSource(kind="mirror", url=server.url + "/repo/{minor}/deb/")


def log(root: Path, name: str) -> list[str]:
    path = root / "var/log/kupd-test" / name
    return path.read_text().splitlines() if path.exists() else []


def at_v130(host: RealHost) -> None:
    """A node as kubeadm left it at v1.30.5, with the packages held like the upstream docs say."""
    host.configure_repository("v1.30.5")
    host.install_kubeadm("v1.30.5")
    host.cluster = FakeCluster(apiserver="v1.30.5", kubelet="v1.30.5")
    host.install_kubelet("v1.30.5", "1.7.20")


def test_upgrade_first_control_plane_end_to_end(tmp_path: Path, server: rb.Server) -> None:
    root = tmp_path / "root"
    host = make_host(root, mirror(server), tmp_path / "tools")
    assert as_host(host) is host
    at_v130(host)
    apt = AptManager(str(root))
    assert all(apt.is_held(n) for n in ("kubeadm", "kubelet", "kubectl"))
    assert host.facts().kubelet == "v1.30.5"
    assert not Path("/var/log/kupd-test").exists(), "nothing may land in the machine's own root"

    (root / "etc/kupd-test").mkdir(parents=True)
    (root / "etc/kupd-test/plan.txt").write_text((FIXTURES / "kubeadm-upgrade-plan-v1.31.txt").read_text())
    host.preflight("v1.31.2")
    host.configure_repository("v1.31.2")
    sources = (root / "etc/apt/sources.list.d/kubernetes.sources").read_text()
    assert "/repo/v1.31/deb/" in sources and "Signed-By: " in sources
    assert host.newest_patch("v1.31") == "v1.31.2"
    host.install_kubeadm("v1.31.2")
    assert apt.installed("kubeadm") == "1.31.2-1.1" and apt.installed("kubelet") == "1.30.5-1.1"
    host.kubeadm_upgrade("v1.31.2", first_control_plane=True, control_plane=True)
    host.cluster = FakeCluster(apiserver="v1.31.2", kubelet="v1.31.2")
    host.install_kubelet("v1.31.2", "1.7.22")
    host.restart_services()
    host.verify("v1.31.2")

    facts = host.facts()
    assert (facts.package_manager, facts.kubeadm, facts.kubelet, facts.kubectl, facts.containerd) == (
        "apt", "v1.31.2", "v1.31.2", "v1.31.2", "1.7.22")
    assert all(apt.is_held(n) for n in ("kubeadm", "kubelet", "kubectl"))
    assert not apt.is_held("containerd")
    assert "postinst kubeadm 1.31.2-1.1 configure 1.30.5-1.1" in log(root, "scripts.log")
    assert "kubeadm upgrade apply v1.31.2 --yes" in log(root, "argv.log")
    plan = json.loads((root / "var/lib/kupd/host/kubeadm-plan-v1.31.2.json").read_text())
    assert plan["clusterVersion"] == "v1.30.5"
    systemctl = (tmp_path / "tools/systemctl.log").read_text().splitlines()
    assert systemctl[-5:-2] == ["systemctl daemon-reload", "systemctl restart containerd.service",
                                "systemctl restart kubelet.service"]
    reports = [json.loads(line) for line in (root / "var/lib/kupd/host/packages.log").read_text().splitlines()]
    assert reports[-2]["step"] == "kubeadm" and reports[-2]["unheld"] == ["kubeadm"]
    assert reports[-2]["extra"] == ["cri-tools=1.31.1-1.1"]
    assert {c["name"] for c in reports[-1]["changes"]} == {"kubelet", "kubectl", "containerd"}

    # Every step again, as after a crash: the work is found done and nothing runs twice.
    scripts, argv = len(log(root, "scripts.log")), log(root, "argv.log").count("kubeadm upgrade apply v1.31.2 --yes")
    host.preflight("v1.31.2")
    host.configure_repository("v1.31.2")
    host.install_kubeadm("v1.31.2")
    host.kubeadm_upgrade("v1.31.2", first_control_plane=True, control_plane=True)
    host.install_kubelet("v1.31.2", "1.7.22")
    host.restart_services()
    host.verify("v1.31.2")
    assert len(log(root, "scripts.log")) == scripts
    assert log(root, "argv.log").count("kubeadm upgrade apply v1.31.2 --yes") == argv
    assert (tmp_path / "tools/systemctl.log").read_text().count("restart containerd.service") == 1


def test_worker_runs_upgrade_node_and_waits_for_ready(tmp_path: Path, server: rb.Server) -> None:
    root = tmp_path / "root"
    host = make_host(root, mirror(server), tmp_path / "tools")
    at_v130(host)
    host.configure_repository("v1.31.2")
    host.install_kubeadm("v1.31.2")
    host.kubeadm_upgrade("v1.31.2", first_control_plane=False, control_plane=False)
    assert "kubeadm upgrade node" in log(root, "argv.log")
    assert not any("upgrade apply" in line for line in log(root, "argv.log"))
    host.cluster = FakeCluster(apiserver="v1.31.2", ready=True, kubelet="v1.30.5")
    host.install_kubelet("v1.31.2", None)
    host.restart_services()
    with pytest.raises(RetryableError, match=r"Node node-1 is Ready at kubelet v1.30.5; waiting for Ready at v1.31.2"):
        host.verify("v1.31.2")
    host.cluster = FakeCluster(kubelet="v1.31.2")
    host.verify("v1.31.2")


def test_kubelet_never_newer_than_apiserver(tmp_path: Path, server: rb.Server) -> None:
    root = tmp_path / "root"
    host = make_host(root, mirror(server), tmp_path / "tools")
    at_v130(host)
    host.configure_repository("v1.31.2")
    host.cluster = FakeCluster(apiserver="v1.30.5")
    with pytest.raises(SkewError) as err:
        host.install_kubelet("v1.31.2", None)
    assert err.value.rule == "kubelet-not-newer-than-apiserver"
    assert AptManager(str(root)).installed("kubelet") == "1.30.5-1.1"
    with pytest.raises(SkewError, match="one-minor-at-a-time"):
        host.preflight("v1.32.0")
    with pytest.raises(SkewError, match="no-downgrade"):
        host.preflight("v1.29.9")


def test_version_not_in_repository(tmp_path: Path, server: rb.Server) -> None:
    root = tmp_path / "root"
    host = make_host(root, mirror(server), tmp_path / "tools")
    at_v130(host)
    with pytest.raises(PackageNotFound, match=r"kubeadm 1\.31\.9 is not in the package repository") as err:
        host.configure_repository("v1.31.9")
    assert "1.31.2-1.1" in str(err.value)
    with pytest.raises(PackageNotFound, match=r"kubeadm 1\.31\.9"):
        host.install_kubeadm("v1.31.9")
    assert AptManager(str(root)).installed("kubeadm") == "1.30.5-1.1"
    host.install_kubeadm("v1.31.2")  # the next attempt, with a version that exists, continues


def test_repository_unreachable(tmp_path: Path, server: rb.Server) -> None:
    root = tmp_path / "root"
    port = rb.closed_port()
    host = make_host(root, PackageSource(kind="mirror", url=f"http://127.0.0.1:{port}/{{minor}}/deb/"),
                     tmp_path / "tools")
    with pytest.raises(RepositoryError, match="cannot fetch the signing key"):
        host.configure_repository("v1.31.2")
    # The key is reachable but the repository is not: apt's own fetch fails.
    source = PackageSource(kind="mirror", url=f"http://127.0.0.1:{port}/{{minor}}/deb/",
                           key_url=server.url + "/repo/{minor}/deb/Release.key")
    host = make_host(root, source, tmp_path / "tools")
    with pytest.raises(RepositoryError, match="repository unreachable"):
        host.configure_repository("v1.31.2")
    assert isinstance(RepositoryError("x"), RetryableError)


def test_unsigned_repository_is_refused(tmp_path: Path, server: rb.Server, repos: rb.Repos) -> None:
    root = tmp_path / "root"
    source = PackageSource(kind="mirror", url=server.url + "/unsigned/{minor}/deb/",
                           key_url=server.url + "/repo/{minor}/deb/Release.key")
    host = make_host(root, source, tmp_path / "tools")
    with pytest.raises(UnsignedRepository, match="not signed"):
        host.configure_repository("v1.31.2")
    assert AptManager(str(root)).installed("kubeadm") is None


def test_repository_signed_by_another_key_is_refused(tmp_path: Path, server: rb.Server, repos: rb.Repos) -> None:
    other = rb.make_key(tmp_path / "other-key")
    served = repos.base.parent / "other-key"
    served.mkdir(exist_ok=True)
    (served / "Release.key").write_text(other.public_asc.read_text())
    source = PackageSource(kind="mirror", url=server.url + "/repo/{minor}/deb/",
                           key_url=server.url + "/other-key/Release.key")
    host = make_host(tmp_path / "root", source, tmp_path / "tools")
    with pytest.raises(UnsignedRepository, match="NO_PUBKEY"):
        host.configure_repository("v1.31.2")


def test_dpkg_lock_held(tmp_path: Path, server: rb.Server) -> None:
    root = tmp_path / "root"
    host = make_host(root, mirror(server), tmp_path / "tools")
    host.configure_repository("v1.30.5")
    lock = root / "var/lib/dpkg/lock-frontend"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl,sys,time; f=open(sys.argv[1],'w'); fcntl.lockf(f, fcntl.LOCK_EX); print('locked',"
         " flush=True); time.sleep(60)", str(lock)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(PackageLocked) as err:
            host.install_kubeadm("v1.30.5")
        assert isinstance(err.value, RetryableError) and err.value.delay > 0
    finally:
        holder.kill()
        holder.wait()
    host.install_kubeadm("v1.30.5")
    assert AptManager(str(root)).installed("kubeadm") == "1.30.5-1.1"


def test_holds_released_restored_and_other_packages_untouched(tmp_path: Path, server: rb.Server) -> None:
    root = tmp_path / "root"
    host = make_host(root, mirror(server), tmp_path / "tools")
    at_v130(host)
    apt = AptManager(str(root))
    apt.install({"unrelated": "1.0-1"}, hold=())
    # the operator held containerd themselves
    subprocess.run(["dpkg", f"--root={root}", "--set-selections"], input="containerd hold\n", text=True,
                   check=True)
    assert apt.is_held("kubectl") and apt.is_held("containerd") and not apt.is_held("unrelated")
    host.configure_repository("v1.31.2")
    report = apt.install({"kubectl": "1.31.1-1.1", "containerd": "1.7.22-1"})
    assert report.unheld == ("containerd", "kubectl") and report.held == ("containerd", "kubectl")
    assert [(c.name, c.old, c.new) for c in report.changes] == [
        ("kubectl", "1.30.5-1.1", "1.31.1-1.1"), ("containerd", "1.7.20-1", "1.7.22-1")]
    assert apt.is_held("kubectl") and apt.is_held("containerd")
    host.install_kubeadm("v1.31.2")  # needs cri-tools >= 1.31: the one dependency kupd may upgrade
    assert apt.installed("cri-tools") == "1.31.1-1.1"
    assert apt.installed("kubelet") == "1.30.5-1.1", "packages not asked about stay untouched"
    assert apt.installed("unrelated") == "1.0-1", "packages not asked about stay untouched"
    assert apt.available("unrelated") == ["2.0-1"]


def test_hostile_values_are_refused(tmp_path: Path, server: rb.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("KUPD_AUDIT_LOG", str(audit))
    root = tmp_path / "root"
    host = make_host(root, mirror(server), tmp_path / "tools")
    for bad in ("v1.31.2; rm -rf /", "1.31.2", "v1.31.2\n", "--help"):
        with pytest.raises(ValidationError):
            host.configure_repository(bad)
    with pytest.raises(ValidationError):
        host.install_kubelet("v1.31.2", "1.7.22 && reboot")
    with pytest.raises(ValidationError):
        AptManager(str(root)).install({"kubeadm": "1.31.2-1.1 --force-all"})
    with pytest.raises(ValidationError):
        AptManager(str(root)).install({"-oDPkg::Pre-Invoke=x": "1"})
    with pytest.raises(ValidationError):
        PackageSource(kind="mirror", url="http://example.com/'$(reboot)'/")
    with pytest.raises(ValidationError):
        replace(host.config, node_name="Bad Name")
    with pytest.raises(ValidationError):
        host.kubeadm_upgrade("v1.31.2 --ignore-preflight-errors=all", True, True)
    assert not (root / "etc/apt/sources.list.d/kubernetes.sources").exists()
    argvs = [json.loads(line)["argv"] for line in audit.read_text().splitlines()] if audit.exists() else []
    assert not any(bad in arg for argv in argvs for arg in argv for bad in ("rm -rf", "reboot", "--force-all",
                                                                            "Pre-Invoke", "ignore-preflight"))


def test_list_format_is_kept(tmp_path: Path, server: rb.Server) -> None:
    root = tmp_path / "root"
    (root / "etc/apt/sources.list.d").mkdir(parents=True)
    listing = root / "etc/apt/sources.list.d/kubernetes.list"
    listing.write_text("deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] "
                       "https://pkgs.k8s.io/core:/stable:/v1.30/deb/ /\n")
    # a mirror of pkgs.k8s.io/core:/stable:/ given by its base URL, as a DirectUpdate spells it
    source = PackageSource.from_model(
        models.parse_spec(models.PackageSource, {"type": "mirror", "mirror": {"url": server.url + "/repo"}}))
    host = make_host(root, source, tmp_path / "tools")
    host.configure_repository("v1.31.2")
    assert f"{server.url}/repo/v1.31/deb/ /" in listing.read_text()
    assert not (root / "etc/apt/sources.list.d/kubernetes.sources").exists()
    # The coordinator's question about another minor leaves this node's package source alone.
    before = listing.read_text()
    assert host.newest_patch("v1.30") == "v1.30.5"
    assert listing.read_text() == before
    assert AptManager(str(root)).available("kubeadm") == ["1.31.1-1.1", "1.31.2-1.1"]
    with pytest.raises(RepositoryError, match="404"):  # a minor not published (yet)
        host.newest_patch("v1.29")


def test_air_gap_bundle(tmp_path: Path, repos: rb.Repos) -> None:
    root = tmp_path / "root"
    host = make_host(root, PackageSource(kind="bundle", bundle=str(repos.bundle)), tmp_path / "tools")
    host.configure_repository("v1.31.2")
    assert "URIs: file:" in (root / "etc/apt/sources.list.d/kubernetes.sources").read_text()
    host.install_kubeadm("v1.31.2")
    assert host.facts().kubeadm == "v1.31.2"


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], check=True,
                       capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path, leave: int) -> Path:
    filler = directory / "filler"
    free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
    with open(filler, "wb") as f:
        try:
            f.write(b"\0" * max(0, free - leave))
            f.flush()
            os.fsync(f.fileno())
        except OSError:
            pass
    return filler


@pytest.mark.parametrize("leave", [0, 12 * 1024, 48 * 1024])
def test_disk_full_then_next_attempt_continues(
    tiny_fs: Path, tmp_path: Path, server: rb.Server, leave: int
) -> None:
    root = tiny_fs / "root"
    host = make_host(root, mirror(server), tmp_path / "tools")
    at_v130(host)
    host.configure_repository("v1.31.2")
    filler = fill(tiny_fs, leave)
    with pytest.raises(NoSpace) as err:
        host.install_kubeadm("v1.31.2")
    assert isinstance(err.value, RetryableError)
    filler.unlink()
    host.install_kubeadm("v1.31.2")
    apt = AptManager(str(root))
    assert apt.installed("kubeadm") == "1.31.2-1.1" and apt.is_held("kubeadm")
    assert host.facts().kubeadm == "v1.31.2"


def test_kubeadm_failure_leaves_kubelet_untouched(tmp_path: Path, server: rb.Server) -> None:
    root = tmp_path / "root"
    host = make_host(root, mirror(server), tmp_path / "tools")
    at_v130(host)
    host.configure_repository("v1.31.2")
    host.install_kubeadm("v1.31.2")
    (root / "etc/kupd-test").mkdir(parents=True)
    (root / "etc/kupd-test/plan.txt").write_text((FIXTURES / "kubeadm-upgrade-plan-v1.31.txt").read_text())
    (root / "etc/kupd-test/kubeadm-fail").touch()
    with pytest.raises(CommandError) as err:
        host.kubeadm_upgrade("v1.31.2", first_control_plane=True, control_plane=True)
    assert err.value.returncode == 1
    assert "timed out waiting for the condition" in str(err.value)
    assert err.value.argv[-3:] == ["apply", "v1.31.2", "--yes"]
    assert AptManager(str(root)).installed("kubelet") == "1.30.5-1.1"
    assert not list((root / "var/lib/kupd/host").glob("kubeadm-upgraded-*"))
    (root / "etc/kupd-test/kubeadm-fail").unlink()
    host.kubeadm_upgrade("v1.31.2", first_control_plane=True, control_plane=True)
    assert log(root, "argv.log").count("kubeadm upgrade apply v1.31.2 --yes") == 2


def test_alternate_root_settings_do_not_leak(tmp_path: Path) -> None:
    """apt_pkg's configuration is process-wide: after work on a throwaway root, an operation on the
    machine's root must see the machine's own settings (this only reads configuration)."""
    import apt_pkg

    AptManager(str(tmp_path / "root"), sandbox_user="root")._configure()
    assert apt_pkg.config.find_file("Dir::State::status").startswith(str(tmp_path))
    AptManager("/")._configure()
    assert apt_pkg.config.find_file("Dir::State::status") == "/var/lib/dpkg/status"
    assert apt_pkg.config.find_dir("Dir::Etc::sourceparts") == "/etc/apt/sources.list.d/"
    assert not any(o.startswith("--root") for o in apt_pkg.config.value_list("DPkg::Options"))
    assert apt_pkg.config.find("APT::Sandbox::User") in ("", "_apt")


def test_from_settings(tmp_path: Path, server: rb.Server) -> None:
    """How the daemon builds the host: its Settings plus an optional `real` table."""
    from types import SimpleNamespace

    settings = SimpleNamespace(
        kubeconfig="/etc/kupd/kubeconfig", state_dir=str(tmp_path / "state"),
        real={"root": str(tmp_path / "root"), "package_manager": "apt", "apt_sandbox_user": "root",
              "source": {"type": "mirror", "mirror": {"url": server.url + "/repo"}}, "min_free_mb": 1})
    host = RealHost.from_settings(settings, "node-7")
    assert host.config.node_name == "node-7" and host.source.kind == "mirror"
    assert host.state_dir == tmp_path / "root" / str(tmp_path / "state/host").lstrip("/")
    host.set_package_source(models.parse_spec(
        models.PackageSource, {"type": "bundle", "bundle": {"path": "/srv/kupd-bundle", "manifest": "/srv/m"}}))
    assert host.source.bundle == "/srv/kupd-bundle"
    host.set_package_source(None)
    assert host.source.kind == "mirror"
    with pytest.raises(ValidationError):
        RealHost.from_settings(SimpleNamespace(kubeconfig="/k", state_dir="/s", real={"kubeadm": "bin/kubeadm"}),
                               "node-7")
