"""systemctl: daemon-reload, restart, is-active, reboot."""

from __future__ import annotations

import re

from kupd import validate
from kupd.errors import CommandError, PermanentError
from kupd.host import parsers, runner

SYSTEMCTL_TIMEOUT = 120.0
_UNIT = re.compile(r"^[A-Za-z0-9:_.@-]{1,240}\.(service|socket|target|timer)$")


def unit_name(value: str) -> str:
    if not isinstance(value, str) or not _UNIT.fullmatch(value):
        raise PermanentError(f"{str(value)[:80]!r} is not a systemd unit name")
    return value


class Systemd:
    def __init__(self, systemctl: str = "/usr/bin/systemctl") -> None:
        self.systemctl = validate.safe_path(systemctl, "systemctl")

    def daemon_reload(self) -> None:
        runner.run([self.systemctl, "daemon-reload"], timeout=SYSTEMCTL_TIMEOUT)

    def restart(self, unit: str) -> None:
        runner.run([self.systemctl, "restart", unit_name(unit)], timeout=SYSTEMCTL_TIMEOUT)

    def state(self, unit: str) -> str:
        """active, inactive, failed, activating...: is-active exits non-zero for all but active."""
        result = runner.run([self.systemctl, "is-active", unit_name(unit)], check=False, timeout=30.0)
        return parsers.systemctl_is_active(result.stdout)

    def is_active(self, unit: str) -> bool:
        return self.state(unit) == "active"

    def reboot(self) -> None:
        try:
            runner.run([self.systemctl, "reboot"], timeout=SYSTEMCTL_TIMEOUT)
        except CommandError as e:
            raise PermanentError(f"systemctl reboot failed: {e}") from e
