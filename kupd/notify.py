"""sd_notify: tell systemd that kupd is ready, what it is doing, and that it is alive.

The protocol is one datagram of ``KEY=value`` lines to the socket named by ``NOTIFY_SOCKET``
(a path, or an abstract socket when it starts with ``@``). Outside systemd, or under a unit
that is not ``Type=notify``, the variable is unset and every call is a no-op, so the daemon
calls these unconditionally. Sending never raises: a lost STATUS line must not stop an upgrade.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

_STATUS_MAX = 1024  # systemctl shows one line; keep datagrams small


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds from WATCHDOG_USEC, or None when no watchdog applies.

    Ping at least every half of this (systemd's own advice). WATCHDOG_PID, when set, names the
    process the watchdog is meant for; any other process (a child) gets None.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000


class Notifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING to the service manager when there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = self._parse(env.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None
        self._last_status = ""

    @staticmethod
    def _parse(value: str) -> str | None:
        if not value or value[0] not in "/@":
            return None  # unset, or a vsock address kupd has no use for
        return "\0" + value[1:] if value[0] == "@" else value

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: str) -> bool:
        """Send KEY=value lines; True when the datagram went out."""
        if self._address is None:
            return False
        lines = []
        for key, value in fields.items():
            if "\n" in value:
                value = value.replace("\n", " ")
            lines.append(f"{key}={value}")
        payload = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self._address)
        except OSError as e:
            log.debug("sd_notify %s failed: %s", list(fields), e)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        fields = {"READY": "1"}
        if status is not None:
            fields["STATUS"] = self._clip(status)
            self._last_status = fields["STATUS"]
        return self.send(**fields)

    def status(self, text: str) -> bool:
        """Set the line `systemctl status kupd` shows; repeated identical lines are not resent."""
        text = self._clip(text)
        if text == self._last_status:
            return True
        ok = self.send(STATUS=text)
        if ok:
            self._last_status = text
        return ok

    def watchdog(self) -> bool:
        return self.send(WATCHDOG="1")

    def stopping(self, status: str | None = None) -> bool:
        fields = {"STOPPING": "1"}
        if status is not None:
            fields["STATUS"] = self._clip(status)
        return self.send(**fields)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @staticmethod
    def _clip(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= _STATUS_MAX else text[: _STATUS_MAX - 1] + "…"
