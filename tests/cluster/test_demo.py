"""README's main job, `kupd demo`, end to end: its own control plane, real daemons, a verified
etcd snapshot, and the DirectUpdate Succeeded."""

from __future__ import annotations

import subprocess
import sys

from tests.paths import CRD_DIR, control_plane_binary


def test_demo_upgrades_its_simulated_cluster() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kupd", "demo", "--workers", "2", "--step-seconds", "0.1", "--timeout", "180",
         "--control-plane-binary", str(control_plane_binary()), "--crds", str(CRD_DIR)],
        capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "result: Succeeded" in out.stdout
    assert "(verified)" in out.stdout, "the etcd snapshot was taken and verified before the control plane"
    # Not a terminal: plain frames appended, no escape sequences in a log or a pipe.
    assert "\x1b" not in out.stdout
    assert "worker-2" in out.stdout
