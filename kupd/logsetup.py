"""Logging: journald with structured fields under systemd; stderr elsewhere, as text or JSON lines.

Every record carries the operation, node and step it belongs to, taken from context variables
that the coordinator and agent set around their work::

    set_defaults(node="worker-1")                 # once, at start-up: this daemon's node
    with log_context(operation="upgrade-1-32", step="drain"):
        log.info("evicting %d pods", n)          # -> KUPD_OPERATION, KUPD_NODE, KUPD_STEP

Under journald they become journal fields, so ``journalctl -u kupd KUPD_STEP=drain`` finds
them; on stderr they are appended to the line. A record may also carry them explicitly:
``log.info(..., extra=fields(step="verify"))`` overrides the context for that record.

Context variables follow asyncio tasks, but a new thread starts empty: the defaults from
`set_defaults` apply there, and a worker thread sets its own context when it takes a step.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from kupd.journal import SOCKET_PATH, JournalSocket

OPERATION = "KUPD_OPERATION"
NODE = "KUPD_NODE"
STEP = "KUPD_STEP"
FIELDS = (OPERATION, NODE, STEP)
SYSLOG_IDENTIFIER = "kupd"

MESSAGE_ID = "MESSAGE_ID"

# journald MESSAGE_IDs of the key events (`journalctl -u kupd MESSAGE_ID=...`), fixed forever:
# tools and alerts may match on them. Sent with ``log.info(..., extra=event(STEP_DONE))``.
DAEMON_STARTED = "77a716acb0504fd59d826bb72d927c63"  # member of the cluster, loops running
DAEMON_WAITING = "09a7a6438a6b4c48a980b9999e29750e"  # waiting for a credential, the API, permission, the Node
DAEMON_STOPPING = "2610acc5274745c68472b282423765d3"
COORDINATOR_ELECTED = "6e681aab8dd54a54868d31ca57828039"
COORDINATOR_LOST = "e757c1fedf1346008b9ae16a9406ab04"
STEP_DONE = "c8394c3cad8146f9a1204b23376d8c63"
STEP_FAILED = "404fe6f424f649b3b7b8c87082e4d11f"
TOKEN_RENEWED = "dcf13f437978452a844b02a2f8d12d79"  # noqa: S105 - an event id: the node's token renewed
MESSAGE_IDS = {
    "DAEMON_STARTED": DAEMON_STARTED, "DAEMON_WAITING": DAEMON_WAITING, "DAEMON_STOPPING": DAEMON_STOPPING,
    "COORDINATOR_ELECTED": COORDINATOR_ELECTED, "COORDINATOR_LOST": COORDINATOR_LOST, "STEP_DONE": STEP_DONE,
    "STEP_FAILED": STEP_FAILED, "TOKEN_RENEWED": TOKEN_RENEWED,
}


def event(message_id: str) -> dict[str, str]:
    """``extra=`` for a record of a key event: journald gets it as MESSAGE_ID, JSON as message_id."""
    return {MESSAGE_ID: message_id}


_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(name, default=None) for name in FIELDS
}
_defaults: dict[str, str] = {}

JournalSender = Callable[..., Any]


def fields(
    *, operation: str | None = None, node: str | None = None, step: str | None = None
) -> dict[str, str]:
    """The structured fields as a dict for ``extra=`` (only those given)."""
    out = {OPERATION: operation, NODE: node, STEP: step}
    return {k: v for k, v in out.items() if v is not None}


def set_defaults(*, operation: str | None = None, node: str | None = None, step: str | None = None) -> None:
    """Process-wide values used when the context has none (e.g. this daemon's node name)."""
    for key, value in fields(operation=operation, node=node, step=step).items():
        _defaults[key] = value


def clear_defaults() -> None:
    _defaults.clear()


@contextlib.contextmanager
def log_context(
    *, operation: str | None = None, node: str | None = None, step: str | None = None
) -> Iterator[None]:
    """Attach fields to every record logged inside the block (nested blocks add to outer ones)."""
    tokens = [
        (_context[key], _context[key].set(value))
        for key, value in fields(operation=operation, node=node, step=step).items()
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current_fields() -> dict[str, str]:
    out = dict(_defaults)
    for key, var in _context.items():
        value = var.get()
        if value is not None:
            out[key] = value
    return out


class ContextFilter(logging.Filter):
    """Copies the current fields onto each record (explicit ``extra=`` values win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in current_fields().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    return {key: str(getattr(record, key)) for key in FIELDS if getattr(record, key, None) is not None}


class StderrFormatter(logging.Formatter):
    """``LEVEL logger: message [operation=… node=… step=…]``; journald adds time and pid itself,
    a terminal or a file under another supervisor gets them here."""

    def __init__(self, with_time: bool = True) -> None:
        fmt = "%(asctime)s " if with_time else ""
        super().__init__(fmt + "%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = record_fields(record)
        if extra:
            tail = " ".join(f"{k.removeprefix('KUPD_').lower()}={v}" for k, v in extra.items())
            first, sep, rest = text.partition("\n")
            text = f"{first} [{tail}]{sep}{rest}"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line (`kupd daemon --log-format json`), for log shippers outside
    journald: time (RFC 3339, UTC), level, logger, message, the KUPD_* fields as operation, node
    and step, message_id for key events, exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            doc[key.removeprefix("KUPD_").lower()] = value
        message_id = getattr(record, MESSAGE_ID, None)
        if message_id:
            doc["message_id"] = str(message_id)
        if record.exc_info and record.exc_info[0] is not None:
            doc["exception"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(doc, ensure_ascii=False)


_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def priority(levelno: int) -> int:
    for level, prio in _PRIORITY:
        if levelno >= level:
            return prio
    return 7


class JournalHandler(logging.Handler):
    """Sends each record to journald with only well-formed fields (MESSAGE, PRIORITY,
    SYSLOG_IDENTIFIER, LOGGER, CODE_*, EXCEPTION_TEXT and the KUPD_* fields)."""

    def __init__(self, sender: JournalSender, identifier: str = SYSLOG_IDENTIFIER) -> None:
        super().__init__()
        self._send = sender
        self._identifier = identifier

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            extra: dict[str, str] = {
                "PRIORITY": str(priority(record.levelno)),
                "SYSLOG_IDENTIFIER": self._identifier,
                "LOGGER": record.name,
                "THREAD_NAME": record.threadName or "",
            }
            if record.exc_info and record.exc_info[0] is not None:
                text = "".join(traceback.format_exception(*record.exc_info))
                extra["EXCEPTION_TEXT"] = text
                message = f"{message}\n{text}"
            extra.update(record_fields(record))
            message_id = getattr(record, MESSAGE_ID, None)
            if message_id:
                extra[MESSAGE_ID] = str(message_id)
            self._send(
                message,
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,
                CODE_FUNC=record.funcName,
                **extra,
            )
        except Exception:
            self.handleError(record)


def under_journald(environ: Mapping[str, str] | None = None, stderr: TextIO | None = None) -> bool:
    """True when stderr is systemd's journal stream (JOURNAL_STREAM names its device:inode) or
    we run as a systemd unit (INVOCATION_ID)."""
    env = os.environ if environ is None else environ
    if env.get("INVOCATION_ID"):
        return True
    stream = env.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stderr or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _journal_sender() -> JournalSender | None:
    """journald's native protocol (kupd.journal), when its socket is there."""
    if not JournalSocket.available():
        return None
    return JournalSocket().send


def setup_logging(
    level: str | int = "info",
    *,
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
    journal_sender: JournalSender | None = None,
    log_format: str = "text",
) -> logging.Handler:
    """Configure the root logger once; returns the handler in use.

    `journal_sender` replaces the native journal socket (tests); without the socket the daemon
    still logs, to stderr, and says why.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_kupd", False):
            root.removeHandler(old)
    handler: logging.Handler
    fallback_reason = ""
    if under_journald(environ, stream):
        sender = journal_sender or _journal_sender()
        if sender is not None:
            handler = JournalHandler(sender)
        else:
            fallback_reason = f"no journald socket at {SOCKET_PATH}; logging to stderr without fields"
            handler = logging.StreamHandler(stream or sys.stderr)
            handler.setFormatter(StderrFormatter(with_time=False))
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonFormatter() if log_format == "json" else StderrFormatter())
    handler.addFilter(ContextFilter())
    setattr(handler, "_kupd", True)  # noqa: B010 - marks our handler so a second setup replaces it
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for noisy in ("urllib3", "botocore", "google"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    if fallback_reason:
        logging.getLogger(__name__).warning(fallback_reason)
    return handler
