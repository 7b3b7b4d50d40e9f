"""kubeconfig parsing: a kubeconfig document -> the `Settings` of one context. Pure but for
`load_kubeconfig`, which reads the file; no network, no TLS (the client builds that)."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kupd.errors import KupdError


@dataclass(frozen=True)
class Settings:
    """What a kubeconfig says about one context: where the server is and how to prove who we are."""

    server: str
    token: str | None = None
    token_file: str | None = None
    ca_file: str | None = None
    ca_data: bytes | None = None
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    insecure: bool = False


def _named(doc: Mapping[str, Any], section: str, item: str, name: str, source: str) -> Mapping[str, Any]:
    entries = doc.get(section) or []
    if not isinstance(entries, list):
        raise KupdError(f"kubeconfig {source}: '{section}' is not a list")
    for entry in entries:
        if isinstance(entry, Mapping) and entry.get("name") == name:
            value = entry.get(item)
            if value is None:
                return {}
            if not isinstance(value, Mapping):
                raise KupdError(f"kubeconfig {source}: {item} {name!r} is not a mapping")
            return value
    raise KupdError(f"kubeconfig {source}: no {item} named {name!r} in '{section}'")


def _string(section: Mapping[str, Any], key: str, where: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise KupdError(f"{where}: '{key}' must be a string")
    return value


def _file(section: Mapping[str, Any], key: str, where: str, base_dir: Path) -> str | None:
    value = _string(section, key, where)
    # As kubectl does: a relative path is relative to the kubeconfig's own directory, not to the
    # daemon's working directory.
    return None if value is None else str(base_dir / value)


def _data(section: Mapping[str, Any], key: str, where: str) -> bytes | None:
    value = _string(section, key, where)
    if value is None:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise KupdError(f"{where}: '{key}' is not valid base64") from e


def parse_kubeconfig(doc: Any, base_dir: Path, source: str, context: str | None = None) -> Settings:
    """The `Settings` of one context (`context`, or the current one) of a parsed kubeconfig.

    Pure: nothing is read, so every refusal is testable. `source` names the file in messages and
    `base_dir` anchors relative paths.
    """
    if not isinstance(doc, Mapping):
        raise KupdError(f"kubeconfig {source}: not a YAML mapping")
    name = context or doc.get("current-context")
    if not name or not isinstance(name, str):
        raise KupdError(f"kubeconfig {source}: no context given and no current-context set")
    ctx = _named(doc, "contexts", "context", name, source)
    cluster_name = ctx.get("cluster")
    if not cluster_name or not isinstance(cluster_name, str):
        raise KupdError(f"kubeconfig {source}: context {name!r} names no cluster")
    cluster = _named(doc, "clusters", "cluster", cluster_name, source)
    where = f"kubeconfig {source}: cluster {cluster_name!r}"
    server = _string(cluster, "server", where)
    if server is None:
        raise KupdError(f"{where} has no server")

    user_name = ctx.get("user")
    user: Mapping[str, Any] = {}
    if user_name:
        if not isinstance(user_name, str):
            raise KupdError(f"kubeconfig {source}: context {name!r}: user must be a string")
        user = _named(doc, "users", "user", user_name, source)
    uwhere = f"kubeconfig {source}: user {user_name!r}"
    for plugin in ("exec", "auth-provider"):
        if user.get(plugin):
            # Credential plugins run programs (cloud CLIs) and drag in their SDKs: kupd, a host
            # daemon, authenticates with what kubeadm hosts already have.
            raise KupdError(
                f"{uwhere} authenticates with '{plugin}', which kupd does not run; kupd needs a token or a "
                "client certificate (e.g. the kubeconfig written by `kupd enroll`, or /etc/kubernetes/kubelet.conf)"
            )

    insecure = cluster.get("insecure-skip-tls-verify", False)
    if not isinstance(insecure, bool):
        raise KupdError(f"{where}: 'insecure-skip-tls-verify' must be true or false")
    settings = Settings(
        server=server,
        token=_string(user, "token", uwhere),
        token_file=_file(user, "tokenFile", uwhere, base_dir),
        ca_file=_file(cluster, "certificate-authority", where, base_dir),
        ca_data=_data(cluster, "certificate-authority-data", where),
        cert_file=_file(user, "client-certificate", uwhere, base_dir),
        key_file=_file(user, "client-key", uwhere, base_dir),
        cert_data=_data(user, "client-certificate-data", uwhere),
        key_data=_data(user, "client-key-data", uwhere),
        insecure=insecure,
    )
    if (settings.cert_file or settings.cert_data) and not (settings.key_file or settings.key_data):
        raise KupdError(f"{uwhere} has a client certificate but no client key")
    if (settings.key_file or settings.key_data) and not (settings.cert_file or settings.cert_data):
        raise KupdError(f"{uwhere} has a client key but no client certificate")
    if insecure and (settings.ca_file or settings.ca_data):
        # kubectl refuses this too: which of the two was meant is anyone's guess.
        raise KupdError(f"{where} sets both a certificate authority and insecure-skip-tls-verify")
    return settings


def load_kubeconfig(path: str | os.PathLike[str], context: str | None = None) -> Settings:
    """Read a kubeconfig file and return the `Settings` of `context` (or its current context)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError as e:
        raise KupdError(f"kubeconfig {p} does not exist") from e
    except OSError as e:
        raise KupdError(f"kubeconfig {p} cannot be read: {e.strerror or e}") from e
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KupdError(f"kubeconfig {p} is not valid YAML: {e}") from e
    return parse_kubeconfig(doc, p.resolve().parent, str(p), context)
