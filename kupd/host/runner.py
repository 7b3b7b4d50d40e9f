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



def _argv(argv: Sequence[object]) -> list[str]:
    """argv as strings, refused when empty or holding a NUL byte (no string reaches a shell)."""
    args = [str(a) for a in argv]
    if not args:
        raise ValueError("empty argv")
    for a in args:
        if "\x00" in a:
            raise ValueError("NUL byte in argv")
    return args


def _base_env() -> dict[str, str]:
    """The minimal environment every command starts from (not the daemon's own)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
    }

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
    args = _argv(argv)
    full_env = _base_env()
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
    Like `run(..., stop="wait")` it is never signalled: past the thread's deadline (or `timeout`)
    it is waited for, then DeadlineExceeded (or CommandError) is raised.
    The Result holds the output (stdout and stderr together) in `stdout`.
    """
    args = _argv(argv)
    env = _base_env()
    check_deadline()
    dl = _current()
    left = remaining()
    by_deadline = left is not None and left < timeout
    limit = min(timeout, left) if left is not None else timeout
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
        rc = proc.wait(limit)
    except subprocess.TimeoutExpired:
        # Never signalled (it is kubeadm mid-upgrade): past its time it is waited for, as `stop="wait"`.
        msg = (f"{args[0]} is past its deadline; waiting for it to end "
               "(kubeadm is never killed mid-change)")
        log.warning("%s", msg)
        if by_deadline and dl is not None and dl.on_overrun is not None:
            dl.on_overrun(msg)
        rc = proc.wait()
        if by_deadline and dl is not None:
            raise DeadlineExceeded(dl.what, dl.seconds,
                                   f"{args[0]} ended after the deadline (exit {rc})") from None
        raise CommandError(args, None, _tail(log_path), "", timed_out=True) from None
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
