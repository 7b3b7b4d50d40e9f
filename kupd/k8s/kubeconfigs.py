"""Which kubeconfig the `kupd` commands use, resolved as kubectl resolves it.

1. ``--kubeconfig PATH``: that file only (it must exist);
2. else ``$KUBECONFIG``: a ``:``-separated list, files that do not exist skipped, the rest
   **merged** — for clusters, users and contexts the first file that defines a name wins, and
   ``current-context`` comes from the first file that sets it;
3. else ``~/.kube/config``;
4. else ``/etc/kupd/kubeconfig``, the node's own credential, so ``kupd status`` works as root on
   a node (kubectl has no such fallback; it comes last so it never shadows an operator's config).

``--context NAME`` then picks the context instead of ``current-context``. Relative paths inside a
file (certificate-authority, client-certificate, client-key, tokenFile) are resolved against that
file's folder before merging, as kubectl does. Pure apart from reading the files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from kupd.errors import KupdError, ValidationError

NODE_KUBECONFIG = "/etc/kupd/kubeconfig"
_SECTIONS = (("clusters", "cluster"), ("users", "user"), ("contexts", "context"))
_PATH_KEYS = {"cluster": ("certificate-authority",), "user": ("client-certificate", "client-key", "tokenFile")}


def candidates(flag: str | None, env: Mapping[str, str], home: Path,
               exists: Callable[[str], bool] = os.path.exists) -> list[str]:
    """The files to merge, in precedence order. Raises ValidationError when there is none."""
    if flag:
        if not exists(flag):
            raise ValidationError("--kubeconfig", f"{flag} does not exist")
        return [flag]
    listed = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    if listed:
        found = [p for p in dict.fromkeys(listed) if exists(p)]
        if found:
            return found
        raise ValidationError("KUBECONFIG", f"none of {', '.join(listed)} exists")
    for fallback in (str(home / ".kube" / "config"), NODE_KUBECONFIG):
        if exists(fallback):
            return [fallback]
    raise ValidationError("--kubeconfig", f"no kubeconfig found (tried $KUBECONFIG, {home / '.kube' / 'config'}, "
                          f"{NODE_KUBECONFIG}); pass --kubeconfig PATH")


def _absolute(entry: Mapping[str, Any], item: str, base: Path) -> dict[str, Any]:
    out = dict(entry)
    body = out.get(item)
    if isinstance(body, Mapping):
        body = dict(body)
        for key in _PATH_KEYS.get(item, ()):
            value = body.get(key)
            if isinstance(value, str) and value and not os.path.isabs(value):
                body[key] = str(base / value)
        out[item] = body
    return out


def merge(docs: Sequence[tuple[Any, Path]]) -> dict[str, Any]:
    """kubectl's merge of (document, its folder) pairs, first wins."""
    merged: dict[str, Any] = {"apiVersion": "v1", "kind": "Config"}
    named: dict[str, dict[str, dict[str, Any]]] = {section: {} for section, _ in _SECTIONS}
    for doc, base in docs:
        if doc is None:
            continue  # an empty file, as kubectl allows
        if not isinstance(doc, Mapping):
            raise KupdError("kubeconfig: not a YAML mapping")
        if not merged.get("current-context") and isinstance(doc.get("current-context"), str):
            merged["current-context"] = doc["current-context"]
        for section, item in _SECTIONS:
            entries = doc.get(section) or []
            if not isinstance(entries, list):
                raise KupdError(f"kubeconfig: '{section}' is not a list")
            for entry in entries:
                if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
                    named[section].setdefault(entry["name"], _absolute(entry, item, base))
    for section, _ in _SECTIONS:
        merged[section] = list(named[section].values())
    return merged


def load(paths: Sequence[str]) -> dict[str, Any]:
    docs = []
    for p in paths:
        try:
            text = Path(p).read_text()
        except OSError as e:
            raise KupdError(f"kubeconfig {p} cannot be read: {e.strerror or e}") from e
        try:
            docs.append((yaml.safe_load(text), Path(p).resolve().parent))
        except yaml.YAMLError as e:
            raise KupdError(f"kubeconfig {p} is not valid YAML: {e}") from e
    return merge(docs)
