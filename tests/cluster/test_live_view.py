"""The live view as a person sees it: `kupd status --watch` and `kupd demo` run in a real
pseudo-terminal at 40, 80 and 200 columns, their output replayed through a terminal emulator (pyte).
However often the frame was redrawn, and however wide its lines, the terminal ends up holding one
header and one node table, not a trail of stale copies."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kupd.sim.devcluster import ControlPlane
from tests.cluster import ptyterm
from tests.cluster.harness import apply_du
from tests.cluster.test_status_cli import running_status, ts, write_status
from tests.paths import CRD_DIR, control_plane_binary

ROOT = Path(__file__).resolve().parents[2]
NAME = "live-view"


def headers(lines: list[str], name: str) -> list[str]:
    return [ln for ln in lines if ln.startswith(f"DirectUpdate {name}")]


def tables(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.split()[:1] == ["NODE"] and "PHASE" in ln]


@pytest.fixture
def du(crds: ControlPlane) -> Iterator[ControlPlane]:
    apply_du(crds, NAME, {"version": "v1.32.1", "concurrency": 2})
    st = running_status()
    # Wider than any of the terminals: the line that left a trail behind in the old view.
    st["backup"]["location"] = "file:///var/lib/kupd/backups/" + "etcd-snapshot-" * 16 + "cp-1.db"
    write_status(crds, NAME, st)
    try:
        yield crds
    finally:
        crds.kubectl("delete", "directupdate", NAME, "--ignore-not-found", "--wait=true", check=False)


@pytest.mark.parametrize("cols", [40, 80, 200])
def test_status_watch_redraws_in_place(du: ControlPlane, cols: int, tmp_path: Path) -> None:
    def progress() -> None:
        # A few real changes while the watch runs, then the end.
        st = running_status()
        st["backup"]["location"] = "file:///var/lib/kupd/backups/" + "etcd-snapshot-" * 16 + "cp-1.db"
        for step in ("drain", "kubelet-package", "restart", "verify"):
            time.sleep(0.6)
            st["nodes"][2]["step"] = step
            st["message"] = f"upgrading w-1: {step} " + "and a long message " * 8
            write_status(du, NAME, st)
        for n in st["nodes"]:
            n.update(phase="Succeeded", finishedAt=ts(0), startedAt=n.get("startedAt") or ts(1))
            n.pop("grant", None)
        st.update(phase="Succeeded", finishedAt=ts(0), message="all 4 selected nodes are at v1.32.1",
                  summary={"total": 4, "pending": 0, "upgrading": 0, "succeeded": 4, "failed": 0, "skipped": 0})
        time.sleep(0.6)
        write_status(du, NAME, st)

    writer = threading.Thread(target=progress)
    writer.start()
    try:
        term = ptyterm.run([sys.executable, "-m", "kupd", "status", NAME, "--watch", "--interval", "0.2",
                            "--kubeconfig", str(du.admin_kubeconfig)],
                           cols=cols, rows=40, timeout=90, cwd=ROOT, stderr=tmp_path / "stderr")
    finally:
        writer.join()
    shown = "\n".join(term.lines)
    assert term.returncode == 0, shown + (tmp_path / "stderr").read_text()
    assert b"\x1b[" in term.raw, "on a terminal the view redraws with escape sequences"
    assert len(headers(term.lines, NAME)) == 1, shown
    assert len(tables(term.lines)) == 1, shown
    assert all(len(ln) <= cols for ln in term.lines)
    # The final frame is the finished operation, every node on its own row.
    assert "Succeeded" in headers(term.lines, NAME)[0], shown
    rows = term.lines[term.lines.index(tables(term.lines)[0]) + 2:]
    assert [r.split()[0] for r in rows if r.strip()][:4] == ["cp-1", "cp-2", "w-1", "w-2"], shown


@pytest.mark.parametrize("cols", [40, 80, 200])
def test_demo_final_screen_holds_one_header_and_one_table(cols: int, tmp_path: Path) -> None:
    term = ptyterm.run([sys.executable, "-m", "kupd", "demo", "--workers", "2", "--step-seconds", "0.1",
                        "--timeout", "180", "--control-plane-binary", str(control_plane_binary()),
                        "--crds", str(CRD_DIR)], cols=cols, rows=50, timeout=300, cwd=ROOT, stderr=tmp_path / "stderr")
    shown = "\n".join(term.lines)
    assert term.returncode == 0, shown + (tmp_path / "stderr").read_text()[-3000:]
    assert len(headers(term.lines, "demo")) == 1, shown
    assert len(tables(term.lines)) == 1, shown
    assert "Succeeded" in headers(term.lines, "demo")[0], shown
    # The spec as a short summary, not a raw JSON line.
    applied = term.lines.index("applied DirectUpdate demo:")
    assert term.lines[applied + 1:applied + 3] == ["  version      v1.32.1", "  concurrency  2"], shown
    assert term.lines[applied + 3].startswith("  etcd backup  file /"), shown
    assert '{"version"' not in shown
    assert "result: Succeeded" in shown


TALL = """
import sys, time
from datetime import UTC, datetime
from kupd.commands.live import LiveView
from tests.unit.test_live import du
obj = du()
obj["status"]["nodes"] = [dict(obj["status"]["nodes"][1], name=f"w-{i}") for i in range(30)]
with LiveView(sys.stdout) as view:
    for rv in range(8):
        obj["metadata"]["resourceVersion"] = str(rv)
        obj["status"]["nodes"][rv]["phase"] = "Succeeded"
        view.show([obj], datetime.now(UTC))
        time.sleep(0.05)
"""


def test_frame_taller_than_the_terminal(tmp_path: Path) -> None:
    """30 nodes on a 15-row terminal: cut at the bottom while live, shown whole at the end, no trail."""
    term = ptyterm.run([sys.executable, "-c", TALL], cols=80, rows=15, timeout=60, cwd=ROOT,
                       stderr=tmp_path / "stderr")
    shown = "\n".join(term.lines)
    assert term.returncode == 0, (tmp_path / "stderr").read_text()
    assert len(headers(term.lines, "demo")) == 1 and len(tables(term.lines)) == 1, shown
    rows = [ln.split()[0] for ln in term.lines[term.lines.index(tables(term.lines)[0]) + 2:]]
    assert rows == [f"w-{i}" for i in range(30)], shown
