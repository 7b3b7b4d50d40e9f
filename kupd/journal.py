"""journald's native protocol, spoken directly: structured log entries without python3-systemd.

The protocol (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/) is one datagram per entry to
``/run/systemd/journal/socket``: ``KEY=value\\n`` per field, or, for a value that contains a
newline, ``KEY\\n`` + its length as a little-endian 64-bit integer + the value + ``\\n``. An entry
larger than a datagram may be goes into a sealed memfd whose descriptor is passed instead.

Speaking it here rather than through python3-systemd's ``systemd.journal.send`` keeps the
``KUPD_*`` fields on every distribution the packages target: python3-systemd exists only for a
distribution's own Python (RHEL 9's is 3.9, kupd needs 3.11), and the private venv cannot
install it from PyPI without a compiler and libsystemd headers on the build host.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import struct
from collections.abc import Mapping

SOCKET_PATH = "/run/systemd/journal/socket"
# Field names journald accepts from a client: upper-case letters, digits and '_', not starting
# with '_' (those are the trusted fields journald adds itself), at most 64 characters.
_FIELD = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")


def valid_field(name: str) -> bool:
    return bool(_FIELD.fullmatch(name))


def encode(fields: Mapping[str, object]) -> bytes:
    """One entry in the native format. Names journald would refuse raise ValueError: a caller's
    mistake, not input from outside. None values are left out."""
    out = bytearray()
    for name, value in fields.items():
        if value is None:
            continue
        if not valid_field(name):
            raise ValueError(f"not a journal field name: {name!r}")
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
        key = name.encode("ascii")
        if b"\n" in data:
            out += key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key + b"=" + data + b"\n"
    return bytes(out)


class JournalSocket:
    """Sends entries to journald; `send(message, **fields)` has the shape of python3-systemd's
    ``systemd.journal.send``, so the logging handler takes either."""

    def __init__(self, path: str = SOCKET_PATH) -> None:
        self.path = path
        self._sock: socket.socket | None = None

    @staticmethod
    def available(path: str = SOCKET_PATH) -> bool:
        return os.path.exists(path)

    def send(self, message: str, **fields: object) -> None:
        payload = encode({"MESSAGE": message, **fields})
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto(payload, self.path)
        except OSError as e:
            if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(payload)

    def _send_memfd(self, payload: bytes) -> None:
        # Too large for one datagram (an exception with a long traceback, a big command output):
        # journald reads the entry from a sealed memfd passed with SCM_RIGHTS.
        fd = os.memfd_create("kupd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            assert self._sock is not None
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))], 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
