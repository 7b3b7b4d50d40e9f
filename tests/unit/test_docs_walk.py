"""The walk of a DirectUpdate in docs/development/architecture.md names real code: every function
and type it names in backquotes exists, so a rename or a split cannot leave the walk behind."""

from __future__ import annotations

import importlib
import re
from types import ModuleType

import pytest

from tests.paths import ROOT

DOC = ROOT / "docs" / "development" / "architecture.md"
HEADING = "## One DirectUpdate, from `kubectl apply` to a host step and back"
# The modules the walk passes through; a bare class name (`GrantLeases.deliver`) is looked up in these.
MODULES = ("coordinator", "liveness", "grants", "statuswriter", "planner", "protocol", "api.models", "agent",
           "member", "checkpoint", "host.base", "host.real", "host.runner", "k8s")
# A code name: dotted identifiers (`planner.plan`, `Agent.offer`) or one CamelCase type (`DirectUpdateSpec`).
NAME = re.compile(r"^(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+|[A-Z]\w*)$")
FILE = re.compile(r"\.(md|ya?ml|py|json)$")  # a file the walk points to, not code


def walk_names() -> list[str]:
    text = DOC.read_text()
    assert HEADING in text
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    return [n for n in re.findall(r"`([^`]+)`", section) if NAME.match(n) and not FILE.search(n)]


def _module(path: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"kupd.{path}")
    except ModuleNotFoundError:
        return None


def resolve(name: str) -> object:
    """The object `name` denotes: a kupd module path then attributes (`host.runner.run`), or a
    name defined in one of the walk's modules then attributes (`StatusWriter.write`)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = _module(".".join(parts[:i]))
        if module is not None:
            obj: object = module
            for attr in parts[i:]:
                obj = getattr(obj, attr)
            return obj
    owners = [m for m in map(_module, MODULES) if m is not None and hasattr(m, parts[0])]
    assert owners, f"{parts[0]} is defined in none of {MODULES}"
    obj = getattr(owners[0], parts[0])
    for attr in parts[1:]:
        obj = getattr(obj, attr)
    return obj


def test_the_walk_names_enough_to_follow() -> None:
    names = walk_names()
    assert len(names) >= 30
    assert {"Coordinator.reconcile", "planner.plan", "GrantLeases.deliver", "Agent.offer", "host.runner.run"} <= set(
        names)


@pytest.mark.parametrize("name", sorted(set(walk_names())))
def test_each_name_in_the_walk_exists(name: str) -> None:
    assert resolve(name) is not None
