"""Where Kubernetes packages come from: upstream per-minor repositories, a mirror, or an air-gap bundle.

Upstream publishes one repository per minor (pkgs.k8s.io/core:/stable:/v1.31/deb/), so an
upgrade across a minor first points the package manager at the next minor's repository.
A mirror is the same layout under another URL: `<url>/v1.31/deb/`, or wherever `{minor}` and
`{family}` placeholders in its URL say.
An air-gap bundle is a directory holding `<minor>/deb/` and/or `<minor>/rpm/` repositories and a
sha256 manifest of every file, verified before the package manager may read it.

The rendering is pure; `configure` writes the files (atomically, only when they change).
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kupd import validate
from kupd.api import models
from kupd.errors import PermanentError, ValidationError
from kupd.fsutil import atomic_write
from kupd.host.packages import RepositoryError
from kupd.versions import Version

Family = Literal["deb", "rpm"]

UPSTREAM = "https://pkgs.k8s.io/core:/stable:/{minor}/{family}/"
# Everything kupd holds plus what kubeadm pulls in: dnf `exclude=` keeps `dnf upgrade` off them.
RPM_EXCLUDES = "kubelet kubeadm kubectl cri-tools kubernetes-cni"
APT_SOURCES = "etc/apt/sources.list.d/kubernetes.sources"
APT_LIST = "etc/apt/sources.list.d/kubernetes.list"
APT_KEYRING = "etc/apt/keyrings/kubernetes-apt-keyring.asc"
DNF_REPO = "etc/yum.repos.d/kubernetes.repo"
MANIFEST = "manifest.sha256"
KEY_TIMEOUT = 30.0
KEY_MAX_BYTES = 256 * 1024


class BundleError(PermanentError):
    """The air-gap bundle does not match its manifest; nothing from it is used."""


@dataclass(frozen=True)
class PackageSource:
    """The package source of a DirectUpdate (spec.packageSource) or of the node's config."""

    kind: Literal["upstream", "mirror", "bundle"] = "upstream"
    url: str | None = None
    """mirror: base URL mirroring pkgs.k8s.io/core:/stable:/ (`<url>/v1.31/deb/`), or a URL with
    `{minor}` ("v1.31") and `{family}` (deb/rpm) placeholders."""
    key_url: str | None = None
    """mirror: signing key URL (same placeholders); default: Release.key (deb) or repomd.xml.key (rpm)."""
    bundle: str | None = None
    """bundle: absolute path of the bundle directory."""
    manifest_sha256: str | None = None
    """bundle: expected sha256 of manifest.sha256 itself, pinning the bundle's content."""
    manifest: str | None = None
    """bundle: path of the manifest; default <bundle>/manifest.sha256. Paths in it are relative to
    the bundle."""

    @classmethod
    def from_model(cls, source: models.PackageSource | None) -> PackageSource:
        """From a DirectUpdate's spec.packageSource, as kupd.api.models parsed it."""
        if source is None:
            return cls()
        if source.mirror is not None:
            return cls(kind="mirror", url=source.mirror.url, key_url=source.mirror.gpg_key_url)
        if source.bundle is not None:
            return cls(kind="bundle", bundle=source.bundle.path, manifest=source.bundle.manifest)
        return cls(kind=source.type)

    def __post_init__(self) -> None:
        if self.kind == "mirror":
            if not self.url:
                raise ValidationError("packageSource.url", "a mirror needs a URL")
            _check_template(self.url, "packageSource.url")
            if self.key_url:
                _check_template(self.key_url, "packageSource.keyURL")
        elif self.kind == "bundle":
            if not self.bundle:
                raise ValidationError("packageSource.bundle", "a bundle needs a path")
            validate.safe_path(self.bundle, "packageSource.bundle")
            if self.manifest:
                validate.safe_path(self.manifest, "packageSource.bundle.manifest")
            if self.manifest_sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.manifest_sha256):
                raise ValidationError("packageSource.manifestSHA256", "must be 64 lowercase hex digits")
        elif self.kind != "upstream":
            raise ValidationError("packageSource.kind", f"{self.kind!r} is not upstream, mirror or bundle")


def _check_template(url: str, field: str) -> None:
    validate.safe_url(url.replace("{minor}", "v1.0").replace("{family}", "deb"), field)


@dataclass(frozen=True)
class Repository:
    """One resolved repository definition for one minor and package family."""

    minor: str
    family: Family
    url: str
    key_url: str | None  # fetched into the keyring (apt) or named by gpgkey= (dnf)
    trusted: bool = False  # bundle without a key: its manifest was verified instead


def minor_of(version: str) -> str:
    v = Version.parse(version)
    return f"v{v.major}.{v.minor}"


def repository(source: PackageSource, version: str, family: Family) -> Repository:
    """The repository that carries `version`'s minor, for the deb or rpm family. Pure."""
    minor = minor_of(version)
    if source.kind == "upstream":
        url = UPSTREAM.format(minor=minor, family=family)
        key = url + ("Release.key" if family == "deb" else "repodata/repomd.xml.key")
        return Repository(minor, family, url, key)
    if source.kind == "mirror":
        assert source.url is not None
        template = source.url if "{minor}" in source.url else source.url.rstrip("/") + "/{minor}/{family}/"
        url = validate.safe_url(template.replace("{minor}", minor).replace("{family}", family))
        url = url if url.endswith("/") else url + "/"
        if source.key_url:
            key = validate.safe_url(source.key_url.replace("{minor}", minor).replace("{family}", family))
        else:
            key = url + ("Release.key" if family == "deb" else "repodata/repomd.xml.key")
        return Repository(minor, family, url, key)
    assert source.bundle is not None
    base = Path(source.bundle) / minor / family
    key_file = base / ("Release.key" if family == "deb" else "repodata/repomd.xml.key")
    has_key = key_file.is_file()
    return Repository(minor, family, f"file://{base}/", f"file://{key_file}" if has_key else None,
                      trusted=not has_key)


# -- rendering (pure) -----------------------------------------------------------------------------


def render_deb822(repo: Repository, keyring: str) -> str:
    lines = [
        "# Written by kupd: the Kubernetes package repository for " + repo.minor + ".",
        "Types: deb",
        "URIs: " + _apt_uri(repo.url),
        "Suites: /",
    ]
    lines.append("Trusted: yes" if repo.trusted else "Signed-By: " + keyring)
    return "\n".join(lines) + "\n"


def render_list(repo: Repository, keyring: str) -> str:
    option = "trusted=yes" if repo.trusted else f"signed-by={keyring}"
    return (f"# Written by kupd: the Kubernetes package repository for {repo.minor}.\n"
            f"deb [{option}] {_apt_uri(repo.url)} /\n")


def render_dnf(repo: Repository) -> str:
    lines = [
        "# Written by kupd: the Kubernetes package repository for " + repo.minor + ".",
        "[kubernetes]",
        "name=Kubernetes " + repo.minor,
        "baseurl=" + repo.url,
        "enabled=1",
    ]
    if repo.trusted:
        lines += ["gpgcheck=0", "repo_gpgcheck=0"]
    else:
        lines += ["gpgcheck=1", "gpgkey=" + (repo.key_url or "")]
    lines.append("exclude=" + RPM_EXCLUDES)
    return "\n".join(lines) + "\n"


def _apt_uri(url: str) -> str:
    # apt spells local repositories file:/path
    return "file:" + url[len("file://"):] if url.startswith("file://") else url


def configured_minor(text: str) -> str | None:
    """The minor a repository file kupd (or the upstream docs) wrote points at, if any."""
    m = re.search(r"/(v[0-9]+\.[0-9]+)/(deb|rpm)/", text)
    return m.group(1) if m else None


# -- bundle verification -------------------------------------------------------------------------


def verify_bundle(
    bundle: str, minor: str, family: Family, manifest_sha256: str | None = None, manifest: str | None = None
) -> int:
    """Check every file of the bundle's `<minor>/<family>` repository against the manifest.

    Refuses a missing manifest, a manifest that does not match its pinned digest, a listed file
    that is missing or differs, and a file in the repository that the manifest does not list.
    Returns the number of files checked.
    """
    root = Path(validate.safe_path(bundle, "packageSource.bundle"))
    manifest_path = Path(validate.safe_path(manifest, "packageSource.bundle.manifest")) if manifest else (
        root / MANIFEST)
    try:
        data = manifest_path.read_bytes()
    except OSError as e:
        raise BundleError(f"air-gap bundle {root}: cannot read {manifest_path.name}: {e.strerror}") from e
    if manifest_sha256 and hashlib.sha256(data).hexdigest() != manifest_sha256:
        raise BundleError(f"air-gap bundle {root}: {MANIFEST} does not match the pinned sha256")
    expected: dict[str, str] = {}
    for n, line in enumerate(data.decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-f]{64}) [ *]([A-Za-z0-9._+/~:-]+)", line)
        if not m or m.group(2).startswith("/") or ".." in m.group(2).split("/"):
            raise BundleError(f"air-gap bundle {root}: {MANIFEST} line {n} is malformed")
        expected[m.group(2)] = m.group(1)
    prefix = f"{minor}/{family}/"
    repo_dir = root / minor / family
    if not repo_dir.is_dir():
        raise BundleError(f"air-gap bundle {root} has no {prefix} repository")
    present = {str(p.relative_to(root)) for p in repo_dir.rglob("*") if p.is_file() or p.is_symlink()}
    if manifest_path.is_relative_to(root):
        present.discard(str(manifest_path.relative_to(root)))
    unlisted = sorted(present - expected.keys())
    if unlisted:
        raise BundleError(f"air-gap bundle {root}: {unlisted[0]} is not in {MANIFEST}")
    checked = 0
    for rel, digest in sorted(expected.items()):
        if not rel.startswith(prefix):
            continue
        path = root / rel
        if path.is_symlink() or not path.is_file():
            raise BundleError(f"air-gap bundle {root}: {rel} is listed in {MANIFEST} but missing")
        if _sha256(path) != digest:
            raise BundleError(f"air-gap bundle {root}: {rel} does not match its sha256 in {MANIFEST}")
        checked += 1
    if not checked:
        raise BundleError(f"air-gap bundle {root}: {MANIFEST} lists nothing under {prefix}")
    return checked


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- writing ------------------------------------------------------------------------------------


def fetch_key(url: str) -> bytes:
    """Download (or read, for file://) a signing key. Network errors are retryable."""
    if url.startswith("file://"):
        path = validate.safe_path(url[len("file://"):], "packageSource.keyURL")
        try:
            return Path(path).read_bytes()[:KEY_MAX_BYTES]
        except OSError as e:
            raise RepositoryError(f"signing key {path}: {e.strerror}", 60.0) from e
    if not url.startswith("https://pkgs.k8s.io/"):
        validate.safe_url(url, "packageSource.keyURL")
    try:
        with urllib.request.urlopen(url, timeout=KEY_TIMEOUT) as resp:  # noqa: S310 - http(s) only
            data: bytes = resp.read(KEY_MAX_BYTES + 1)
    except (urllib.error.URLError, OSError) as e:
        raise RepositoryError(f"cannot fetch the signing key {url}: {e}", 60.0) from e
    if len(data) > KEY_MAX_BYTES or b"-----BEGIN PGP PUBLIC KEY BLOCK-----" not in data:
        raise PermanentError(f"{url} is not an ASCII-armored OpenPGP public key")
    return data


def _write_if_changed(path: Path, data: bytes, mode: int = 0o644) -> bool:
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    # apt's gpgv method reads keyrings as the unprivileged _apt user: directories stay world-readable.
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    atomic_write(path, data, mode)
    return True


def configure_apt(root: str, source: PackageSource, version: str) -> bool:
    """Point apt at `version`'s minor. Returns whether any file changed."""
    repo = repository(source, version, "deb")
    if source.kind == "bundle":
        assert source.bundle is not None
        verify_bundle(source.bundle, repo.minor, "deb", source.manifest_sha256, source.manifest)
    r = Path(root)
    keyring = r / APT_KEYRING
    changed = False
    if repo.key_url:
        changed |= _write_if_changed(keyring, fetch_key(repo.key_url))
    # The keyring path apt reads is the one inside the root (root is "/" on a real node).
    keyring_name = str(keyring)
    list_file = r / APT_LIST
    if list_file.exists():  # the upstream install docs use a one-line .list: keep that format
        changed |= _write_if_changed(list_file, render_list(repo, keyring_name).encode())
    else:
        changed |= _write_if_changed(r / APT_SOURCES, render_deb822(repo, keyring_name).encode())
    return changed


def configure_dnf(root: str, source: PackageSource, version: str) -> bool:
    repo = repository(source, version, "rpm")
    if source.kind == "bundle":
        assert source.bundle is not None
        verify_bundle(source.bundle, repo.minor, "rpm", source.manifest_sha256, source.manifest)
    return _write_if_changed(Path(root) / DNF_REPO, render_dnf(repo).encode())


def configure(root: str, family: Family, source: PackageSource, version: str) -> bool:
    os.makedirs(root, exist_ok=True)
    if family == "deb":
        return configure_apt(root, source, version)
    return configure_dnf(root, source, version)
