"""etcd snapshots through etcdctl (and etcdutl where installed), run by kupd's one runner.

`etcdctl snapshot save` talks to one endpoint; kupd tries the configured endpoints in order (the
node's local member first) after an `endpoint status` that fails fast, so a dead or misconfigured
endpoint costs seconds, not the snapshot timeout. When etcdctl only says "context deadline exceeded",
a direct TLS probe of the endpoint finds the actual cause (refused connection, untrusted server,
refused client certificate).

The snapshot is checked three ways: `snapshot status` opens the bolt database and hashes it (etcd
3.5+ moved that command to etcdutl, 3.6 removed it from etcdctl: etcdutl is preferred when installed),
revision and key count must be positive, and the sha256 trailer etcd appends to every snapshot it
streams must match the content (the check `snapshot restore` does).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kupd import validate
from kupd.api import models
from kupd.backup import (
    ETCD_CERTIFICATES_MISSING,
    ETCD_SNAPSHOT_FAILED,
    ETCD_TLS_REJECTED,
    ETCD_UNREACHABLE,
    ETCDCTL_MISSING,
    SNAPSHOT_INVALID,
    BackupFailed,
    BackupRetryable,
)
from kupd.errors import CommandError, ValidationError
from kupd.host import runner

log = logging.getLogger(__name__)

# kubeadm's layout: the local member listens on 127.0.0.1:2379; its CA and a client certificate
# meant for tools (the same one kubeadm's etcd probes used) live under /etc/kubernetes/pki/etcd.
DEFAULT_ENDPOINTS = ("https://127.0.0.1:2379",)
DEFAULT_CA_FILE = "/etc/kubernetes/pki/etcd/ca.crt"
DEFAULT_CERT_FILE = "/etc/kubernetes/pki/etcd/healthcheck-client.crt"
DEFAULT_KEY_FILE = "/etc/kubernetes/pki/etcd/healthcheck-client.key"

# etcd appends sha256(snapshot) to the snapshot stream; a saved snapshot is whole pages plus that.
_PAGE = 512
_TRAILER = hashlib.sha256().digest_size

Run = Callable[..., runner.Result]


@dataclass(frozen=True)
class EtcdConfig:
    """How to reach the node's etcd."""

    endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    """Client URLs, tried in order; the first that answers is snapshotted."""
    ca_file: str = DEFAULT_CA_FILE
    """CA bundle that signed the etcd server certificates."""
    cert_file: str = DEFAULT_CERT_FILE
    """Client certificate etcd accepts (signed by its trusted CA)."""
    key_file: str = DEFAULT_KEY_FILE
    """Private key of cert_file."""
    dial_timeout: float = 3.0
    """Seconds to establish a connection to one endpoint."""
    status_timeout: float = 10.0
    """Seconds for the `endpoint status` check of one endpoint."""
    snapshot_timeout: float = 900.0
    """Seconds for the whole snapshot transfer of one endpoint (etcdctl applies its command timeout to it)."""
    etcdctl: str = "etcdctl"
    etcdutl: str | None = None
    """etcdutl command; None: use it when it is on PATH, else `etcdctl snapshot status`."""

    def validated(self) -> EtcdConfig:
        if not self.endpoints:
            raise ValidationError("etcd.endpoints", "needs at least one endpoint")
        for i, endpoint in enumerate(self.endpoints):
            validate.safe_url(endpoint, f"etcd.endpoints[{i}]")
        validate.safe_path(self.ca_file, "etcd.caFile")
        validate.safe_path(self.cert_file, "etcd.certFile")
        validate.safe_path(self.key_file, "etcd.keyFile")
        for name, value in (
            ("dial_timeout", self.dial_timeout),
            ("status_timeout", self.status_timeout),
            ("snapshot_timeout", self.snapshot_timeout),
        ):
            if not 0 < value <= 24 * 3600:
                raise ValidationError(f"etcd.{name}", f"{value} is not within (0, 86400] seconds")
        return self

    @classmethod
    def from_model(cls, access: models.EtcdAccess | None, field_path: str = "spec.backup.etcd") -> EtcdConfig:
        """From the CR's `spec.backup.etcd` as kupd.api.models parsed it; what it leaves out takes
        kubeadm's defaults."""
        if access is None:
            return cls()
        try:
            return cls(
                endpoints=tuple(access.endpoints),
                ca_file=access.ca_file or DEFAULT_CA_FILE,
                cert_file=access.cert_file or DEFAULT_CERT_FILE,
                key_file=access.key_file or DEFAULT_KEY_FILE,
            ).validated()
        except ValidationError as e:
            raise ValidationError(f"{field_path}.{e.field.removeprefix('etcd.')}", e.reason) from None


@dataclass(frozen=True)
class SnapshotStatus:
    """What `snapshot status -w json` reports."""

    hash: int
    revision: int
    total_keys: int
    total_size: int


@dataclass(frozen=True)
class EndpointStatus:
    endpoint: str
    version: str
    db_size: int
    revision: int


@dataclass(frozen=True)
class Snapshot:
    path: Path
    endpoint: str
    """The endpoint the snapshot was taken from."""
    etcd_version: str
    skipped: tuple[str, ...] = field(default=())
    """Endpoints tried first and why they were passed over."""


# --------------------------------------------------------------------------- pure parsers


def parse_snapshot_status(text: str) -> SnapshotStatus:
    """Parse `etcdctl|etcdutl snapshot status -w json` (same shape in 3.4, 3.5 and 3.6)."""
    try:
        obj = json.loads(text)
    except ValueError:
        raise BackupFailed(
            SNAPSHOT_INVALID, f"snapshot status printed no JSON: {text.strip()[:200]!r}"
        ) from None
    if not isinstance(obj, dict):
        raise BackupFailed(SNAPSHOT_INVALID, "snapshot status JSON is not an object")
    values: dict[str, int] = {}
    for key in ("hash", "revision", "totalKey", "totalSize"):
        value = obj.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BackupFailed(SNAPSHOT_INVALID, f"snapshot status has no valid {key!r}: {value!r}")
        values[key] = value
    return SnapshotStatus(values["hash"], values["revision"], values["totalKey"], values["totalSize"])


def parse_endpoint_status(text: str) -> list[EndpointStatus]:
    """Parse `etcdctl endpoint status -w json`."""
    try:
        items = json.loads(text)
    except ValueError:
        raise BackupRetryable(
            ETCD_SNAPSHOT_FAILED, f"endpoint status printed no JSON: {text.strip()[:200]!r}"
        ) from None
    out: list[EndpointStatus] = []
    for item in items if isinstance(items, list) else []:
        status = item.get("Status") or {}
        header = status.get("header") or {}
        out.append(
            EndpointStatus(
                endpoint=str(item.get("Endpoint", "")),
                version=str(status.get("version", "")),
                db_size=int(status.get("dbSize", 0)),
                revision=int(header.get("revision", 0)),
            )
        )
    return out


def check_snapshot_status(status: SnapshotStatus) -> None:
    """A snapshot of a Kubernetes cluster's etcd has keys and a positive revision."""
    if status.revision <= 0:
        raise BackupFailed(
            SNAPSHOT_INVALID, f"snapshot has revision {status.revision}: nothing was ever written"
        )
    if status.total_keys <= 0:
        raise BackupFailed(SNAPSHOT_INVALID, "snapshot holds no keys: not the cluster's etcd?")


def classify_etcdctl_error(output: str) -> tuple[str, str] | None:
    """(reason, cause) for the errors etcdctl reports in its log lines, or None when it does not say."""
    text = output.lower()
    if "certificate signed by unknown authority" in text or "x509:" in text:
        return ETCD_TLS_REJECTED, "the etcd server certificate is not signed by caFile"
    if "bad certificate" in text or "unknown certificate authority" in text or "certificate required" in text:
        return (
            ETCD_TLS_REJECTED,
            "etcd refused the client certificate (certFile/keyFile not signed by its CA)",
        )
    for marker in (
        "connection refused",
        "no such host",
        "no route to host",
        "i/o timeout",
        "network is unreachable",
    ):
        if marker in text:
            return ETCD_UNREACHABLE, marker
    return None


# --------------------------------------------------------------------------- I/O


def check_files(config: EtcdConfig) -> None:
    for name, path in (
        ("caFile", config.ca_file),
        ("certFile", config.cert_file),
        ("keyFile", config.key_file),
    ):
        if not os.path.isfile(path):
            raise BackupFailed(ETCD_CERTIFICATES_MISSING, f"etcd.{name} {path} does not exist")
        if not os.access(path, os.R_OK):
            raise BackupFailed(ETCD_CERTIFICATES_MISSING, f"etcd.{name} {path} is not readable")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupFailed(ETCDCTL_MISSING, f"{name} is not installed (package etcd-client)")
    return path


def _global_flags(config: EtcdConfig, endpoint: str, command_timeout: float) -> list[str]:
    return [
        f"--endpoints={endpoint}",
        f"--cacert={config.ca_file}",
        f"--cert={config.cert_file}",
        f"--key={config.key_file}",
        f"--dial-timeout={_go_duration(config.dial_timeout)}",
        f"--command-timeout={_go_duration(command_timeout)}",
    ]


def _go_duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


ENV = {"ETCDCTL_API": "3"}


def endpoint_status(config: EtcdConfig, endpoint: str, run: Run = runner.run) -> EndpointStatus:
    # The probe fails in milliseconds on a closed port or a refused certificate, where etcdctl 3.4
    # waits out its whole command timeout and then only says "context deadline exceeded".
    found = probe(config, endpoint)
    if found is not None:
        raise _as_error(endpoint, *found)
    argv = [
        _tool(config.etcdctl),
        *_global_flags(config, endpoint, config.status_timeout),
        "endpoint",
        "status",
        "-w",
        "json",
    ]
    try:
        result = run(argv, timeout=config.dial_timeout + config.status_timeout + 10, env=ENV)
    except CommandError as e:
        raise _endpoint_error(config, endpoint, e) from e
    statuses = parse_endpoint_status(result.stdout)
    if not statuses:
        raise BackupRetryable(ETCD_SNAPSHOT_FAILED, f"etcd at {endpoint} reported no status")
    return statuses[0]


def _endpoint_error(config: EtcdConfig, endpoint: str, e: CommandError) -> BackupFailed | BackupRetryable:
    found = classify_etcdctl_error(e.stderr + e.stdout)
    if found is None or found[0] == ETCD_UNREACHABLE:
        # etcdctl 3.4 often only says "context deadline exceeded": ask the endpoint directly.
        found = probe(config, endpoint) or found
    if found is None:
        return BackupRetryable(ETCD_SNAPSHOT_FAILED, f"etcd at {endpoint}: {e}")
    return _as_error(endpoint, *found)


def _as_error(endpoint: str, reason: str, cause: str) -> BackupFailed | BackupRetryable:
    if reason == ETCD_TLS_REJECTED:
        return BackupFailed(reason, f"etcd at {endpoint}: {cause}")
    return BackupRetryable(reason, f"etcd at {endpoint} is unreachable: {cause}")


def probe(config: EtcdConfig, endpoint: str) -> tuple[str, str] | None:
    """Connect to the endpoint with the configured CA and client certificate and say what goes wrong."""
    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname or "127.0.0.1"
    port = url.port or 2379
    try:
        sock = socket.create_connection((host, port), timeout=config.dial_timeout)
    except TimeoutError:
        return ETCD_UNREACHABLE, f"no answer from {host}:{port} within {config.dial_timeout:g}s"
    except OSError as e:
        return ETCD_UNREACHABLE, (e.strerror or str(e)).lower()
    with contextlib.closing(sock):
        if url.scheme != "https":
            return None
        try:
            ctx = ssl.create_default_context(cafile=config.ca_file)
            ctx.load_cert_chain(config.cert_file, config.key_file)
        except (ssl.SSLError, OSError) as e:
            return ETCD_TLS_REJECTED, f"cannot load caFile/certFile/keyFile: {e}"
        try:
            with ctx.wrap_socket(sock, server_hostname=host) as tls:
                tls.settimeout(config.dial_timeout)
                # With TLS 1.3 the server judges the client certificate after the handshake:
                # only a request shows whether it was accepted.
                tls.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                tls.recv(64)
        except ssl.SSLCertVerificationError as e:
            return (
                ETCD_TLS_REJECTED,
                f"the etcd server certificate is not trusted with caFile: {e.verify_message}",
            )
        except ssl.SSLError as e:
            if "CERTIFICATE" in str(e).upper():
                return ETCD_TLS_REJECTED, (
                    "etcd refused the client certificate (certFile is not signed by a CA it trusts): "
                    f"{e.reason or e}"
                )
            return ETCD_TLS_REJECTED, f"TLS handshake failed: {e.reason or e}"
        except TimeoutError:
            return ETCD_UNREACHABLE, f"{host}:{port} accepted the connection but did not answer"
        except OSError as e:
            return ETCD_UNREACHABLE, (e.strerror or str(e)).lower()
    return None


def save_snapshot(config: EtcdConfig, dest: Path, run: Run = runner.run) -> Snapshot:
    """Snapshot the first endpoint that answers into `dest` (mode 0600, written by etcdctl via dest.part)."""
    config.validated()
    check_files(config)
    failures: list[tuple[str, BackupFailed | BackupRetryable]] = []
    for endpoint in config.endpoints:
        try:
            status = endpoint_status(config, endpoint, run)
            _save(config, endpoint, dest, run)
        except (BackupFailed, BackupRetryable) as e:
            log.warning("etcd snapshot from %s failed: %s", endpoint, e)
            failures.append((endpoint, e))
            continue
        return Snapshot(dest, endpoint, status.version, tuple(f"{ep}: {err}" for ep, err in failures))
    raise _combine(failures)


def _save(config: EtcdConfig, endpoint: str, dest: Path, run: Run) -> None:
    for stale in (dest, dest.with_name(dest.name + ".part")):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    argv = [
        _tool(config.etcdctl),
        *_global_flags(config, endpoint, config.snapshot_timeout),
        "snapshot",
        "save",
        str(dest),
    ]
    try:
        run(argv, timeout=config.dial_timeout + config.snapshot_timeout + 30, env=ENV)
    except CommandError as e:
        with contextlib.suppress(FileNotFoundError):
            dest.with_name(dest.name + ".part").unlink()
        error = _endpoint_error(config, endpoint, e)
        if error.reason == ETCD_SNAPSHOT_FAILED or e.timed_out:
            what = "timed out" if e.timed_out else "failed"
            raise BackupRetryable(ETCD_SNAPSHOT_FAILED, f"snapshot of etcd at {endpoint} {what}: {e}") from e
        raise error from e
    if not dest.is_file():
        raise BackupRetryable(ETCD_SNAPSHOT_FAILED, f"etcdctl reported success but wrote no {dest}")


def _combine(
    failures: Sequence[tuple[str, BackupFailed | BackupRetryable]],
) -> BackupFailed | BackupRetryable:
    if len(failures) == 1:
        return failures[0][1]
    detail = "; ".join(str(e) for _, e in failures)
    permanent = [e for _, e in failures if isinstance(e, BackupFailed)]
    if permanent and len(permanent) == len(failures):
        return BackupFailed(permanent[0].reason, f"no etcd endpoint gave a snapshot: {detail}")
    reasons = {e.reason for _, e in failures}
    reason = reasons.pop() if len(reasons) == 1 else ETCD_SNAPSHOT_FAILED
    return BackupRetryable(reason, f"no etcd endpoint gave a snapshot: {detail}")


def snapshot_status(config: EtcdConfig, path: Path, run: Run = runner.run) -> SnapshotStatus:
    """`snapshot status` with etcdutl when installed (3.5+), else etcdctl (3.4)."""
    etcdutl = config.etcdutl or shutil.which("etcdutl")
    argv = (
        [etcdutl, "snapshot", "status", str(path), "-w", "json"]
        if etcdutl
        else [_tool(config.etcdctl), "snapshot", "status", str(path), "-w", "json"]
    )
    try:
        result = run(argv, timeout=max(60.0, config.status_timeout * 6), env=ENV)
    except CommandError as e:
        if not etcdutl and "unknown command" in (e.stderr + e.stdout).lower():
            raise BackupFailed(
                ETCDCTL_MISSING, "this etcdctl has no `snapshot status` (etcd 3.6+): install etcdutl"
            ) from e
        raise BackupFailed(
            SNAPSHOT_INVALID, f"snapshot {path.name} does not open as an etcd database: {e}"
        ) from e
    status = parse_snapshot_status(result.stdout)
    check_snapshot_status(status)
    return status


@dataclass(frozen=True)
class Digest:
    sha256: str
    size: int
    trailer_ok: bool | None
    """True: etcd's sha256 trailer matches; False: it does not; None: the file has no trailer."""


def digest(path: Path) -> Digest:
    """sha256 of the whole file, and whether etcd's own sha256 trailer matches its content."""
    size = path.stat().st_size
    has_trailer = size % _PAGE == _TRAILER
    body_len = size - _TRAILER if has_trailer else size
    whole, body = hashlib.sha256(), hashlib.sha256()
    done = 0
    trailer = b""
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            whole.update(chunk)
            if done < body_len:
                body.update(chunk[: body_len - done])
            if done + len(chunk) > body_len:
                trailer += chunk[max(0, body_len - done) :]
            done += len(chunk)
    if done != size:
        raise BackupRetryable(SNAPSHOT_INVALID, f"{path.name} changed size while being read")
    trailer_ok = (body.digest() == trailer) if has_trailer else None
    return Digest(whole.hexdigest(), size, trailer_ok)


def verify(config: EtcdConfig, path: Path, run: Run = runner.run) -> tuple[SnapshotStatus, Digest]:
    """Open the snapshot (`snapshot status`), check its trailer, and return both with its sha256."""
    status = snapshot_status(config, path, run)
    d = digest(path)
    if d.trailer_ok is False:
        raise BackupFailed(SNAPSHOT_INVALID, f"snapshot {path.name} does not match its own sha256 trailer")
    if d.trailer_ok is None:
        raise BackupFailed(
            SNAPSHOT_INVALID, f"snapshot {path.name} has no sha256 trailer ({d.size} bytes): truncated?"
        )
    return status, d
