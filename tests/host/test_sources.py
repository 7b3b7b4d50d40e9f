"""Package sources: per-minor repository definitions, mirrors, and air-gap bundles checked against
their sha256 manifest before any package manager reads them."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from kupd.api import models
from kupd.errors import ValidationError
from kupd.host import sources
from kupd.host.packages import RepositoryError
from kupd.host.sources import BundleError, PackageSource
from tests.host import repo_builder as rb


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("bundle-src")
    for minor in ("v1.30", "v1.31"):
        rb.build_apt_repo(work / "bundle" / minor / "deb", rb.DEB_VERSIONS[minor][:2], None, work / minor)
    rb.write_manifest(work / "bundle")
    return work / "bundle"


@pytest.fixture
def copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def test_upstream_repository_per_minor() -> None:
    deb = sources.repository(PackageSource(), "v1.31.2", "deb")
    assert deb.url == "https://pkgs.k8s.io/core:/stable:/v1.31/deb/"
    assert deb.key_url == "https://pkgs.k8s.io/core:/stable:/v1.31/deb/Release.key"
    text = sources.render_deb822(deb, "/etc/apt/keyrings/kubernetes-apt-keyring.asc")
    assert "URIs: https://pkgs.k8s.io/core:/stable:/v1.31/deb/\nSuites: /\n" in text
    assert "Signed-By: /etc/apt/keyrings/kubernetes-apt-keyring.asc" in text
    assert sources.configured_minor(text) == "v1.31"
    rpm = sources.render_dnf(sources.repository(PackageSource(), "v1.30.5", "rpm"))
    assert "baseurl=https://pkgs.k8s.io/core:/stable:/v1.30/rpm/\n" in rpm
    assert "gpgcheck=1\ngpgkey=https://pkgs.k8s.io/core:/stable:/v1.30/rpm/repodata/repomd.xml.key\n" in rpm
    assert "exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n" in rpm


def test_mirror_templates() -> None:
    src = PackageSource(kind="mirror", url="https://mirror.example.com/k8s/{minor}/{family}")
    repo = sources.repository(src, "v1.32.0", "rpm")
    assert repo.url == "https://mirror.example.com/k8s/v1.32/rpm/"
    assert repo.key_url == "https://mirror.example.com/k8s/v1.32/rpm/repodata/repomd.xml.key"
    listing = sources.render_list(sources.repository(src, "v1.32.0", "deb"), "/k.asc")
    assert listing.endswith("deb [signed-by=/k.asc] https://mirror.example.com/k8s/v1.32/deb/ /\n")


@pytest.mark.parametrize(
    "source",
    [
        {"kind": "mirror"},
        {"kind": "mirror", "url": "ftp://mirror.example.com/"},
        {"kind": "mirror", "url": "https://mirror.example.com/a b/"},
        {"kind": "mirror", "url": "https://mirror.example.com/$(reboot)/"},
        {"kind": "mirror", "url": "https://m.example.com/", "key_url": "https://m.example.com/`id`"},
        {"kind": "bundle"},
        {"kind": "bundle", "bundle": "relative/path"},
        {"kind": "bundle", "bundle": "/srv/../etc"},
        {"kind": "bundle", "bundle": "/srv/b", "manifest_sha256": "xyz"},
        {"kind": "carrier-pigeon"},
    ],
)
def test_bad_sources_are_refused(source: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        PackageSource(**source)  # type: ignore[arg-type]


def test_bundle_verifies(copy: Path) -> None:
    assert sources.verify_bundle(str(copy), "v1.31", "deb") > 3
    digest = hashlib.sha256((copy / "manifest.sha256").read_bytes()).hexdigest()
    sources.verify_bundle(str(copy), "v1.31", "deb", digest)
    with pytest.raises(BundleError, match="does not match the pinned sha256"):
        sources.verify_bundle(str(copy), "v1.31", "deb", "0" * 64)


def test_bundle_tampered_file(copy: Path) -> None:
    deb = next((copy / "v1.31/deb").glob("kubeadm_*.deb"))
    deb.write_bytes(deb.read_bytes() + b"x")
    with pytest.raises(BundleError, match=f"v1.31/deb/{deb.name} does not match its sha256"):
        sources.verify_bundle(str(copy), "v1.31", "deb")


def test_bundle_unlisted_and_missing_files(copy: Path) -> None:
    (copy / "v1.31/deb/evil_1.0_all.deb").write_bytes(b"!")
    with pytest.raises(BundleError, match=r"evil_1\.0_all\.deb is not in manifest\.sha256"):
        sources.verify_bundle(str(copy), "v1.31", "deb")
    (copy / "v1.31/deb/evil_1.0_all.deb").unlink()
    (copy / "v1.31/deb/Packages").unlink()
    with pytest.raises(BundleError, match=r"Packages is listed in manifest\.sha256 but missing"):
        sources.verify_bundle(str(copy), "v1.31", "deb")


def test_bundle_bad_manifest(copy: Path) -> None:
    with pytest.raises(BundleError, match=r"no v1\.33/deb/ repository"):
        sources.verify_bundle(str(copy), "v1.33", "deb")
    (copy / "manifest.sha256").write_text("0" * 64 + "  ../../etc/shadow\n")
    with pytest.raises(BundleError, match="line 1 is malformed"):
        sources.verify_bundle(str(copy), "v1.31", "deb")
    (copy / "manifest.sha256").unlink()
    with pytest.raises(BundleError, match=r"cannot read manifest\.sha256"):
        sources.verify_bundle(str(copy), "v1.31", "deb")


def test_configure_writes_only_on_change(copy: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    src = PackageSource(kind="bundle", bundle=str(copy))
    assert sources.configure(str(root), "deb", src, "v1.30.5") is True
    text = (root / sources.APT_SOURCES).read_text()
    assert f"URIs: file:{copy}/v1.30/deb/" in text and "Trusted: yes" in text
    assert sources.configure(str(root), "deb", src, "v1.30.9") is False
    assert sources.configure(str(root), "deb", src, "v1.31.0") is True
    assert sources.configure(str(root), "rpm", PackageSource(), "v1.31.0") is True
    assert (root / sources.DNF_REPO).stat().st_mode & 0o777 == 0o644


def test_tampered_bundle_is_not_configured(copy: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (copy / "v1.31/deb/Packages").write_text("Package: kubeadm\n")
    with pytest.raises(BundleError):
        sources.configure(str(root), "deb", PackageSource(kind="bundle", bundle=str(copy)), "v1.31.2")
    assert not (root / sources.APT_SOURCES).exists()


def test_key_fetch_errors(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="cannot fetch the signing key"):
        sources.fetch_key(f"http://127.0.0.1:{rb.closed_port()}/Release.key")
    with pytest.raises(RepositoryError):
        sources.fetch_key(f"file://{tmp_path}/missing.key")


def source(spec: dict[str, Any]) -> PackageSource:
    """The host's package source from a DirectUpdate's spec.packageSource, parsed as the daemon does."""
    return PackageSource.from_model(models.parse_spec(models.PackageSource, spec, root="spec.packageSource"))


def test_from_directupdate_spec(copy: Path, tmp_path: Path) -> None:
    assert PackageSource.from_model(None) == PackageSource()
    assert source({"type": "upstream"}) == PackageSource()
    mirror = source(
        {"type": "mirror", "mirror": {"url": "https://mirror.example.com/k8s", "gpgKeyUrl": "https://m.example.com/k"}})
    repo = sources.repository(mirror, "v1.31.2", "deb")
    assert (repo.url, repo.key_url) == ("https://mirror.example.com/k8s/v1.31/deb/", "https://m.example.com/k")
    manifest = tmp_path / "elsewhere.sha256"
    shutil.move(copy / "manifest.sha256", manifest)
    bundle = source({"type": "bundle", "bundle": {"path": str(copy), "manifest": str(manifest)}})
    assert sources.verify_bundle(str(copy), "v1.31", "deb", manifest=bundle.manifest) > 3
    with pytest.raises(ValidationError):
        source({"type": "mirror", "mirror": {"url": "file:///etc"}})
