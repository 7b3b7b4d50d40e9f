"""The CRDs (crds/*.yaml) and their pydantic mirror (kupd/api/models.py) stay in step.

The walk compares, at every level, property names, required fields, types, enums, patterns,
lengths, bounds, item counts and defaults of each CRD's openAPIV3Schema with the model's JSON
schema. Then the models are exercised on good and bad specs, including every malformed custom
resource the cluster test sends to the real API server (tests/cluster/crdutil.py).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from kupd import validate
from kupd.api import models
from kupd.errors import ValidationError
from kupd.k8s import paths
from tests.cluster.crdutil import MALFORMED, Malformed

ROOT = Path(__file__).resolve().parents[2]
Schema = dict[str, Any]

CRDS: dict[str, Schema] = {}
for _path in sorted((ROOT / "crds").glob("*.yaml")):
    _doc = yaml.safe_load(_path.read_text())
    CRDS[_doc["spec"]["names"]["kind"]] = _doc


def openapi(kind: str) -> Schema:
    schema: Schema = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


PAIRS: list[tuple[str, str, type[BaseModel]]] = [
    ("DirectUpdate", "spec", models.DirectUpdateSpec),
    ("DirectUpdate", "status", models.DirectUpdateStatus),
    ("ScheduledUpdate", "spec", models.ScheduledUpdateSpec),
    ("ScheduledUpdate", "status", models.ScheduledUpdateStatus),
    ("UpdateSchedule", "spec", models.UpdateScheduleSpec),
    ("UpdateSchedule", "status", models.UpdateScheduleStatus),
]
PARSERS = {
    "DirectUpdate": models.parse_directupdate_spec,
    "ScheduledUpdate": models.parse_scheduledupdate_spec,
    "UpdateSchedule": models.parse_updateschedule_spec,
}
# Keywords both sides must agree on wherever either side has them.
COMPARED = ("type", "format", "enum", "pattern", "minLength", "maxLength", "minimum", "maximum",
            "minItems", "maxItems", "maxProperties")


# -- the schema walk ----------------------------------------------------------------------------


class PydanticSchema:
    """A model's JSON schema with $refs resolved and Optional unwrapped, as the CRD spells it."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.root = model.model_json_schema(by_alias=True)
        self.defs: dict[str, Schema] = self.root.get("$defs", {})

    def resolve(self, schema: Schema) -> tuple[Schema, str | None]:
        """(the schema with $ref and `X | None` unwrapped, the model name it refers to)."""
        extra = {k: v for k, v in schema.items() if k not in ("anyOf", "$ref", "title")}
        ref_name: str | None = None
        if "anyOf" in schema:
            branches = [b for b in schema["anyOf"] if b != {"type": "null"}]
            assert len(branches) == 1, f"unexpected union {schema}"
            inner, ref_name = self.resolve(branches[0])
            if extra.get("default", ...) is None:
                del extra["default"]  # `= None` is the CRD's "unset"
            return inner | extra, ref_name
        if "$ref" in schema:
            ref_name = schema["$ref"].rsplit("/", 1)[-1]
            inner, _ = self.resolve(self.defs[ref_name])
            return inner | extra, ref_name
        return schema, None


def compare(crd: Schema, pyd: Schema, ps: PydanticSchema, path: str, problems: list[str],
            model_name: str | None = None) -> None:
    for key in COMPARED:
        c, p = crd.get(key), pyd.get(key)
        if key == "format" and crd.get("type") == "integer":
            continue  # int64 is a Kubernetes hint; JSON has one integer type
        if c != p:
            problems.append(f"{path}: {key} CRD={c!r} model={p!r}")

    if "default" in crd or "default" in pyd:
        if isinstance(crd.get("default"), dict):
            # An object default: the model's field is a default-constructed sub-model.
            assert model_name is not None, path
            wire = models.to_wire(getattr(models, model_name)())
            if crd["default"] != wire or "default" in pyd:
                problems.append(f"{path}: default CRD={crd['default']!r} model={wire!r}")
        elif crd.get("default") != pyd.get("default"):
            problems.append(f"{path}: default CRD={crd.get('default')!r} model={pyd.get('default')!r}")

    if crd.get("type") == "object" and "properties" in crd:
        c_props, p_props = crd["properties"], pyd.get("properties", {})
        if set(c_props) != set(p_props):
            problems.append(f"{path}: properties only in CRD {sorted(set(c_props) - set(p_props))}, "
                            f"only in model {sorted(set(p_props) - set(c_props))}")
        if set(crd.get("required", [])) != set(pyd.get("required", [])):
            problems.append(f"{path}: required CRD={sorted(crd.get('required', []))} "
                            f"model={sorted(pyd.get('required', []))}")
        if pyd.get("additionalProperties") is not False:
            problems.append(f"{path}: the model accepts unknown fields")
        for name in sorted(set(c_props) & set(p_props)):
            inner, ref = ps.resolve(p_props[name])
            compare(c_props[name], inner, ps, f"{path}.{name}", problems, ref)
    elif crd.get("type") == "object" and "additionalProperties" in crd:
        # A map: values in additionalProperties; keys checked by a CEL rule on the CRD side.
        (key_pattern, value_schema), = pyd["patternProperties"].items()
        rules = " ".join(r["rule"] for r in crd.get("x-kubernetes-validations", []))
        key_max = pyd.get("propertyNames", {}).get("maxLength")
        if f"k.matches(r'{key_pattern}')" not in rules or f"size(k) <= {key_max}" not in rules:
            problems.append(f"{path}: map keys: CEL {rules!r} does not check {key_pattern!r}/{key_max}")
        inner, ref = ps.resolve(value_schema)
        compare(crd["additionalProperties"], inner, ps, f"{path}.*", problems, ref)

    if crd.get("type") == "array":
        inner, ref = ps.resolve(pyd["items"])
        compare(crd["items"], inner, ps, f"{path}[]", problems, ref)


@pytest.mark.parametrize(("kind", "part", "model"), PAIRS, ids=[f"{k}.{p}" for k, p, _ in PAIRS])
def test_crd_and_model_agree(kind: str, part: str, model: type[BaseModel]) -> None:
    ps = PydanticSchema(model)
    problems: list[str] = []
    compare(openapi(kind)["properties"][part], ps.root, ps, part, problems)
    assert not problems, "\n".join(problems)


def _mutations(schema: Schema) -> list[Schema]:
    """Copies of schema, each with one compared keyword changed or one property removed."""
    out = []
    for index, (_, node) in enumerate(walk(schema)):
        changes: list[tuple[str, Any]] = [
            (k, _changed(node[k])) for k in COMPARED
            if k in node and not (k == "format" and node.get("type") == "integer")
        ]
        changes += [("required", None)] if node.get("required") else []
        changes += [("properties", None)] if node.get("properties") else []
        for key, value in changes:
            mutant = copy.deepcopy(schema)
            target = walk(mutant)[index][1]
            if key == "required":
                target["required"] = target["required"][1:]
            elif key == "properties":
                del target["properties"][sorted(target["properties"])[0]]
            else:
                target[key] = value
            out.append(mutant)
    return out


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, list):
        return [*value, "Other"]
    return value + "x"


@pytest.mark.parametrize(("kind", "part", "model"), PAIRS, ids=[f"{k}.{p}" for k, p, _ in PAIRS])
def test_the_walk_notices_every_difference(kind: str, part: str, model: type[BaseModel]) -> None:
    """Guard against a walk that skips a level: every single change to the CRD is reported."""
    ps = PydanticSchema(model)
    mutants = _mutations(openapi(kind)["properties"][part])
    assert len(mutants) > 20
    for mutant in mutants:
        problems: list[str] = []
        compare(mutant, ps.root, ps, part, problems)
        assert problems, yaml.safe_dump(mutant)


# -- the CRDs on their own ----------------------------------------------------------------------


def walk(schema: Schema, path: str = "") -> list[tuple[str, Schema]]:
    out = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        out += walk(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        out += walk(schema["additionalProperties"], f"{path}.*")
    if "items" in schema:
        out += walk(schema["items"], f"{path}[]")
    return out


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_crd_conventions(kind: str) -> None:
    crd = CRDS[kind]
    spec = crd["spec"]
    assert spec["group"] == paths.GROUP
    assert spec["scope"] == "Cluster"
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{paths.GROUP}"
    (version,) = spec["versions"]
    assert version["name"] == paths.VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert spec["names"]["shortNames"] == [{"DirectUpdate": "du", "ScheduledUpdate": "su",
                                            "UpdateSchedule": "usched"}[kind]]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Age"] == ".metadata.creationTimestamp"
    if kind == "DirectUpdate":
        assert columns["Phase"] == ".status.phase"
        assert columns["Target"] == ".spec.version"
        assert columns["Progress"] == ".status.progress"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_field_is_described_and_bounded(kind: str) -> None:
    problems = []
    for path, schema in walk(openapi(kind)):
        if path in (".metadata",) or path.endswith((".apiVersion", ".kind")):
            continue
        if not schema.get("description"):
            problems.append(f"{path}: no description")
        t = schema.get("type")
        if t == "string" and "enum" not in schema and schema.get("format") not in ("date", "date-time"):
            if "maxLength" not in schema:
                problems.append(f"{path}: unbounded string")
            # Everything a user writes can reach a command, a path or a URL: a pattern on each.
            if path.startswith(".spec") and "pattern" not in schema:
                problems.append(f"{path}: spec string without a pattern")
        if t == "integer" and ("minimum" not in schema or "maximum" not in schema):
            problems.append(f"{path}: unbounded integer")
        if t == "array" and "maxItems" not in schema:
            problems.append(f"{path}: unbounded list")
        if t == "object" and "additionalProperties" in schema and "maxProperties" not in schema:
            problems.append(f"{path}: unbounded map")
        for r in schema.get("x-kubernetes-validations", []):
            if not r.get("message"):
                problems.append(f"{path}: CEL rule without a message: {r['rule']}")
    assert not problems, "\n".join(problems)


def test_patterns_are_ascii_and_anchored() -> None:
    for kind in CRDS:
        for path, schema in walk(openapi(kind)):
            pattern = schema.get("pattern")
            if pattern is None:
                continue
            assert pattern.startswith("^") and pattern.endswith("$"), (kind, path)
            # \d \w \s match Unicode look-alikes in some engines; ranges are spelled out.
            assert not re.search(r"\\[dwsDWS]", pattern), (kind, path, pattern)


def test_templates_repeat_the_directupdate_spec() -> None:
    """The DirectUpdate spec schema is written three times; only the schedule's version differs."""
    du = yaml.safe_dump(openapi("DirectUpdate")["properties"]["spec"]["properties"])
    su = openapi("ScheduledUpdate")["properties"]["spec"]["properties"]["template"]["properties"]
    assert yaml.safe_dump(su) == du
    us = yaml.safe_load(yaml.safe_dump(
        openapi("UpdateSchedule")["properties"]["spec"]["properties"]["template"]["properties"]))
    assert us["version"]["pattern"] == validate.K8S_VERSION_OR_MINOR
    us["version"] = yaml.safe_load(du)["version"]
    assert yaml.safe_dump(us) == du


# -- the models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_parse(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    PARSERS[obj["kind"]](obj)


def test_defaults_are_filled() -> None:
    spec = models.parse_directupdate_spec({"spec": {"version": "v1.31.2"}})
    assert spec.concurrency == 1
    assert spec.backup.required is True
    assert spec.drain.timeout_seconds == 600 and spec.drain.grace_period_seconds == -1
    assert spec.drain.on_timeout == "RequiresAttention"
    assert spec.package_source.type == "upstream"
    assert spec.reboot == "IfRequired" and spec.max_attempts == 3 and not spec.paused


def test_a_bare_spec_parses_too() -> None:
    assert models.parse_directupdate_spec({"version": "v1.31.2"}).version == "v1.31.2"


def test_specs_are_immutable() -> None:
    spec = models.parse_directupdate_spec({"version": "v1.31.2"})
    with pytest.raises(Exception, match="frozen"):
        spec.concurrency = 5


def test_snake_case_is_not_the_wire_format() -> None:
    with pytest.raises(ValidationError) as e:
        models.parse_directupdate_spec({"version": "v1.31.2", "max_attempts": 2})
    assert e.value.field == "spec.max_attempts"


def test_missing_spec() -> None:
    with pytest.raises(ValidationError) as e:
        models.parse_directupdate_spec({"kind": "DirectUpdate", "metadata": {"name": "x"}})
    assert e.value.field == "spec"


@pytest.mark.parametrize(
    "spec",
    [
        {"version": "v1.31.2", "canary": {"count": 0, "selector": {}}},
        {"version": "v1.31.2", "canary": {"count": 3}},
        {"version": "v0.0.0", "containerdVersion": "v2.0.1"},
        {"version": "v1.31.2", "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": "node-1", "x": ""}}},
        {"version": "v1.31.2", "backup": {"required": False}},
        {"version": "v1.31.2", "backup": {"store": {"type": "gcs", "bucket": "my_bucket.example.com"}}},
        {"version": "v1.31.2", "backup": {"store": {"type": "file", "path": "/"}}},
        {"version": "v1.31.2", "drain": {"podSelector": "!legacy,env notin (dev,test),app==web"}},
        {"version": "v1.31.2", "drain": {"gracePeriodSeconds": 3600, "timeoutSeconds": 3601}},
    ],
)
def test_good_directupdate_specs(spec: dict[str, Any]) -> None:
    models.parse_directupdate_spec({"spec": spec})


@pytest.mark.parametrize(("spec", "field"), [
    ({"version": "v1.31.2", "drain": {"gracePeriodSeconds": 600}}, "spec.drain.gracePeriodSeconds"),
    ({"version": "v1.31.2", "backup": {"store": {"type": "s3", "bucket": "b" * 64}}}, "spec.backup.store.bucket"),
    ({"version": "v1.31.2", "backup": {"store": {"type": "s3", "bucket": "b", "path": "/x"}}},
     "spec.backup.store.bucket"),
    ({"version": "v1.31.2", "backup": {"store": {"type": "s3", "bucket": "bkt", "path": "/x"}}},
     "spec.backup.store.path"),
    ({"version": "v1.31.2", "packageSource": {"type": "bundle"}}, "spec.packageSource.bundle"),
    ({"version": "v1.31.2", "packageSource": {"mirror": {"url": "https://m.example.com"}}},
     "spec.packageSource.mirror"),
    ({"version": "v1.31.2", "backup": {"etcd": {"endpoints": []}}}, "spec.backup.etcd.endpoints"),
    ({"version": "v1.31.2", "maxAttempts": 2.0}, "spec.maxAttempts"),
    ({"version": "v1.31.2", "paused": "true"}, "spec.paused"),
])
def test_bad_directupdate_specs(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        models.parse_directupdate_spec({"spec": spec})
    assert e.value.field == field


def test_time_zone_must_exist() -> None:
    """The pattern admits any IANA-shaped name; the daemon also checks the name is in the database."""
    spec = {"schedule": "0 2 * * *", "timeZone": "Mars/Olympus_Mons", "template": {"version": "v1.31"}}
    with pytest.raises(ValidationError) as e:
        models.parse_updateschedule_spec({"spec": spec})
    assert e.value.field == "spec.timeZone"


def test_blackout_dates_are_unique() -> None:
    spec = {"schedule": "0 2 * * *", "blackoutDates": ["2026-12-24", "2026-12-24"],
            "template": {"version": "v1.31"}}
    with pytest.raises(ValidationError) as e:
        models.parse_updateschedule_spec({"spec": spec})
    assert e.value.field == "spec.blackoutDates"


def test_schedule_template_resolves_a_minor() -> None:
    spec = models.parse_updateschedule_spec(
        {"spec": {"schedule": "*/30 1-5 * jan-mar MON-FRI", "template": {"version": "v1.31", "concurrency": 4}}})
    assert spec.time_zone == "UTC"
    assert spec.template.is_minor
    run = spec.template.for_version("v1.31.7")
    assert isinstance(run, models.DirectUpdateSpec) and run.version == "v1.31.7" and run.concurrency == 4
    with pytest.raises(Exception, match="version"):
        spec.template.for_version("v1.31")


def test_start_time_keeps_its_offset() -> None:
    spec = models.parse_scheduledupdate_spec(
        {"spec": {"startTime": "2026-12-01T02:00:00.5+01:00", "template": {"version": "v1.31.2"}}})
    assert spec.start_time.isoformat() == "2026-12-01T02:00:00.500000+01:00"


def test_status_round_trips() -> None:
    status = models.DirectUpdateStatus(
        phase="Running", observed_generation=2, coordinator="cp-1", epoch=4, hops=["v1.31.2"],
        progress="1/3", summary=models.Summary(total=3, succeeded=1, upgrading=1, pending=1),
        nodes=[models.NodeStatus(name="cp-1", role="ControlPlane", phase="Succeeded",
                                 grant=models.GrantRecord(epoch=4, versions=["v1.31.2"], first_control_plane=True))],
    )
    wire = models.to_wire(status)
    assert wire["nodes"][0]["grant"]["firstControlPlane"] is True
    assert "startedAt" not in wire
    assert models.DirectUpdateStatus.model_validate(wire) == status
    with pytest.raises(Exception, match="progress"):
        status.progress = "one of three"


@pytest.mark.parametrize("case", MALFORMED, ids=lambda c: c.id)
def test_malformed_resources_are_refused(case: Malformed) -> None:
    """The same cases the real API server refuses (tests/cluster/test_crds.py), with the same field."""
    with pytest.raises(ValidationError) as e:
        PARSERS[case.kind](case.object())
    assert e.value.field == case.field, e.value


def test_reference_doc_is_current() -> None:
    from kupd.api import docgen

    current = (ROOT / "docs" / "usage" / "crd-reference.md").read_text()
    assert current == docgen.render(docgen.load_crds(ROOT / "crds")), "run: python -m kupd.api.docgen"
