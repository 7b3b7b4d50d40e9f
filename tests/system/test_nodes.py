"""The .deb on three booted Debian nodes: apt installs it, systemd runs it, and the pieces that
make kupd a good systemd citizen work under a real service manager (not a mock):

- the package creates /var/lib/kupd and /etc/kupd/config.d and loads the hardened unit;
- `systemctl status kupd` works; the kill switch keeps kupd from (re)starting;
- sd_notify READY/STATUS from kupd.notify shows in `systemctl status`, and a missing WATCHDOG
  ping gets the service killed and restarted (run through the packaged venv, so this holds
  whatever the daemon does);
- kupd.logsetup under journald writes KUPD_* fields that `journalctl KUPD_STEP=...` finds;
- upgrading the package does not restart a running kupd.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.system import nspawn
from tests.system.conftest import NODE_DEB_DIR

VENV_PY = "/usr/lib/kupd/venv/bin/python3"


def wait_for(what: str, predicate: object, timeout: float = 60, interval: float = 0.5) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def show(node: nspawn.Node, unit: str, prop: str) -> str:
    return node.run(["systemctl", "show", "-P", prop, unit]).stdout.strip()


def test_package_layout_and_unit(kupd_nodes: list[nspawn.Node]) -> None:
    for node in kupd_nodes:
        status = node.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", "kupd"]).stdout
        assert status.startswith("install ok installed"), status
        for path, mode in (("/var/lib/kupd", "700"), ("/etc/kupd/config.d", "755")):
            got = node.run(["stat", "-c", "%a %U", path]).stdout.split()
            assert got == [mode, "root"], (path, got)
        assert show(node, "kupd.service", "LoadState") == "loaded"
        assert show(node, "kupd.service", "UnitFileState") == "enabled"
        assert show(node, "kupd.service", "Type") == "notify"
        assert show(node, "kupd.service", "Restart") == "always"
        assert show(node, "kupd.service", "WatchdogUSec") == "1min"
        assert show(node, "kupd.service", "KillMode") == "process"
        version = node.run(["kupd", "--version"]).stdout.strip()
        assert version.startswith("kupd "), version
        # The venv's python sees python3-apt from Debian, the rest from the venv.
        probe = node.run([VENV_PY, "-I", "-c", (
            "import apt_pkg, pydantic, boto3, croniter, yaml, prometheus_client, google.cloud.storage, "
            "kupd, kupd.daemon, kupd.config as c;"
            "print(pydantic.VERSION, kupd.__file__, c.load().host)")]).stdout
        assert probe.startswith("2."), probe
        assert "/usr/lib/kupd/venv/" in probe and probe.split()[-1] == "real", probe
        # Test-only and dropped dependencies are not in the production venv.
        for module in ("kubernetes", "sdnotify", "aiohttp", "systemd"):
            r = node.run([VENV_PY, "-I", "-c", f"import {module}"], check=False)
            assert r.returncode == 1 and "ModuleNotFoundError" in r.stderr, (module, r.stderr)


def test_systemctl_status_works(kupd_nodes: list[nspawn.Node]) -> None:
    node = kupd_nodes[0]
    r = node.run(["systemctl", "status", "--no-pager", "kupd"], check=False)
    # Running (READY at once) although it has no cluster credential yet.
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kupd.service - kupd Kubernetes node upgrade daemon" in r.stdout
    assert "Loaded: loaded (/lib/systemd/system/kupd.service; enabled" in r.stdout


def test_security_exposure_is_reported(kupd_nodes: list[nspawn.Node]) -> None:
    out = kupd_nodes[0].run(["systemd-analyze", "security", "--no-pager", "kupd.service"], check=False).stdout
    m = re.search(r"Overall exposure level for kupd.service: (\d+\.\d)", out)
    assert m, out[-2000:]
    print(f"systemd-analyze security kupd.service: {m.group(1)}")
    assert float(m.group(1)) <= 6.5, out


def test_kill_switch(kupd_nodes: list[nspawn.Node]) -> None:
    node = kupd_nodes[1]
    node.run(["touch", "/etc/kupd/disabled"])
    try:
        node.systemctl("stop", "kupd")
        node.systemctl("start", "kupd")  # a start with the condition unmet succeeds but runs nothing
        assert show(node, "kupd.service", "ActiveState") == "inactive"
        assert show(node, "kupd.service", "ConditionResult") == "no"
        status = node.run(["systemctl", "status", "--no-pager", "kupd"], check=False).stdout
        assert "ConditionPathExists=!/etc/kupd/disabled was not met" in status
    finally:
        node.run(["rm", "-f", "/etc/kupd/disabled"])
    node.systemctl("start", "kupd")
    assert show(node, "kupd.service", "ConditionResult") == "yes"
    assert show(node, "kupd.service", "ActiveState") == "active"


def test_first_boot_ready_at_once_and_waits_without_restarts(kupd_nodes: list[nspawn.Node]) -> None:
    """No credential, then one for an API server that is not there: `systemctl restart` returns
    at once (READY before anything), STATUS says what kupd waits for, and the same process keeps
    waiting (no exit, no restart); a stop during the wait is clean."""
    node = kupd_nodes[2]
    node.run(["rm", "-f", "/etc/kupd/kubeconfig"])
    started = time.monotonic()
    node.systemctl("restart", "kupd")  # Type=notify: returns once READY=1 arrived
    took = time.monotonic() - started
    print(f"systemctl restart kupd without a credential returned in {took:.1f}s")
    assert took < 30, took
    assert show(node, "kupd.service", "ActiveState") == "active"
    wait_for("STATUS naming the missing credential",
             lambda: "waiting for a credential" in show(node, "kupd.service", "StatusText"), timeout=30)
    assert "/etc/kupd/kubeconfig does not exist" in show(node, "kupd.service", "StatusText")
    pid, restarts = show(node, "kupd.service", "MainPID"), show(node, "kupd.service", "NRestarts")
    time.sleep(12)  # more than two restart intervals of the old behaviour (exit 1, RestartSec=5s)
    assert (show(node, "kupd.service", "MainPID"), show(node, "kupd.service", "NRestarts")) == (pid, restarts)
    # A credential for an API server where nothing listens: the same process moves on and says so.
    node.write("/etc/kupd/kubeconfig", "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
               "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
               "contexts: [{name: c, context: {cluster: c}}]\n", mode=0o600)
    wait_for("STATUS naming the API server",
             lambda: "waiting for the API server" in show(node, "kupd.service", "StatusText"), timeout=30)
    assert show(node, "kupd.service", "MainPID") == pid
    node.systemctl("stop", "kupd")
    assert show(node, "kupd.service", "Result") == "success"
    node.run(["rm", "-f", "/etc/kupd/kubeconfig"])
    node.systemctl("start", "kupd")


PROBE = """
import logging, sys, time
from kupd import logsetup
from kupd.notify import Notifier, watchdog_interval
logsetup.setup_logging("info")
logsetup.set_defaults(node="NODE")
n = Notifier()
assert n.enabled, "NOTIFY_SOCKET missing"
assert watchdog_interval() == 4.0, watchdog_interval()
with logsetup.log_context(operation="probe-op", step="drain"):
    logging.getLogger("kupd.probe").info("probe draining")
    # Larger than a datagram: kupd.journal passes it in a sealed memfd.
    logging.getLogger("kupd.probe").info("probe big entry %s", "x" * 400000)
n.ready("probe-op: NODE drain (probe)")
for _ in range(int(sys.argv[1])):
    n.watchdog()
    time.sleep(1)
time.sleep(3600)  # stop pinging: the watchdog must fire
"""


def test_notify_watchdog_and_journal_fields_under_systemd(kupd_nodes: list[nspawn.Node]) -> None:
    node = kupd_nodes[2]
    node.write("/usr/local/lib/kupd-probe.py", PROBE.replace("NODE", node.name))
    unit = "kupd-probe.service"
    node.run([
        "systemd-run", f"--unit={unit}", "--property=Type=notify", "--property=WatchdogSec=4s",
        "--property=Restart=on-watchdog", "--property=RestartSec=1s",
        VENV_PY, "-I", "/usr/local/lib/kupd-probe.py", "8",
    ])
    try:
        assert show(node, unit, "ActiveState") == "active"  # Type=notify: active only after READY=1
        status = node.run(["systemctl", "status", "--no-pager", unit], check=False).stdout
        assert "Status: \"probe-op: " + node.name + " drain (probe)\"" in status, status
        entries = node.journal("-u", unit, "KUPD_STEP=drain", "KUPD_OPERATION=probe-op", f"KUPD_NODE={node.name}")
        assert "probe draining" in entries, node.journal("-u", unit, "-o", "verbose")
        assert "probe big entry " + "x" * 1000 in entries
        assert node.journal("-u", unit, "KUPD_STEP=verify") == "" or "probe draining" not in node.journal(
            "-u", unit, "KUPD_STEP=verify"
        )
        # No ping after 8 s: systemd kills it (SIGABRT) and Restart=on-watchdog starts it again.
        wait_for(
            "a watchdog restart",
            lambda: int(show(node, unit, "NRestarts") or 0) >= 1,
            timeout=30,
        )
        assert "watchdog" in node.journal("-u", unit, "-o", "short").lower()
    finally:
        node.run(["systemctl", "stop", unit], check=False)
        node.run(["systemctl", "reset-failed", unit], check=False)


SLEEPER = """[Service]
Type=simple
ExecStart=
ExecStart=/bin/sleep infinity
"""


def test_package_upgrade_does_not_restart_kupd(kupd_nodes: list[nspawn.Node], deb_package: Path) -> None:
    """The maintainer scripts must neither stop nor restart a running kupd. A drop-in replaces
    ExecStart with a sleeper so this holds whatever the daemon does without a cluster."""
    node = kupd_nodes[0]
    dropin = "/etc/systemd/system/kupd.service.d/99-system-test.conf"
    node.write(dropin, SLEEPER)
    node.systemctl("daemon-reload")
    node.systemctl("restart", "kupd")
    try:
        before = (show(node, "kupd.service", "InvocationID"), show(node, "kupd.service", "MainPID"))
        assert show(node, "kupd.service", "ActiveState") == "active"
        # A reinstall runs the same maintainer scripts as an upgrade (prerm upgrade, postinst configure).
        node.run(["apt-get", "install", "-y", "--reinstall", f"{NODE_DEB_DIR}/{deb_package.name}"])
        after = (show(node, "kupd.service", "InvocationID"), show(node, "kupd.service", "MainPID"))
        assert after == before, "the package upgrade stopped or restarted kupd"
        assert show(node, "kupd.service", "ActiveState") == "active"
    finally:
        node.run(["rm", "-f", dropin])
        node.systemctl("daemon-reload")
        node.systemctl("restart", "--no-block", "kupd")


def test_package_removal_and_purge(kupd_nodes: list[nspawn.Node]) -> None:
    node = kupd_nodes[1]
    node.run(["apt-get", "purge", "-y", "kupd"])
    assert show(node, "kupd.service", "LoadState") == "not-found"
    assert node.run(["test", "-e", "/usr/lib/kupd"], check=False).returncode == 1
    assert node.run(["test", "-e", "/var/lib/kupd"], check=False).returncode == 1


def test_reboot_starts_kupd_again(kupd_nodes: list[nspawn.Node]) -> None:
    node = kupd_nodes[0]
    node.reboot()
    # enabled: systemd starts it at boot; without a credential it is active and waits
    assert show(node, "kupd.service", "ActiveState") == "active"
    assert "waiting for a credential" in show(node, "kupd.service", "StatusText")
