"""One etcd backup, end to end: snapshot → verify → sha256 → upload → verify upload → retention.

`take_backup` is what the first control-plane node's agent (and `kupd backup now`) calls. It returns a
`BackupRecord` for the CR status, or raises `BackupFailed` / `BackupRetryable` whose `reason` the
coordinator puts in the Condition and Event. A failed or unverifiable upload is deleted, so nothing
that is not a verified backup is ever listed as one (nor pushes a good one out through retention).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kupd import fsutil, validate
from kupd.api import models
from kupd.backup import (
    CHECKSUM_MISMATCH,
    CREDENTIALS_INVALID,
    INSUFFICIENT_DISK_SPACE,
    STORE_ACCESS_DENIED,
    STORE_BUCKET_NOT_FOUND,
    STORE_CREDENTIALS_REJECTED,
    STORE_UNREACHABLE,
    UNEXPECTED,
    UPLOAD_INTERRUPTED,
    BackupFailed,
    BackupRetryable,
    etcd,
    metrics,
    reason_of,
)
from kupd.backup import credentials as creds_mod
from kupd.backup.credentials import NONE, Credentials
from kupd.backup.stores import BackupStore, ObjectInfo, StoreConfig, open_store, sha256_file
from kupd.clock import Clock
from kupd.errors import ValidationError
from kupd.host import runner

if TYPE_CHECKING:
    from kupd.k8s import Client

log = logging.getLogger(__name__)

DEFAULT_WORK_DIR = "/var/lib/kupd/backup"
# etcd-20261127T034100Z-cp-1-r123456.db: time first, so names sort by time within a cluster.
_NAME = re.compile(r"^etcd-([0-9]{8}T[0-9]{6}Z)-([a-z0-9][a-z0-9.-]*)-r([0-9]+)\.db$")


REQUIRED, BEST_EFFORT, DISABLED = "Required", "BestEffort", "Disabled"
NO_STORE_HINT = "configure [backup.store] in /etc/kupd/config.d on the control-plane nodes, or spec.backup.store"
_LOCAL_DIR = "snapshots"


@dataclass(frozen=True)
class BackupDefaults:
    """The daemon's `[backup]` settings on a control-plane node: what a DirectUpdate that names no
    store or etcd access gets. Shaped like spec.backup (camelCase keys)."""

    store: StoreConfig | None = None
    etcd: etcd.EtcdConfig = field(default_factory=etcd.EtcdConfig)
    work_dir: str = DEFAULT_WORK_DIR
    verify_download: bool = True
    keep_local_snapshots: int = 3
    """Snapshots kept on the node when there is no store (or its upload failed); older ones are removed."""

    @classmethod
    def from_settings(cls, data: dict[str, Any], *, work_dir: str = DEFAULT_WORK_DIR,
                      field_path: str = "backup") -> BackupDefaults:
        if not isinstance(data, dict):
            raise ValidationError(field_path, "must be a table")
        unknown = set(data) - {"store", "etcd", "workDir", "verifyDownload", "keepLocalSnapshots"}
        if unknown:
            raise ValidationError(field_path, f"unknown keys {sorted(unknown)}")
        store = data.get("store")
        if store is not None and not isinstance(store, dict):
            raise ValidationError(f"{field_path}.store", "must be a table")
        keep = data.get("keepLocalSnapshots", 3)
        if not isinstance(keep, int) or isinstance(keep, bool) or not 1 <= keep <= 100:
            raise ValidationError(f"{field_path}.keepLocalSnapshots", "must be an integer from 1 to 100")
        verify = data.get("verifyDownload", True)
        if not isinstance(verify, bool):
            raise ValidationError(f"{field_path}.verifyDownload", "must be true or false")
        # The same shapes as a DirectUpdate's spec.backup.store and .etcd, parsed by the same models;
        # a store in a file may also name a credentials file.
        creds = ""
        if store:
            store = dict(store)
            creds = str(store.pop("credentialsFile", "") or "")
        parsed_store = (StoreConfig.from_model(models.parse_spec(models.BackupStore, store, f"{field_path}.store"),
                                               credentials_file=creds, field_path=f"{field_path}.store")
                        if store else None)
        access = data.get("etcd")
        parsed_etcd = (etcd.EtcdConfig.from_model(models.parse_spec(models.EtcdAccess, access, f"{field_path}.etcd"),
                                                  f"{field_path}.etcd") if access else etcd.EtcdConfig())
        return cls(
            store=parsed_store,
            etcd=parsed_etcd,
            work_dir=validate.safe_path(str(data.get("workDir") or work_dir), f"{field_path}.workDir"),
            verify_download=verify,
            keep_local_snapshots=keep,
        )


@dataclass(frozen=True)
class BackupConfig:
    """What the CR's `spec.backup` says over the daemon's defaults, plus host-side settings."""

    store: StoreConfig | None
    """None: no store configured anywhere; the verified snapshot stays on the node."""
    etcd: etcd.EtcdConfig = field(default_factory=etcd.EtcdConfig)
    policy: str = REQUIRED
    """Required: a failure fails the operation before any node changes. BestEffort: a failure is
    recorded and the operation goes on. Disabled: no snapshot (never reaches take_backup)."""
    work_dir: str = DEFAULT_WORK_DIR
    """Where the snapshot is written (mode 0700); needs room for two copies of the etcd database."""
    verify_download: bool = True
    """Download the uploaded object and compare its sha256 (else: size and recorded sha256 only)."""
    keep_local: bool = False
    """Keep the local snapshot file after a successful upload."""
    keep_local_snapshots: int = 3

    @property
    def required(self) -> bool:
        return self.policy == REQUIRED

    @classmethod
    def from_model(cls, backup: models.Backup, *, defaults: BackupDefaults | None = None,
                   work_dir: str = DEFAULT_WORK_DIR, verify_download: bool | None = None, keep_local: bool = False,
                   credentials_file: str = "", retention: int | None = None,
                   field_path: str = "spec.backup") -> BackupConfig:
        """From the CR's `spec.backup` as kupd.api.models parsed it; the store and etcd access it
        leaves unset come from `defaults` (the daemon's [backup] settings), then host-side settings
        (`retention`, when given, overrides the store's: `kupd backup` keeps all by default)."""
        d = defaults or BackupDefaults(work_dir=work_dir)
        store = (StoreConfig.from_model(backup.store, credentials_file=credentials_file,
                                        field_path=f"{field_path}.store")
                 if backup.store is not None else d.store)
        if store is not None and retention is not None:
            store = replace(store, retention=retention).validated(f"{field_path}.store")
        return cls(
            store=store,
            etcd=etcd.EtcdConfig.from_model(backup.etcd, f"{field_path}.etcd") if backup.etcd is not None
            else d.etcd,
            policy=backup.effective_policy,
            work_dir=validate.safe_path(d.work_dir if defaults is not None else work_dir, f"{field_path}.workDir"),
            verify_download=d.verify_download if verify_download is None else verify_download,
            keep_local=keep_local,
            keep_local_snapshots=d.keep_local_snapshots,
        )


@dataclass(frozen=True)
class BackupRecord:
    """A verified backup, as recorded in the CR's `status.backup`."""

    location: str
    size: int
    sha256: str
    revision: int
    verified: bool
    taken_at: datetime
    node: str
    key: str = ""
    total_keys: int = 0
    etcd_endpoint: str = ""
    pruned: tuple[str, ...] = ()
    """Older backups removed by retention."""
    uploaded: bool = True
    """False: no store is configured, or (BestEffort) the upload failed; the snapshot stays on the node."""
    message: str = ""
    """What was not done and why, for the Warning Condition."""

    def to_status(self) -> dict[str, Any]:
        """The `status.backup` object: `models.BackupRecord`, the CRD's shape, on the wire."""
        return models.to_wire(models.BackupRecord(
            location=self.location, size=self.size, sha256=self.sha256, revision=self.revision,
            verified=self.verified, taken_at=self.taken_at.astimezone(UTC).replace(microsecond=0), node=self.node,
            uploaded=self.uploaded, message=self.message[:2000] or None))

    def to_json(self) -> dict[str, Any]:
        return {
            **self.to_status(),
            "key": self.key,
            "totalKeys": self.total_keys,
            "etcdEndpoint": self.etcd_endpoint,
            "pruned": list(self.pruned),
        }

    def event_message(self) -> str:
        """One line for the Kubernetes Event (reason `BackupSucceeded`)."""
        return (
            f"etcd snapshot of {self.node} at revision {self.revision} ({self.total_keys} keys, "
            f"{self.size} bytes, sha256 {self.sha256[:12]}…) uploaded and verified: {self.location}"
        )


def object_key(prefix: str, cluster: str, node: str, revision: int, taken_at: datetime) -> str:
    """`<prefix><cluster>/etcd-<UTC time>-<node>-r<revision>.db`.

    Names sort by time within a cluster and say the cluster, the node and the etcd revision."""
    validate.node_name(cluster, "cluster")
    validate.node_name(node, "node")
    if prefix:
        validate.object_prefix(prefix, "prefix")
        prefix = prefix if prefix.endswith("/") else prefix + "/"
    stamp = taken_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{prefix}{cluster}/etcd-{stamp}-{node}-r{revision}.db"


def cluster_prefix(prefix: str, cluster: str) -> str:
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return f"{prefix}{cluster}/"


def backups(objects: list[ObjectInfo], prefix: str) -> list[ObjectInfo]:
    """The objects that are kupd backups directly under `prefix`, oldest first."""
    found = [o for o in objects if o.key.startswith(prefix) and _NAME.match(o.key[len(prefix) :])]
    return sorted(found, key=lambda o: o.key)


def to_prune(objects: list[ObjectInfo], prefix: str, keep: int, protect: str) -> list[str]:
    """Keys beyond the newest `keep` backups (never `protect`, the one just made); keep=0 keeps all."""
    if keep <= 0:
        return []
    ours = backups(objects, prefix)
    return [o.key for o in ours[: max(0, len(ours) - keep)] if o.key != protect]


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        metrics.DURATION.labels(stage=name).observe(time.monotonic() - started)


def take_backup(
    config: BackupConfig,
    credentials: Credentials,
    cluster: str,
    node: str,
    clock: Clock,
    *,
    store: BackupStore | None = None,
    run: Callable[..., runner.Result] = runner.run,
) -> BackupRecord:
    """Snapshot this node's etcd, verify it, upload it, verify the upload, prune old backups.

    Raises BackupFailed (permanent) or BackupRetryable, each with a `reason`; ValidationError for
    bad configuration. Metrics are updated either way."""
    metrics.ATTEMPTS.inc()
    started = time.monotonic()
    try:
        record = _take(config, credentials or NONE, cluster, node, clock, store, run)
    except Exception as e:
        reason = reason_of(e)
        metrics.FAILURES.labels(reason=reason).inc()
        metrics.LAST_FAILURE.set(clock.now().timestamp())
        if reason == UNEXPECTED:
            # No traceback: its frames could hold credential values; the redacted message says enough.
            log.error("etcd backup failed unexpectedly: %s: %s", type(e).__name__,
                      (credentials or NONE).redact(str(e))[:300])
            raise BackupRetryable(
                UNEXPECTED,
                f"etcd backup failed: {type(e).__name__}: {(credentials or NONE).redact(str(e))[:300]}",
            ) from e
        log.error("etcd backup failed (%s): %s", reason, (credentials or NONE).redact(str(e)))
        raise
    finally:
        metrics.DURATION.labels(stage="total").observe(time.monotonic() - started)
    metrics.LAST_SUCCESS.set(record.taken_at.timestamp())
    metrics.LAST_SIZE.set(record.size)
    metrics.LAST_REVISION.set(record.revision)
    log.info("%s", record.event_message())
    return record


def _take(
    config: BackupConfig,
    credentials: Credentials,
    cluster: str,
    node: str,
    clock: Clock,
    store: BackupStore | None,
    run: Callable[..., runner.Result],
) -> BackupRecord:
    validate.node_name(cluster, "cluster")
    validate.node_name(node, "node")
    if config.store is not None:
        config.store.validated()
    config.etcd.validated()
    work = Path(validate.safe_path(config.work_dir, "workDir"))
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    work.chmod(0o700)  # a snapshot holds every Secret of the cluster
    taken_at = clock.now()
    stamp = taken_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    local = work / f"etcd-{stamp}-{node}.db"
    fetched = work / f".verify-{stamp}-{node}.db"
    try:
        with _stage("snapshot"):
            snap = etcd.save_snapshot(config.etcd, local, run)
        with _stage("verify"):
            status, digest = etcd.verify(config.etcd, local, run)

        def kept_locally(message: str) -> BackupRecord:
            kept = _keep_locally(local, work, config.keep_local_snapshots)
            return BackupRecord(location=f"file://{kept}", size=digest.size, sha256=digest.sha256,
                                revision=status.revision, verified=True, taken_at=taken_at, node=node,
                                total_keys=status.total_keys, etcd_endpoint=snap.endpoint, uploaded=False,
                                message=f"{message}; the verified snapshot stays on {node} at {kept}")

        if config.store is None:
            return kept_locally(f"no backup store is configured ({NO_STORE_HINT})")
        try:
            location, key, pruned = _store(config, config.store, store, credentials, local, fetched, work, cluster,
                                           node, status.revision, taken_at, digest.size, digest.sha256)
        except (BackupFailed, BackupRetryable) as e:
            if config.policy != BEST_EFFORT:
                raise
            log.warning("etcd backup upload failed (%s), policy BestEffort: %s", e.reason, credentials.redact(str(e)))
            return kept_locally(f"the upload failed ({e.reason}: {credentials.redact(str(e))[:300]})")
        return BackupRecord(
            location=location,
            size=digest.size,
            sha256=digest.sha256,
            revision=status.revision,
            verified=True,
            taken_at=taken_at,
            node=node,
            key=key,
            total_keys=status.total_keys,
            etcd_endpoint=snap.endpoint,
            pruned=pruned,
        )
    finally:
        for path in (fetched, local.with_name(local.name + ".part")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if not config.keep_local:
            with contextlib.suppress(FileNotFoundError):
                local.unlink()


def _store(config: BackupConfig, sc: StoreConfig, store: BackupStore | None, credentials: Credentials, local: Path,
           fetched: Path, work: Path, cluster: str, node: str, revision: int, taken_at: datetime, size: int,
           sha256: str) -> tuple[str, str, tuple[str, ...]]:
    """Upload the verified snapshot, verify the upload, apply retention: (location, key, pruned)."""
    if store is None:
        store = open_store(sc, credentials)
    if config.verify_download:
        _need_space(work, size)
    key = object_key(sc.prefix, cluster, node, revision, taken_at)
    with _stage("upload"):
        location = _upload(store, local, key, sha256)
    with _stage("verify_upload"):
        _verify_upload(store, key, location, size, sha256, fetched, config.verify_download)
    pruned: tuple[str, ...] = ()
    if sc.retention > 0:
        with _stage("retention"):
            pruned = _retain(store, sc, cluster, key)
    return location, key, pruned


def _keep_locally(local: Path, work: Path, keep: int) -> Path:
    """Move the snapshot into <work>/snapshots (0700) and keep only the newest `keep` there: a node
    without a store keeps a few snapshots, never an ever-growing pile."""
    kept_dir = work / _LOCAL_DIR
    kept_dir.mkdir(mode=0o700, exist_ok=True)
    kept_dir.chmod(0o700)
    kept = kept_dir / local.name
    local.replace(kept)
    fsutil.fsync_dir(kept_dir)
    old = sorted(p for p in kept_dir.glob("etcd-*.db") if p.is_file())
    for p in old[: max(0, len(old) - keep)]:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return kept


def _need_space(directory: Path, size: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < size + 64 * 1024 * 1024:
        raise BackupFailed(
            INSUFFICIENT_DISK_SPACE,
            f"{directory} has {free} bytes free; verifying the upload needs {size} more (set verifyDownload "
            "false or free space)",
        )


# Failures after which the store cannot hold any part of the object: nothing to clean up.
_NOTHING_WRITTEN = frozenset(
    {STORE_BUCKET_NOT_FOUND, STORE_CREDENTIALS_REJECTED, STORE_ACCESS_DENIED, STORE_UNREACHABLE, CREDENTIALS_INVALID}
)


def _upload(store: BackupStore, local: Path, key: str, sha256: str) -> str:
    try:
        return store.put(local, key, sha256=sha256)
    except (BackupFailed, BackupRetryable) as e:
        if e.reason not in _NOTHING_WRITTEN:
            _discard(store, key)
        if e.reason == UPLOAD_INTERRUPTED:
            raise BackupRetryable(UPLOAD_INTERRUPTED, f"{e}; no partial object was kept") from e
        raise


def _verify_upload(
    store: BackupStore, key: str, location: str, size: int, sha256: str, fetched: Path, download: bool
) -> None:
    info = store.stat(key)
    problem = None
    if info is None:
        problem = "is missing right after the upload"
    elif info.size != size:
        problem = f"has {info.size} bytes, the snapshot {size}"
    elif info.sha256 is not None and info.sha256 != sha256:
        problem = f"records sha256 {info.sha256}, the snapshot has {sha256}"
    if problem is None and download:
        store.get(key, fetched)
        got = sha256_file(fetched)
        if got != sha256:
            problem = f"downloads with sha256 {got}, the snapshot has {sha256}"
    if problem is not None:
        _discard(store, key)
        raise BackupFailed(CHECKSUM_MISMATCH, f"uploaded object {location} {problem}; it was deleted")


def _discard(store: BackupStore, key: str) -> None:
    """Remove what a failed upload may have left, so it is never taken for a backup."""
    try:
        store.delete(key)
    except (BackupFailed, BackupRetryable) as e:
        log.warning("could not remove the failed upload %s: %s", key, e)


def _retain(store: BackupStore, config: StoreConfig, cluster: str, keep_key: str) -> tuple[str, ...]:
    prefix = cluster_prefix(config.prefix, cluster)
    try:
        doomed = to_prune(store.list(prefix), prefix, config.retention, keep_key)
        for key in doomed:
            store.delete(key)
    except (BackupFailed, BackupRetryable) as e:
        # The new backup is good; an old one left behind is a warning, not a failed backup.
        log.warning("retention of %s failed: %s", prefix, e)
        return ()
    if doomed:
        log.info("retention: removed %d old backup(s) of %s", len(doomed), cluster)
    return tuple(doomed)


def load_credentials(store: StoreConfig | None, api: Client | None = None) -> Credentials:
    """The credentials `store` names: its Secret (read now, through `api`), its file, or none
    (then boto3 / google-auth use their default chains: instance role, environment, metadata server)."""
    if store is None:
        return NONE
    if store.credentials_secret is not None:
        if api is None:
            raise ValidationError("store.credentialsSecret", "a Kubernetes client is needed to read the Secret")
        return creds_mod.from_secret(api, store.credentials_secret.namespace, store.credentials_secret.name)
    if store.credentials_file:
        return creds_mod.from_file(store.credentials_file)
    return NONE


def now_clock(when: datetime | None = None) -> Clock:
    """A Clock for one-off callers that have none (the CLI): the system clock, or a fixed time."""
    from kupd.clock import ManualClock, SystemClock

    return ManualClock(when) if when is not None else SystemClock()
