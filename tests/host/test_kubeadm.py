"""kubeadm: plan parsed and recorded, apply on the first control plane, node elsewhere, failures surfaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kupd.errors import CommandError, PermanentError, ValidationError
from kupd.host.kubeadm import Kubeadm
from kupd.host.systemd import Systemd
from kupd.versions import SkewError, Version
from tests.host import repo_builder as rb

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def setup(tmp_path: Path, version: str = "1.31.2", plan: str = "kubeadm-upgrade-plan-v1.31.txt") -> Kubeadm:
    root = tmp_path / "root"
    binary = rb.install_fake_binary(root, "kubeadm", version)
    (root / "etc/kupd-test").mkdir(parents=True)
    (root / "etc/kupd-test/plan.txt").write_text((FIXTURES / plan).read_text())
    return Kubeadm(str(binary), str(root / "var/lib/kupd/host"))


def argv_log(tmp_path: Path) -> list[str]:
    """What kubeadm was asked to do (version queries left out)."""
    path = tmp_path / "root/var/log/kupd-test/argv.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line for line in lines if line != "kubeadm version -o short"]


def test_version(tmp_path: Path) -> None:
    assert setup(tmp_path).version() == Version(1, 31, 2)
    assert Kubeadm(str(tmp_path / "nowhere/kubeadm"), str(tmp_path / "state")).version() is None


def test_plan_is_parsed_and_recorded(tmp_path: Path) -> None:
    kubeadm = setup(tmp_path)
    plan = kubeadm.plan("v1.31.2")
    assert plan.cluster_version == Version(1, 30, 5)
    state = tmp_path / "root/var/lib/kupd/host"
    assert json.loads((state / "kubeadm-plan-v1.31.2.json").read_text())["applyCommand"] == (
        "kubeadm upgrade apply v1.31.2")
    assert "COMPONENT" in (state / "kubeadm-plan-v1.31.2.txt").read_text()
    assert argv_log(tmp_path) == ["kubeadm upgrade plan v1.31.2"]


def test_first_control_plane_applies_once(tmp_path: Path) -> None:
    kubeadm = setup(tmp_path)
    assert kubeadm.upgrade("v1.31.2", first_control_plane=True, control_plane=True) is True
    assert argv_log(tmp_path) == ["kubeadm upgrade plan v1.31.2", "kubeadm upgrade apply v1.31.2 --yes"]
    assert kubeadm.upgrade("v1.31.2", first_control_plane=True, control_plane=True) is False
    assert len(argv_log(tmp_path)) == 2


def test_apply_skipped_when_cluster_already_there(tmp_path: Path) -> None:
    kubeadm = setup(tmp_path, plan="kubeadm-upgrade-plan-uptodate.txt")
    assert kubeadm.upgrade("v1.31.2", first_control_plane=True, control_plane=True) is True
    assert argv_log(tmp_path) == ["kubeadm upgrade plan v1.31.2"]


def test_apply_refuses_a_skipped_minor(tmp_path: Path) -> None:
    kubeadm = setup(tmp_path, version="1.32.0")
    with pytest.raises(SkewError, match="one-minor-at-a-time"):
        kubeadm.upgrade("v1.32.0", first_control_plane=True, control_plane=True)
    assert not any("apply" in line for line in argv_log(tmp_path))


@pytest.mark.parametrize("control_plane", [True, False])
def test_other_nodes_run_upgrade_node(tmp_path: Path, control_plane: bool) -> None:
    kubeadm = setup(tmp_path)
    kubeadm.upgrade("v1.31.2", first_control_plane=False, control_plane=control_plane)
    assert argv_log(tmp_path) == ["kubeadm upgrade node"]


def test_wrong_kubeadm_installed(tmp_path: Path) -> None:
    kubeadm = setup(tmp_path, version="1.30.5")
    with pytest.raises(PermanentError, match=r"kubeadm v1\.30\.5 is installed; install kubeadm v1\.31\.2 first"):
        kubeadm.upgrade("v1.31.2", first_control_plane=False, control_plane=False)


def test_failure_surfaces_stderr_and_leaves_no_marker(tmp_path: Path) -> None:
    kubeadm = setup(tmp_path)
    (tmp_path / "root/etc/kupd-test/kubeadm-fail").touch()
    with pytest.raises(CommandError) as err:
        kubeadm.upgrade("v1.31.2", first_control_plane=False, control_plane=True)
    assert err.value.returncode == 1
    assert "Errors faced: timed out waiting for the condition" in err.value.stderr
    assert "kubeadm exited 1" in str(err.value)
    assert not list((tmp_path / "root/var/lib/kupd/host").glob("kubeadm-upgraded-*"))
    (tmp_path / "root/etc/kupd-test/kubeadm-fail").unlink()
    assert kubeadm.upgrade("v1.31.2", first_control_plane=False, control_plane=True) is True


def test_hostile_version_never_reaches_kubeadm(tmp_path: Path) -> None:
    kubeadm = setup(tmp_path)
    for bad in ("v1.31.2 --ignore-preflight-errors=all", "--yes", "v1.31.2\n", ""):
        with pytest.raises(ValidationError):
            kubeadm.upgrade(bad, first_control_plane=True, control_plane=True)
    assert argv_log(tmp_path) == []


def test_systemctl(tmp_path: Path) -> None:
    tool = rb.fake_systemctl(tmp_path / "tools")
    systemd = Systemd(str(tool))
    systemd.daemon_reload()
    systemd.restart("kubelet.service")
    assert systemd.is_active("kubelet.service")
    (tmp_path / "tools/containerd.service.failed").touch()
    assert systemd.state("containerd.service") == "failed"
    with pytest.raises(PermanentError):
        systemd.restart("kubelet.service; reboot")
    assert (tmp_path / "tools/systemctl.log").read_text().splitlines() == [
        "systemctl daemon-reload", "systemctl restart kubelet.service", "systemctl is-active kubelet.service",
        "systemctl is-active containerd.service"]


SLOW_KUBEADM = """#!/bin/sh
# A kubeadm whose upgrade prints a line every 0.1 s for 3 s, like the real one's progress lines.
root="$(cd "$(dirname "$0")/../.." && pwd)"
log="$root/var/log/kupd-test"
mkdir -p "$log"
echo "kubeadm $*" >> "$log/argv.log"
case "$1" in
  version) echo v1.31.2 ;;
  upgrade)
    if [ "$2" = plan ]; then cat "$root/etc/kupd-test/plan.txt"; exit 0; fi
    echo "start $2" >> "$log/events.log"
    i=0
    while [ $i -lt 30 ]; do echo "[upgrade] still working ($i)"; sleep 0.1; i=$((i+1)); done
    echo "end $2" >> "$log/events.log" ;;
esac
"""


def test_kubeadm_outlives_a_killed_daemon_and_is_never_run_twice_at_once(tmp_path: Path) -> None:
    """SIGKILL the daemon during `kubeadm upgrade apply`: kubeadm goes on to its end (no SIGPIPE from
    the dead daemon's pipe), and the next daemon waits for it, then applies again (the cluster
    version cannot tell whether an interrupted apply finished)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    kubeadm = setup(tmp_path)
    binary = Path(kubeadm.path)
    binary.write_text(SLOW_KUBEADM)
    state = tmp_path / "root/var/lib/kupd/host"
    code = ("import sys; from kupd.host.kubeadm import Kubeadm; "
            "Kubeadm(sys.argv[1], sys.argv[2]).upgrade('v1.31.2', first_control_plane=True, control_plane=True)")
    daemon = subprocess.Popen([sys.executable, "-c", code, str(binary), str(state)])
    record = state / "kubeadm-running.json"
    deadline = time.monotonic() + 30
    while not record.exists():
        assert daemon.poll() is None and time.monotonic() < deadline, "kubeadm upgrade apply never started"
        time.sleep(0.05)
    time.sleep(0.3)  # kubeadm has printed a few lines
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait()
    events = tmp_path / "root/var/log/kupd-test/events.log"
    assert events.read_text().splitlines() == ["start apply"]

    assert kubeadm.upgrade("v1.31.2", first_control_plane=True, control_plane=True) is True
    # The orphan ran to its end before the second apply started; no plan shortcut the second time.
    assert events.read_text().splitlines() == ["start apply", "end apply", "start apply", "end apply"]
    assert argv_log(tmp_path) == ["kubeadm upgrade plan v1.31.2", "kubeadm upgrade apply v1.31.2 --yes",
                                  "kubeadm upgrade apply v1.31.2 --yes"]
    assert not record.exists()
    assert "[upgrade] still working (29)" in (state / "kubeadm-apply.log").read_text()


def test_an_unreadable_running_record_still_means_apply_again(tmp_path: Path) -> None:
    kubeadm = setup(tmp_path)
    state = tmp_path / "root/var/lib/kupd/host"
    state.mkdir(parents=True)
    (state / "kubeadm-running.json").write_text('{"pid": "not a number"')
    assert kubeadm.upgrade("v1.31.2", first_control_plane=True, control_plane=True) is True
    assert argv_log(tmp_path) == ["kubeadm upgrade apply v1.31.2 --yes"]
    assert not (state / "kubeadm-running.json").exists()


def test_ignored_preflight_checks_reach_every_upgrade_command(tmp_path: Path) -> None:
    """A cgroup v1 node was initialised ignoring SystemVerification; kubeadm's upgrade preflight
    runs that check again and must be told the same (the real-cluster tier found this)."""
    plain = setup(tmp_path)
    kubeadm = Kubeadm(plain.path, str(plain.state_dir), ignore_preflight_errors=("SystemVerification", "Swap"))
    kubeadm.upgrade("v1.31.2", first_control_plane=True, control_plane=True)
    flag = "--ignore-preflight-errors=SystemVerification,Swap"
    assert argv_log(tmp_path) == [f"kubeadm upgrade plan v1.31.2 {flag}", f"kubeadm upgrade apply v1.31.2 --yes {flag}"]
    Kubeadm(plain.path, str(tmp_path / "other-state"), ignore_preflight_errors=("all",)).upgrade(
        "v1.31.2", first_control_plane=False, control_plane=False)
    assert argv_log(tmp_path)[-1] == "kubeadm upgrade node --ignore-preflight-errors=all"
    for bad in ("SystemVerification --dry-run", "a,b", "--config=/etc/x", "", "Swap\n"):
        with pytest.raises(ValidationError):
            Kubeadm(plain.path, str(plain.state_dir), ignore_preflight_errors=(bad,))
