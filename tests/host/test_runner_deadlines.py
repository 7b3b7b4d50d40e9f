"""The runner at a step's deadline, with real processes: ordinary commands are stopped (SIGTERM,
then SIGKILL), a package manager or kubeadm (`stop="wait"`) is never signalled: kupd waits for
it to end its transaction, says so, and then reports the deadline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kupd.errors import CommandError, DeadlineExceeded
from kupd.host import runner


def _script(log: Path, seconds: float) -> list[str]:
    # Records a SIGTERM if one arrives, and whether it ran to its end.
    return ["sh", "-c", f'trap "echo term >> {log}; exit 143" TERM; sleep {seconds} & wait; echo done >> {log}']


def test_an_ordinary_command_is_terminated_at_the_deadline(tmp_path: Path) -> None:
    log = tmp_path / "log"
    t0 = time.monotonic()
    with runner.deadline(0.5, "verify"), pytest.raises(DeadlineExceeded) as e:
        runner.run(_script(log, 30))
    assert time.monotonic() - t0 < 5
    assert e.value.step == "verify"
    assert log.read_text() == "term\n"


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "KILL_GRACE", 0.5)
    t0 = time.monotonic()
    with runner.deadline(0.3, "restart"), pytest.raises(DeadlineExceeded):
        runner.run(["sh", "-c", 'trap "" TERM; sleep 30 & wait; sleep 30'])
    assert time.monotonic() - t0 < 5


def test_a_package_manager_is_never_signalled_at_the_deadline(tmp_path: Path) -> None:
    log = tmp_path / "log"
    told: list[str] = []
    t0 = time.monotonic()
    with runner.deadline(0.3, "kubelet-package", on_overrun=told.append), pytest.raises(DeadlineExceeded) as e:
        runner.run(_script(log, 1.5), stop="wait")
    took = time.monotonic() - t0
    assert 1.4 <= took < 10, took
    assert log.read_text() == "done\n", "the transaction was interrupted"
    assert told and "never killed" in told[0]
    assert "kubelet-package" in str(e.value) and "ended after the deadline" in str(e.value)


def test_a_plain_timeout_of_a_package_manager_also_waits(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with pytest.raises(CommandError) as e:
        runner.run(_script(log, 1.0), timeout=0.2, stop="wait")
    assert e.value.timed_out
    assert log.read_text() == "done\n"


def test_commands_get_only_the_time_left(tmp_path: Path) -> None:
    with runner.deadline(5, "preflight"):
        time.sleep(0.2)
        left = runner.remaining()
        assert left is not None and 4 < left < 5
        assert runner.run(["true"]).returncode == 0
    with runner.deadline(0.1, "preflight"):
        time.sleep(0.2)
        with pytest.raises(DeadlineExceeded):
            runner.run(["true"])
