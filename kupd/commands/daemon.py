"""`kupd daemon`: the service systemd runs on every node."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kupd import config, logsetup


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "daemon", help="run the node daemon (member, coordinator candidate and agent)")
    p.add_argument("--config-dir", action="append", type=Path, default=None,
                   help="read *.toml fragments from this folder instead of the default three "
                        "(/usr/lib, /run, /etc kupd/config.d); repeat to merge several, in order")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = config.load(args.config_dir or config.DEFAULT_DIRS)
    logsetup.setup_logging(settings.log_level)
    from kupd.daemon import Daemon

    daemon = Daemon(settings)
    daemon.install_signal_handlers()
    return daemon.run()
