"""One .deb per Debian release, each built inside a root of that release against its own python3
(`packaging/build-deb.sh SUITE`), on a booted node of the same release under real systemd:

- apt installs it (Depends resolved from the node's own archive packages: python3, python3-apt);
- the venv runs the release's own interpreter; kupd is READY at once and waits for a credential,
  saying so in STATUS and in the journal with KUPD_NODE (kupd's own journald writer);
- restarts back off where systemd knows RestartSteps= (>= 254: trixie);
- an upgrade to a higher version keeps the running daemon (same MainPID) and installs the new files;
- purge removes the package, its venv and its state.

KUPD_DEB_<SUITE>=path (e.g. KUPD_DEB_TRIXIE) reuses a built .deb while iterating on the tests.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system import nspawn
from tests.system.conftest import NODE_DEB_DIR, build_package, install_deb
from tests.system.test_nodes import show, wait_for

PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
TAG = {"bookworm": "+deb12", "trixie": "+deb13"}


@pytest.fixture(scope="module", params=nspawn.SUITES)
def suite(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def suite_deb(suite: str) -> Path:
    given = os.environ.get(f"KUPD_DEB_{suite.upper()}")
    return Path(given) if given else build_package("build-deb.sh", suite)


def repack_with_version(deb: Path, version: str, workdir: Path) -> Path:
    """The same payload under a higher version: dpkg runs the real upgrade path (prerm upgrade,
    unpack over the old files, postinst configure OLD-VERSION)."""
    tree = workdir / f"repack-{version}"
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=600)
    control = tree / "DEBIAN" / "control"
    lines = [f"Version: {version}" if line.startswith("Version: ") else line
             for line in control.read_text().splitlines()]
    control.write_text("\n".join(lines) + "\n")
    out = workdir / f"kupd_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", str(tree), str(out)],
                   check=True, timeout=600, capture_output=True)
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    return out


@pytest.fixture(scope="module")
def node(suite: str, suite_deb: Path, node_workdir: Path) -> Iterator[nspawn.Node]:
    with nspawn.booted_nodes([f"kupd-{suite}"], node_workdir, suite) as nodes:
        install_deb(nodes[0], suite_deb)
        yield nodes[0]


def version_of(node: nspawn.Node) -> str:
    return node.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", "kupd"]).stdout


def test_installs_and_runs_on_its_release(suite: str, suite_deb: Path, node: nspawn.Node) -> None:
    version = version_of(node)
    assert version.startswith("install ok installed ") and version.endswith(TAG[suite]), version
    assert node.run(["kupd", "--version"]).stdout.startswith("kupd ")
    venv = node.run(["/usr/lib/kupd/venv/bin/python3", "-I", "-c",
                     "import sys, apt_pkg, kupd.daemon; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()
    system = node.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()
    assert venv == system == PYTHON[suite]
    assert show(node, "kupd.service", "ActiveState") == "active"
    wait_for("STATUS naming the missing credential",
             lambda: "waiting for a credential" in show(node, "kupd.service", "StatusText"), timeout=30)
    entries = node.journal("-u", "kupd", f"KUPD_NODE={node.name}")
    assert "waiting for a credential" in entries, node.journal("-u", "kupd", "-o", "verbose")
    systemd = int(node.run(["systemctl", "--version"]).stdout.split()[1])
    print(f"{suite}: kupd {version.split()[-1]}, python {venv}, systemd {systemd}")
    if systemd >= 254:
        assert show(node, "kupd.service", "RestartSteps") == "6"
        assert show(node, "kupd.service", "RestartMaxDelayUSec") == "5min"


def test_upgrade_keeps_the_running_daemon(suite: str, suite_deb: Path, node: nspawn.Node,
                                          node_workdir: Path) -> None:
    old = version_of(node).split()[-1]
    newer = repack_with_version(suite_deb, f"{old}.1", node_workdir)
    pid = show(node, "kupd.service", "MainPID")
    node.copy_in(newer, f"{NODE_DEB_DIR}/{newer.name}")
    node.run(["apt-get", "install", "-y", f"{NODE_DEB_DIR}/{newer.name}"], timeout=300)
    assert version_of(node) == f"install ok installed {old}.1"
    assert show(node, "kupd.service", "MainPID") == pid  # no stop, no restart on upgrade
    assert show(node, "kupd.service", "ActiveState") == "active"
    node.systemctl("restart", "kupd")  # the new version runs from the next start
    assert show(node, "kupd.service", "MainPID") != pid


def test_purge_removes_everything(node: nspawn.Node) -> None:
    node.run(["apt-get", "purge", "-y", "kupd"], timeout=300)
    assert show(node, "kupd.service", "LoadState") == "not-found"
    for path in ("/usr/lib/kupd", "/var/lib/kupd", "/usr/share/kupd", "/usr/bin/kupd"):
        assert node.run(["test", "-e", path], check=False).returncode == 1, path
