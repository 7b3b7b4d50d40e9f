"""The alerting rules (packaging/prometheus/kupd-rules.yaml): `promtool test rules` on synthetic
series, then Debian's real Prometheus scraping real kupd daemons with the rules loaded: every rule
is evaluated without error, every series a rule reads exists, and a failed node fires its alerts."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kupd.sim.devcluster import free_port
from kupd.sim.simcluster import SimCluster
from tests.cluster.harness import apply_du, wait_phase

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "packaging" / "prometheus" / "kupd-rules.yaml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "kupd-rules.test.yaml"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"Debian's prometheus package provides {name} (.ci/apt-packages.txt installs it)"
    return path


def test_promtool_checks_and_tests_the_rules() -> None:
    check = subprocess.run([_tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True,
                           timeout=60, check=False)
    assert check.returncode == 0 and "SUCCESS: 8 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run([_tool("promtool"), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                          timeout=120, check=False, cwd=RULE_TESTS.parent)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


class Prometheus:
    def __init__(self, address: str) -> None:
        self.address = address

    def get(self, path: str, **params: str) -> Any:
        q = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"http://{self.address}{path}{q}", timeout=10) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Prometheus, list[int]]]:
    """Prometheus scraping two kupd daemons every second, with kupd's rules evaluated every second."""
    targets = [free_port(), free_port()]
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "kupd",
                            "static_configs": [{"targets": [f"127.0.0.1:{t}" for t in targets]}]}],
    }))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([_tool("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                if r.status == 200:
                    break
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.3)
        yield Prometheus(f"127.0.0.1:{port}"), targets
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _wait(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.5)


def test_rules_against_real_daemons(sim: SimCluster, prometheus: tuple[Prometheus, list[int]]) -> None:
    prom, (cp_port, w_port) = prometheus
    sim.add_node("cp-1", control_plane=True, extra={"metrics_address": f"127.0.0.1:{cp_port}"})
    sim.add_node("w-1", extra={"metrics_address": f"127.0.0.1:{w_port}"})
    sim.nodes["w-1"].faults({"fail": {"kubelet-package": 99}})
    apply_du(sim.cp, "alerting", {"version": "v1.32.0", "maxAttempts": 2, "backup": {"required": False}})
    st = wait_phase(sim.cp, "alerting", ("RequiresAttention", "Failed", "Succeeded"))
    assert st["phase"] == "RequiresAttention", st

    # Prometheus loaded every rule, and each evaluates without error against the real series.
    def loaded() -> list[dict[str, Any]]:
        groups = prom.get("/api/v1/rules")["groups"]
        rs = [r for g in groups for r in g["rules"]]
        return rs if rs and all(r.get("lastEvaluation", "").startswith("20") for r in rs) else []

    evaluated = _wait("rules evaluated", loaded)
    assert sorted(r["name"] for r in evaluated) == sorted(r["alert"] for r in _rules())
    for r in evaluated:
        assert r["health"] == "ok" and not r.get("lastError"), r

    # Every series a rule reads is exported by the daemons and scraped.
    for rule in _rules():
        for m in re.finditer(r"\bkupd_[a-z0-9_]+(\{[^}]*\})?", rule["expr"]):
            series = _wait(f"{m.group(0)} scraped ({rule['alert']})", lambda m=m: prom.query(m.group(0)))
            assert all(s["metric"]["job"] == "kupd" for s in series)

    # The failed node fires its alerts: at once for KupdNodeFailed, pending for the others' `for`.
    def alerts() -> dict[str, dict[str, Any]]:
        return {a["labels"]["alertname"]: a for a in prom.get("/api/v1/alerts")["alerts"]}

    firing = _wait("KupdNodeFailed firing", lambda: (a := alerts()).get("KupdNodeFailed", {}).get("state") == "firing"
                   and a)
    assert firing["KupdNodeFailed"]["labels"]["operation"] == "alerting"
    assert firing["KupdNodeFailed"]["annotations"]["runbook_url"].endswith("runbook.md#kupdnodefailed")
    _wait("KupdOperationRequiresAttention pending",
          lambda: alerts().get("KupdOperationRequiresAttention", {}).get("state") in ("pending", "firing"))
    # One coordinator, an operation that is not Running, no backup attempted: these stay quiet.
    quiet = alerts()
    for name in ("KupdNoCoordinator", "KupdOperationStalled", "KupdBackupFailed", "KupdBackupStale",
                 "KupdMemberLost", "KupdOperationFailed"):
        assert name not in quiet, quiet[name]
    assert prom.query('sum(kupd_coordinator_leader{job="kupd"})')[0]["value"][1] == "1"
    progress = prom.query('kupd_coordinator_operation_progress_timestamp_seconds{operation="alerting"}')
    assert len(progress) == 1 and float(progress[0]["value"][1]) > time.time() - 300
