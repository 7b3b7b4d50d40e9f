"""Run a command in a real pseudo-terminal of a given size and read back what a terminal would show.

The bytes the command writes are fed to pyte, a VT100-compatible terminal emulator, so a test sees
the final screen (and the lines scrolled off the top of it) as a person in that terminal would:
cursor moves, erased lines and wrapping at the right margin included.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import pyte


@dataclass
class Screen:
    returncode: int
    scrolled: list[str]  # lines that scrolled off the top, oldest first
    screen: list[str]  # the final screen, top to bottom
    raw: bytes

    @property
    def lines(self) -> list[str]:
        """Everything the terminal holds: scrollback and screen, trailing blanks dropped."""
        out = [ln.rstrip() for ln in self.scrolled + self.screen]
        while out and not out[-1]:
            out.pop()
        return out


def run(argv: list[str], cols: int, rows: int, timeout: float, cwd: Path, stderr: Path,
        env: dict[str, str] | None = None) -> Screen:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    e = dict(env or os.environ)
    # The size comes from the terminal, as it would for a person: no COLUMNS/LINES overrides.
    for k in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TERM"):
        e.pop(k, None)
    e["TERM"] = "xterm-256color"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=err, cwd=cwd, env=e,
                                start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"{argv} still running after {timeout}s; output so far:\n"
                                   + b"".join(chunks).decode(errors="replace")[-3000:])
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal's other side has closed it
                break
            if not data:
                break
            chunks.append(data)
        rc = proc.wait(30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    raw = b"".join(chunks)
    term = pyte.HistoryScreen(cols, rows, history=100_000)
    pyte.ByteStream(term).feed(raw)
    scrolled = ["".join(line[x].data for x in range(cols)) for line in term.history.top]
    return Screen(rc, scrolled, list(term.display), raw)
