"""`kupd daemon`: the service systemd runs on every node."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kupd import config, logsetup


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "daemon", help="run the node daemon (member, coordinator candidate and agent)",
        description="Run kupd on this node: renew its member Lease, stand for coordinator (control-plane nodes "
        "by default), and upgrade this node when granted its turn, checkpointing every step. systemd runs it "
        "as kupd.service (Type=notify: READY at once, STATUS says what it waits for or does). Under systemd it "
        "logs to journald with KUPD_* fields and MESSAGE_IDs; elsewhere to stderr as text or, with "
        "--log-format json, one JSON object per line.")
    p.add_argument("--config-dir", action="append", type=Path, default=None,
                   help="read *.toml fragments from this folder instead of the default three "
                        "(/usr/lib, /run, /etc kupd/config.d); repeat to merge several, in order")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="stderr log format outside journald: text (default) or json, one object per line "
                        "(under systemd the journal gets structured fields either way)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = config.load(args.config_dir or config.DEFAULT_DIRS)
    logsetup.setup_logging(settings.log_level, log_format=args.log_format)
    from kupd.daemon import Daemon

    daemon = Daemon(settings)
    daemon.install_signal_handlers()
    return daemon.run()
