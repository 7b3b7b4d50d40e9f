"""`kupd status [NAME] [--watch] [-o table|json]`: DirectUpdates, their nodes, progress and ETA.

Reads the DirectUpdates with the given kubeconfig (default: $KUBECONFIG, else ~/.kube/config, else
/etc/kupd/kubeconfig, the first that exists) and renders them with kupd.statusview. `--watch`
redraws every `--interval` seconds (in place on a terminal, through kupd.commands.live; appended on
each change otherwise) and exits once the operation(s) shown are Succeeded or Failed:
0 if all succeeded, 1 if any failed. `-o json` prints one document (with --watch: one compact
document per line, whenever an operation changes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from kupd import statusview
from kupd.errors import KupdError, PermanentError, RetryableError

FALLBACK_KUBECONFIG = "/etc/kupd/kubeconfig"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "status", help="show DirectUpdates: phase, nodes, progress and ETA",
        description="Show every DirectUpdate (or NAME): its phase, progress bar and ETA, and a row per node "
        "with phase, step, versions and duration.")
    p.add_argument("name", nargs="?", metavar="NAME", help="one DirectUpdate (default: all, oldest first)")
    p.add_argument("-w", "--watch", action="store_true",
                   help="redraw until the operation(s) are Succeeded or Failed; exit 0 if all succeeded, else 1")
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="--watch poll interval (default 2)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument("--kubeconfig", metavar="PATH",
                   help=f"default: $KUBECONFIG, ~/.kube/config, or {FALLBACK_KUBECONFIG}, the first that exists")
    p.set_defaults(func=run)


def resolve_kubeconfig(flag: str | None, env: Mapping[str, str], home: Path,
                       exists: Callable[[str], bool] = os.path.exists) -> str:
    """The kubeconfig to use. Pure apart from `exists`."""
    if flag:
        return flag
    candidates = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    candidates += [str(home / ".kube" / "config"), FALLBACK_KUBECONFIG]
    for c in candidates:
        if exists(c):
            return c
    raise PermanentError(
        f"no kubeconfig found (tried {', '.join(candidates)}); pass --kubeconfig PATH")


class Reader:
    """Fetches DirectUpdates through the API, with kupd's error mapping."""

    def __init__(self, kubeconfig: str) -> None:
        from kupd import k8s

        self._api = k8s.api_client(kubeconfig)

    def fetch(self, name: str | None) -> list[dict[str, Any]]:
        from kupd import k8s

        if name:
            try:
                url = k8s.kupd_path(k8s.DIRECTUPDATES, name)
            except ValueError:
                raise PermanentError(f"{name!r} is not a valid DirectUpdate name") from None
            try:
                obj = k8s.call(self._api.get, f"get directupdate {name}", url)
            except k8s.NotFound:
                raise PermanentError(f"directupdate {name!r} not found") from None
            return [obj]
        res = k8s.call(self._api.list, "list directupdates", k8s.kupd_path(k8s.DIRECTUPDATES))
        return list(res.get("items") or [])


def output(objs: Sequence[Mapping[str, Any]], fmt: str, now: datetime, compact: bool = False) -> str:
    if fmt == "json":
        doc = statusview.document(objs, now)
        return json.dumps(doc, separators=(",", ":")) if compact else json.dumps(doc, indent=2)
    return statusview.render(objs, now)


def run(args: argparse.Namespace) -> int:
    kubeconfig = resolve_kubeconfig(args.kubeconfig, os.environ, Path.home())
    reader = Reader(kubeconfig)
    if not args.watch:
        objs = reader.fetch(args.name)
        print(output(objs, args.output, datetime.now(UTC)))
        return 0
    return watch(reader.fetch, args.name, args.output, max(args.interval, 0.1), sys.stdout)


def watch(fetch: Callable[[str | None], list[dict[str, Any]]], name: str | None, fmt: str, interval: float,
          out: TextIO, sleep: Callable[[float], None] = time.sleep) -> int:
    if fmt == "table":
        # Imported here: `kupd daemon` loads this module through the CLI parser and must not load rich.
        from kupd.commands.live import LiveView

        with LiveView(out) as view:
            return _watch(fetch, name, interval, sleep, view.show)
    last_key: list[tuple[str, ...]] = []

    def show_json(objs: Sequence[Mapping[str, Any]], now: datetime) -> None:
        # One compact document per change, so logs and pipes stay readable.
        key = tuple(str((o.get("metadata") or {}).get("resourceVersion")) for o in objs)
        if last_key != [key]:
            out.write(output(objs, fmt, now, compact=True) + "\n")
            out.flush()
            last_key[:] = [key]

    return _watch(fetch, name, interval, sleep, show_json)


def _watch(fetch: Callable[[str | None], list[dict[str, Any]]], name: str | None, interval: float,
           sleep: Callable[[float], None], show: Callable[[Sequence[Mapping[str, Any]], datetime], None]) -> int:
    seen = False
    while True:
        try:
            objs = fetch(name)
        except RetryableError as e:
            print(f"kupd status: {e}; retrying", file=sys.stderr)
            sleep(interval)
            continue
        except KupdError:
            if seen and name:
                raise PermanentError(f"directupdate {name!r} is gone") from None
            raise
        seen = True
        show(objs, datetime.now(UTC))
        if objs and all(statusview.is_terminal(o) for o in objs):
            failed = [o for o in objs if (o.get("status") or {}).get("phase") != "Succeeded"]
            return 1 if failed else 0
        sleep(interval)
