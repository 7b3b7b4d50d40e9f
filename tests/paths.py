"""Where the repository keeps what the tests and the benchmarks hand to kupd: the control-plane
binary (built by tests/controlplane/build.sh) and the CRDs. The installed package never looks
for these itself."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRD_DIR = ROOT / "crds"
BUILD_SCRIPT = ROOT / "tests" / "controlplane" / "build.sh"


def control_plane_binary(build: bool = True) -> Path:
    """The kupd-testcp binary: $KUPD_TESTCP, the cached build, or a build now."""
    env = os.environ.get("KUPD_TESTCP")
    if env:
        return Path(env)
    linked = ROOT / "tests" / "controlplane" / "bin" / "kupd-testcp"
    if linked.exists():
        return linked
    if not build:
        raise FileNotFoundError("kupd-testcp is not built; run tests/controlplane/build.sh")
    res = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True, timeout=3600)
    return Path(res.stdout.strip().splitlines()[-1])
