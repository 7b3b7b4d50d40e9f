"""The live view (kupd.commands.live), the demo's spec summary, the Go build's progress lines, and
that `kupd daemon` never loads rich. Pure: frames are rendered into strings."""

from __future__ import annotations

import ast
import importlib.util
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from kupd import cli
from kupd.commands import demo, live

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 27, 4, 30, 0, tzinfo=UTC)
LONG = "installing kubelet v1.32.1 and kubectl v1.32.1 packages from the repository " * 3


def du(rv: str = "5", phase: str = "Running") -> dict[str, Any]:
    def entry(name: str, role: str, phase: str, **kw: Any) -> dict[str, Any]:
        return {"name": name, "role": role, "phase": phase, "attempts": 1, "fromVersion": "v1.31.2",
                "toVersion": "v1.32.1", **kw}

    return {
        "metadata": {"name": "demo", "resourceVersion": rv, "creationTimestamp": "2026-11-27T04:19:00Z"},
        "spec": {"version": "v1.32.1", "concurrency": 2},
        "status": {
            "phase": phase, "startedAt": "2026-11-27T04:20:00Z", "coordinator": "cp-1", "epoch": 1,
            "hops": ["v1.32.1"], "summary": {"total": 3, "succeeded": 1}, "message": "upgrading worker-1",
            "backup": {"location": "file:///tmp/kupd-demo-x/backups/" + "etcd-snapshot-" * 8 + ".db",
                       "size": 2101280, "verified": True},
            "conditions": [{"type": "RequiresAttention", "status": "True", "reason": "NodeFailed",
                            "message": "node worker-2: step drain failed " + "x" * 200}],
            "nodes": [
                entry("cp-1", "ControlPlane", "Succeeded", step="uncordon", startedAt="2026-11-27T04:20:00Z",
                      finishedAt="2026-11-27T04:25:00Z"),
                entry("worker-1", "Worker", "Upgrading", step="kubelet-package", startedAt="2026-11-27T04:25:00Z",
                      message=LONG),
                entry("worker-2", "Worker", "Failed", step="drain", message="drain timed out"),
            ],
        },
    }


def rendered(objs: list[dict[str, Any]], width: int) -> list[str]:
    buf = io.StringIO()
    Console(file=buf, width=width, force_terminal=False).print(live.frame(objs, NOW, width))
    return buf.getvalue().splitlines()


@pytest.mark.parametrize("width", [40, 80, 200])
def test_frame_fits_the_width_with_one_header_and_one_table(width: int) -> None:
    lines = rendered([du()], width)
    assert all(len(ln) <= width for ln in lines), lines
    assert sum(ln.startswith("DirectUpdate demo") for ln in lines) == 1
    headers = [ln for ln in lines if ln.split()[:1] == ["NODE"]]
    assert len(headers) == 1 and "PHASE" in headers[0]
    # One row per node, however long its message: cells are cut, never wrapped onto more lines.
    rows = [ln.split()[0] for ln in lines[lines.index(headers[0]) + 2:] if ln.strip()]
    assert rows == ["cp-1", "worker-1", "worker-2"]
    assert "Running" in lines[0] and "1/3 nodes" in lines[0]


def test_narrow_terminals_keep_the_telling_columns() -> None:
    assert live.columns_for(40) == ["NODE", "PHASE", "STEP"]
    assert live.columns_for(80) == ["NODE", "ROLE", "PHASE", "STEP", "DURATION"]
    assert live.columns_for(200) == [name for name, _ in live.COLUMNS]
    wide = rendered([du()], 200)
    assert any("ATTENTION NodeFailed: node worker-2" in ln for ln in wide)
    assert any("backup verified file:///tmp/kupd-demo-x/backups/" in ln for ln in wide)


def test_untrusted_text_cannot_drive_the_terminal() -> None:
    obj = du()
    obj["status"]["nodes"][1]["message"] = "evil\x1b[2J\x1b]0;title\x07 done"
    obj["status"]["message"] = "line one\nline two\x1b[1A"
    lines = rendered([obj], 200)
    assert not any("\x1b" in ln or "\x07" in ln for ln in lines)
    assert any("evil?[2J?]0;title? done" in ln for ln in lines)
    assert "  line one line two?[1A" in lines


def test_frame_without_operations() -> None:
    assert rendered([], 80) == ["No DirectUpdates found."]


def test_not_a_terminal_appends_plain_text_per_change() -> None:
    out = io.StringIO()
    with live.LiveView(out) as view:
        assert not view.tty
        view.show([du("5")], NOW)
        view.show([du("5")], NOW)  # unchanged resourceVersion: nothing new
        view.show([du("6", "Failed")], NOW)
    text = out.getvalue()
    assert "\x1b" not in text
    assert text.count("DirectUpdate demo: Running") == 1 and text.count("DirectUpdate demo: Failed") == 1


def test_terminal_output_redraws_in_place() -> None:
    out = io.StringIO()
    with live.LiveView(out, tty=True) as view:
        for rv in ("5", "6", "7"):
            view.show([du(rv)], NOW)
    text = out.getvalue()
    # rich moves the cursor up over the previous frame and erases it before drawing the next one.
    assert text.count("\x1b[2K") > 0 and "\x1b[1A" in text


def test_spec_summary() -> None:
    spec = {"version": "v1.32.1", "concurrency": 2,
            "backup": {"required": True, "store": {"type": "file", "path": "/tmp/b"}, "etcd": {"endpoints": ["x"]}}}
    assert demo.spec_summary(spec).splitlines() == [
        "  version      v1.32.1", "  concurrency  2", "  etcd backup  file /tmp/b (required)"]
    assert demo.spec_summary({"version": "v1.32.1", "backup": {"required": False}}).splitlines()[1:] == [
        "  concurrency  1", "  etcd backup  off"]
    s3 = {"version": "v1.33.0", "concurrency": 5,
          "backup": {"required": False, "store": {"type": "s3", "bucket": "snaps", "prefix": "prod"}}}
    assert demo.spec_summary(s3).endswith("  etcd backup  s3 snaps/prod (optional)")
    assert demo.spec_summary({"version": "v1.32.1"}).endswith("etcd backup  the daemons' configured store (required)")


# -- `kupd daemon` never imports rich --------------------------------------------------------------
def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imports(path: Path, all_levels: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if all_levels else iter(tree.body)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names
                         if _module_file(f"{node.module}.{a.name}") is not None)
    # Importing a.b.c runs a/__init__ and a/b/__init__ too.
    return names | {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}


def daemon_import_closure() -> set[str]:
    """Every module the `kupd daemon` process may import: the CLI imports every command module (their
    module level only); the daemon command and everything it reaches, at every level (lazy imports too)."""
    seen: set[str] = set()
    todo = [("kupd.__main__", True), ("kupd.cli", True)]
    todo += [(f"kupd.commands.{c}", c == "daemon") for c in cli.COMMANDS]
    while todo:
        name, all_levels = todo.pop()
        key = f"{name}/{all_levels}"
        if key in seen:
            continue
        seen.add(key)
        path = _module_file(name)
        if path is None:
            continue
        for imported in _imports(path, all_levels):
            todo.append((imported, True))
    return {k.split("/")[0] for k in seen}


def test_the_daemon_never_imports_rich() -> None:
    closure = daemon_import_closure()
    # The walk reaches what the daemon really runs ...
    assert {"kupd.daemon", "kupd.coordinator", "kupd.agent", "prometheus_client"} <= closure
    # ... and the CLI's command modules, though only their module level.
    assert {"kupd.commands.demo", "kupd.commands.status"} <= closure
    assert not {m for m in closure if m == "rich" or m.startswith("rich.")}, "the daemon must not load rich"
    assert "kupd.commands.live" not in closure


def test_only_the_live_view_imports_rich() -> None:
    from tests.unit.test_layering import MODULES, imports

    users = sorted(m for m in MODULES if any(i == "rich" or i.startswith("rich.") for i in imports(m)))
    assert users == ["kupd.commands.live"]
    # ... and the commands that use it import it lazily, inside their run functions.
    for m in ("kupd.commands.demo", "kupd.commands.status"):
        top = ast.parse(MODULES[m].read_text()).body
        assert not any(isinstance(n, ast.ImportFrom) and n.module == "kupd.commands.live" for n in top), m


# -- tests/controlplane/progress.py ------------------------------------------------------------------
def _progress() -> Any:
    spec = importlib.util.spec_from_file_location("progress", ROOT / "tests" / "controlplane" / "progress.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_build_progress_lines() -> None:
    p = _progress()
    assert p.classify("k8s.io/kubernetes/pkg/apis/core\n") == "package"
    assert p.classify("go: downloading k8s.io/api v0.36.3\n") == "download"
    assert p.classify("# k8s.io/x\n") == "other" and p.classify("main.go:3:2: undefined: y\n") == "other"
    assert p.status_line("kupd-testcp", 512, 2048, 0, 190) == \
        "kupd-testcp: 512/2048 packages compiled (25%), 3m10s elapsed"
    assert p.status_line("t", 2100, 2048, 3, 5) == \
        "t: 2100/2048 packages compiled (100%), 5s elapsed; 3 modules downloaded"
    assert p.status_line("t", 0, 0, 7, 65) == "t: resolving packages, 7 modules downloaded, 1m05s elapsed"
    err = io.StringIO()
    assert p.run(io.StringIO("go: downloading m v1\nfmt\n# pkg\npkg/a.go:1: bad\nnet/http\n"), err, "t", 4, 60) == 2
    assert err.getvalue() == \
        "# pkg\npkg/a.go:1: bad\nt: 2/4 packages compiled (50%), 0s elapsed; 1 modules downloaded\n"
