"""Health gates against a real Prometheus server (Debian's prometheus) scraping kupd's own metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kupd.sim.devcluster import free_port
from kupd.sim.simcluster import SimCluster
from tests.cluster.harness import apply_du, get_du, wait_phase


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, int]]:
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus package is required (.ci/apt-packages.txt installs it)"
    target = free_port()
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "kupd", "static_configs": [{"targets": [f"127.0.0.1:{target}"]}]}],
    }))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}", target
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_prometheus_gate_pauses_until_it_passes(sim: SimCluster, prometheus: tuple[str, int]) -> None:
    url, metrics_port = prometheus
    sim.add_node("cp-1", control_plane=True, extra={"metrics_address": f"127.0.0.1:{metrics_port}"})
    sim.add_node("w-1")
    gates = {"prometheus": {"url": url, "queries": [
        {"name": "coordinator-up", "query": "kupd_coordinator_leader == 1", "expect": "NonEmpty"},
        {"name": "no-open-blocker", "query": "absent(kupd_example_gate_open)", "expect": "Empty"},
    ]}}
    apply_du(sim.cp, "gated", {"version": "v1.32.0", "backup": {"required": False}, "healthGates": gates})
    deadline = time.monotonic() + 120
    st: dict = {}
    while time.monotonic() < deadline:
        st = get_du(sim.cp, "gated").get("status") or {}
        if st.get("phase") == "Paused" and "no-open-blocker" in st.get("message", ""):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"gate never held: {st}")
    # The first query passed (the coordinator's own metric was scraped); the second holds the rollout.
    cond = next(c for c in st["conditions"] if c["type"] == "HealthGates")
    assert cond["status"] == "False" and "no-open-blocker" in cond["message"]
    assert next(n for n in st["nodes"] if n["name"] == "w-1")["phase"] == "Pending"
    time.sleep(3)
    assert next(n for n in get_du(sim.cp, "gated")["status"]["nodes"] if n["name"] == "w-1")["phase"] == "Pending"
    sim.cp.kubectl("patch", "directupdate", "gated", "--type=json",
                   "-p", '[{"op": "remove", "path": "/spec/healthGates/prometheus/queries/1"}]')
    st = wait_phase(sim.cp, "gated", ("Succeeded", "Failed"), timeout=120)
    assert st["phase"] == "Succeeded", st
    cond = next(c for c in st["conditions"] if c["type"] == "HealthGates")
    assert cond["status"] == "True"
