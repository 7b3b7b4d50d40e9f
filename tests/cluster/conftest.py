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
