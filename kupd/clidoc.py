"""Man pages and shell completion generated from the argument parser, so they cannot drift from
the commands. The packages ship what this writes (packaging/install-tree.sh):

    python -m kupd.clidoc man DIR      # DIR/kupd.1 and DIR/kupd-COMMAND.1
    kupd completion bash|zsh           # the completion script on stdout

Pure: each function takes the parser and returns text.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from kupd import __version__

DATE = date(2026, 11, 27)  # of the release (CHANGELOG.md), not of the build: reproducible pages


@dataclass
class Option:
    flags: list[str]
    metavar: str | None
    choices: list[str]
    help: str
    positional: bool


@dataclass
class Command:
    path: list[str]  # ["kupd", "backup", "now"]
    summary: str
    description: str
    usage: str
    options: list[Option] = field(default_factory=list)
    subcommands: list[Command] = field(default_factory=list)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def walk(parser: argparse.ArgumentParser, path: list[str] | None = None, summary: str = "") -> Command:
    """The command tree of `parser`, with every option's flags, choices and help."""
    path = path or [parser.prog]
    cmd = Command(path, summary or (parser.description or ""), parser.description or summary,
                  parser.format_usage().removeprefix("usage: ").strip())
    sub = _subparsers(parser)
    helps = {a.dest: a.help or "" for a in sub._choices_actions} if sub else {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction):
            if isinstance(action, argparse._VersionAction):
                cmd.options.append(Option(list(action.option_strings), None, [], "print the version", False))
            continue
        metavar = action.metavar if isinstance(action.metavar, str) else None
        if metavar is None and action.nargs != 0 and action.option_strings:
            metavar = action.dest.upper()
        help_text = (action.help or "") % {"default": action.default} if action.help else ""
        cmd.options.append(Option(list(action.option_strings) or [metavar or action.dest], metavar,
                                  [str(c) for c in action.choices or []], help_text, not action.option_strings))
    if sub:
        for name, child in sub.choices.items():
            cmd.subcommands.append(walk(child, [*path, name], helps.get(name, "")))
    return cmd


def all_commands(cmd: Command) -> list[Command]:
    out = [cmd]
    for c in cmd.subcommands:
        out += all_commands(c)
    return out


# -- man pages --------------------------------------------------------------------------------------


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.splitlines())


def _options_roff(cmd: Command) -> list[str]:
    lines: list[str] = []
    for o in cmd.options:
        head = ", ".join(f"\\fB{_roff(f)}\\fR" for f in o.flags) if not o.positional else f"\\fI{_roff(o.flags[0])}\\fR"
        if o.metavar and not o.positional:
            head += f" \\fI{_roff(o.metavar)}\\fR"
        listed = all(c in o.help for c in o.choices)
        lines += [".TP", head, _roff(o.help + (f" One of: {', '.join(o.choices)}." if not listed else ""))]
    return lines


def man_page(cmd: Command, exit_codes: str, see_also: list[str]) -> str:
    name = "-".join(cmd.path)
    title = _roff(name.upper())
    lines = [f'.TH {title} 1 "{DATE.isoformat()}" "kupd {__version__}" "kupd manual"',
             ".SH NAME", f"{_roff(name)} \\- {_roff(cmd.summary.rstrip('.'))}",
             ".SH SYNOPSIS", ".nf", _roff(cmd.usage), ".fi", ".SH DESCRIPTION", _roff(cmd.description)]
    if cmd.options:
        lines += [".SH OPTIONS", *_options_roff(cmd)]
    for sub in cmd.subcommands:
        if len(cmd.path) == 1:
            continue  # kupd(1) lists the commands below; each has its own page
        lines += [f".SH {_roff(' '.join(sub.path[1:]).upper())}", ".nf", _roff(sub.usage), ".fi",
                  _roff(sub.description), *_options_roff(sub)]
    if len(cmd.path) == 1:
        lines += [".SH COMMANDS"]
        for sub in cmd.subcommands:
            lines += [".TP", f"\\fB{_roff(sub.path[-1])}\\fR", _roff(sub.summary)]
        lines += [".SH FILES", ".TP", "/etc/kupd/config.d/*.toml", "The node's configuration (after "
                  "/usr/lib/kupd/config.d and /run/kupd/config.d).", ".TP", "/etc/kupd/kubeconfig",
                  "The node daemon's credential.", ".TP", "/usr/share/kupd/{crds,rbac,examples}",
                  "CustomResourceDefinitions, RBAC and admission policies, sample resources.",
                  ".SH ENVIRONMENT", ".TP", "KUBECONFIG",
                  "A list of kubeconfig files, merged as kubectl merges them."]
    lines += [".SH EXIT STATUS"]
    for item in exit_codes.removeprefix("exit codes: ").split("; "):
        code, _, meaning = item.partition(" ")
        lines += [".TP", f"\\fB{_roff(code)}\\fR", _roff(meaning)]
    lines += [
              ".SH SEE ALSO", ", ".join(f"\\fB{_roff(s)}\\fR(1)" for s in see_also) +
              ", /usr/share/doc/kupd/install.md"]
    return "\n".join(lines) + "\n"


def man_pages(parser: argparse.ArgumentParser, exit_codes: str) -> dict[str, str]:
    """{file name: roff}: kupd.1 and one page per top-level command."""
    root = walk(parser)
    names = ["kupd", *("kupd-" + c.path[-1] for c in root.subcommands)]
    pages = {"kupd.1": man_page(root, exit_codes, [*names[1:], "systemctl", "journalctl", "kubectl"])}
    for c in root.subcommands:
        pages[f"kupd-{c.path[-1]}.1"] = man_page(c, exit_codes, ["kupd"])
    return pages


# -- completion -------------------------------------------------------------------------------------


def _flags(cmd: Command) -> list[str]:
    return [f for o in cmd.options if not o.positional for f in o.flags] + ["-h", "--help"]


def bash(parser: argparse.ArgumentParser) -> str:
    """A bash completion function: commands, then each command's flags and the choices of a flag."""
    root = walk(parser)
    cases: list[str] = []
    for cmd in all_commands(root):
        key = " ".join(cmd.path[1:])
        words = [c.path[-1] for c in cmd.subcommands] + _flags(cmd)
        choice_cases = "".join(
            f"            {'|'.join(o.flags)}) COMPREPLY=($(compgen -W '{' '.join(o.choices)}' -- \"$cur\"))"
            "; return;;\n" for o in cmd.options if o.choices and not o.positional)
        file_flags = [f for o in cmd.options if not o.positional and o.metavar in ("FILE", "PATH") for f in o.flags]
        if file_flags:
            choice_cases += (f"            {'|'.join(file_flags)}) COMPREPLY=($(compgen -f -- \"$cur\")); "
                             "return;;\n")
        cases.append(f'        "{key}")\n            case "$prev" in\n{choice_cases}            esac\n'
                     f"            COMPREPLY=($(compgen -W '{' '.join(words)}' -- \"$cur\"));;\n")
    return (
        "# bash completion for kupd, generated from its argument parser (kupd completion bash)\n"
        "_kupd() {\n"
        "    local cur prev path word i\n"
        '    cur="${COMP_WORDS[COMP_CWORD]}"\n'
        '    prev="${COMP_WORDS[COMP_CWORD-1]}"\n'
        '    path=""\n'
        "    for ((i = 1; i < COMP_CWORD; i++)); do\n"
        '        word="${COMP_WORDS[i]}"\n'
        '        case "$word" in -*) continue;; esac\n'
        '        case " $(_kupd_commands "$path") " in *" $word "*) path="${path:+$path }$word";; esac\n'
        "    done\n"
        '    case "$path" in\n' + "".join(cases) + "    esac\n}\n"
        "_kupd_commands() {\n"
        '    case "$1" in\n' + "".join(
            f"        \"{' '.join(c.path[1:])}\") echo '{' '.join(s.path[-1] for s in c.subcommands)}';;\n"
            for c in all_commands(root) if c.subcommands) + "    esac\n}\n"
        "complete -F _kupd kupd\n"
    )


def _zsh_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "'\\''").replace("[", "\\[").replace("]", "\\]").replace(":", "\\:")


def _zsh_spec(o: Option) -> str:
    desc = _zsh_escape(o.help.split(". ")[0][:80])
    action = f":{(o.metavar or 'value').lower()}:({' '.join(o.choices)})" if o.choices else (
        ":file:_files" if o.metavar in ("FILE", "PATH") else (f":{o.metavar.lower()}:" if o.metavar else ""))
    if len(o.flags) == 1:
        return f"'{o.flags[0]}[{desc}]{action}'"
    return f"'({' '.join(o.flags)})'{{{','.join(o.flags)}}}'[{desc}]{action}'"


def zsh(parser: argparse.ArgumentParser) -> str:
    root = walk(parser)
    funcs: list[str] = []
    for cmd in all_commands(root):
        fname = "_" + "_".join(cmd.path).replace("-", "_")
        specs = [_zsh_spec(o) for o in cmd.options if not o.positional]
        if cmd.subcommands:
            cmds = " ".join(f"'{s.path[-1]}:{_zsh_escape(s.summary)}'" for s in cmd.subcommands)
            body = (f"    local -a cmds; cmds=({cmds})\n    _arguments -C {' '.join(specs)} '1:command:->cmd' "
                    "'*::arg:->args'\n    case $state in\n        cmd) _describe command cmds;;\n"
                    f"        args) _call_function ret {fname}_$words[1];;\n    esac\n")
        else:
            positional = [f"'*:{(o.metavar or o.flags[0]).lower()}:'" for o in cmd.options if o.positional]
            body = f"    _arguments {' '.join(specs + positional)}\n"
        funcs.append(f"{fname}() {{\n{body}}}\n")
    return "#compdef kupd\n# zsh completion for kupd, generated from its argument parser (kupd completion zsh)\n" + \
        "".join(funcs) + '_kupd "$@"\n'


def main(argv: list[str]) -> int:
    from kupd.cli import build_parser
    from kupd.commands.common import EXIT_CODES_HELP

    if len(argv) == 2 and argv[0] == "man":
        out = Path(argv[1])
        out.mkdir(parents=True, exist_ok=True)
        for name, text in man_pages(build_parser(), EXIT_CODES_HELP).items():
            (out / name).write_text(text)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
