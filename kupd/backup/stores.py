"""Where backups go: one small interface, three implementations.

- `S3Store`: AWS S3 and S3-compatible stores (MinIO, Ceph RGW, ...) through boto3; a custom endpoint
  switches to path-style addressing; large files go up in parts (s3transfer), and a failed multipart
  upload is aborted so no partial object is left behind.
- `GCSStore`: Google Cloud Storage through google-cloud-storage; resumable uploads checked with crc32c;
  a custom endpoint (an emulator) with anonymous credentials when no key is given.
- `FileStore`: a local or NFS directory (the demo, the cluster tests, air-gapped sites).

Every object carries its sha256 (S3/GCS object metadata, a `.sha256` file beside it in a directory),
so `stat` can check an upload without downloading it. Library errors are mapped here, once, to
`BackupFailed` / `BackupRetryable` with a reason; credential values never appear in messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from kupd import validate
from kupd.api import models
from kupd.backup import (
    CHECKSUM_MISMATCH,
    CREDENTIALS_INVALID,
    STORE_ACCESS_DENIED,
    STORE_BUCKET_NOT_FOUND,
    STORE_CREDENTIALS_REJECTED,
    STORE_ERROR,
    STORE_UNREACHABLE,
    UPLOAD_INTERRUPTED,
    BackupFailed,
    BackupRetryable,
)
from kupd.backup.credentials import NONE, Credentials
from kupd.errors import ValidationError

log = logging.getLogger(__name__)

StoreType = Literal["s3", "gcs", "file"]
SHA256_META = "sha256"
MiB = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None
    """The sha256 recorded with the object at upload, if any."""


@dataclass(frozen=True)
class SecretRef:
    namespace: str
    name: str


@dataclass(frozen=True)
class StoreConfig:
    """Where to put backups (the CR's `spec.backup.store`)."""

    type: StoreType
    bucket: str = ""
    """S3 or GCS bucket."""
    prefix: str = ""
    """Object name prefix, e.g. `kupd/`; names continue with `<cluster>/etcd-<time>-<node>-r<rev>.db`."""
    endpoint: str = ""
    """Custom endpoint URL (MinIO, an emulator); empty: the provider's own."""
    region: str = ""
    """S3 region; empty: boto3's default (us-east-1 for custom endpoints)."""
    path: str = ""
    """Directory for type `file`."""
    credentials_secret: SecretRef | None = None
    credentials_file: str = ""
    retention: int = 0
    """Keep the newest N backups of this cluster; 0 keeps all."""
    multipart_threshold: int = 64 * MiB
    multipart_chunk_size: int = 64 * MiB
    max_attempts: int = 3
    """Attempts per request (S3) including the first; GCS retries within `retry_deadline`."""
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    retry_deadline: float = 120.0

    def validated(self, field_path: str = "spec.backup.store") -> StoreConfig:
        if self.type not in ("s3", "gcs", "file"):
            raise ValidationError(f"{field_path}.type", f"{self.type!r} is not one of s3, gcs, file")
        if self.type == "file":
            if not self.path:
                raise ValidationError(f"{field_path}.path", "is required for type file")
            validate.safe_path(self.path, f"{field_path}.path")
        else:
            if not self.bucket:
                raise ValidationError(f"{field_path}.bucket", f"is required for type {self.type}")
            validate.bucket_name(self.bucket, f"{field_path}.bucket")
        if self.prefix:
            validate.object_prefix(self.prefix, f"{field_path}.prefix")
        if self.endpoint:
            validate.safe_url(self.endpoint, f"{field_path}.endpoint")
        if self.region and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", self.region):
            raise ValidationError(f"{field_path}.region", f"{self.region[:80]!r} is not a region name")
        if self.credentials_secret is not None:
            validate.node_name(self.credentials_secret.namespace, f"{field_path}.credentialsSecret.namespace")
            validate.node_name(self.credentials_secret.name, f"{field_path}.credentialsSecret.name")
        if self.credentials_file:
            validate.safe_path(self.credentials_file, f"{field_path}.credentialsFile")
        if not 0 <= self.retention <= 100000:
            raise ValidationError(f"{field_path}.retention", f"{self.retention} is not within 0..100000")
        if not 5 * MiB <= self.multipart_chunk_size <= 5 * 1024 * MiB:
            raise ValidationError(f"{field_path}.multipartChunkSize", "must be between 5 MiB and 5 GiB")
        return self

    @classmethod
    def from_model(cls, store: models.BackupStore, *, credentials_file: str = "",
                   field_path: str = "spec.backup.store") -> StoreConfig:
        """From the CR's `spec.backup.store` as kupd.api.models parsed it (plus, in `kupd backup`'s
        config, a credentials file)."""
        secret = store.credentials_secret
        return cls(
            type=store.type,
            bucket=store.bucket or "",
            prefix=store.prefix or "",
            endpoint=store.endpoint or "",
            region=store.region or "",
            path=store.path or "",
            credentials_secret=SecretRef(secret.namespace, secret.name) if secret is not None else None,
            credentials_file=credentials_file,
            retention=store.retention,
        ).validated(field_path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def check_key(key: str) -> str:
    if not key or key.startswith("/") or len(key) > 1024 or not re.fullmatch(r"[A-Za-z0-9._/+-]+", key):
        raise ValueError(f"object key {key[:80]!r} is not a plain relative name")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"object key {key[:80]!r} has an empty, '.' or '..' part")
    return key


class BackupStore(ABC):
    """An object store holding backups under keys like `prefix/cluster/etcd-....db`."""

    @abstractmethod
    def location(self, key: str) -> str:
        """A URL naming the object: s3://bucket/key, gs://bucket/key, file:///dir/key."""

    @abstractmethod
    def put(self, file: Path, key: str, *, sha256: str) -> str:
        """Upload `file` as `key` with its sha256 recorded; return its location. Leaves no partial object."""

    @abstractmethod
    def get(self, key: str, dest: Path) -> None:
        """Download `key` into `dest`."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and recorded sha256 of `key`, or None when it does not exist."""

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Objects whose key starts with `prefix`, sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; no error when it is already gone."""


# --------------------------------------------------------------------------- directory


class FileStore(BackupStore):
    """Backups as files in a directory (local disk or an NFS mount), with `<file>.sha256` beside each."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(validate.safe_path(str(root), "store.path"))

    def _path(self, key: str) -> Path:
        return self.root / PurePosixPath(check_key(key))

    def location(self, key: str) -> str:
        return f"file://{self._path(key)}"

    def put(self, file: Path, key: str, *, sha256: str) -> str:
        target = self._path(key)
        # Like a bucket, the directory must exist: creating it would write to the local disk
        # when the NFS share that belongs there is not mounted.
        if not self.root.is_dir():
            raise BackupFailed(STORE_BUCKET_NOT_FOUND, f"backup directory {self.root} does not exist")
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Copy to a hidden temporary name and rename: a cut copy never looks like a backup.
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out, open(file, "rb") as src:
                    shutil.copyfileobj(src, out, 4 * MiB)
                    out.flush()
                    os.fsync(out.fileno())
                _write_text(target.with_name(target.name + ".sha256"), f"{sha256}  {target.name}\n")
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            _fsync_dir(target.parent)
        except OSError as e:
            raise _file_error(e, f"write {self.location(key)}") from e
        return self.location(key)

    def get(self, key: str, dest: Path) -> None:
        try:
            shutil.copyfile(self._path(key), dest)
        except OSError as e:
            raise _file_error(e, f"read {self.location(key)}") from e

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _file_error(e, f"stat {self.location(key)}") from e
        return ObjectInfo(key, size, _read_sha256(path))

    def list(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        if not self.root.is_dir():
            raise BackupFailed(STORE_BUCKET_NOT_FOUND, f"backup directory {self.root} does not exist")
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") or name.endswith(".sha256"):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out.append(ObjectInfo(key, path.stat().st_size, _read_sha256(path)))
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        for p in (path, path.with_name(path.name + ".sha256")):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise _file_error(e, f"delete {self.location(key)}") from e


def _write_text(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_sha256(path: Path) -> str | None:
    try:
        text = path.with_name(path.name + ".sha256").read_text()
    except OSError:
        return None
    value = text.split(maxsplit=1)[0] if text.strip() else ""
    return value if re.fullmatch(r"[0-9a-f]{64}", value) else None


def _file_error(e: OSError, what: str) -> BackupFailed | BackupRetryable:
    if isinstance(e, FileNotFoundError):
        return BackupFailed(STORE_BUCKET_NOT_FOUND, f"cannot {what}: {e.strerror}")
    if isinstance(e, PermissionError):
        return BackupFailed(STORE_ACCESS_DENIED, f"cannot {what}: {e.strerror}")
    return BackupRetryable(STORE_ERROR, f"cannot {what}: {e.strerror or e}")


# --------------------------------------------------------------------------- S3


_S3_NOT_FOUND = {"NoSuchBucket"}
_S3_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
    "TokenRefreshRequired",
    "InvalidSecurity",
}
_S3_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "Forbidden", "403"}


class S3Store(BackupStore):
    """AWS S3 or an S3-compatible store."""

    def __init__(self, config: StoreConfig, credentials: Credentials = NONE) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = config.bucket
        self.endpoint = config.endpoint
        self._credentials = credentials
        keys = credentials.s3_keys()
        session = boto3.session.Session(
            aws_access_key_id=keys[0] if keys else None,
            aws_secret_access_key=keys[1] if keys else None,
            aws_session_token=keys[2] if keys else None,
            region_name=config.region or None,
        )
        self._client: Any = session.client(
            "s3",
            endpoint_url=config.endpoint or None,
            config=Config(
                connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout,
                retries={"max_attempts": config.max_attempts, "mode": "standard"},
                # MinIO and most S3-compatible stores expect bucket names in the path.
                s3={"addressing_style": "path"} if config.endpoint else {},
                # boto3's newer default (CRC32 trailers on every upload) is refused by several
                # S3-compatible stores; for those, checksum only where the API requires it. The
                # sha256 check after the upload covers integrity either way.
                request_checksum_calculation="when_required" if config.endpoint else "when_supported",
                response_checksum_validation="when_required" if config.endpoint else "when_supported",
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=config.multipart_threshold,
            multipart_chunksize=config.multipart_chunk_size,
            max_concurrency=4,
            use_threads=True,
        )

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{check_key(key)}"

    def put(self, file: Path, key: str, *, sha256: str) -> str:
        from boto3.s3.transfer import create_transfer_manager

        check_key(key)
        manager = create_transfer_manager(self._client, self._transfer)
        try:
            # The transfer manager raises the client's own errors (boto3's upload_file would wrap
            # them into S3UploadFailedError); a failed multipart upload is aborted by it.
            future = manager.upload(
                str(file),
                self.bucket,
                key,
                extra_args={"Metadata": {SHA256_META: sha256}, "ContentType": "application/octet-stream"},
            )
            future.result()
        except Exception as e:
            raise self._error(e, f"upload to {self.location(key)}", uploading=True) from e
        finally:
            manager.shutdown()
        return self.location(key)

    def get(self, key: str, dest: Path) -> None:
        try:
            self._client.download_file(self.bucket, check_key(key), str(dest), Config=self._transfer)
        except Exception as e:
            raise self._error(e, f"download {self.location(key)}") from e

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=check_key(key))
        except Exception as e:
            if _s3_code(e) in ("404", "NoSuchKey", "NotFound"):
                # A HEAD on a missing bucket is a 404 too: tell the two apart.
                self._check_bucket()
                return None
            raise self._error(e, f"stat {self.location(key)}") from e
        meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        return ObjectInfo(key, int(head["ContentLength"]), meta.get(SHA256_META))

    def _check_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as e:
            if _s3_code(e) in ("404", "NoSuchBucket", "NotFound"):
                raise BackupFailed(STORE_BUCKET_NOT_FOUND, f"bucket s3://{self.bucket} does not exist") from e
            raise self._error(e, f"check bucket s3://{self.bucket}") from e

    def list(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    out.append(ObjectInfo(item["Key"], int(item["Size"]), None))
        except Exception as e:
            raise self._error(e, f"list s3://{self.bucket}/{prefix}") from e
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=check_key(key))
        except Exception as e:
            if _s3_code(e) in ("404", "NoSuchKey"):
                return
            raise self._error(e, f"delete {self.location(key)}") from e

    def _error(self, e: Exception, what: str, uploading: bool = False) -> BackupFailed | BackupRetryable:
        from botocore import exceptions as bx

        where = f" at {self.endpoint}" if self.endpoint else ""
        code = _s3_code(e)
        if code is not None:
            message = self._credentials.redact(_s3_message(e))
            if code in _S3_NOT_FOUND:
                return BackupFailed(
                    STORE_BUCKET_NOT_FOUND, f"cannot {what}: bucket {self.bucket} does not exist"
                )
            if code in _S3_BAD_CREDENTIALS:
                return BackupFailed(
                    STORE_CREDENTIALS_REJECTED,
                    f"cannot {what}: the store rejected the credentials from {self._credentials.source} "
                    f"({code}: {message})",
                )
            if code in _S3_DENIED:
                return BackupFailed(
                    STORE_ACCESS_DENIED,
                    f"cannot {what}: access denied for the credentials from {self._credentials.source} "
                    f"({code})",
                )
            if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"):
                return BackupRetryable(
                    CHECKSUM_MISMATCH, f"cannot {what}: the store saw corrupted data ({code})"
                )
            if (
                (code.isdigit()
                and int(code) >= 500)
                or code in ("SlowDown", "ServiceUnavailable", "InternalError")
            ):
                return BackupRetryable(STORE_UNREACHABLE, f"cannot {what}: store error {code}: {message}")
            return BackupFailed(STORE_ERROR, f"cannot {what}: {code}: {message}")
        if isinstance(e, bx.NoCredentialsError | bx.PartialCredentialsError):
            return BackupFailed(CREDENTIALS_INVALID, f"cannot {what}: no S3 credentials configured or found")
        if isinstance(e, bx.EndpointConnectionError | bx.ConnectTimeoutError):
            return BackupRetryable(STORE_UNREACHABLE, f"cannot {what}: the store{where} is unreachable")
        # HTTPClientError covers ConnectionClosedError, ReadTimeoutError, ResponseStreamingError.
        if isinstance(e, bx.HTTPClientError | bx.ConnectionError | bx.IncompleteReadError | ConnectionError):
            if uploading:
                return BackupRetryable(
                    UPLOAD_INTERRUPTED,
                    f"{what} was cut off: the connection to the store{where} broke ({type(e).__name__})",
                )
            return BackupRetryable(STORE_UNREACHABLE, f"cannot {what}: connection to the store{where} broke")
        if isinstance(e, BackupFailed | BackupRetryable):
            return e
        return BackupRetryable(
            STORE_ERROR, f"cannot {what}: {type(e).__name__}: {self._credentials.redact(str(e))}"
        )


def _s3_code(e: BaseException) -> str | None:
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        code = (response.get("Error") or {}).get("Code")
        return str(code) if code is not None else None
    return None


def _s3_message(e: BaseException) -> str:
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Message") or "")[:300]
    return ""


# --------------------------------------------------------------------------- GCS


class GCSStore(BackupStore):
    """Google Cloud Storage, or an emulator at `endpoint`."""

    SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)

    def __init__(self, config: StoreConfig, credentials: Credentials = NONE) -> None:
        from google.cloud import storage

        self.bucket_name = config.bucket
        self.endpoint = config.endpoint
        self._credentials = credentials
        self._config = config
        info = credentials.service_account_info()
        kwargs: dict[str, Any] = {}
        if config.endpoint:
            kwargs["client_options"] = {"api_endpoint": config.endpoint}
        if info is not None:
            from google.oauth2 import service_account

            try:
                creds = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                    info, scopes=list(self.SCOPES)
                )
            except (ValueError, KeyError) as e:
                raise BackupFailed(
                    CREDENTIALS_INVALID,
                    f"serviceAccountJson in {credentials.source} is not usable: {type(e).__name__}",
                ) from None
            kwargs["credentials"] = creds
            kwargs["project"] = info.get("project_id") or "kupd"
        elif config.endpoint:
            from google.auth.credentials import AnonymousCredentials

            kwargs["credentials"] = AnonymousCredentials()  # type: ignore[no-untyped-call]
            kwargs["project"] = "kupd"
        try:
            self._client: Any = storage.Client(**kwargs)
        except Exception as e:
            raise self._error(e, "connect to Google Cloud Storage") from e
        self._bucket: Any = self._client.bucket(self.bucket_name)

    def _retry(self) -> Any:
        from google.cloud.storage.retry import DEFAULT_RETRY

        return DEFAULT_RETRY.with_deadline(self._config.retry_deadline)

    def _timeout(self) -> tuple[float, float]:
        return (self._config.connect_timeout, self._config.read_timeout)

    def location(self, key: str) -> str:
        return f"gs://{self.bucket_name}/{check_key(key)}"

    def put(self, file: Path, key: str, *, sha256: str) -> str:
        blob = self._bucket.blob(
            check_key(key), chunk_size=max(self._config.multipart_chunk_size // (256 * 1024), 1) * 256 * 1024
        )
        blob.metadata = {SHA256_META: sha256}
        try:
            blob.upload_from_filename(
                str(file),
                content_type="application/octet-stream",
                checksum="crc32c",
                timeout=self._timeout(),
                retry=self._retry(),
            )
        except Exception as e:
            raise self._error(e, f"upload to {self.location(key)}", uploading=True) from e
        return self.location(key)

    def get(self, key: str, dest: Path) -> None:
        try:
            self._bucket.blob(check_key(key)).download_to_filename(
                str(dest), checksum=None, timeout=self._timeout(), retry=self._retry()
            )
        except Exception as e:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            raise self._error(e, f"download {self.location(key)}") from e

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            blob = self._bucket.get_blob(check_key(key), timeout=self._timeout(), retry=self._retry())
            if blob is None:
                if not self._bucket.exists(timeout=self._timeout(), retry=self._retry()):
                    raise BackupFailed(
                        STORE_BUCKET_NOT_FOUND, f"bucket gs://{self.bucket_name} does not exist"
                    )
                return None
        except BackupFailed:
            raise
        except Exception as e:
            raise self._error(e, f"stat {self.location(key)}") from e
        meta = blob.metadata or {}
        return ObjectInfo(key, int(blob.size or 0), meta.get(SHA256_META))

    def list(self, prefix: str) -> list[ObjectInfo]:
        try:
            blobs = self._client.list_blobs(
                self.bucket_name, prefix=prefix, timeout=self._timeout(), retry=self._retry()
            )
            out = [ObjectInfo(b.name, int(b.size or 0), (b.metadata or {}).get(SHA256_META)) for b in blobs]
        except Exception as e:
            raise self._error(e, f"list gs://{self.bucket_name}/{prefix}") from e
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        from google.api_core import exceptions as gx

        try:
            self._bucket.blob(check_key(key)).delete(timeout=self._timeout(), retry=self._retry())
        except gx.NotFound:
            return
        except Exception as e:
            raise self._error(e, f"delete {self.location(key)}") from e

    def _error(self, e: Exception, what: str, uploading: bool = False) -> BackupFailed | BackupRetryable:
        import requests
        from google.api_core import exceptions as gx
        from google.auth import exceptions as ax

        where = f" at {self.endpoint}" if self.endpoint else ""
        source = self._credentials.source
        if isinstance(e, BackupFailed | BackupRetryable):
            return e
        if isinstance(e, gx.RetryError) and isinstance(e.cause, Exception):
            # Retries ran out: judge by the last failure.
            return self._error(e.cause, what, uploading)
        if isinstance(e, gx.NotFound):
            return BackupFailed(
                STORE_BUCKET_NOT_FOUND, f"cannot {what}: bucket {self.bucket_name} does not exist"
            )
        if isinstance(e, gx.Unauthorized | ax.RefreshError):
            return BackupFailed(
                STORE_CREDENTIALS_REJECTED,
                f"cannot {what}: Google Cloud Storage rejected the credentials from {source} "
                f"({type(e).__name__}: {self._credentials.redact(str(e))[:300]})",
            )
        if isinstance(e, ax.DefaultCredentialsError):
            return BackupFailed(CREDENTIALS_INVALID, f"cannot {what}: no GCS credentials configured or found")
        if isinstance(e, gx.Forbidden):
            return BackupFailed(
                STORE_ACCESS_DENIED, f"cannot {what}: access denied for the credentials from {source}"
            )
        if _is_data_corruption(e):
            return BackupRetryable(
                CHECKSUM_MISMATCH, f"cannot {what}: crc32c of the uploaded data does not match"
            )
        if isinstance(e, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError):
            refused = "refused" in str(e).lower() or "NewConnectionError" in repr(e)
            if uploading and not refused:
                return BackupRetryable(
                    UPLOAD_INTERRUPTED,
                    f"{what} was cut off: the connection to the store{where} broke ({type(e).__name__})",
                )
            return BackupRetryable(STORE_UNREACHABLE, f"cannot {what}: the store{where} is unreachable")
        if isinstance(e, gx.ServerError | gx.TooManyRequests):
            return BackupRetryable(STORE_UNREACHABLE, f"cannot {what}: store error {e.code}")
        if isinstance(e, gx.GoogleAPICallError):
            return BackupFailed(
                STORE_ERROR, f"cannot {what}: {e.code}: {self._credentials.redact(str(e))[:300]}"
            )
        return BackupRetryable(
            STORE_ERROR, f"cannot {what}: {type(e).__name__}: {self._credentials.redact(str(e))[:300]}"
        )


def _is_data_corruption(e: BaseException) -> bool:
    try:
        from google.resumable_media import DataCorruption
    except ImportError:  # pragma: no cover - depends on the google-cloud-storage version
        return False
    return isinstance(e, DataCorruption)


# --------------------------------------------------------------------------- factory


def open_store(config: StoreConfig, credentials: Credentials = NONE) -> BackupStore:
    config.validated()
    if config.type == "s3":
        return S3Store(config, credentials)
    if config.type == "gcs":
        return GCSStore(config, credentials)
    return FileStore(config.path)
