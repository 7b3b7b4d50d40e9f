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
from collections.abc import Callable, Mapping, Sequence
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


@dataclass(frozen=True)
class Process:
    """A process by PID and kernel start time: the pair names it even after a PID is reused."""

    pid: int
    start_ticks: int

    @classmethod
    def of(cls, pid: int) -> Process | None:
        ticks = _start_ticks(pid)
        return None if ticks is None else cls(pid, ticks)

    def alive(self) -> bool:
        return _start_ticks(self.pid) == self.start_ticks


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22 (starttime); the command name in parentheses may hold spaces and parentheses.
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] == "Z":
        return None  # a zombie has finished: only its parent's wait is missing
    try:
        return int(fields[19])
    except ValueError:
        return None


def run_detached(
    argv: Sequence[str],
    log_path: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    started: Callable[[Process], None] | None = None,
    check: bool = True,
) -> Result:
    """Run argv in a session of its own with its output in `log_path`, and wait for it.

    For a command that must outlive kupd: if the daemon dies, the command keeps running (the
    unit's KillMode=process leaves it alone), and since its output goes to a file, not to a pipe
    nobody reads any more, its next line does not kill it with SIGPIPE. `started` learns the
    process as soon as it runs, so that a restarted daemon can find it and wait for it.
    The Result holds the output (stdout and stderr together) in `stdout`.
    """
    args = [str(a) for a in argv]
    if not args:
        raise ValueError("empty argv")
    for a in args:
        if "\x00" in a:
            raise ValueError("NUL byte in argv")
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
    }
    _audit(args)
    begun = time.monotonic()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, env=env,
                                    start_new_session=True)
        except OSError as e:
            raise CommandError(args, None, "", str(e)) from e
    finally:
        os.close(fd)
    if started is not None:
        ident = Process.of(proc.pid)
        if ident is not None:
            started(ident)
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired as e:
        proc.kill()
        proc.wait()
        raise CommandError(args, None, _tail(log_path), "", timed_out=True) from e
    output = _tail(log_path)
    seconds = time.monotonic() - begun
    log.debug("ran %s rc=%s in %.2fs (detached)", args[0], rc, seconds)
    if check and rc != 0:
        raise CommandError(args, rc, output, output)
    return Result(args, rc, output, "", seconds)


def _tail(path: str, limit: int = 1 << 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
