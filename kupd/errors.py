"""The error types of kupd.

Every failure is either retryable (the same action may succeed later: an API outage, a
lock held by another process) or permanent (retrying cannot help: a version that does not
exist, a hostile input). Callers decide on retries from the type, never from a message.
"""

from __future__ import annotations


class KupdError(Exception):
    """Base of every error kupd raises on purpose."""


class PermanentError(KupdError):
    """Retrying will not help; the operation must stop and say why."""


class NotFoundError(PermanentError):
    """A named object does not exist (the API's 404, a missing DirectUpdate)."""


class RetryableError(KupdError):
    """The same action may succeed later."""

    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay


class NeedsAttention(PermanentError):
    """Trying again as it is cannot help and an operator must act (a drain that a PDB or an
    unmanaged pod stops): the node gives up at once, without spending its other attempts.
    `reason` is CamelCase, fit for a Condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ValidationError(PermanentError):
    """An input (CR field, config value, command argument) is malformed or hostile.

    `field` names the offending field so status Conditions and CLI errors can point at it.
    """

    def __init__(self, field: str, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message
        # Every (field, message) found, when the input had more than one problem; the message
        # above names the first (as the API server does) and counts the rest.
        self.problems = problems or [(field, message)]


class DeadlineExceeded(PermanentError):
    """A step ran past its deadline; the node reports it Failed with the step named."""

    def __init__(self, step: str, seconds: float, detail: str = "") -> None:
        super().__init__(f"step {step} exceeded its deadline of {seconds:g}s" + (f": {detail}" if detail else ""))
        self.step = step
        self.seconds = seconds


class CommandError(KupdError):
    """A subprocess exited non-zero, timed out or could not start."""

    def __init__(
        self,
        argv: list[str],
        returncode: int | None,
        stdout: str,
        stderr: str,
        timed_out: bool = False,
    ) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out
        what = "timed out" if timed_out else f"exited {returncode}"
        tail = _tail(stderr or stdout)
        super().__init__(f"{argv[0]} {what}" + (f": {tail}" if tail else ""))


def _tail(text: str, limit: int = 400) -> str:
    """The last part of command output, which is where tools put the reason they failed."""
    text = text.strip()
    if len(text) <= limit:
        return text
    return "…" + text[-limit:]
