"""Build tiny Kubernetes-like package repositories for the host tests.

Packages kubeadm, kubelet, kubectl and containerd in several versions. Each ships a fake
binary that prints its version like the real one (`kubeadm version -o short` -> v1.31.2,
`kubelet --version` -> Kubernetes v1.31.2) and appends its argv to
<root>/var/log/kupd-test/argv.log; maintainer scripts append to
<root>/var/log/kupd-test/scripts.log, so tests prove what ran and in which root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

K8S = ("kubeadm", "kubelet", "kubectl")

_BIN = """#!/bin/sh
root="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$root/var/log/kupd-test"
echo "{name} $*" >> "$root/var/log/kupd-test/argv.log"
case "{name}" in
  kubeadm)
    case "$1" in
      version) echo "v{upstream}" ;;
      upgrade)
        if [ "$2" != plan ] && [ -e "$root/etc/kupd-test/kubeadm-fail" ]; then
          echo "[upgrade/apply] FATAL: couldn't upgrade control plane. kubeadm has tried to recover" >&2
          echo "everything into the earlier state. Errors faced: timed out waiting for the condition" >&2
          exit 1
        fi
        plan="$root/etc/kupd-test/plan.txt"
        if [ "$2" = plan ] && [ -e "$plan" ]; then cat "$plan"; fi
        ;;
    esac ;;
  kubelet) echo "Kubernetes v{upstream}" ;;
  kubectl) printf 'Client Version: v{upstream}\\nKustomize Version: v5.4.2\\n' ;;
  containerd) echo "containerd containerd.io {upstream} 7f7fdf5fed64eb6a7caf99b3e12efcf9d60e311c" ;;
esac
"""

_SCRIPT = """#!/bin/sh
mkdir -p "$DPKG_ROOT/var/log/kupd-test"
echo "{phase} {name} {version} $*" >> "$DPKG_ROOT/var/log/kupd-test/scripts.log"
"""


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str  # package version: 1.31.2-1.1 (deb) or 1.31.2-150500.1.1 (rpm)
    depends: str = ""  # deb Depends field

    @property
    def upstream(self) -> str:
        return self.version.split(":")[-1].split("-")[0]


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


# -- gpg ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    home: Path
    fpr: str
    public_asc: Path


def make_key(workdir: Path, algo: str = "ed25519") -> Key:
    home = workdir / "gnupg"
    home.mkdir(mode=0o700, parents=True)
    env = {**os.environ, "GNUPGHOME": str(home)}
    run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "kupd test <test@kupd.invalid>",
         algo, "sign", "never"], env=env)
    out = run(["gpg", "--batch", "--with-colons", "--list-keys"], env=env).stdout
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr"))
    pub = workdir / "Release.key"
    pub.write_text(run(["gpg", "--batch", "--armor", "--export", fpr], env=env).stdout)
    return Key(home, fpr, pub)


# -- deb ---------------------------------------------------------------------------------------


def build_deb(pkg: Pkg, out: Path, work: Path) -> Path:
    d = work / f"{pkg.name}_{pkg.version}"
    (d / "DEBIAN").mkdir(parents=True)
    (d / "usr/bin").mkdir(parents=True)
    binary = d / "usr/bin" / pkg.name
    binary.write_text(_BIN.replace("{name}", pkg.name).replace("{upstream}", pkg.upstream))
    binary.chmod(0o755)
    (d / "DEBIAN/control").write_text(textwrap.dedent(f"""\
        Package: {pkg.name}
        Version: {pkg.version}
        Architecture: all
        Maintainer: kupd tests <test@kupd.invalid>
        Description: fake {pkg.name} for kupd host tests
        """) + (f"Depends: {pkg.depends}\n" if pkg.depends else ""))
    for phase in ("preinst", "postinst", "prerm", "postrm"):
        s = d / "DEBIAN" / phase
        s.write_text(_SCRIPT.format(phase=phase, name=pkg.name, version=pkg.version))
        s.chmod(0o755)
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"{pkg.name}_{pkg.version}_all.deb"
    run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(d), str(deb)])
    return deb


def build_apt_repo(repo: Path, pkgs: list[Pkg], key: Key | None, work: Path) -> Path:
    """A flat repository (like pkgs.k8s.io: `deb URL /`), signed with `key` when given."""
    for p in pkgs:
        build_deb(p, repo, work)
    return index_and_sign(repo, key)


def index_and_sign(repo: Path, key: Key | None) -> Path:
    """Packages and Release for the .debs in `repo`; InRelease, Release.gpg and Release.key with `key`."""
    packages = run(["apt-ftparchive", "packages", "."], cwd=repo).stdout
    (repo / "Packages").write_text(packages)
    release = run(["apt-ftparchive", "-o", "APT::FTPArchive::Release::Origin=kupd-test",
                   "-o", "APT::FTPArchive::Release::Label=kupd-test", "release", "."], cwd=repo).stdout
    (repo / "Release").write_text(release)
    if key is not None:
        env = {**os.environ, "GNUPGHOME": str(key.home)}
        run(["gpg", "--batch", "--yes", "--local-user", key.fpr, "--clearsign", "-o", "InRelease",
             "Release"], cwd=repo, env=env)
        run(["gpg", "--batch", "--yes", "--local-user", key.fpr, "--armor", "--detach-sign", "-o",
             "Release.gpg", "Release"], cwd=repo, env=env)
        shutil.copy(key.public_asc, repo / "Release.key")
    return repo


# -- rpm ---------------------------------------------------------------------------------------

_SPEC = """\
Name: {name}
Version: {version}
Release: {release}
Summary: fake {name} for kupd host tests
License: Apache-2.0
BuildArch: noarch
AutoReqProv: no

%description
fake {name} for kupd host tests

%install
mkdir -p %{{buildroot}}/usr/bin
cp %{{_sourcedir}}/{name} %{{buildroot}}/usr/bin/{name}
chmod 0755 %{{buildroot}}/usr/bin/{name}

%files
/usr/bin/{name}

%post -p <lua>
os.execute = nil
local d = "/var/log/kupd-test"
posix.mkdir("/var"); posix.mkdir("/var/log"); posix.mkdir(d)
local f = io.open(d .. "/scripts.log", "a")
f:write("post {name} {version}-{release} " .. arg[2] .. "\\n")
f:close()
"""


def build_rpm(pkg: Pkg, out: Path, work: Path) -> Path:
    version, release = pkg.version.split("-", 1)
    top = work / f"rpmbuild-{pkg.name}-{pkg.version}"
    for sub in ("SOURCES", "SPECS", "BUILD", "RPMS", "SRPMS", "BUILDROOT"):
        (top / sub).mkdir(parents=True)
    src = top / "SOURCES" / pkg.name
    src.write_text(_BIN.replace("{name}", pkg.name).replace("{upstream}", pkg.upstream))
    spec = top / "SPECS" / f"{pkg.name}.spec"
    spec.write_text(_SPEC.format(name=pkg.name, version=version, release=release))
    run(["rpmbuild", "-bb", "--define", f"_topdir {top}", "--define", "_build_id_links none",
         "--define", "__os_install_post %{nil}", str(spec)])
    out.mkdir(parents=True, exist_ok=True)
    (rpm,) = (top / "RPMS" / "noarch").glob("*.rpm")
    dest = out / rpm.name
    shutil.move(rpm, dest)
    return dest


def build_rpm_repo(repo: Path, pkgs: list[Pkg], work: Path, key: Key | None = None) -> Path:
    """A repository like pkgs.k8s.io's rpm ones; with `key`, packages signed and the key at
    repodata/repomd.xml.key."""
    rpms = [build_rpm(p, repo, work) for p in pkgs]
    if key is not None:
        run(["rpmsign", "--define", f"_gpg_name {key.fpr}", "--define", f"_gpg_path {key.home}",
             "--define", "__gpg /usr/bin/gpg", "--addsign", *map(str, rpms)],
            env={**os.environ, "GNUPGHOME": str(key.home)})
    run(["createrepo_c", "--no-database", "--simple-md-filenames", str(repo)])
    if key is not None:
        shutil.copy(key.public_asc, repo / "repodata" / "repomd.xml.key")
    return repo


# -- bundle ------------------------------------------------------------------------------------


def write_manifest(bundle: Path) -> Path:
    """sha256sum-format manifest of every file under `bundle`."""
    lines = []
    for path in sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != "manifest.sha256"):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(bundle)}\n")
    manifest = bundle / "manifest.sha256"
    manifest.write_text("".join(lines))
    return manifest


# -- fake tools outside the root --------------------------------------------------------------

_SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> "{log}"
case "$1" in
  is-active) if [ -e "{state}/$2.failed" ]; then echo failed; exit 3; fi; echo active ;;
esac
"""


def fake_systemctl(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tool = directory / "systemctl"
    tool.write_text(_SYSTEMCTL.format(log=directory / "systemctl.log", state=directory))
    tool.chmod(0o755)
    return tool


# -- fixtures (import them into a test module) -------------------------------------------------

# Like upstream, kubeadm depends on cri-tools of its minor; the v1.31 repository also carries an
# unrelated package newer than the one installed from v1.30, which kupd must leave alone.
DEB_VERSIONS = {
    "v1.30": [Pkg("kubeadm", "1.30.5-1.1", "cri-tools (>= 1.30.0)"), Pkg("kubelet", "1.30.5-1.1"),
              Pkg("kubectl", "1.30.5-1.1"), Pkg("cri-tools", "1.30.1-1.1"), Pkg("containerd", "1.7.20-1"),
              Pkg("unrelated", "1.0-1")],
    "v1.31": [Pkg("kubeadm", v, "cri-tools (>= 1.31.0)") for v in ("1.31.1-1.1", "1.31.2-1.1")]
    + [Pkg(n, v) for n in ("kubelet", "kubectl") for v in ("1.31.1-1.1", "1.31.2-1.1")]
    + [Pkg("cri-tools", "1.31.1-1.1"), Pkg("containerd", "1.7.22-1"), Pkg("unrelated", "2.0-1")],
}
RPM_VERSIONS = {
    "v1.30": [Pkg(n, "1.30.5-150500.1.1") for n in K8S] + [Pkg("containerd", "1.7.20-3.1")],
    "v1.31": [Pkg(n, v) for n in K8S for v in ("1.31.1-150500.1.1", "1.31.2-150500.1.1")]
    + [Pkg("containerd", "1.7.22-3.1")],
}


@dataclass(frozen=True)
class Repos:
    base: Path  # <base>/<minor>/deb/ signed, like pkgs.k8s.io; served over http by `repo_server`
    unsigned: Path  # <unsigned>/<minor>/deb/ without InRelease / Release.gpg
    bundle: Path  # air-gap bundle: <bundle>/<minor>/deb/ + manifest.sha256
    key: Key


def build_deb_repos(work: Path) -> Repos:
    key = make_key(work)
    base, unsigned, bundle = work / "repo", work / "unsigned", work / "bundle"
    for minor, pkgs in DEB_VERSIONS.items():
        build_apt_repo(base / minor / "deb", pkgs, key, work / "build" / minor)
        shutil.copytree(base / minor / "deb", bundle / minor / "deb")
    shutil.copytree(base / "v1.31" / "deb", unsigned / "v1.31" / "deb",
                    ignore=shutil.ignore_patterns("InRelease", "Release.gpg"))
    write_manifest(bundle)
    return Repos(base, unsigned, bundle, key)


@dataclass(frozen=True)
class RpmRepos:
    bundle: Path  # <bundle>/<minor>/rpm/ + manifest.sha256, unsigned packages
    signed: Path  # <signed>/v1.31/rpm/, signed packages and repodata/repomd.xml.key; serve over http


def build_rpm_repos(work: Path) -> RpmRepos:
    bundle, signed = work / "bundle", work / "signed"
    for minor, pkgs in RPM_VERSIONS.items():
        build_rpm_repo(bundle / minor / "rpm", pkgs, work / "build" / minor)
    write_manifest(bundle)
    key = make_key(work, "rsa2048")
    build_rpm_repo(signed / "v1.31" / "rpm", RPM_VERSIONS["v1.31"], work / "build-signed", key)
    return RpmRepos(bundle, signed)


class Server:
    def __init__(self, directory: Path) -> None:
        import functools
        import http.server
        import threading

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def install_fake_binary(root: Path, name: str, upstream: str) -> Path:
    """The same fake binary the packages ship, placed directly (for tests without a package manager)."""
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    binary = root / "usr/bin" / name
    binary.write_text(_BIN.replace("{name}", name).replace("{upstream}", upstream))
    binary.chmod(0o755)
    return binary
