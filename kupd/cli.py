"""The `kupd` command. Each subcommand lives in kupd/commands/<name>.py and exposes
`register(subparsers)`; this module only wires them together."""

from __future__ import annotations

import argparse
import importlib
import sys

from kupd import __version__
from kupd.commands import common
from kupd.errors import KupdError, NotFoundError, RetryableError, ValidationError

COMMANDS = ("daemon", "demo", "plan", "status", "backup", "validate", "enroll", "completion")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kupd", description="In-place, node-by-node upgrades of kubeadm Kubernetes clusters.",
        epilog=common.EXIT_CODES_HELP,
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
        return exit_code(e)
    except KeyboardInterrupt:
        return 130
    return rc


def exit_code(e: KupdError) -> int:
    """The documented exit code of an error (kupd.commands.common)."""
    if isinstance(e, ValidationError):
        return common.EXIT_INVALID
    if isinstance(e, NotFoundError):
        return common.EXIT_NOT_FOUND
    if isinstance(e, RetryableError):
        return common.EXIT_UNREACHABLE
    return common.EXIT_FAILED
