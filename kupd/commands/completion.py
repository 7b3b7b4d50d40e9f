"""`kupd completion bash|zsh`: the shell completion script, generated from the argument parser
(kupd/clidoc.py). The packages install both; by hand: `source <(kupd completion bash)`."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "completion", help="print the shell completion script (bash or zsh)",
        description="Print the completion script for SHELL, generated from kupd's own argument parser. The "
        "packages install it (/usr/share/bash-completion/completions/kupd, zsh's vendor-completions/_kupd); "
        "by hand: `source <(kupd completion bash)`.")
    p.add_argument("shell", choices=("bash", "zsh"), metavar="SHELL", help="bash or zsh")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kupd import clidoc
    from kupd.cli import build_parser

    parser = build_parser()
    sys.stdout.write(clidoc.bash(parser) if args.shell == "bash" else clidoc.zsh(parser))
    return 0
