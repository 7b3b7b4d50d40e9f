"""`kupd validate -f FILE`: check kupd custom resources offline with the daemon's own validation
(the same rules the CRD schema applies at `kubectl apply`, plus the ones only the daemon can check)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from kupd.errors import ValidationError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("validate", help="validate kupd custom resources in files")
    p.add_argument("-f", "--file", action="append", required=True, type=Path, help="YAML/JSON file (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kupd.api import models

    parsers = {"DirectUpdate": models.parse_directupdate_spec, "ScheduledUpdate": models.parse_scheduledupdate_spec,
               "UpdateSchedule": models.parse_updateschedule_spec}
    bad = 0
    for path in args.file:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        except (OSError, yaml.YAMLError) as e:
            print(f"{path}: cannot read: {e}", file=sys.stderr)
            bad += 1
            continue
        for d in docs:
            kind, name = d.get("kind", "?"), (d.get("metadata") or {}).get("name", "?")
            parse = parsers.get(kind)
            if parse is None:
                print(f"{path}: {kind}/{name}: not a kupd resource", file=sys.stderr)
                bad += 1
                continue
            try:
                parse(d)
            except ValidationError as e:
                print(f"{path}: {kind}/{name}: {e}", file=sys.stderr)
                bad += 1
            else:
                print(f"{path}: {kind}/{name}: valid")
    return 1 if bad else 0
