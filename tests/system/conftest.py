"""Fixtures of the system tier: the built packages and booted systemd-nspawn nodes.

Nothing here skips: a missing tool or a failed build fails the test with the reason, because a
system test that quietly does not run proves nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system import nspawn

ROOT = Path(__file__).resolve().parents[2]
NODE_DEB_DIR = "/var/cache/kupd-test"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Package builds and booting nodes on a loaded 2-core machine take longer than the default.
    for item in items:
        if "tests/system/" in str(item.fspath) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(1800))


def build_package(script: str, *args: str, timeout: float = 1800) -> Path:
    """Run packaging/SCRIPT ARGS and return the package path it prints last."""
    started = time.monotonic()
    proc = subprocess.run(
        [str(ROOT / "packaging" / script), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"packaging/{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}")
    path = Path(proc.stdout.strip().splitlines()[-1])
    if not path.is_file():
        pytest.fail(f"packaging/{script} printed {path}, which is not a file\n{proc.stderr[-3000:]}")
    print(f"{script} {' '.join(args)}: {path} in {time.monotonic() - started:.1f}s")
    return path


@pytest.fixture(scope="session")
def deb_package() -> Path:
    """The bookworm .deb of this tree (KUPD_DEB=path reuses a given one while iterating on the tests)."""
    given = os.environ.get("KUPD_DEB")
    if given:
        return Path(given)
    for tool in ("dpkg-buildpackage", "dh", "lintian"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: install debhelper, dpkg-dev, lintian (.ci/apt-packages.txt)")
    return build_package("build-deb.sh", nspawn.SUITE)


@pytest.fixture(scope="session")
def rpm_package() -> Path:
    given = os.environ.get("KUPD_RPM")
    if given:
        return Path(given)
    if shutil.which("rpmbuild") is None:
        pytest.fail("rpmbuild is missing: install the Debian package rpm (.ci/apt-packages.txt)")
    return build_package("build-rpm.sh")


@pytest.fixture(scope="session")
def nspawn_base() -> Path:
    return nspawn.base_image()


@pytest.fixture(scope="module")
def node_workdir() -> Iterator[Path]:
    # Not under /tmp: nspawn mounts a tmpfs over the node's /tmp, and a reflink copy wants the
    # same file system as the cache.
    parent = nspawn.cache_dir() / "nodes"
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=parent))
    try:
        yield work
    finally:
        if not os.environ.get("KUPD_KEEP_NODES"):
            shutil.rmtree(work, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def install_deb(node: nspawn.Node, deb: Path) -> None:
    """`apt-get install ./kupd_*.deb` inside the node: apt resolves Depends from the node's own
    dpkg database (the base image has them), so no network is needed. The package starts kupd,
    which serves /metrics at once: the nodes share the host's network, so each gets its own port."""
    node.write("/etc/kupd/config.d/40-system-test-metrics.toml", f'metrics_address = "127.0.0.1:{free_port()}"\n')
    node.copy_in(deb, f"{NODE_DEB_DIR}/{deb.name}")
    node.run(["apt-get", "install", "-y", f"{NODE_DEB_DIR}/{deb.name}"], timeout=300)


@pytest.fixture(scope="module")
def kupd_nodes(deb_package: Path, nspawn_base: Path, node_workdir: Path) -> Iterator[list[nspawn.Node]]:
    """Three booted nodes with the .deb installed by apt (kupd started by the package)."""
    names = ["kupd-cp-1", "kupd-w-1", "kupd-w-2"]
    with nspawn.booted_nodes(names, node_workdir) as nodes:
        for node in nodes:
            install_deb(node, deb_package)
        yield nodes
