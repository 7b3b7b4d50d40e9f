"""kupd.logsetup: which handler is chosen, and the KUPD_* fields on every record."""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kupd import logsetup
from kupd.logsetup import log_context, set_defaults, setup_logging


class Sent:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def __call__(self, message: str, **kw: Any) -> None:
        self.entries.append({"MESSAGE": message, **kw})


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    logsetup.clear_defaults()
    yield
    logsetup.clear_defaults()
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_kupd", False):
            root.removeHandler(h)


def test_stderr_outside_systemd() -> None:
    out = io.StringIO()
    h = setup_logging("info", environ={}, stream=out)
    assert isinstance(h, logging.StreamHandler)
    set_defaults(node="worker-1")
    with log_context(operation="op-1", step="drain"):
        logging.getLogger("kupd.test").info("evicting %d pods", 3)
    logging.getLogger("kupd.test").debug("hidden")
    line = out.getvalue().strip()
    assert "INFO kupd.test: evicting 3 pods [operation=op-1 node=worker-1 step=drain]" in line
    assert "hidden" not in out.getvalue()


def test_journal_with_invocation_id() -> None:
    sent = Sent()
    h = setup_logging("debug", environ={"INVOCATION_ID": "abc"}, journal_sender=sent)
    assert isinstance(h, logsetup.JournalHandler)
    set_defaults(node="cp-1")
    with log_context(operation="op-2"), log_context(step="kubeadm-upgrade"):
        logging.getLogger("kupd.agent").warning("slow")
    logging.getLogger("kupd.agent").info("outside", extra=logsetup.fields(step="verify"))
    first, second = sent.entries
    assert first["MESSAGE"] == "slow"
    assert first["PRIORITY"] == "4"
    assert first["SYSLOG_IDENTIFIER"] == "kupd"
    got = (first["KUPD_OPERATION"], first["KUPD_NODE"], first["KUPD_STEP"])
    assert got == ("op-2", "cp-1", "kubeadm-upgrade")
    assert second["KUPD_STEP"] == "verify" and "KUPD_OPERATION" not in second
    assert all(k.isupper() for k in first), "journald drops lower-case field names"


def test_journal_stream_must_match_stderr(tmp_path: Path) -> None:
    f = (tmp_path / "err").open("w")
    st = os.fstat(f.fileno())
    assert logsetup.under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f)
    assert not logsetup.under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f)
    assert not logsetup.under_journald({"JOURNAL_STREAM": "garbage"}, f)
    f.close()


def test_exception_text_is_sent() -> None:
    sent = Sent()
    setup_logging("info", environ={"INVOCATION_ID": "x"}, journal_sender=sent)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("kupd").exception("failed")
    (entry,) = sent.entries
    assert entry["PRIORITY"] == "3"
    assert "ValueError: boom" in entry["EXCEPTION_TEXT"]
    assert entry["MESSAGE"].startswith("failed\n")


def test_context_is_restored_and_threads_use_defaults() -> None:
    set_defaults(node="n1")
    with log_context(step="drain"):
        assert logsetup.current_fields() == {"KUPD_NODE": "n1", "KUPD_STEP": "drain"}
        seen: list[dict[str, str]] = []
        t = threading.Thread(target=lambda: seen.append(logsetup.current_fields()))
        t.start()
        t.join()
        assert seen == [{"KUPD_NODE": "n1"}]
    assert logsetup.current_fields() == {"KUPD_NODE": "n1"}


def test_setup_twice_keeps_one_handler() -> None:
    setup_logging("info", environ={}, stream=io.StringIO())
    setup_logging("info", environ={}, stream=io.StringIO())
    assert sum(getattr(h, "_kupd", False) for h in logging.getLogger().handlers) == 1


@pytest.mark.parametrize(
    ("level", "prio"),
    [(logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3), (50, 2)],
)
def test_priority(level: int, prio: int) -> None:
    assert logsetup.priority(level) == prio
