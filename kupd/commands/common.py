"""What the subcommands share, by kubectl's conventions: `--kubeconfig`/`--context` resolved as
kubectl does (kupd/k8s/kubeconfigs.py), `-o FORMAT` for every output, and the exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kupd.errors import ValidationError
from kupd.k8s import kubeconfigs

if TYPE_CHECKING:
    from kupd.k8s import Client, Settings

# Exit codes of every `kupd` command (documented in `kupd --help`, the man page and docs/usage/cli.md).
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and what it did or found failed: a Failed operation, a failed backup
EXIT_INVALID = 2  # invalid input: arguments, files, manifests, kubeconfig (argparse uses 2 as well)
EXIT_NOT_FOUND = 3  # a named object does not exist
EXIT_UNREACHABLE = 4  # the API server (or a store) could not be reached, or answered with a server error
EXIT_CODES_HELP = (
    "exit codes: 0 success; 1 failed (an operation, a backup, a refused request); 2 invalid input "
    "(arguments, files, manifests, kubeconfig); 3 not found; 4 unreachable (API server or store)"
)

FORMATS = ("table", "wide", "json", "yaml")
KUBECONFIG_HELP = ("kubeconfig file (default: $KUBECONFIG, a list merged as kubectl merges it, else "
                   f"~/.kube/config, else {kubeconfigs.NODE_KUBECONFIG})")


def add_kubeconfig_flags(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument("--kubeconfig", metavar="PATH", help=KUBECONFIG_HELP)
    p.add_argument("--context", metavar="NAME", help="the kubeconfig context to use (default: its current-context)")


def add_output_flag(p: argparse.ArgumentParser | Any, formats: tuple[str, ...] = FORMATS,
                    default: str = "table") -> None:
    p.add_argument("-o", "--output", choices=formats, default=default, metavar="FORMAT",
                   help=f"output format: {', '.join(formats)} (default {default})")


def kube_settings(args: argparse.Namespace) -> Settings:
    """The connection settings of the resolved kubeconfig and context."""
    from kupd.k8s import parse_kubeconfig

    paths = kubeconfigs.candidates(getattr(args, "kubeconfig", None), os.environ, Path.home())
    doc = kubeconfigs.load(paths)
    context = getattr(args, "context", None)
    if context and context not in {c.get("name") for c in doc["contexts"]}:
        raise ValidationError("--context", f"no context {context!r} in {', '.join(paths)}")
    return parse_kubeconfig(doc, Path("/"), " + ".join(paths), context)


def api_client(args: argparse.Namespace, timeout: float = 10.0) -> Client:
    from kupd.k8s import Client

    s = kube_settings(args)
    return Client(s.server, token=s.token, token_file=s.token_file, ca_file=s.ca_file, ca_data=s.ca_data,
                  cert_file=s.cert_file, key_file=s.key_file, cert_data=s.cert_data, key_data=s.key_data,
                  insecure=s.insecure, timeout=timeout)


def dump(doc: Any, fmt: str, compact: bool = False) -> str:
    """A document as JSON or YAML (the machine-readable formats)."""
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).rstrip("\n")
    if compact:
        return json.dumps(doc, separators=(",", ":"))
    return json.dumps(doc, indent=2)


def emit(doc: Any, fmt: str) -> None:
    sys.stdout.write(dump(doc, fmt) + "\n")
