#!/usr/bin/env python3
"""Progress of a long `go build -v`, on stderr: packages compiled out of the total, elapsed time.

    go build -v ... 2>&1 | python3 progress.py --total N --label NAME

`go build -v` names each package as it compiles it (cached ones are not named, so a warm build
finishes well short of the total). `go: downloading` lines are counted rather than echoed; any
other line (compiler errors) passes through unchanged. A status line is written at most every
`--every` seconds, so a 12-minute build says how far along it is without flooding the log.

Kept apart from build.sh on purpose: build.sh is part of the cache key of the built binary, this
file is not, so the way progress is reported can change without forcing a rebuild.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import TextIO


def classify(line: str) -> str:
    """`package`, `download` or `other` for one line of `go build -v` output."""
    s = line.strip()
    if s.startswith("go: downloading "):
        return "download"
    if s and not s.startswith("#") and " " not in s and ":" not in s:
        return "package"
    return "other"


def duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def status_line(label: str, compiled: int, total: int, downloads: int, elapsed: float) -> str:
    if not compiled and not total:
        # The first phase: `go list -deps` resolving the graph, downloading modules as it goes.
        return f"{label}: resolving packages, {downloads} modules downloaded, {duration(elapsed)} elapsed"
    # The graph's count and what `go build -v` names differ by a few packages: never above 100 %.
    pct = f" ({min(100 * compiled // total, 100)}%)" if total else ""
    done = f"{compiled}/{total}" if total else str(compiled)
    line = f"{label}: {done} packages compiled{pct}, {duration(elapsed)} elapsed"
    if downloads:
        line += f"; {downloads} modules downloaded"
    return line


class Progress:
    """Counts lines as they come; `tick` thread reports even while the compiler is silent (linking)."""

    def __init__(self, err: TextIO, label: str, total: int) -> None:
        self.err, self.label, self.total = err, label, total
        self.compiled = self.downloads = 0
        self.start = time.monotonic()
        self.lock = threading.Lock()

    def feed(self, line: str) -> None:
        kind = classify(line)
        with self.lock:
            if kind == "package":
                self.compiled += 1
            elif kind == "download":
                self.downloads += 1
            else:
                self.err.write(line)

    def report(self) -> None:
        with self.lock:
            self.err.write(status_line(self.label, self.compiled, self.total, self.downloads,
                                       time.monotonic() - self.start) + "\n")
            self.err.flush()


def run(src: TextIO, err: TextIO, label: str, total: int, every: float) -> int:
    p = Progress(err, label, total)
    done = threading.Event()

    def tick() -> None:
        while not done.wait(every):
            p.report()

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    for line in src:
        p.feed(line)
    done.set()
    t.join()
    p.report()
    return p.compiled


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--total", type=int, default=0, help="packages in the build (go list -deps | wc -l)")
    ap.add_argument("--label", default="go build")
    ap.add_argument("--every", type=float, default=20.0, help="seconds between status lines (default 20)")
    a = ap.parse_args()
    run(sys.stdin, sys.stderr, a.label, a.total, a.every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
