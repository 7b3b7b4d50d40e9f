"""`kupd demo`."""

from __future__ import annotations

import argparse
from typing import Any

from kupd.commands import not_implemented


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("demo", help="demo (not implemented yet)")
    p.set_defaults(func=lambda args: not_implemented("demo"))
