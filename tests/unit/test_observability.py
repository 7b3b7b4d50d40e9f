"""The Grafana dashboard and the Prometheus rules shipped in packaging/: valid files that query only
metrics and labels kupd exports, alerts that link to runbook sections, docs that match; and the
coordinator's progress and handoff metrics, computed from the statuses it writes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml

import kupd.backup.metrics
from kupd import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "packaging" / "grafana" / "kupd.json"
RULES = ROOT / "packaging" / "prometheus" / "kupd-rules.yaml"
DOCS = ROOT / "docs" / "usage"
# Labels Prometheus itself adds to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"job", "instance", "le"}
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created")}


def registry() -> dict[str, set[str]]:
    """Every kupd series name the daemon can expose, with its label names."""
    assert kupd.backup.metrics.LAST_FAILURE is not None  # registers the backup metrics
    out: dict[str, set[str]] = {}
    for collector in list(prometheus_client.REGISTRY._names_to_collectors.values()):
        for family in collector.describe() if hasattr(collector, "describe") else []:
            if not family.name.startswith("kupd_"):
                continue
            labels = set(getattr(collector, "_labelnames", ()))
            for suffix in SUFFIXES.get(family.type, ("",)):
                out[family.name + suffix] = labels
    return out


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched) for every kupd metric an expression reads."""
    out = []
    for m in re.finditer(r"\b(kupd_[a-z0-9_]+)(\{[^}]*\})?", expr):
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2) or ""))
        out.append((m.group(1), labels))
    assert out or "kupd_" not in expr, expr
    return out


def check_queries(exprs: list[str]) -> None:
    known = registry()
    assert "kupd_coordinator_handoff_gap_seconds_bucket" in known and "kupd_backup_failures_total" in known
    for expr in exprs:
        for name, labels in selectors(expr):
            assert name in known, f"{name} (in {expr!r}) is not a metric kupd exports"
            unknown = labels - known[name] - TARGET_LABELS
            assert not unknown, f"{name} has no label(s) {unknown} (in {expr!r})"


def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_dashboard_is_valid_and_has_the_panels() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "kupd" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
    titles = {p["title"] for p in panels()}
    # The panels the dashboard exists for.
    for want in ("Operations by phase", "Node progress", "Step durations (p50, p90 over the range)", "Handoff gaps",
                 "Last good backup age", "Last good backup size", "Members", "Coordinator and epoch"):
        assert want in titles
    variables = {v["name"] for v in dash["templating"]["list"]}
    for p in panels():
        assert p["targets"], p["title"]
        for t in p["targets"]:
            used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__range", "__rate_interval"}
            assert used <= variables, (p["title"], used)
        assert p["datasource"]["uid"] == "${datasource}"


def test_dashboard_queries_only_kupd_metrics() -> None:
    check_queries([t["expr"] for p in panels() for t in p["targets"]])


def test_rules_query_only_kupd_metrics_and_link_to_the_runbook() -> None:
    rs = rules()
    names = [r["alert"] for r in rs]
    assert len(names) == len(set(names))
    for want in ("KupdOperationStalled", "KupdOperationRequiresAttention", "KupdNodeFailed", "KupdBackupFailed",
                 "KupdBackupStale", "KupdNoCoordinator", "KupdMemberLost"):
        assert want in names
    check_queries([r["expr"] for r in rs])
    runbook = (DOCS / "runbook.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.*)$", runbook, re.M)}
    for r in rs:
        url = r["annotations"]["runbook_url"]
        assert url.startswith("https://kupd.invalid/docs/usage/runbook.md#"), url
        assert url.split("#", 1)[1] in anchors, f"{r['alert']}: no runbook section #{url.split('#', 1)[1]}"
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"] and r["annotations"]["description"]


def test_docs_show_every_panel_query_and_alert() -> None:
    doc = (DOCS / "metrics.md").read_text()
    for p in panels():
        assert f"**{p['title']}**" in doc, p["title"]
        for t in p["targets"]:
            assert t["expr"] in doc, t["expr"]
    for r in rules():
        assert f"| `{r['alert']}` |" in doc and f"(runbook.md#{r['annotations']['runbook_url'].split('#')[1]})" in doc


# -- progress and handoff metrics, from the statuses the coordinator writes ------------------------
def _sample(name: str, **labels: str) -> float:
    v = prometheus_client.REGISTRY.get_sample_value(name, labels)
    return 0.0 if v is None else v


def _status(*nodes: tuple[str, str, str]) -> dict[str, Any]:
    return {"phase": "Running", "nodes": [{"name": n, "phase": ph, "step": st} for n, ph, st in nodes]}


@pytest.fixture
def fresh() -> None:
    metrics.coordinator_stopped()


def test_progress_timestamp_moves_only_with_node_changes(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(metrics.time, "time", lambda: clock[0])
    metrics._node_progress("op", _status(("w-1", "Granted", "")), 0.0)
    assert _sample("kupd_coordinator_operation_progress_timestamp_seconds", operation="op") == 1000.0
    clock[0] = 1010.0
    metrics._node_progress("op", _status(("w-1", "Granted", "")), 1.0)  # nothing moved
    assert _sample("kupd_coordinator_operation_progress_timestamp_seconds", operation="op") == 1000.0
    metrics._node_progress("op", _status(("w-1", "Upgrading", "drain")), 2.0)
    assert _sample("kupd_coordinator_operation_progress_timestamp_seconds", operation="op") == 1010.0
    metrics.coordinator_stopped()
    assert prometheus_client.REGISTRY.get_sample_value(
        "kupd_coordinator_operation_progress_timestamp_seconds", {"operation": "op"}) is None


def test_handoff_gap_is_the_time_a_freed_slot_stayed_empty(fresh: None) -> None:
    count0 = _sample("kupd_coordinator_handoff_gap_seconds_count")
    sum0 = _sample("kupd_coordinator_handoff_gap_seconds_sum")
    # Concurrency 1: w-1 upgrades, w-2 and w-3 wait.
    metrics._node_progress("op", _status(("w-1", "Upgrading", "drain"), ("w-2", "Pending", ""),
                                         ("w-3", "Pending", "")), 100.0)
    metrics._node_progress("op", _status(("w-1", "Succeeded", "uncordon"), ("w-2", "Pending", ""),
                                         ("w-3", "Pending", "")), 110.0)
    metrics._node_progress("op", _status(("w-1", "Succeeded", "uncordon"), ("w-2", "Granted", ""),
                                         ("w-3", "Pending", "")), 112.5)
    assert _sample("kupd_coordinator_handoff_gap_seconds_count") == count0 + 1
    assert _sample("kupd_coordinator_handoff_gap_seconds_sum") == pytest.approx(sum0 + 2.5)
    # Seen in one round: the turn ends and the next is granted at once.
    metrics._node_progress("op", _status(("w-1", "Succeeded", "uncordon"), ("w-2", "Succeeded", "uncordon"),
                                         ("w-3", "Granted", "")), 130.0)
    assert _sample("kupd_coordinator_handoff_gap_seconds_count") == count0 + 2
    assert _sample("kupd_coordinator_handoff_gap_seconds_sum") == pytest.approx(sum0 + 2.5)
    # A lost node that comes back holds the slot it had: its return takes no freed slot.
    metrics._node_progress("op4", _status(("a", "Upgrading", "drain"), ("b", "Upgrading", "drain")), 0.0)
    metrics._node_progress("op4", _status(("a", "Lost", "drain"), ("b", "Succeeded", "uncordon")), 1.0)
    metrics._node_progress("op4", _status(("a", "Upgrading", "restart"), ("b", "Succeeded", "uncordon")), 2.0)
    assert _sample("kupd_coordinator_handoff_gap_seconds_count") == count0 + 2
    # A grant with no freed slot (the first ones, a retry into a free slot) is no handoff.
    metrics._node_progress("op2", _status(("w-9", "Pending", "")), 0.0)
    metrics._node_progress("op2", _status(("w-9", "Granted", "")), 5.0)
    assert _sample("kupd_coordinator_handoff_gap_seconds_count") == count0 + 2


def test_operation_status_feeds_the_progress(fresh: None) -> None:
    metrics.operation_status("op3", _status(("cp-1", "Upgrading", "kubeadm-upgrade")))
    assert _sample("kupd_coordinator_operation_progress_timestamp_seconds", operation="op3") > 0
    assert _sample("kupd_coordinator_operation_nodes", operation="op3", phase="Upgrading") == 1
