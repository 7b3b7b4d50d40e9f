"""Shared fixtures. The tier of a test is the folder it lives in (tests/unit, tests/cluster, ...)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kupd.sim import devcluster
from tests.paths import control_plane_binary

TIERS = ("unit", "cluster", "host", "system", "bench", "realcluster")
ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = _tier(item)
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
    # Tiers run in TIERS' order, the slowest to set up last: scripts/test.sh builds the realcluster
    # tier's parts in the background meanwhile. The sort is stable, so a module's tests stay together.
    items.sort(key=lambda item: TIERS.index(_tier(item)) if _tier(item) in TIERS else len(TIERS))


def _tier(item: pytest.Item) -> str:
    parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
    return parts[0] if parts else ""


@pytest.fixture(autouse=True)
def _no_subprocess_in_unit_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests are pure: a subprocess there is a test in the wrong tier."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unit tests may not start subprocesses; move the test to another tier")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[devcluster.ControlPlane]:
    """A real kube-apiserver + etcd + disruption controller for the whole session."""
    workdir = Path(tempfile.mkdtemp(prefix="kupd-cp-"))
    cp = devcluster.ControlPlane(workdir, control_plane_binary())
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()
        shutil.rmtree(workdir, ignore_errors=True)
