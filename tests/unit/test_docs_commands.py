"""Every `kupd ...` command in the operator docs' code blocks parses with kupd's own parser, and
every metric kupd registers is documented in docs/usage/metrics.md.

`shell_commands` is also what tests/cluster/test_status_cli.py uses to run the docs' kubectl
commands against a real API server.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
import shlex
from pathlib import Path

import pytest

from kupd import cli

ROOT = Path(__file__).resolve().parents[2]
USAGE = ROOT / "docs" / "usage"
SHELL_LANGS = ("sh", "bash", "shell", "console")
SEPARATORS = ("|", "||", "&&", ";", "&")
REDIRECTIONS = (">", ">>", "<", "2>", "&>")
FENCE = re.compile(r"^```([A-Za-z0-9_-]*)[^\n]*\n(.*?)^```", re.S | re.M)


def shell_commands(markdown: str) -> list[list[str]]:
    """The simple commands of the shell code blocks, as argv lists, in order.

    In ```sh/bash/shell blocks every line is a command; in ```console blocks only lines starting
    with `$ ` are (the rest is output). Continuation lines are joined, comments dropped, pipelines
    and lists split into their commands, redirections, `sudo` and leading VAR=value removed.
    """
    out: list[list[str]] = []
    for lang, body in FENCE.findall(markdown):
        if lang not in SHELL_LANGS:
            continue
        lines: list[str] = []
        for raw in body.replace("\\\n", " ").splitlines():
            if lang == "console":
                if not raw.startswith("$ "):
                    continue
                raw = raw[2:]
            lines.append(raw)
        for line in lines:
            lex = shlex.shlex(line, posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            lex.commenters = ""  # as in sh, only a word starting with # starts a comment
            tokens = list(lex)
            tokens = tokens[: next((i for i, t in enumerate(tokens) if t.startswith("#")), len(tokens))]
            cmd: list[str] = []
            skip_next = False
            for tok in [*tokens, ";"]:
                if skip_next:
                    skip_next = False
                    continue
                if tok in REDIRECTIONS:
                    skip_next = True
                    continue
                if tok in SEPARATORS:
                    while cmd and (cmd[0] == "sudo" or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", cmd[0])):
                        cmd.pop(0)
                    if cmd:
                        out.append(cmd)
                    cmd = []
                    continue
                cmd.append(tok)
    return out


def doc_commands(program: str, docs: list[Path] | None = None) -> list[tuple[str, list[str]]]:
    """(doc file name, argv) of every `program` command in docs/usage/*.md."""
    found = []
    for path in docs or sorted(USAGE.glob("*.md")):
        for argv in shell_commands(path.read_text()):
            if argv[0] == program:
                found.append((path.name, argv))
    return found


def test_extractor() -> None:
    md = "\n".join([
        "```sh",
        "sudo kupd status x -o json | jq .   # a comment",
        "kupd backup now --store-type file \\",
        "    --path /mnt/b && echo ok",
        "FOO=1 kubectl get du > out.txt",
        "kubectl annotate du x a/b=w-3#2 --overwrite  # retry",
        "```",
        "```console",
        "$ kupd status",
        "kupd status NOT-A-COMMAND",
        "```",
        "```yaml",
        "kupd: status",
        "```",
    ])
    assert shell_commands(md) == [
        ["kupd", "status", "x", "-o", "json"], ["jq", "."],
        ["kupd", "backup", "now", "--store-type", "file", "--path", "/mnt/b"], ["echo", "ok"],
        ["kubectl", "get", "du"],
        ["kubectl", "annotate", "du", "x", "a/b=w-3#2", "--overwrite"],
        ["kupd", "status"],
    ]


KUPD_COMMANDS = doc_commands("kupd")


@functools.cache
def _parser() -> argparse.ArgumentParser:
    return cli.build_parser()


def test_docs_have_kupd_commands() -> None:
    files = {name for name, _ in KUPD_COMMANDS}
    assert {"runbook.md", "quickstart.md", "configuration.md"} <= files, files


@pytest.mark.parametrize(("doc", "argv"), KUPD_COMMANDS, ids=[f"{d}:{' '.join(a)}" for d, a in KUPD_COMMANDS])
def test_kupd_command_parses(doc: str, argv: list[str]) -> None:
    parser = _parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv[1:])
    except SystemExit as e:
        pytest.fail(f"{doc}: `{shlex.join(argv)}` does not parse (exit {e.code}): {err.getvalue().strip()}")
    assert callable(args.func)


def test_every_metric_is_documented() -> None:
    import prometheus_client

    import kupd.backup.metrics
    import kupd.metrics  # noqa: F401  (registers the metrics)

    doc = (USAGE / "metrics.md").read_text()
    names = set()
    for family in prometheus_client.REGISTRY.collect():
        if family.name.startswith("kupd_"):
            # Counters are exposed with _total; the family name lacks it.
            names.add(family.name + "_total" if family.type == "counter" else family.name)
    assert names, "no kupd metrics registered"
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"metrics missing from docs/usage/metrics.md: {missing}"
    documented = set(re.findall(r"^\| `(kupd_[a-z0-9_]+)`", doc, re.M))
    stale = sorted(documented - names)
    assert not stale, f"docs/usage/metrics.md documents metrics that do not exist: {stale}"
