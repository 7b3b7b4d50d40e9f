"""etcd backups: snapshot the node's local etcd, verify it, upload it off-host, keep the newest N.

The layers, from the bottom:
- `etcd`        — etcdctl/etcdutl through the one runner: endpoint status, snapshot save, snapshot status;
                  pure parsers of their JSON output.
- `stores`      — the `BackupStore` interface (put/get/stat/list/delete) and its S3, GCS and
                  directory implementations.
- `credentials` — store credentials from a Kubernetes Secret or a 0600 file; never printed.
- `run`         — `take_backup()`: snapshot → verify → sha256 → upload → verify upload → retention.
- `metrics`     — `kupd_backup_*` Prometheus metrics.

Every failure is raised as `BackupFailed` (permanent) or `BackupRetryable`, each carrying a CamelCase
`reason` fit for a Kubernetes Condition or Event reason and a message that says what to fix.
"""

from __future__ import annotations

from kupd.errors import PermanentError, RetryableError, ValidationError

# Reasons (CamelCase, as Kubernetes Condition reasons are). Bounded: they label a metric.
ETCDCTL_MISSING = "EtcdctlMissing"
ETCD_CERTIFICATES_MISSING = "EtcdCertificatesMissing"
ETCD_UNREACHABLE = "EtcdUnreachable"
ETCD_TLS_REJECTED = "EtcdTLSRejected"
ETCD_SNAPSHOT_FAILED = "EtcdSnapshotFailed"
SNAPSHOT_INVALID = "SnapshotInvalid"
INSUFFICIENT_DISK_SPACE = "InsufficientDiskSpace"
CREDENTIALS_UNAVAILABLE = "CredentialsUnavailable"
CREDENTIALS_INVALID = "CredentialsInvalid"
STORE_BUCKET_NOT_FOUND = "StoreBucketNotFound"
STORE_CREDENTIALS_REJECTED = "StoreCredentialsRejected"
STORE_ACCESS_DENIED = "StoreAccessDenied"
STORE_UNREACHABLE = "StoreUnreachable"
STORE_ERROR = "StoreError"
UPLOAD_INTERRUPTED = "UploadInterrupted"
CHECKSUM_MISMATCH = "ChecksumMismatch"
INVALID_CONFIG = "InvalidConfig"
UNEXPECTED = "Unexpected"


class BackupFailed(PermanentError):
    """The backup failed and trying again as it is cannot help (wrong certificates, missing bucket...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BackupRetryable(RetryableError):
    """The backup failed for a reason that may pass (etcd restarting, store unreachable, link cut)."""

    def __init__(self, reason: str, message: str, delay: float = 30.0) -> None:
        super().__init__(message, delay)
        self.reason = reason


def reason_of(error: BaseException) -> str:
    """The CamelCase reason of any error take_backup can raise."""
    if isinstance(error, BackupFailed | BackupRetryable):
        return error.reason
    if isinstance(error, ValidationError):
        return INVALID_CONFIG
    return UNEXPECTED
