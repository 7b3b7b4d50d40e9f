"""The packages themselves: the .deb builds with dpkg-buildpackage and lintian finds no error;
the .rpm builds with rpmbuild and installs into a throwaway root with the same layout; the
cloud-init user-data passes `cloud-init schema`."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from kupd import config

ROOT = Path(__file__).resolve().parents[2]

# The layout both packages share (packaging/install-tree.sh); the unit folder differs by distro.
COMMON_FILES = (
    "usr/bin/kupd",
    "usr/lib/kupd/venv/pyvenv.cfg",
    "usr/lib/kupd/venv/bin/python3",
    "usr/lib/kupd/config.d/00-defaults.toml",
    "usr/lib/tmpfiles.d/kupd.conf",
    # What the docs and `kupd enroll --help` point to.
    *(f"usr/share/kupd/crds/{p.name}" for p in sorted((ROOT / "crds").glob("*.yaml"))),
    *(f"usr/share/kupd/rbac/{p.name}" for p in sorted((ROOT / "packaging" / "rbac").glob("*.yaml"))),
    *(f"usr/share/kupd/examples/{p.name}" for p in sorted((ROOT / "examples").glob("*.yaml"))),
    "usr/share/kupd/examples/cloud-init/user-data.yaml",
    # Generated from the argument parser (kupd/clidoc.py).
    "usr/share/man/man1/kupd.1.gz",
    "usr/share/man/man1/kupd-status.1.gz",
    "usr/share/bash-completion/completions/kupd",
    "usr/share/kupd/grafana/kupd.json",
    "usr/share/kupd/prometheus/kupd-rules.yaml",
)
COMMON_DIRS = ("etc/kupd/config.d", "var/lib/kupd")


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900, **kw)  # type: ignore[call-overload]
    assert isinstance(proc, subprocess.CompletedProcess)
    if proc.returncode != 0:
        pytest.fail(f"{argv} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def test_deb_contents(deb_package: Path, tmp_path: Path) -> None:
    listing = run(["dpkg-deb", "--contents", str(deb_package)]).stdout
    names = {line.split()[-1].lstrip(".").lstrip("/").rstrip("/") for line in listing.splitlines()}
    names |= {line.split()[-3].lstrip("./") for line in listing.splitlines() if " -> " in line}
    for f in (*COMMON_FILES, *COMMON_DIRS, "lib/systemd/system/kupd.service",
              "usr/share/zsh/vendor-completions/_kupd", "usr/share/doc/kupd/CHANGELOG.md"):
        assert f in names, f"{f} missing from {deb_package.name}"
    depends = run(["dpkg-deb", "--field", str(deb_package), "Depends"]).stdout
    # Built against bookworm's python3 (3.11): the venv works with that minor version only.
    assert "python3 (>= 3.11~), python3 (<< 3.12), python3-apt" in depends, depends
    assert "python3-systemd" not in depends  # kupd/journal.py writes to journald itself
    recommends = run(["dpkg-deb", "--field", str(deb_package), "Recommends"]).stdout
    assert "etcd-client" in recommends  # etcdctl for the etcd backup
    assert run(["dpkg-deb", "--field", str(deb_package), "Version"]).stdout.strip().endswith("+deb12")
    # No shlibs file (and no ldconfig trigger) for the venv's private libraries.
    control = run(["dpkg-deb", "--info", str(deb_package)]).stdout
    assert " shlibs" not in control and " triggers" not in control, control
    run(["dpkg-deb", "-x", str(deb_package), str(tmp_path)])
    shipped = (tmp_path / "usr/share/kupd/examples/cloud-init/user-data.yaml").read_text()
    assert shipped == (ROOT / "cloud-init" / "user-data.yaml").read_text()  # the apt variant
    # `man kupd` reads well: the page renders without warnings and has the sections of a man page.
    page = run(["man", "--warnings", "-l", str(tmp_path / "usr/share/man/man1/kupd.1.gz")],
               env={**os.environ, "MANWIDTH": "100", "MAN_KEEP_STDERR": "1"})
    assert page.stderr == "", page.stderr
    for section in ("NAME", "SYNOPSIS", "COMMANDS", "EXIT STATUS", "FILES", "SEE ALSO"):
        assert f"\n{section}\n" in page.stdout
    # bash completion from the package completes subcommands and -o values.
    script = tmp_path / "usr/share/bash-completion/completions/kupd"
    words = run(["bash", "-c", f"source {script}; COMP_WORDS=(kupd status -o ''); COMP_CWORD=3; _kupd; "
                 "echo ${COMPREPLY[@]}; COMP_WORDS=(kupd ba); COMP_CWORD=1; _kupd; echo ${COMPREPLY[@]}"]).stdout
    assert words.splitlines() == ["table wide json yaml", "backup"], words
    # dh_installsystemd --no-restart-on-upgrade: enable and start on install; neither restart
    # in postinst nor stop in prerm on upgrade (only on remove).
    postinst = run(["dpkg-deb", "--info", str(deb_package), "postinst"]).stdout
    invokes = [line.strip() for line in postinst.splitlines() if "deb-systemd-invoke" in line]
    assert invokes == ["deb-systemd-invoke start 'kupd.service' >/dev/null || true"], invokes
    prerm = run(["dpkg-deb", "--info", str(deb_package), "prerm"]).stdout
    assert '[ "$1" = remove ]' in prerm and "deb-systemd-invoke stop" in prerm


def test_lintian_pedantic_reports_no_errors_or_warnings(deb_package: Path) -> None:
    """lintian --pedantic -I: what is left is at info level and explained in packaging.md."""
    out = run([str(ROOT / "packaging" / "lint-deb.sh"), str(deb_package)]).stdout
    findings = [line for line in out.splitlines() if line[:2] in ("E:", "W:", "P:", "X:")]
    assert findings == [], "\n".join(findings)
    explained = {"extra-license-file", "package-contains-documentation-outside-usr-share-doc",
                 "hardening-no-bindnow", "hardening-no-fortify-functions", "spelling-error-in-binary",
                 "package-supports-alternative-init-but-no-init.d-script"}
    infos = {line.split()[2] for line in out.splitlines() if line.startswith("I:")}
    assert infos <= explained, infos - explained  # unused-override among them would mean a stale override
    print(out.splitlines()[-1])


def test_rpmlint_reports_nothing_left(rpm_package: Path) -> None:
    out = run([str(ROOT / "packaging" / "lint-rpm.sh"), str(rpm_package)]).stdout
    assert " 0 errors, 0 warnings" in out.splitlines()[-1], out


def test_rpm_installs_into_a_throwaway_root(rpm_package: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    run(["rpm", "--root", str(root), "--initdb"])
    # --nodeps: the throwaway root has no python3.11/systemd packages; --noscripts: no systemctl
    # there. The files, their modes and the package database are real.
    run(["rpm", "--root", str(root), "-i", "--nodeps", "--noscripts", str(rpm_package)])
    assert run(["rpm", "--root", str(root), "-q", "kupd"]).stdout.startswith("kupd-0.1.0")
    files = set(run(["rpm", "--root", str(root), "-ql", "kupd"]).stdout.split())
    for f in (*COMMON_FILES, *COMMON_DIRS, "usr/lib/systemd/system/kupd.service",
              "usr/share/zsh/site-functions/_kupd"):
        assert "/" + f in files, f"{f} missing from {rpm_package.name}"
        assert (root / f).exists() or (root / f).is_symlink(), f
    assert oct((root / "var/lib/kupd").stat().st_mode & 0o777) == "0o700"
    unit = (root / "usr/lib/systemd/system/kupd.service").read_text()
    assert "Type=notify" in unit and "ConditionPathExists=!/etc/kupd/disabled" in unit
    scripts = run(["rpm", "-qp", "--scripts", str(rpm_package)]).stdout
    commands = [line for line in scripts.splitlines() if not line.lstrip().startswith("#")]
    assert any("preset kupd.service" in line for line in commands)
    assert not any("restart" in line for line in commands), scripts
    requires = run(["rpm", "-qp", "--requires", str(rpm_package)]).stdout
    assert "python3.11" in requires and ".so" not in requires  # venv libraries are not Requires
    assert "python3-systemd" not in requires
    recommends = run(["rpm", "-qp", "--recommends", str(rpm_package)]).stdout.split()
    assert "/usr/bin/etcdctl" in recommends, recommends
    # The dnf variant of the cloud-init example, not the apt one.
    shipped = (root / "usr/share/kupd/examples/cloud-init/user-data.yaml").read_text()
    assert shipped == (ROOT / "cloud-init" / "user-data-dnf.yaml").read_text()
    assert (root / "usr/share/licenses/kupd/LICENSE").read_text().startswith("MIT License")
    # The package's Python tree imports with the distribution's python3.11 (the venv's symlink
    # target is absent from the throwaway root, so point the host's interpreter at the tree).
    site = root / "usr/lib/kupd/venv/lib/python3.11/site-packages"
    probe = run(
        ["/usr/bin/python3.11", "-I", "-c",
         f"import sys; sys.path.insert(0, {str(site)!r}); import kupd, pydantic, boto3, kupd.daemon; "
         "print(kupd.__file__, pydantic.VERSION)"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    ).stdout
    assert str(site) in probe and " 2." in probe


def test_default_config_fragment_matches_settings() -> None:
    with open(ROOT / "packaging" / "00-defaults.toml", "rb") as f:
        data = tomllib.load(f)
    settings = config.parse(data)
    assert settings == config.parse({}), "the shipped defaults differ from kupd.config's defaults"


@pytest.mark.parametrize("name", ["user-data.yaml", "user-data-dnf.yaml"])
def test_cloud_init_user_data_is_valid(name: str) -> None:
    path = ROOT / "cloud-init" / name
    out = run(["cloud-init", "schema", "--config-file", str(path)]).stdout
    assert "Valid cloud-config" in out
    doc = yaml.safe_load(path.read_text())
    files = {f["path"]: f for f in doc["write_files"]}
    fragment = tomllib.loads(files["/etc/kupd/config.d/50-cluster.toml"]["content"])
    config.parse(fragment)  # the fragment is a valid kupd config
    kubeconfig = yaml.safe_load(files["/etc/kupd/kubeconfig"]["content"])
    assert kubeconfig["kind"] == "Config" and files["/etc/kupd/kubeconfig"]["permissions"] == "0600"
    assert "kupd" in doc["packages"]
    assert ["systemctl", "enable", "--now", "kupd.service"] in doc["runcmd"]
