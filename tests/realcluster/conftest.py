"""Fixtures of the real-cluster tier: the artifacts, a Ready kubeadm cluster, kupd on every node.

Nothing here skips: a missing tool or a failed build fails the test with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.realcluster import artifacts, cluster, store
from tests.realcluster.harness import NAMES, RealCluster
from tests.system import nspawn
from tests.system.conftest import deb_package  # noqa: F401 - the fixture, shared with the system tier


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Builds, three nodes and a real upgrade on a loaded 2-core machine.
    for item in items:
        if "tests/realcluster/" in str(item.fspath) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(3600))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report carries each node's failed units, journals and containers."""
    outcome: Any = yield
    rep = outcome.get_result()
    rc = getattr(item, "funcargs", {}).get("realcluster")
    if rep.failed and rep.when == "call" and isinstance(rc, RealCluster):
        rep.sections.append(("real cluster nodes", cluster.diagnostics(rc.nodes)))


@pytest.fixture(scope="session")
def realcluster_artifacts() -> artifacts.Artifacts:
    for tool in ("systemd-nspawn", "nsenter", "ip", "go", "dpkg-deb", "apt-ftparchive", "gpg"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: see .ci/apt-packages.txt and scripts/setup.sh")
    started = time.monotonic()
    try:
        arts = artifacts.build()
    except (RuntimeError, subprocess.SubprocessError) as e:
        pytest.fail(f"building the real cluster's artifacts failed: {e}")
    print(f"real-cluster artifacts in {time.monotonic() - started:.1f}s: {arts.bundle.parent}")
    return arts


@pytest.fixture(scope="module")
def realcluster(realcluster_artifacts: artifacts.Artifacts, deb_package: Path) -> Iterator[RealCluster]:  # noqa: F811
    parent = nspawn.cache_dir() / "nodes"
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="realcluster-", dir=parent))
    started = time.monotonic()
    for leftover in cluster.sweep_stale():
        print(f"removed what an earlier run left: {leftover}")
    try:
        net_name = f"{cluster.NET_PREFIX}{os.getpid()}"
        with cluster.real_cluster(NAMES, work, realcluster_artifacts, artifacts.FROM, net_name,
                                  deb_package) as (nodes, relay):
            object_store = store.ObjectStore(relay.netns, work / "moto.log").start()
            try:
                rc = RealCluster(nodes, relay, realcluster_artifacts, work, object_store)
                rc.enroll_kupd()
                print(f"real cluster up, kupd enrolled, in {time.monotonic() - started:.1f}s")
                yield rc
            finally:
                object_store.close()
    finally:
        if not os.environ.get("KUPD_KEEP_NODES"):
            shutil.rmtree(work, ignore_errors=True)
