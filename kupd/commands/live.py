"""The live view of DirectUpdates shared by `kupd demo` and `kupd status --watch`.

On a terminal, rich's Live redraws one frame in place: a header line per operation and a table of
its nodes, fitted to the terminal's width at every redraw (columns are dropped on narrow terminals,
long cells are cut, never wrapped into stray lines). When the output is not a terminal, each change
is appended as the plain `kupd status` text, so logs and pipes stay readable.

Only CLI commands import this module, and only inside their run functions: `kupd daemon` goes
through the same CLI parser, and the daemon must not load rich (a unit test walks its imports).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kupd import statusview

PHASE_STYLES = {
    "Succeeded": "green", "Skipped": "green", "Failed": "bold red", "RequiresAttention": "bold red",
    "Lost": "bold red", "Upgrading": "yellow", "Granted": "yellow", "Running": "yellow", "Paused": "magenta",
}
# The node table's columns and the narrowest terminal (in columns) that shows each.
COLUMNS: tuple[tuple[str, int], ...] = (
    ("NODE", 0), ("ROLE", 70), ("PHASE", 0), ("STEP", 0), ("ATTEMPTS", 150), ("FROM", 120), ("TO", 100),
    ("DURATION", 60), ("MESSAGE", 90),
)


def columns_for(width: int) -> list[str]:
    """The node table's columns that fit a terminal `width` columns wide; the most useful stay."""
    return [name for name, narrowest in COLUMNS if width >= narrowest]


def _cell(view: Mapping[str, Any], column: str) -> str:
    if column == "NODE":
        return str(view["name"])
    if column == "ROLE":
        role = "control-plane" if view["role"] == "ControlPlane" else "worker"
        return role + (" (canary)" if view["canary"] else "")
    if column == "PHASE":
        return str(view["phase"])
    if column == "STEP":
        return str(view["step"] or "-")
    if column == "ATTEMPTS":
        return str(view["attempts"])
    if column == "FROM":
        return str(view["fromVersion"] or "-")
    if column == "TO":
        return str(view["toVersion"] or "-")
    if column == "DURATION":
        return statusview.format_duration(view["durationSeconds"])
    return " ".join(str(view["message"] or "").split())


def printable(s: str) -> str:
    """Node messages and names come from untrusted reports: no escape sequence reaches the terminal."""
    return "".join(ch if ch.isprintable() else " " if ch in "\t\n\r" else "?" for ch in s)


def _line(*parts: str | tuple[str, str]) -> Text:
    """One line that never wraps: cut with an ellipsis at the terminal's edge."""
    text = Text.assemble(*(printable(p) if isinstance(p, str) else (printable(p[0]), p[1]) for p in parts))
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def operation_frame(view: Mapping[str, Any], width: int) -> RenderableType:
    """An operation (a statusview.operation_view) as a header line, detail lines and a node table."""
    prog = view["progress"]
    phase = str(view["phase"])
    timing = f"elapsed {statusview.format_duration(view['durationSeconds'])}"
    if phase not in statusview.TERMINAL and view["etaSeconds"] is not None:
        timing += f"  ETA {statusview.format_duration(view['etaSeconds'])}"
    # The most telling first: narrow terminals cut the header line from the right.
    parts: list[RenderableType] = [_line(
        ("DirectUpdate ", "bold"), (str(view["name"]), "bold"), "  ", (phase, PHASE_STYLES.get(phase, "")),
        f"  {prog['done']}/{prog['total']} nodes"
        f"  {statusview.progress_bar(prog['done'], prog['total'], 20 if width >= 100 else 10)}"
        f"  {timing}")]
    hops = ", ".join(view["hops"]) if view["hops"] else "-"
    detail = f"  target {view['target'] or '-'} (hops {hops}); concurrency {view['concurrency']}"
    if view["coordinator"]:
        detail += f"; coordinator {view['coordinator']} (epoch {view['epoch']})"
    parts.append(_line(detail))
    backup = view["backup"]
    if backup:
        size = backup.get("size")
        verified = ("verified", "green") if backup.get("verified") else ("NOT verified", "bold red")
        parts.append(_line("  backup ", verified,
                           f" {backup.get('location', '')}" + (f" ({size} bytes)" if size is not None else "")))
    if view["message"]:
        parts.append(_line(f"  {view['message']}"))
    for c in view["conditions"]:
        if c.get("type") == "RequiresAttention" and c.get("status") == "True":
            parts.append(_line(("  ATTENTION ", "bold red"), f"{c.get('reason', '')}: {c.get('message', '')}"))
    cols = columns_for(width)
    rows = [[printable(_cell(n, c)) for c in cols] for n in view["nodes"]]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    if "MESSAGE" in cols:
        # The message takes what the other columns leave (three spaces between columns).
        others = sum(w + 3 for c, w in zip(cols, widths, strict=True) if c != "MESSAGE")
        widths[cols.index("MESSAGE")] = max(min(widths[cols.index("MESSAGE")], width - others), len("MESSAGE"))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for name, w in zip(cols, widths, strict=True):
        table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=w)
    for n, row in zip(view["nodes"], rows, strict=True):
        table.add_row(*(Text(cell, style=PHASE_STYLES.get(str(n["phase"]), "") if c == "PHASE" else "")
                        for c, cell in zip(cols, row, strict=True)))
    parts.append(table)
    return Group(*parts)


def frame(objs: Sequence[Mapping[str, Any]], now: datetime, width: int) -> RenderableType:
    """What the terminal shows for these DirectUpdates, oldest first."""
    doc = statusview.document(objs, now)
    if not doc["operations"]:
        return Text("No DirectUpdates found.")
    blocks: list[RenderableType] = []
    for i, view in enumerate(doc["operations"]):
        if i:
            blocks.append(Text(""))
        blocks.append(operation_frame(view, width))
    return Group(*blocks)


class LiveView:
    """Shows DirectUpdates as they change: redrawn in place on a terminal, appended otherwise.

    Use as a context manager; call `show(objs, now)` with every fetch.
    """

    def __init__(self, out: TextIO, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self._console = Console(file=out, force_terminal=self.tty or None, highlight=False)
        self._live: Live | None = None
        self._last_key: tuple[str, ...] | None = None

    def __enter__(self) -> LiveView:
        if self.tty:
            # Frames are pushed by show(); no refresh thread of rich's own (nothing else changes them).
            self._live = Live(console=self._console, auto_refresh=False, transient=False,
                              vertical_overflow="ellipsis")
            self._live.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def show(self, objs: Sequence[Mapping[str, Any]], now: datetime) -> None:
        if self._live is not None:
            # Every call redraws: elapsed times and the ETA move on their own.
            self._live.update(frame(objs, now, self._console.width), refresh=True)
            return
        key = tuple(str((o.get("metadata") or {}).get("resourceVersion")) for o in objs)
        if key == self._last_key:
            return
        if self._last_key is not None:
            self.out.write("\n")
        self._last_key = key
        self.out.write(statusview.render(objs, now) + "\n")
        self.out.flush()
