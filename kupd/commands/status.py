"""`kupd status [NAME] [--watch] [-o table|wide|json|yaml]`: DirectUpdates, their nodes, progress and ETA.

Reads the DirectUpdates with the kubeconfig resolved as kubectl resolves it (kupd/k8s/kubeconfigs.py:
--kubeconfig, else $KUBECONFIG merged, else ~/.kube/config, else /etc/kupd/kubeconfig; --context) and
renders them with kupd.statusview. `--watch` redraws every `--interval` seconds (in place on a
terminal, through kupd.commands.live; appended on each change otherwise) and exits once the
operation(s) shown are Succeeded or Failed: 0 if all succeeded, 1 if any failed. `-o wide` keeps
node messages whole; `-o json|yaml` prints one document (with --watch: one per change, JSON compact
one per line, YAML documents separated by `---`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from kupd import statusview
from kupd.commands import common
from kupd.errors import KupdError, NotFoundError, RetryableError, ValidationError

if TYPE_CHECKING:
    from kupd.k8s import Client


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "status", help="show DirectUpdates: phase, nodes, progress and ETA",
        description="Show every DirectUpdate (or NAME): its phase, progress bar and ETA, and a row per node "
        "with phase, step, versions and duration. -o wide keeps the node messages whole; -o json|yaml "
        "prints the same view as a document.")
    p.add_argument("name", nargs="?", metavar="NAME", help="one DirectUpdate (default: all, oldest first)")
    p.add_argument("-w", "--watch", action="store_true",
                   help="redraw until the operation(s) are Succeeded or Failed; exit 0 if all succeeded, else 1")
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="--watch poll interval (default 2)")
    common.add_output_flag(p)
    common.add_kubeconfig_flags(p)
    p.set_defaults(func=run)


class Reader:
    """Fetches DirectUpdates through the API, with kupd's error mapping."""

    def __init__(self, api: Client) -> None:
        self._api = api

    def fetch(self, name: str | None) -> list[dict[str, Any]]:
        from kupd import k8s

        if name:
            try:
                url = k8s.kupd_path(k8s.DIRECTUPDATES, name)
            except ValueError:
                raise ValidationError("NAME", f"{name!r} is not a valid DirectUpdate name") from None
            try:
                obj = k8s.call(self._api.get, f"get directupdate {name}", url)
            except k8s.NotFound:
                raise NotFoundError(f"directupdate {name!r} not found") from None
            return [obj]
        res = k8s.call(self._api.list, "list directupdates", k8s.kupd_path(k8s.DIRECTUPDATES))
        return list(res.get("items") or [])


def output(objs: Sequence[Mapping[str, Any]], fmt: str, now: datetime, compact: bool = False) -> str:
    if fmt in ("json", "yaml"):
        text = common.dump(statusview.document(objs, now), fmt, compact)
        return "---\n" + text if fmt == "yaml" and compact else text
    return statusview.render(objs, now, wide=fmt == "wide")


def run(args: argparse.Namespace) -> int:
    reader = Reader(common.api_client(args))
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
        # One frame (wide) or compact document (json, yaml) per change: logs and pipes stay readable.
        key = tuple(str((o.get("metadata") or {}).get("resourceVersion")) for o in objs)
        if last_key != [key]:
            if fmt == "wide" and last_key:
                out.write("\n")
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
                raise NotFoundError(f"directupdate {name!r} is gone") from None
            raise
        seen = True
        show(objs, datetime.now(UTC))
        if objs and all(statusview.is_terminal(o) for o in objs):
            failed = [o for o in objs if (o.get("status") or {}).get("phase") != "Succeeded"]
            return 1 if failed else 0
        sleep(interval)
