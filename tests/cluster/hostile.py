"""Hostile DirectUpdates: every CR string that can reach a command, a path or a URL, each
attacked one way (shell metacharacters, option injection, path traversal, newline injection,
huge strings, Unicode look-alikes, control and invisible characters).

Each entry is otherwise valid, so the refusal names exactly `field`. The API server must refuse
each (the CRD schema) and so must the daemon (kupd.api.models, kupd.validate), and no part of
any of them may ever reach a subprocess's argv. Where it fits, the payload carries the marker
`kupdpwn`, so an audit-log search for it finds any partial leak too.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MARKER = "kupdpwn"

BASE: dict[str, Any] = {"version": "v1.32.0", "backup": {"required": False}}
S3 = {"type": "s3", "bucket": "kupd-backups"}
ETCD = {"endpoints": ["https://127.0.0.1:2379"]}


@dataclass(frozen=True)
class Hostile:
    id: str
    field: str
    spec: dict[str, Any]
    why: str


def _with(path: str, value: Any, **extra: Any) -> dict[str, Any]:
    """BASE with `value` at the dotted `path` (and `extra` top-level keys merged first)."""
    spec = copy.deepcopy(BASE)
    for k, v in extra.items():
        spec[k] = copy.deepcopy(v)
    node = spec
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return spec


def _mirror(url: str, gpg: str | None = None) -> dict[str, Any]:
    mirror: dict[str, Any] = {"url": url}
    if gpg is not None:
        mirror["gpgKeyUrl"] = gpg
    return {"type": "mirror", "mirror": mirror}


HOSTILE: tuple[Hostile, ...] = (
    # spec.version: reaches `kubeadm upgrade apply <v>`, package pins, repository URLs.
    Hostile("version-semicolon", "spec.version", _with("version", f"v1.32.0; {MARKER}"), "command separator"),
    Hostile("version-subshell", "spec.version", _with("version", f"v1.32.0$({MARKER})"), "command substitution"),
    Hostile("version-backtick", "spec.version", _with("version", f"`{MARKER}`"), "backtick substitution"),
    Hostile("version-option", "spec.version", _with("version", "--ignore-preflight-errors=all"), "option injection"),
    Hostile("version-newline", "spec.version", _with("version", "v1.32.0\nv1.33.0"), "newline injection"),
    Hostile("version-trailing-newline", "spec.version", _with("version", "v1.32.0\n"),
            "`$` matches before a final newline in Python's re.match"),
    Hostile("version-fullwidth-digit", "spec.version", _with("version", "v1.\uff13\uff12.0"),
            "Unicode digits that int() and \\d accept"),
    Hostile("version-arabic-digit", "spec.version", _with("version", "v\u0661.32.0"), "Arabic-Indic digit one"),
    Hostile("version-greek-nu", "spec.version", _with("version", "\u03bd1.32.0"), "Greek nu looks like v"),
    Hostile("version-zero-width", "spec.version", _with("version", "v1.32.0\u200b"), "zero-width space"),
    Hostile("version-rtl-override", "spec.version", _with("version", "v1.32.0\u202e"), "bidi override"),
    Hostile("version-huge", "spec.version", _with("version", "v1." + "9" * 100_000 + ".0"), "100 kB string"),
    # spec.containerdVersion: reaches the containerd package pin.
    Hostile("containerd-pipe", "spec.containerdVersion", _with("containerdVersion", f"1.7.22|{MARKER}"), "pipe"),
    Hostile("containerd-and", "spec.containerdVersion", _with("containerdVersion", f"1.7.22 && {MARKER}"),
            "command chaining"),
    # spec.packageSource: reaches apt sources / dnf repo files and download URLs.
    Hostile("mirror-subshell", "spec.packageSource.mirror.url",
            _with("packageSource", _mirror(f"https://mirror.example/$({MARKER})")), "substitution in a URL"),
    Hostile("mirror-file-scheme", "spec.packageSource.mirror.url",
            _with("packageSource", _mirror("file:///etc/shadow")), "local file as a repository"),
    Hostile("mirror-newline", "spec.packageSource.mirror.url",
            _with("packageSource", _mirror(f"https://mirror.example/deb\ndeb [trusted=yes] http://{MARKER}/ /")),
            "a second, trusted apt source line"),
    Hostile("mirror-space", "spec.packageSource.mirror.url",
            _with("packageSource", _mirror(f"https://mirror.example/ {MARKER} main")), "extra apt source fields"),
    Hostile("mirror-userinfo", "spec.packageSource.mirror.url",
            _with("packageSource", _mirror(f"https://mirror.example@{MARKER}.example/")), "userinfo host confusion"),
    Hostile("gpg-quote", "spec.packageSource.mirror.gpgKeyUrl",
            _with("packageSource", _mirror("https://mirror.example/", f"https://k.example/key'\"{MARKER}")),
            "quotes"),
    Hostile("bundle-traversal", "spec.packageSource.bundle.path",
            _with("packageSource", {"type": "bundle", "bundle": {"path": f"/var/lib/kupd/../../etc/{MARKER}",
                                                                  "manifest": "/var/lib/kupd/bundle.json"}}),
            "path traversal"),
    Hostile("bundle-relative", "spec.packageSource.bundle.manifest",
            _with("packageSource", {"type": "bundle", "bundle": {"path": "/srv/bundle",
                                                                  "manifest": f"../../{MARKER}"}}),
            "relative path"),
    Hostile("bundle-glob", "spec.packageSource.bundle.path",
            _with("packageSource", {"type": "bundle", "bundle": {"path": f"/srv/{MARKER}/*",
                                                                  "manifest": "/srv/bundle.json"}}),
            "glob"),
    # spec.backup: reaches etcdctl's argv, file paths and object names.
    Hostile("store-path-traversal", "spec.backup.store.path",
            _with("backup.store", {"type": "file", "path": f"/var/backups/../../root/{MARKER}"}), "path traversal"),
    Hostile("store-prefix-traversal", "spec.backup.store.prefix",
            _with("backup.store", {**S3, "prefix": f"../{MARKER}/"}), "object key traversal"),
    Hostile("store-bucket-cyrillic", "spec.backup.store.bucket",
            _with("backup.store", {"type": "s3", "bucket": "kupd-b\u0430ckups"}), "Cyrillic a"),
    Hostile("store-endpoint-userinfo", "spec.backup.store.endpoint",
            _with("backup.store", {**S3, "endpoint": f"http://user:pass@{MARKER}.example/"}), "credentials in URL"),
    Hostile("store-region-newline", "spec.backup.store.region",
            _with("backup.store", {**S3, "region": f"us-east-1\n{MARKER}"}), "newline"),
    Hostile("secret-name-traversal", "spec.backup.store.credentialsSecret.name",
            _with("backup.store", {**S3, "credentialsSecret": {"namespace": "kupd-system",
                                                               "name": f"../../kube-system/{MARKER}"}}),
            "another namespace's Secret"),
    Hostile("etcd-endpoint-semicolon", "spec.backup.etcd.endpoints[0]",
            _with("backup.etcd", {"endpoints": [f"https://127.0.0.1:2379;{MARKER}"]}), "command separator"),
    Hostile("etcd-cafile-option", "spec.backup.etcd.caFile",
            _with("backup.etcd", {**ETCD, "caFile": f"--{MARKER}=/etc/shadow"}), "option injection"),
    Hostile("etcd-keyfile-nul", "spec.backup.etcd.keyFile",
            _with("backup.etcd", {**ETCD, "certFile": "/etc/kupd/etcd.crt",
                                  "keyFile": f"/etc/kupd/etcd.key\u0000{MARKER}"}), "NUL byte"),
    # Selectors: reach label selectors sent to the API and matched locally.
    Hostile("pod-selector-semicolon", "spec.drain.podSelector",
            _with("drain", {"podSelector": f"app=web;{MARKER}"}), "command separator"),
    Hostile("node-selector-nbhyphen", "spec.nodeSelector.matchLabels",
            _with("nodeSelector", {"matchLabels": {"kubernetes.io/hostname": "w\u20111"}}),
            "non-breaking hyphen"),
)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def hostile_strings() -> list[str]:
    """Every string of the hostile specs that is not in a valid spec, plus the marker."""
    benign = set(_strings(BASE)) | set(_strings(S3)) | set(_strings(ETCD)) | {
        "type", "mirror", "bundle", "url", "path", "manifest", "store", "backup", "etcd", "endpoints",
        "file", "s3", "prefix", "endpoint", "region", "credentialsSecret", "name", "namespace", "kupd-system",
        "caFile", "certFile", "keyFile", "drain", "podSelector", "nodeSelector", "matchLabels",
        "kubernetes.io/hostname", "containerdVersion", "packageSource", "gpgKeyUrl", "required",
        "/srv/bundle", "/srv/bundle.json", "/var/lib/kupd/bundle.json", "/etc/kupd/etcd.crt",
        "https://mirror.example/", "https://127.0.0.1:2379", "bucket", "version",
    }
    out = {MARKER}
    for h in HOSTILE:
        out |= {s for s in _strings(h.spec) if s not in benign}
    return sorted(out)
