"""Prometheus metrics of the backup subsystem (registered on prometheus_client's default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LAST_SUCCESS = Gauge(
    "kupd_backup_last_success_timestamp_seconds",
    "Unix time at which the last etcd backup was uploaded and verified.",
)
# Beside the failures counter: a labelled counter's first failure creates its series at 1, which
# increase() cannot see; "the last attempt failed" is this gauge above the last success.
LAST_FAILURE = Gauge(
    "kupd_backup_last_failure_timestamp_seconds",
    "Unix time at which the last etcd backup failed (0: none since the daemon started).",
)
LAST_SIZE = Gauge("kupd_backup_last_size_bytes", "Size of the last successful etcd snapshot.")
LAST_REVISION = Gauge("kupd_backup_last_revision", "etcd revision of the last successful snapshot.")
DURATION = Histogram(
    "kupd_backup_duration_seconds",
    "Time spent per backup stage (snapshot, verify, upload, verify_upload, retention) and in total.",
    ["stage"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600),
)
FAILURES = Counter(
    "kupd_backup_failures",
    "Failed etcd backups by reason (EtcdUnreachable, StoreBucketNotFound, ChecksumMismatch, ...).",
    ["reason"],
)
ATTEMPTS = Counter("kupd_backup_attempts", "etcd backups started.")
