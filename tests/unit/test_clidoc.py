"""The CLI by kubectl's conventions, checked over the whole parser: every command has a
description, every output is `-o` with table|wide|json|yaml (or the formats that apply), the man
pages and completion scripts come from the same parser."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from kupd import clidoc, logsetup
from kupd.cli import build_parser, main
from kupd.commands.common import EXIT_CODES_HELP


def commands() -> list[clidoc.Command]:
    return clidoc.all_commands(clidoc.walk(build_parser()))


def test_every_command_has_a_description() -> None:
    for cmd in commands():
        assert cmd.description and len(cmd.description) > 40, cmd.path
        if len(cmd.path) > 1:
            assert cmd.summary, cmd.path


def test_output_flags_follow_kubectl() -> None:
    outputs = {" ".join(c.path[1:]): o for c in commands() for o in c.options if "--output" in o.flags}
    assert outputs["status"].choices == ["table", "wide", "json", "yaml"]
    assert outputs["plan"].choices == ["table", "wide", "json", "yaml"]
    assert outputs["backup now"].choices == ["table", "wide", "json", "yaml"]
    assert outputs["validate"].choices == ["table", "json", "yaml"]
    assert outputs["enroll"].choices == ["yaml", "json"]
    for name, o in outputs.items():
        assert o.flags == ["-o", "--output"], name  # -o never means a path
    kubeconfig = {" ".join(c.path[1:]) for c in commands() for o in c.options if "--kubeconfig" in o.flags}
    context = {" ".join(c.path[1:]) for c in commands() for o in c.options if "--context" in o.flags}
    assert kubeconfig == context == {"status", "plan", "backup now", "enroll"}


def test_man_pages() -> None:
    pages = clidoc.man_pages(build_parser(), EXIT_CODES_HELP)
    assert set(pages) == {"kupd.1", *(f"kupd-{c}.1" for c in
                                      ("daemon", "demo", "plan", "status", "backup", "validate", "enroll",
                                       "completion"))}
    root = pages["kupd.1"]
    assert root.startswith('.TH KUPD 1 "2026-11-27" "kupd 0.1.0"')
    for section in (".SH NAME", ".SH SYNOPSIS", ".SH COMMANDS", ".SH EXIT STATUS", ".SH FILES", ".SH SEE ALSO"):
        assert section in root
    assert "\\fB4\\fR\nunreachable (API server or store)" in root
    backup = pages["kupd-backup.1"]
    assert ".SH BACKUP NOW" in backup and "\\fB\\-\\-store\\-type\\fR" in backup


def test_completion_scripts_name_every_command_and_choice() -> None:
    parser = build_parser()
    bash = clidoc.bash(parser)
    assert "complete -F _kupd kupd" in bash
    assert "\"\") echo 'daemon demo plan status backup validate enroll completion'" in bash
    assert "\"backup\") echo 'now'" in bash
    assert "-o|--output) COMPREPLY=($(compgen -W 'table wide json yaml' -- \"$cur\")); return;;" in bash
    zsh = clidoc.zsh(parser)
    assert zsh.startswith("#compdef kupd\n") and "_kupd_backup_now() {" in zsh
    assert "'status:show DirectUpdates\\: phase, nodes, progress and ETA'" in zsh


def test_completion_command_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    assert "complete -F _kupd kupd" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["completion", "fish"])
    assert e.value.code == 2


def test_json_log_lines() -> None:
    import io

    out = io.StringIO()
    logsetup.setup_logging("info", environ={}, stream=out, log_format="json")
    try:
        logsetup.set_defaults(node="w-1")
        with logsetup.log_context(operation="op", step="drain"):
            logging.getLogger("kupd.t").info("done %d", 3, extra=logsetup.event(logsetup.STEP_DONE))
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("kupd.t").exception("failed")
    finally:
        logsetup.clear_defaults()
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "done 3" and first["level"] == "info" and first["logger"] == "kupd.t"
    assert (first["operation"], first["node"], first["step"]) == ("op", "w-1", "drain")
    assert first["message_id"] == logsetup.STEP_DONE and first["time"].endswith("+00:00")
    assert second["level"] == "error" and "ValueError: boom" in second["exception"]


def test_message_id_reaches_the_journal() -> None:
    sent: list[dict[str, Any]] = []
    logsetup.setup_logging("info", environ={"INVOCATION_ID": "x"},
                           journal_sender=lambda message, **kw: sent.append({"MESSAGE": message, **kw}))
    logging.getLogger("kupd.t").info("elected", extra=logsetup.event(logsetup.COORDINATOR_ELECTED))
    logging.getLogger("kupd.t").info("plain")
    assert sent[0]["MESSAGE_ID"] == logsetup.COORDINATOR_ELECTED and "MESSAGE_ID" not in sent[1]
    assert len(set(logsetup.MESSAGE_IDS.values())) == len(logsetup.MESSAGE_IDS)
    assert all(len(v) == 32 and int(v, 16) for v in logsetup.MESSAGE_IDS.values())
