from __future__ import annotations

from collections.abc import Iterator

import pytest

from kupd.sim.devcluster import ControlPlane
from kupd.sim.simcluster import SimCluster
from tests.cluster import harness
from tests.paths import CRD_DIR


@pytest.fixture(scope="session")
def crds(control_plane: ControlPlane) -> ControlPlane:
    control_plane.install_crds(CRD_DIR)
    return control_plane


@pytest.fixture(autouse=True)
def invariants(control_plane: ControlPlane) -> Iterator[harness.Monitor]:
    """The invariant monitor around every test of the tier, on the session's control plane: no
    more control-plane or worker turns out (or nodes cordoned) than the limits, no worker turn
    beside a control-plane one, none past the oldest API server, and no operation stalled without
    saying why. A node left cordoned is checked by the tests that end with nodes in place (their
    cleanup deletes the Nodes); tests on a control plane of their own run their own monitor."""
    mon = harness.Monitor(control_plane).start()
    try:
        yield mon
    finally:
        mon.stop()
    mon.assert_limits()


@pytest.fixture
def sim(crds: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimCluster]:
    """Simulated nodes for one test; everything they made is removed afterwards."""
    harness.cleanup(crds)
    sc = SimCluster(crds, tmp_path_factory.mktemp("sim"), step_seconds=0.3)
    try:
        yield sc
    finally:
        sc.stop()
        # Shown by pytest only when the test failed.
        for name, node in sc.nodes.items():
            if node.log.exists():
                print(f"==== {name} daemon log (tail)\n{node.log.read_text(errors='replace')[-4000:]}")
        harness.cleanup(crds)
