"""The `kupd` command. Each subcommand lives in kupd/commands/<name>.py and exposes
`register(subparsers)`; this module only wires them together."""

from __future__ import annotations

import argparse
import importlib
import sys

from kupd import __version__
from kupd.errors import KupdError

COMMANDS = ("daemon", "demo", "plan", "status", "backup", "validate", "enroll")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kupd", description="In-place, node-by-node upgrades of kubeadm Kubernetes clusters."
    )
    parser.add_argument("--version", action="version", version=f"kupd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"kupd.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except KupdError as e:
        print(f"kupd {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return rc
