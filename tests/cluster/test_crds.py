"""kupd's CRDs on the real kube-apiserver: they install, explain themselves, take the examples and
the status the coordinator writes, and refuse malformed input naming the field, as the daemon's own
re-validation (kupd.api.models) does.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from kupd.api import models
from kupd.errors import ValidationError
from kupd.sim.devcluster import ControlPlane
from tests.cluster.crdutil import CRD_NAMES, EXAMPLES_DIR, MALFORMED, Malformed, install_crds

PARSERS: dict[str, Callable[[Mapping[str, Any]], BaseModel]] = {
    "DirectUpdate": models.parse_directupdate_spec,
    "ScheduledUpdate": models.parse_scheduledupdate_spec,
    "UpdateSchedule": models.parse_updateschedule_spec,
}
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def cp(control_plane: ControlPlane) -> ControlPlane:
    install_crds(control_plane)
    install_crds(control_plane)  # idempotent: other modules install them too
    return control_plane


@pytest.fixture(scope="module")
def refusals(cp: ControlPlane) -> Iterator[dict[str, str]]:
    """What `kubectl apply` says to each malformed resource: "created" or its error message.

    One kubectl applies them all (it goes on past errors and names the object in each Invalid
    error); the few errors that do not name their object (strict decoding of unknown fields)
    are attributed by applying those resources again one by one.
    """
    docs = "\n---\n".join(json.dumps(c.object()) for c in MALFORMED)
    batch = cp.kubectl("apply", "-f", "-", check=False, input_text=docs)
    chunks = re.split(r"(?=^Error from server)", batch.stderr, flags=re.M)
    results: dict[str, str] = {}
    for case in MALFORMED:
        if re.search(rf"/{re.escape(case.name)} (created|configured|unchanged)", batch.stdout):
            results[case.id] = "created"
            continue
        named = [c for c in chunks if f'"{case.name}"' in c]
        if len(named) == 1:
            results[case.id] = named[0]
    rest = [c for c in MALFORMED if c.id not in results]

    def apply(case: Malformed) -> str:
        res = cp.kubectl("apply", "-f", "-", check=False, input_text=json.dumps(case.object()))
        return "created" if res.returncode == 0 else res.stderr

    with ThreadPoolExecutor(max_workers=4) as pool:
        results.update(zip([c.id for c in rest], pool.map(apply, rest), strict=True))
    yield results
    for case in MALFORMED:
        if results[case.id] == "created":
            cp.kubectl("delete", case.kind.lower(), case.name, "--ignore-not-found", check=False)


def names_field(stderr: str, path: str) -> bool:
    """The API server's message names `path` itself ("spec.x: ..." or unknown field "spec.x")."""
    return re.search(r'(^|[\s\[,"])' + re.escape(path) + r'(:|")', stderr) is not None


def get(cp: ControlPlane, kind: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(cp.kubectl("get", kind.lower(), name, "-o", "json").stdout)
    return obj


def without_empty_lists(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: without_empty_lists(v) for k, v in data.items() if v != []}
    return data


# -- installation -------------------------------------------------------------------------------


def test_crds_are_established_with_their_names(cp: ControlPlane) -> None:
    for name in CRD_NAMES:
        crd = json.loads(cp.kubectl("get", "crd", name, "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True", conditions
        assert crd["status"]["acceptedNames"]["shortNames"] in (["du"], ["su"], ["usched"])
    resources = cp.kubectl("api-resources", "--api-group=kupd.io", "-o", "wide").stdout
    for plural, short in (("directupdates", "du"), ("scheduledupdates", "su"), ("updateschedules", "usched")):
        assert re.search(rf"^{plural}\s+{short}\s+kupd.io/v1alpha1\s+false\s", resources, re.M), resources


def explain(cp: ControlPlane, field: str) -> str:
    """`kubectl explain`, retried while the API server publishes the new kinds' OpenAPI."""
    deadline = time.monotonic() + 30
    while True:
        res = cp.kubectl("explain", field, check=False)
        if res.returncode == 0 or time.monotonic() > deadline:
            assert res.returncode == 0, res.stderr
            return " ".join(res.stdout.split())  # unwrapped
        time.sleep(0.5)


def test_kubectl_explain_shows_the_descriptions(cp: ControlPlane) -> None:
    drain = explain(cp, "directupdate.spec.drain")
    assert "PodDisruptionBudgets are honoured" in drain
    for field in ("timeoutSeconds", "gracePeriodSeconds", "deleteEmptyDirData", "podSelector", "onTimeout"):
        assert field in drain
    assert "Give up draining a node after this many seconds." in drain
    assert "RequiresAttention" in drain  # the enum is listed
    assert "newest patch release of that minor" in explain(cp, "updateschedule.spec.template.version")
    assert "explicit offset" in explain(cp, "su.spec.startTime")


# -- valid objects ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples(cp: ControlPlane) -> Iterator[list[dict[str, Any]]]:
    """Every example, applied with one `kubectl apply -f examples/`."""
    docs = [yaml.safe_load(p.read_text()) for p in EXAMPLES]
    try:
        res = cp.kubectl("apply", "-f", str(EXAMPLES_DIR), check=False)
        assert res.returncode == 0, res.stderr
        for doc in docs:
            assert f"{doc['kind'].lower()}.kupd.io/{doc['metadata']['name']} " in res.stdout, res.stdout
        yield docs
    finally:
        # A DirectUpdate left behind would be picked up by the coordinators of other tests.
        cp.kubectl("delete", "--ignore-not-found", "--wait=true", *(f"-f={p}" for p in EXAMPLES), check=False)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_applies_and_server_defaults_match_the_models(
        cp: ControlPlane, examples: list[dict[str, Any]], path: Path) -> None:
    local = yaml.safe_load(path.read_text())
    stored = get(cp, local["kind"], local["metadata"]["name"])
    parse = PARSERS[local["kind"]]
    # The API server filled in its defaults; the models fill in theirs: both must agree.
    assert parse(stored) == parse(local)
    assert stored["spec"] == without_empty_lists(models.to_wire(parse(local)))


def test_printer_columns_and_names(cp: ControlPlane, examples: list[dict[str, Any]]) -> None:
    table = cp.kubectl("get", "du", "example-simple").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "TARGET", "PROGRESS", "AGE"]
    assert table[1].split()[:2] == ["example-simple", "v1.31.2"]
    everything = cp.kubectl("get", "kupd", "-o", "name").stdout.split()  # the category
    for doc in examples:
        assert f"{doc['kind'].lower()}.kupd.io/{doc['metadata']['name']}" in everything
    su = cp.kubectl("get", "su", "example-december-patch").stdout
    assert "2026-12-01T02:00:00+01:00" in su and "v1.31.3" in su
    usched = cp.kubectl("get", "usched", "example-weekly-patches").stdout
    assert "0 2 * * sat" in usched and "Europe/Berlin" in usched


def full_directupdate_status() -> models.DirectUpdateStatus:
    now = datetime(2026, 11, 27, 4, 0, 0, 123456, tzinfo=UTC)
    grant = models.GrantRecord(epoch=7, versions=["v1.31.2", "v1.32.0"], first_control_plane=True, backup=True,
                         granted_at=now)
    return models.DirectUpdateStatus(
        phase="Running", observed_generation=1,
        conditions=[models.Condition(type="Progressing", status="True", observed_generation=1,
                                     last_transition_time=now, reason="NodesUpgrading", message="2 of 6 done")],
        coordinator="cp-1", epoch=7, hops=["v1.31.2", "v1.32.0"], progress="2/6", started_at=now,
        message="upgrading cp-2", summary=models.Summary(total=6, pending=3, upgrading=1, succeeded=2),
        backup=models.BackupRecord(location="s3://etcd-backups/clusters/prod/snap-1.db", size=123456789,
                                   sha256="ab" * 32, revision=99, verified=True, taken_at=now, node="cp-1"),
        nodes=[
            models.NodeStatus(name="cp-1", role="ControlPlane", phase="Succeeded", step="done", attempts=1,
                              started_at=now, finished_at=now, from_version="v1.30.5", to_version="v1.32.0",
                              message="at v1.32.0", grant=grant),
            models.NodeStatus(name="worker-1.example.com", role="Worker", canary=True, phase="Upgrading",
                              step="drain", attempts=2, message="waiting for PDB web-pdb",
                              grant=models.GrantRecord(epoch=7, versions=["v1.32.0"])),
            models.NodeStatus(name="worker-2", role="Worker", phase="Pending"),
        ],
    )


STATUSES: dict[str, tuple[Path, BaseModel]] = {
    "DirectUpdate": (EXAMPLES_DIR / "directupdate-simple.yaml", full_directupdate_status()),
    "ScheduledUpdate": (EXAMPLES_DIR / "scheduledupdate.yaml", models.ScheduledUpdateStatus(
        phase="Started", operation="example-december-patch-1", observed_generation=1,
        conditions=[models.Condition(type="Started", status="True",
                                     last_transition_time=datetime(2026, 12, 1, 1, tzinfo=UTC),
                                     reason="Created", message="created DirectUpdate example-december-patch-1")])),
    "UpdateSchedule": (EXAMPLES_DIR / "updateschedule.yaml", models.UpdateScheduleStatus(
        last_schedule_time=datetime(2026, 11, 28, 1, tzinfo=UTC),
        next_schedule_time=datetime(2026, 12, 5, 1, tzinfo=UTC),
        active=["example-weekly-patches-1764291600"],
        history=[models.HistoryEntry(name="example-weekly-patches-1763686800", phase="Succeeded",
                                     started_at=datetime(2026, 11, 21, 1, tzinfo=UTC))],
        observed_generation=2)),
}


@pytest.mark.parametrize("kind", sorted(STATUSES))
def test_status_subresource_takes_what_the_models_write(
        cp: ControlPlane, examples: list[dict[str, Any]], kind: str) -> None:
    path, status = STATUSES[kind]
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    wire = models.to_wire(status)
    cp.kubectl("patch", kind.lower(), name, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": wire}))
    stored = get(cp, kind, name)["status"]
    assert without_empty_lists(stored) == without_empty_lists(wire)
    assert type(status).model_validate(stored) == status
    if kind == "DirectUpdate":
        row = cp.kubectl("get", "du", name, "--no-headers").stdout.split()
        assert row[:4] == [name, "Running", "v1.31.2", "2/6"]


@pytest.mark.parametrize(("patch", "field"), [
    ({"phase": "Bogus"}, "status.phase"),
    ({"progress": "2 of 6"}, "status.progress"),
    ({"nodes": [{"name": "n1", "role": "Worker", "phase": "Exploded"}]}, "status.nodes[0].phase"),
    ({"backup": {"location": "s3://b/k", "sha256": "XYZ"}}, "status.backup.sha256"),
])
def test_status_schema_guards_the_coordinator(
        cp: ControlPlane, examples: list[dict[str, Any]], patch: dict[str, Any], field: str) -> None:
    res = cp.kubectl("patch", "du", "example-simple", "--subresource=status", "--type=merge",
                     "-p", json.dumps({"status": patch}), check=False)
    assert res.returncode != 0 and names_field(res.stderr, field), res.stderr


# -- malformed objects --------------------------------------------------------------------------


@pytest.mark.parametrize("case", MALFORMED, ids=lambda c: c.id)
def test_malformed_resource_is_refused_naming_the_field(refusals: dict[str, str], case: Malformed) -> None:
    error = refusals[case.id]
    assert error != "created", f"kubectl apply accepted {case.id}"
    assert names_field(error, case.field), error[:2000]
    # The daemon's re-validation agrees on the field.
    with pytest.raises(ValidationError) as e:
        PARSERS[case.kind](case.object())
    assert e.value.field == case.field


def test_enough_malformed_cases() -> None:
    assert len(MALFORMED) >= 25
    assert {c.kind for c in MALFORMED} == set(PARSERS)


def test_long_names_are_refused(cp: ControlPlane) -> None:
    """An UpdateSchedule's runs are named <schedule>-<unix time>, which must stay a valid label value."""
    doc = yaml.safe_load((EXAMPLES_DIR / "updateschedule.yaml").read_text())
    doc["metadata"]["name"] = "s" * 53
    res = cp.kubectl("apply", "-f", "-", check=False, input_text=json.dumps(doc))
    assert res.returncode != 0 and "metadata.name must be at most 52 characters" in res.stderr, res.stderr


def test_unknown_fields_are_only_dropped_when_validation_is_switched_off(cp: ControlPlane) -> None:
    """kubectl's default (--validate=strict) refuses unknown fields, as the malformed cases show;
    with --validate=false the API server prunes them silently, so the daemon never sees them."""
    doc = {"apiVersion": "kupd.io/v1alpha1", "kind": "DirectUpdate", "metadata": {"name": "pruned"},
           "spec": {"version": "v1.31.2", "paused": True, "force": True}}
    try:
        cp.kubectl("apply", "--validate=false", "-f", "-", input_text=json.dumps(doc))
        assert "force" not in get(cp, "DirectUpdate", "pruned")["spec"]
    finally:
        cp.kubectl("delete", "du", "pruned", "--ignore-not-found", check=False)
