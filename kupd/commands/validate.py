"""`kupd validate -f FILE`: check kupd custom resources offline with the daemon's own validation
(the same rules the CRD schema applies at `kubectl apply`, plus the ones only the daemon can check).
Every problem of every resource is listed, not only the first."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from kupd.commands import common
from kupd.errors import ValidationError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "validate", help="validate kupd custom resources in files",
        description="Check DirectUpdate, ScheduledUpdate and UpdateSchedule manifests offline with the "
        "daemon's own validation: the CRD schema's rules (patterns, bounds, enums, CEL) plus the ones only "
        "the daemon checks. Lists every problem of every resource. Exit 0 when all are valid, 2 when any "
        "is invalid or a file cannot be read.")
    p.add_argument("-f", "--file", action="append", required=True, type=Path, metavar="FILE",
                   help="YAML or JSON file, one or more documents (repeatable)")
    common.add_output_flag(p, ("table", "json", "yaml"))
    p.set_defaults(func=run)


def check(path: Path) -> list[dict[str, Any]]:
    """One result per document of `path`: file, kind, name, valid, errors [{field, message}]."""
    from kupd.api import models

    parsers = {"DirectUpdate": models.parse_directupdate_spec, "ScheduledUpdate": models.parse_scheduledupdate_spec,
               "UpdateSchedule": models.parse_updateschedule_spec}
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return [{"file": str(path), "kind": None, "name": None, "valid": False,
                 "errors": [{"field": "", "message": f"cannot read: {e}"}]}]
    out = []
    for d in docs:
        if not isinstance(d, dict):
            out.append({"file": str(path), "kind": None, "name": None, "valid": False,
                        "errors": [{"field": "", "message": "not a YAML mapping"}]})
            continue
        kind, name = str(d.get("kind", "?")), str((d.get("metadata") or {}).get("name", "?"))
        errors: list[dict[str, str]] = []
        parse = parsers.get(kind)
        if parse is None:
            errors.append({"field": "kind", "message": "not a kupd resource"})
        else:
            try:
                parse(d)
            except ValidationError as e:
                errors = [{"field": f, "message": m} for f, m in e.problems]
        out.append({"file": str(path), "kind": kind, "name": name, "valid": not errors, "errors": errors})
    return out


def run(args: argparse.Namespace) -> int:
    results = [r for path in args.file for r in check(path)]
    if args.output in ("json", "yaml"):
        common.emit({"results": results}, args.output)
    else:
        for r in results:
            what = f"{r['file']}: {r['kind']}/{r['name']}" if r["kind"] else r["file"]
            if r["valid"]:
                print(f"{what}: valid")
            for e in r["errors"]:
                print(f"{what}: {e['field'] + ': ' if e['field'] else ''}{e['message']}", file=sys.stderr)
    return common.EXIT_OK if all(r["valid"] for r in results) else common.EXIT_INVALID
