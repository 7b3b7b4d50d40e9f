"""One version of kupd per process.

A package upgrade replaces kupd's files under a running daemon. Python imports a module the
first time it is used, so a daemon that imported lazily would mix the old version's modules in
memory with the new version's from disk. The daemon therefore imports everything it can need at
start (`preload`), and once its own package has changed on disk (`PackageWatch`) it restarts
itself in place (`reexec`, same PID for systemd) at the next moment no step runs.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import pkgutil
import sys
from pathlib import Path

import kupd

log = logging.getLogger(__name__)

# Development and test helpers a daemon never runs (the simulated cluster's control plane, the
# demo, the generators of documentation), by the last part of their module name.
NOT_PRELOADED = frozenset({"devcluster", "simcluster", "demo", "docgen", "configdoc", "__main__"})
# Third-party modules that kupd's code imports only where used (heavy or distribution-specific):
# loaded now when installed, so they too come from the version the daemon started with.
OPTIONAL = ("apt", "apt_pkg", "boto3", "requests", "google.cloud.storage", "google.cloud.storage.retry",
            "google.oauth2.service_account", "google.auth.credentials", "google.api_core.exceptions",
            "google.auth.exceptions", "google.resumable_media")


def preload(backends: bool = True) -> list[str]:
    """Import every kupd module, and with `backends` the optional ones installed (only a real
    control-plane node takes backups; the others need not carry the store clients in memory).
    Returns the kupd modules."""
    loaded = []
    for info in pkgutil.walk_packages(kupd.__path__, "kupd."):
        if info.name.rsplit(".", 1)[-1] in NOT_PRELOADED:
            continue
        importlib.import_module(info.name)
        loaded.append(info.name)
    for name in OPTIONAL if backends else ():
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    return loaded


class PackageWatch:
    """Notices that kupd's installed files were replaced since the daemon started.

    An upgrade by dpkg, rpm or pip writes new files (new inodes) rather than editing them in
    place, so the identity of the package's `__init__.py` tells whether the code on disk is
    still the code in memory.
    """

    def __init__(self, marker: Path | None = None) -> None:
        # The installed package's own first module, as the import system found it: what is
        # watched is kupd's own code, never a file of the repository or the system.
        spec = importlib.util.find_spec("kupd")
        self.marker = marker or Path(spec.origin if spec is not None and spec.origin else "")
        self._start = self._identity()

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            st = self.marker.stat()
        except OSError:
            return None  # mid-upgrade the file may be missing for a moment
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def changed(self) -> bool:
        now = self._identity()
        return now is not None and now != self._start


def reexec() -> None:
    """Replace this process with a fresh one of the same command line: same PID, new code."""
    argv = [sys.executable, *sys.orig_argv[1:]]
    log.info("restarting in place to run the upgraded kupd: %s", " ".join(argv))
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os.execv(sys.executable, argv)  # noqa: S606 - not a subprocess: this very command line, in place
