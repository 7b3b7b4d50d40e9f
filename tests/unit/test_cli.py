"""`kupd plan` and `kupd validate` run in-process (no subprocess: they are pure over their inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kupd.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_validate_examples(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted((ROOT / "examples").glob("*.yaml"))
    assert main(["validate", *[a for f in files for a in ("-f", str(f))]]) == 0
    assert capsys.readouterr().out.count(": valid") == len(files)


def test_validate_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: kupd.io/v1alpha1\nkind: DirectUpdate\nmetadata: {name: x}\n"
                   "spec: {version: v1.31.2, concurrency: 0}\n")
    assert main(["validate", "-f", str(bad)]) == 2
    assert "spec.concurrency" in capsys.readouterr().err


def test_validate_lists_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: kupd.io/v1alpha1\nkind: DirectUpdate\nmetadata: {name: x}\n"
                   "spec: {version: 'not-a-version', concurrency: 0, pause: 'yes'}\n---\n"
                   "kind: Pod\nmetadata: {name: p}\n")
    assert main(["validate", "-f", str(bad), "-o", "json"]) == 2
    results = json.loads(capsys.readouterr().out)["results"]
    fields = sorted(e["field"] for e in results[0]["errors"])
    assert fields == ["spec.concurrency", "spec.pause", "spec.version"], results[0]
    assert not any("more errors" in e["message"] for e in results[0]["errors"])
    assert results[1] == {"file": str(bad), "kind": "Pod", "name": "p", "valid": False,
                          "errors": [{"field": "kind", "message": "not a kupd resource"}]}
    assert main(["validate", "-f", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("DirectUpdate/x: spec.") == 3 and "(and" not in err


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["plan", "-f", str(ROOT / "examples" / "directupdate-simple.yaml"), "--current", "v1.30.4",
               "--control-planes", "1", "--workers", "2", "--node-minutes", "5", "-o", "json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [w["nodes"] for w in out["waves"]] == [["cp-1"], ["worker-1"], ["worker-2"]]
    assert out["estimatedSeconds"] == 15 * 60
