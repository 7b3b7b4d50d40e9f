"""The one place kupd runs subprocesses.

argv lists only (never a shell), a timeout on every call, output captured and decoded, and
one error type carrying the command, exit code, stdout and stderr. Every call may be written
to an audit log (one JSON line per command) so tests can prove which strings reached argv.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kupd.errors import CommandError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0
AUDIT_ENV = "KUPD_AUDIT_LOG"


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    check: bool = True,
    cwd: str | None = None,
) -> Result:
    """Run argv and return its result; raise CommandError on non-zero exit (when check) or timeout.

    `env` is added to a minimal environment rather than the daemon's own, so a value in the
    daemon's environment (a proxy, a locale) cannot change how apt or kubeadm behave by accident.
    """
    args = [str(a) for a in argv]
    if not args:
        raise ValueError("empty argv")
    for a in args:
        if "\x00" in a:
            raise ValueError("NUL byte in argv")
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
    }
    if env:
        full_env.update(env)
    _audit(args)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=full_env,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise CommandError(args, None, _text(e.stdout), _text(e.stderr), timed_out=True) from e
    except OSError as e:
        raise CommandError(args, None, "", str(e)) from e
    seconds = time.monotonic() - started
    log.debug("ran %s rc=%s in %.2fs", args[0], proc.returncode, seconds)
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stdout, proc.stderr)
    return Result(args, proc.returncode, proc.stdout, proc.stderr, seconds)


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data


def _audit(args: list[str]) -> None:
    path = os.environ.get(AUDIT_ENV)
    if not path:
        return
    line = json.dumps({"time": time.time(), "argv": args}) + "\n"
    # O_APPEND keeps lines whole when several daemons share one audit file.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
