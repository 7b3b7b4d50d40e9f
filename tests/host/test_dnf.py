"""RealHost on dnf: real dnf and rpm against generated rpm repositories, in throwaway install roots."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kupd.errors import ValidationError
from kupd.host import runner
from kupd.host.dnf import DnfManager
from kupd.host.packages import NoSpace, PackageNotFound, RepositoryError, UnsignedRepository
from kupd.host.real import NodeStatus, RealHost, RealHostConfig
from kupd.host.sources import BundleError, PackageSource
from kupd.versions import Version
from tests.host import repo_builder as rb

pytestmark = pytest.mark.skipif(not (shutil.which("dnf") and shutil.which("rpmbuild")),
                                reason="dnf and rpmbuild are needed (apt-get install dnf rpm createrepo-c)")


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> rb.RpmRepos:
    return rb.build_rpm_repos(tmp_path_factory.mktemp("rpm-repos"))


@pytest.fixture(scope="module")
def server(repos: rb.RpmRepos) -> Iterator[rb.Server]:
    s = rb.Server(repos.signed.parent)
    yield s
    s.close()


@dataclass
class FakeCluster:
    apiserver: str = "v1.31.2"
    kubelet: str = "v1.31.2"

    apiservers: dict[str, str] | None = None

    def apiserver_version(self) -> Version:
        return Version.parse(self.apiserver)

    def apiserver_versions(self) -> dict[str, Version]:
        return {n: Version.parse(v) for n, v in (self.apiservers or {"cp-1": self.apiserver}).items()}

    def node_status(self, name: str) -> NodeStatus:
        return NodeStatus(True, self.kubelet)


def make_host(root: Path, source: PackageSource, tools: Path, cluster: FakeCluster) -> RealHost:
    config = RealHostConfig(
        node_name="node-1", root=str(root), package_manager="dnf", source=source, kubeconfig=None,
        systemctl=str(rb.fake_systemctl(tools)), min_free_mb=1, releasever="9",
    )
    return RealHost(config, cluster=cluster)


def scripts(root: Path) -> list[str]:
    return (root / "var/log/kupd-test/scripts.log").read_text().splitlines()


def test_upgrade_end_to_end(tmp_path: Path, repos: rb.RpmRepos) -> None:
    root = tmp_path / "root"
    cluster = FakeCluster("v1.30.5", "v1.30.5")
    host = make_host(root, PackageSource(kind="bundle", bundle=str(repos.bundle)), tmp_path / "tools", cluster)
    host.configure_repository("v1.30.5")
    host.install_kubeadm("v1.30.5")
    host.install_kubelet("v1.30.5", "1.7.20")
    dnf = DnfManager(str(root), releasever="9")
    assert dnf.installed("kubelet") == "1.30.5-150500.1.1"
    assert all(dnf.is_held(n) for n in ("kubeadm", "kubelet", "kubectl"))

    host.preflight("v1.31.2")
    host.configure_repository("v1.31.1")
    repo = (root / "etc/yum.repos.d/kubernetes.repo").read_text()
    assert f"baseurl=file://{repos.bundle}/v1.31/rpm/" in repo
    assert "exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni" in repo
    host.install_kubeadm("v1.31.1")
    # The exclude line is the hold: a plain `dnf upgrade` leaves the Kubernetes packages alone.
    runner.run([*dnf._base(), "upgrade"])
    assert dnf.installed("kubeadm") == "1.31.1-150500.1.1"
    assert dnf.installed("kubelet") == "1.30.5-150500.1.1"
    assert host.newest_patch("v1.31") == "v1.31.2"

    host.install_kubeadm("v1.31.2")
    host.kubeadm_upgrade("v1.31.2", first_control_plane=False, control_plane=False)
    cluster.apiserver, cluster.kubelet = "v1.31.2", "v1.31.2"
    host.install_kubelet("v1.31.2", "1.7.22")
    host.restart_services()
    host.verify("v1.31.2")
    facts = host.facts()
    assert (facts.package_manager, facts.kubeadm, facts.kubelet, facts.containerd) == (
        "dnf", "v1.31.2", "v1.31.2", "1.7.22")
    assert "post kubeadm 1.31.2-150500.1.1 2" in scripts(root)
    # Again, as after a crash: nothing is reinstalled.
    count = len(scripts(root))
    host.install_kubeadm("v1.31.2")
    host.install_kubelet("v1.31.2", "1.7.22")
    assert len(scripts(root)) == count


def test_version_not_in_repository(tmp_path: Path, repos: rb.RpmRepos) -> None:
    root = tmp_path / "root"
    host = make_host(root, PackageSource(kind="bundle", bundle=str(repos.bundle)), tmp_path / "tools",
                     FakeCluster())
    with pytest.raises(PackageNotFound, match=r"kubeadm 1\.31\.7 is not in the package repository"):
        host.configure_repository("v1.31.7")
    with pytest.raises(PackageNotFound):
        host.install_kubeadm("v1.31.7")
    assert DnfManager(str(root)).installed("kubeadm") is None
    with pytest.raises(ValidationError):
        DnfManager(str(root)).install({"kubeadm": "1.31.2-150500.1.1 --nogpgcheck"})


def test_repository_unreachable(tmp_path: Path) -> None:
    root = tmp_path / "root"
    source = PackageSource(kind="mirror", url=f"http://127.0.0.1:{rb.closed_port()}/{{minor}}/rpm/")
    host = make_host(root, source, tmp_path / "tools", FakeCluster())
    with pytest.raises(RepositoryError, match="repository unreachable"):
        host.configure_repository("v1.31.2")


def test_missing_bundle(tmp_path: Path) -> None:
    host = make_host(tmp_path / "root", PackageSource(kind="bundle", bundle=str(tmp_path / "nothing")),
                     tmp_path / "tools", FakeCluster())
    with pytest.raises(BundleError, match=r"cannot read manifest\.sha256"):
        host.configure_repository("v1.31.2")


def test_signed_mirror(tmp_path: Path, server: rb.Server) -> None:
    root = tmp_path / "root"
    source = PackageSource(kind="mirror", url=server.url + "/signed/{minor}/rpm/")
    host = make_host(root, source, tmp_path / "tools", FakeCluster())
    host.configure_repository("v1.31.2")
    repo = (root / "etc/yum.repos.d/kubernetes.repo").read_text()
    assert f"gpgcheck=1\ngpgkey={server.url}/signed/v1.31/rpm/repodata/repomd.xml.key\n" in repo
    host.install_kubeadm("v1.31.2")
    assert DnfManager(str(root)).installed("kubeadm") == "1.31.2-150500.1.1"


def test_unsigned_packages_are_refused(tmp_path: Path, server: rb.Server) -> None:
    root = tmp_path / "root"
    source = PackageSource(kind="mirror", url=server.url + "/bundle/{minor}/rpm/",
                           key_url=server.url + "/signed/{minor}/rpm/repodata/repomd.xml.key")
    host = make_host(root, source, tmp_path / "tools", FakeCluster())
    host.configure_repository("v1.31.2")
    with pytest.raises(UnsignedRepository):
        host.install_kubeadm("v1.31.2")
    assert DnfManager(str(root)).installed("kubeadm") is None


def test_disk_full_then_next_attempt_continues(tmp_path: Path, repos: rb.RpmRepos) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        root = mnt / "root"
        host = make_host(root, PackageSource(kind="bundle", bundle=str(repos.bundle)), tmp_path / "tools",
                         FakeCluster())
        host.configure_repository("v1.31.2")
        filler = mnt / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            f.write(b"\0" * (os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize))
        with pytest.raises(NoSpace, match="disk full") as err:
            host.install_kubeadm("v1.31.2")
        assert "No space left on device" in str(err.value)
        filler.unlink()
        host.install_kubeadm("v1.31.2")
        assert DnfManager(str(root)).installed("kubeadm") == "1.31.2-150500.1.1"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
