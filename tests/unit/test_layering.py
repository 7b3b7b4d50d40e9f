"""The layering of docs/development/architecture.md, checked over kupd's import graph (read with
ast, nothing imported or run): pure decisions import nothing that does I/O, the Kubernetes edge
and the subprocess runner are the only doors to the API server and to processes, the simulation
is reached only from the wiring, and the installed package never reaches into the repository."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

from tests.paths import ROOT

PACKAGE = ROOT / "kupd"

# Decisions and wire formats: no I/O, no clock but what they are handed (architecture.md).
PURE = {
    "kupd", "kupd.errors", "kupd.versions", "kupd.validate", "kupd.rfc3339", "kupd.conditions", "kupd.selectors",
    "kupd.windows", "kupd.schedule", "kupd.api", "kupd.api.models", "kupd.protocol", "kupd.planner",
    "kupd.dryrun", "kupd.statusview", "kupd.k8s.paths", "kupd.k8s.objects", "kupd.untrusted", "kupd.api.conform",
    "kupd.skew", "kupd.hazards", "kupd.preflight", "kupd.incremental",
}
# Libraries that reach the network, other processes or the machine.
IO_LIBRARIES = {"subprocess", "socket", "urllib3", "urllib.request", "http.client", "boto3", "botocore", "google",
                "prometheus_client", "sdnotify", "systemd", "apt", "apt_pkg", "threading", "shutil", "tempfile"}
# The coordinator is its loop (coordinator) and the parts it is built from, one job each.
COORDINATOR_PARTS = {"kupd.coordinator", "kupd.election", "kupd.statuswriter", "kupd.liveness", "kupd.planinputs",
                     "kupd.grants", "kupd.clusterfacts"}
# The daemon's roles and wiring: nothing below them imports them.
ROLES = COORDINATOR_PARTS | {"kupd.agent", "kupd.member", "kupd.scheduler", "kupd.health", "kupd.nodeops",
                             "kupd.daemon", "kupd.cli", "kupd.commands", "kupd.__main__", "kupd.clidoc"}
LOWER = ("kupd.k8s", "kupd.host", "kupd.backup", "kupd.api")
# What the roles share that is neither a decision nor a role: configuration, files, logs, metrics.
SUPPORT = {"kupd.checkpoint", "kupd.clock", "kupd.config", "kupd.configdoc", "kupd.enroll", "kupd.fsutil",
           "kupd.journal", "kupd.logsetup", "kupd.metrics", "kupd.notify", "kupd.oneversion"}
SIM = "kupd.sim"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def imports(module: str) -> frozenset[str]:
    """Every module `module` imports, at any depth of its code (lazy imports count); importing
    `a.b.c` runs `a` and `a.b` too, so those count as well."""
    tree = ast.parse(MODULES[module].read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names
                                     if f"{node.module}.{a.name}" in MODULES]
        for name in names:
            parts = name.split(".")
            out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(out)


def kupd_imports(module: str) -> set[str]:
    return {m for m in imports(module) if m in MODULES and m != module}


def closure(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        for dep in kupd_imports(m):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_graph_is_read() -> None:
    assert {"kupd.planner", "kupd.k8s.client", "kupd.sim.simulated"} <= set(MODULES)
    assert "kupd.k8s" in kupd_imports("kupd.coordinator")
    assert {"kupd.liveness", "kupd.planinputs", "kupd.grants"} <= kupd_imports("kupd.coordinator")


def test_every_module_has_a_layer() -> None:
    """A new module is placed in a layer here (and in architecture.md), so the checks below cover it."""
    unplaced = sorted(m for m in MODULES if m not in PURE | SUPPORT and not within(m, *ROLES, *LOWER, SIM))
    assert not unplaced, f"modules in no layer: {unplaced}"


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_import_no_io(module: str) -> None:
    assert module in MODULES
    impure = sorted(closure(module) - PURE)
    assert not impure, f"{module} reaches {impure}"
    libraries = sorted(m for dep in {module} | closure(module) for m in imports(dep) if m in IO_LIBRARIES)
    assert not libraries, f"{module} (or what it imports) uses {libraries}"


def test_the_kubernetes_edge_stands_on_nothing_of_kupd_above_it() -> None:
    for module in MODULES:
        if within(module, "kupd.k8s"):
            above = sorted(d for d in kupd_imports(module) if not within(d, "kupd.k8s") and d not in
                           ("kupd", "kupd.errors"))
            assert not above, f"{module} imports {above}"


def test_one_door_to_the_api_server_and_one_to_processes() -> None:
    for module in MODULES:
        libs = imports(module)
        if "urllib3" in libs:
            assert within(module, "kupd.k8s"), f"{module} talks to the API server around kupd.k8s"
        if "subprocess" in libs:
            assert module == "kupd.host.runner" or within(module, "kupd.sim"), \
                f"{module} starts processes around kupd.host.runner"


def test_the_simulation_is_reached_only_from_the_wiring() -> None:
    for module in MODULES:
        if within(module, "kupd.sim"):
            continue
        sim = sorted(d for d in kupd_imports(module) if within(d, "kupd.sim"))
        assert not sim or module in ("kupd.daemon", "kupd.commands.demo"), f"{module} imports {sim}"


def test_lower_layers_do_not_import_the_roles() -> None:
    for module in MODULES:
        if module in PURE | SUPPORT or within(module, *LOWER):
            up = sorted(d for d in kupd_imports(module) if within(d, *ROLES))
            assert not up, f"{module} imports {up}"


def test_the_package_never_reaches_into_the_repository() -> None:
    for module, path in MODULES.items():
        text = path.read_text()
        assert "tests/" not in text and not any(within(d, "tests") for d in imports(module)), module
        assert "__file__" not in text, f"{module} locates files relative to itself"
