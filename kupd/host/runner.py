"""The one place kupd runs subprocesses.

argv lists only (never a shell), a timeout on every call, output captured and decoded, and
one error type carrying the command, exit code, stdout and stderr. Every call may be written
to an audit log (one JSON line per command) so tests can prove which strings reached argv.

Deadlines: the agent runs each step inside `deadline(...)`; every command then gets at most the
time left, and cooperative waits (`sleep`, `check_deadline`) end at it. A command past its time
is stopped according to what it is:
- `stop="kill"` (the default): SIGTERM to its process group, SIGKILL after KILL_GRACE seconds;
- `stop="wait"` (package managers, kubeadm upgrade): never signalled, since a package manager
  or kubeadm killed mid-transaction can leave the host broken. kupd waits for it to end on its
  own, tells `on_overrun` so the node can say so, and then reports the deadline as exceeded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from kupd.errors import CommandError, DeadlineExceeded

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0
KILL_GRACE = 10.0
AUDIT_ENV = "KUPD_AUDIT_LOG"
Stop = Literal["kill", "wait"]


@dataclass(frozen=True)
class _Deadline:
    at: float  # time.monotonic()
    seconds: float
    what: str
    on_overrun: Callable[[str], None] | None


_local = threading.local()


@contextlib.contextmanager
def deadline(seconds: float, what: str, on_overrun: Callable[[str], None] | None = None) -> Iterator[None]:
    """Bound everything this thread runs inside the block to `seconds`; `what` names it (a step)."""
    prev = getattr(_local, "deadline", None)
    _local.deadline = _Deadline(time.monotonic() + seconds, seconds, what, on_overrun)
    try:
        yield
    finally:
        _local.deadline = prev


def _current() -> _Deadline | None:
    d: _Deadline | None = getattr(_local, "deadline", None)
    return d


def remaining() -> float | None:
    """Seconds left before this thread's deadline, or None without one."""
    d = _current()
    return None if d is None else d.at - time.monotonic()


def check_deadline() -> None:
    d = _current()
    if d is not None and time.monotonic() >= d.at:
        raise DeadlineExceeded(d.what, d.seconds)


def sleep(seconds: float, stop: threading.Event | None = None) -> bool:
    """Wait `seconds` (or until `stop` is set: returns True), ending early at the deadline, which raises."""
    left = remaining()
    wait = seconds if left is None else max(0.0, min(seconds, left))
    if stop is not None:
        if stop.wait(wait):
            return True
    else:
        time.sleep(wait)
    if left is not None and left <= seconds:
        check_deadline()
    return False


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
    stop: Stop = "kill",
) -> Result:
    """Run argv and return its result; raise CommandError on non-zero exit (when check) or timeout,
    DeadlineExceeded when the thread's deadline ended it (see the module's doc for `stop`).

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
    check_deadline()
    dl = _current()
    left = remaining()
    by_deadline = left is not None and left < timeout
    limit = min(timeout, left) if left is not None else timeout
    _audit(args)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            text=True, errors="replace", env=full_env, cwd=cwd,
            # Its own process group, so a stop reaches the children it started (dpkg under apt).
            start_new_session=True,
        )
    except OSError as e:
        raise CommandError(args, None, "", str(e)) from e
    try:
        out, err = proc.communicate(input_text, timeout=limit)
    except subprocess.TimeoutExpired:
        out, err = _stop(proc, args, stop, dl if by_deadline else None)
        if by_deadline and dl is not None:
            raise DeadlineExceeded(dl.what, dl.seconds, f"{args[0]} {'ended' if stop == 'wait' else 'was stopped'}"
                                   f" after the deadline (exit {proc.returncode})") from None
        raise CommandError(args, None, out, err, timed_out=True) from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    seconds = time.monotonic() - started
    log.debug("ran %s rc=%s in %.2fs", args[0], proc.returncode, seconds)
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, out, err)
    return Result(args, proc.returncode, out, err, seconds)


def _stop(proc: subprocess.Popen[str], args: list[str], stop: Stop, dl: _Deadline | None) -> tuple[str, str]:
    """End a command that ran out of time; returns its output."""
    if stop == "wait":
        msg = (f"{args[0]} is past its deadline; waiting for it to end its transaction "
               "(a package manager or kubeadm is never killed mid-change)")
        log.warning("%s", msg)
        if dl is not None and dl.on_overrun is not None:
            dl.on_overrun(msg)
        out, err = proc.communicate()
        return _text(out), _text(err)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return _text(out), _text(err)


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
