"""Backup stores against real servers on loopback: an S3 API (moto server, signatures checked) and a
GCS emulator, plus a directory. Round trips (multipart included), whole backups from the real etcd
whose downloaded objects match their sha256, retention, and the failures: bucket missing,
credentials wrong, upload cut off midway, object altered after upload."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kupd.api import models
from kupd.backup import (
    CHECKSUM_MISMATCH,
    CREDENTIALS_INVALID,
    STORE_BUCKET_NOT_FOUND,
    STORE_CREDENTIALS_REJECTED,
    STORE_UNREACHABLE,
    UPLOAD_INTERRUPTED,
    BackupFailed,
    BackupRetryable,
    credentials,
)
from kupd.backup.credentials import Credentials
from kupd.backup.run import BackupConfig, take_backup, to_prune
from kupd.backup.stores import (
    BackupStore,
    FileStore,
    GCSStore,
    ObjectInfo,
    S3Store,
    StoreConfig,
    open_store,
    sha256_file,
)
from tests.host.backup_servers import (
    CutProxy,
    Etcd,
    GcsServer,
    S3Server,
    clock_at,
    etcd,  # noqa: F401 - fixture
    etcd_config,
    fast_store,
    free_port,
    gcs_server,  # noqa: F401 - fixture
    pki,  # noqa: F401 - fixture
    s3_credentials,
    s3_server,  # noqa: F401 - fixture
)

MiB = 1024 * 1024


def s3_store(server: S3Server, **overrides: object) -> tuple[StoreConfig, Credentials]:
    values: dict[str, object] = {
        "type": "s3",
        "bucket": server.bucket,
        "endpoint": server.endpoint,
        "region": server.region,
        "prefix": "kupd/",
        "multipart_threshold": 5 * MiB,
        "multipart_chunk_size": 5 * MiB,
    }
    values.update(overrides)
    return fast_store(**values), s3_credentials(server)


def gcs_store(server: GcsServer, **overrides: object) -> tuple[StoreConfig, Credentials]:
    values: dict[str, object] = {
        "type": "gcs",
        "bucket": server.bucket,
        "endpoint": server.endpoint,
        "prefix": "kupd/",
    }
    values.update(overrides)
    return fast_store(**values), credentials.NONE


@pytest.fixture(params=["s3", "gcs", "file"])
def store_setup(
    request: pytest.FixtureRequest,
    s3_server: S3Server,  # noqa: F811
    gcs_server: GcsServer,  # noqa: F811
    tmp_path: Path,
) -> tuple[StoreConfig, Credentials]:
    if request.param == "s3":
        return s3_store(s3_server)
    if request.param == "gcs":
        return gcs_store(gcs_server)
    (tmp_path / "backups").mkdir()
    return fast_store(type="file", path=str(tmp_path / "backups"), prefix="kupd/"), credentials.NONE


def random_file(path: Path, size: int) -> str:
    data = hashlib.sha256(path.name.encode()).digest() * (size // 32 + 1)
    path.write_bytes(data[:size])
    return hashlib.sha256(data[:size]).hexdigest()


# --------------------------------------------------------------------------- round trips


def test_put_stat_list_get_delete(store_setup: tuple[StoreConfig, Credentials], tmp_path: Path) -> None:
    config, creds = store_setup
    store = open_store(config, creds)
    src = tmp_path / "big.db"
    sha = random_file(src, 12 * MiB + 123)  # above the 5 MiB part size: a multipart upload on S3
    key = f"roundtrip-{config.type}/c1/etcd-20261127T040000Z-cp-1-r5.db"

    location = store.put(src, key, sha256=sha)

    assert location.endswith(key) and location.split(":")[0] in ("s3", "gs", "file")
    assert store.stat(key) == ObjectInfo(key, src.stat().st_size, sha)
    assert [o.key for o in store.list(f"roundtrip-{config.type}/")] == [key]
    dest = tmp_path / "back.db"
    store.get(key, dest)
    assert sha256_file(dest) == sha
    store.delete(key)
    store.delete(key)  # gone already: not an error
    assert store.stat(key) is None
    assert store.list(f"roundtrip-{config.type}/") == []


def test_backup_to_each_store_downloads_with_the_same_sha256(
    store_setup: tuple[StoreConfig, Credentials],
    etcd: Etcd,  # noqa: F811
    tmp_path: Path,
) -> None:
    config, creds = store_setup
    backup = BackupConfig(store=config, etcd=etcd_config(etcd), work_dir=str(tmp_path / "work"))
    record = take_backup(backup, creds, f"e2e-{config.type}", "cp-1", clock_at())

    store = open_store(config, creds)
    dest = tmp_path / "downloaded.db"
    store.get(record.key, dest)
    assert dest.stat().st_size == record.size
    assert sha256_file(dest) == record.sha256
    assert record.location == store.location(record.key)
    assert record.key.startswith(f"kupd/e2e-{config.type}/etcd-20261127T040000Z-cp-1-r")
    assert store.stat(record.key).sha256 == record.sha256  # type: ignore[union-attr]


def test_retention_keeps_the_newest_n_and_nothing_else_is_touched(
    s3_server: S3Server,  # noqa: F811
    etcd: Etcd,  # noqa: F811
    tmp_path: Path,
) -> None:
    config, creds = s3_store(s3_server, retention=2)
    store = open_store(config, creds)
    other = tmp_path / "notes.txt"
    sha = random_file(other, 100)
    store.put(other, "kupd/ret/notes.txt", sha256=sha)  # not a backup: retention leaves it
    backup = BackupConfig(store=config, etcd=etcd_config(etcd), work_dir=str(tmp_path / "work"))
    keys = []
    for hour in (1, 2, 3, 4):
        record = take_backup(backup, creds, "ret", "cp-1", clock_at(hour=hour))
        keys.append(record.key)
    assert record.pruned == (keys[1],)
    listed = [o.key for o in store.list("kupd/ret/")]
    assert listed == sorted([*keys[2:], "kupd/ret/notes.txt"])


def test_retention_choice_is_by_name_time() -> None:
    objs = [ObjectInfo(f"p/c/etcd-2026112{d}T000000Z-cp-1-r{10 - d}.db", 1, None) for d in (3, 1, 2)]
    objs.append(ObjectInfo("p/c/etcd-garbage.db", 1, None))
    objs.append(ObjectInfo("p/c/sub/etcd-20261120T000000Z-cp-1-r1.db", 1, None))
    assert to_prune(objs, "p/c/", 1, protect="") == [
        "p/c/etcd-20261121T000000Z-cp-1-r9.db",
        "p/c/etcd-20261122T000000Z-cp-1-r8.db",
    ]
    assert to_prune(objs, "p/c/", 0, protect="") == []


# --------------------------------------------------------------------------- failures


def test_bucket_missing(
    s3_server: S3Server,  # noqa: F811
    gcs_server: GcsServer,  # noqa: F811
    etcd: Etcd,  # noqa: F811
    tmp_path: Path,
) -> None:
    for config, creds in (
        s3_store(s3_server, bucket="no-such-bucket"),
        gcs_store(gcs_server, bucket="no-such-bucket"),
        (fast_store(type="file", path=str(tmp_path / "no-such-bucket")), credentials.NONE),
    ):
        backup = BackupConfig(store=config, etcd=etcd_config(etcd), work_dir=str(tmp_path / "work"))
        with pytest.raises(BackupFailed) as caught:
            take_backup(backup, creds, "c1", "cp-1", clock_at())
        assert caught.value.reason == STORE_BUCKET_NOT_FOUND, caught.value
        assert "no-such-bucket" in str(caught.value) and "does not exist" in str(caught.value)
    assert not (tmp_path / "no-such-bucket").exists()


def test_wrong_s3_credentials_are_rejected_and_never_shown(
    s3_server: S3Server,  # noqa: F811
    etcd: Etcd,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config, _ = s3_store(s3_server)
    wrong_secret = "WrongSecretValue0123456789abcdefWRONG"
    backup = BackupConfig(store=config, etcd=etcd_config(etcd), work_dir=str(tmp_path / "work"))
    caplog.set_level(logging.DEBUG)
    for creds in (
        s3_credentials(s3_server, secret=wrong_secret),
        credentials.from_mapping({"accessKeyId": "AKIANOSUCHKEY", "secretAccessKey": wrong_secret}, "Secret x/y"),
    ):
        with pytest.raises(BackupFailed) as caught:
            take_backup(backup, creds, "c1", "cp-1", clock_at())
        assert caught.value.reason == STORE_CREDENTIALS_REJECTED
        assert "rejected the credentials" in str(caught.value)
        assert wrong_secret not in str(caught.value)
        assert wrong_secret not in repr(creds) and wrong_secret not in str(creds)
    assert wrong_secret not in caplog.text


@pytest.fixture
def token_server() -> Iterator[str]:
    """An OAuth token endpoint that refuses every grant, as Google's does for a revoked key."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()


def test_wrong_gcs_service_account_is_rejected(
    gcs_server: GcsServer,  # noqa: F811
    etcd: Etcd,  # noqa: F811
    tmp_path: Path,
    token_server: str,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    account = {
        "type": "service_account",
        "project_id": "kupd-test",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "backup@kupd-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_server,
    }
    creds = credentials.from_secret_data({"serviceAccountJson": _b64(json.dumps(account))}, "Secret kupd-system/gcs")
    config, _ = gcs_store(gcs_server)
    backup = BackupConfig(store=config, etcd=etcd_config(etcd), work_dir=str(tmp_path / "work"))
    with pytest.raises(BackupFailed) as caught:
        take_backup(backup, creds, "c1", "cp-1", clock_at())
    assert caught.value.reason == STORE_CREDENTIALS_REJECTED
    assert "Secret kupd-system/gcs" in str(caught.value)
    assert "BEGIN PRIVATE KEY" not in str(caught.value)

    broken = credentials.from_secret_data({"serviceAccountJson": _b64("{not json")}, "Secret kupd-system/gcs")
    with pytest.raises(BackupFailed) as caught:
        take_backup(backup, broken, "c1", "cp-1", clock_at())
    assert caught.value.reason == CREDENTIALS_INVALID
    assert "not valid JSON" in str(caught.value)


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_upload_cut_off_midway_leaves_no_backup(
    kind: str,
    s3_server: S3Server,  # noqa: F811
    gcs_server: GcsServer,  # noqa: F811
    etcd: Etcd,  # noqa: F811
    tmp_path: Path,
) -> None:
    server = s3_server if kind == "s3" else gcs_server
    port = int(server.endpoint.rsplit(":", 1)[1])
    proxy = CutProxy(port, cut_after=512 * 1024)  # every connection dies after 512 KiB sent
    try:
        if kind == "s3":
            config, creds = s3_store(s3_server, endpoint=proxy.endpoint, prefix="cut/")
        else:
            config, creds = gcs_store(gcs_server, endpoint=proxy.endpoint, prefix="cut/")
        backup = BackupConfig(store=config, etcd=etcd_config(etcd), work_dir=str(tmp_path / "work"))
        with pytest.raises(BackupRetryable) as caught:
            take_backup(backup, creds, "c1", "cp-1", clock_at())
        assert proxy.cuts >= 1
        assert caught.value.reason == UPLOAD_INTERRUPTED, caught.value
        assert "cut off" in str(caught.value)
    finally:
        proxy.close()
    direct = s3_store(s3_server)[0] if kind == "s3" else gcs_store(gcs_server)[0]
    assert open_store(direct, creds).list("cut/") == []
    if kind == "s3":
        s3: S3Store = open_store(direct, creds)  # type: ignore[assignment]
        uploads = s3._client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix="cut/")
        assert not uploads.get("Uploads"), "the multipart upload was aborted"
    assert not list((tmp_path / "work").iterdir())


def test_store_unreachable(etcd: Etcd, tmp_path: Path) -> None:  # noqa: F811
    config = fast_store(type="s3", bucket="bk1", endpoint=f"http://127.0.0.1:{free_port()}")
    backup = BackupConfig(store=config, etcd=etcd_config(etcd), work_dir=str(tmp_path / "work"))
    creds = credentials.from_mapping({"accessKeyId": "AKIAX", "secretAccessKey": "s" * 40}, "test")
    with pytest.raises(BackupRetryable) as caught:
        take_backup(backup, creds, "c1", "cp-1", clock_at())
    assert caught.value.reason == STORE_UNREACHABLE
    assert "unreachable" in str(caught.value)


class Tampering(BackupStore):
    """Passes everything to a real store, but replaces the object right after the upload with other
    bytes of the same size and the same recorded sha256: only reading it back can tell."""

    def __init__(self, inner: BackupStore, workdir: Path) -> None:
        self.inner = inner
        self.workdir = workdir

    def location(self, key: str) -> str:
        return self.inner.location(key)

    def put(self, file: Path, key: str, *, sha256: str) -> str:
        location = self.inner.put(file, key, sha256=sha256)
        data = bytearray(file.read_bytes())
        data[len(data) // 3] ^= 0x01
        altered = self.workdir / "altered.db"
        altered.write_bytes(bytes(data))
        self.inner.put(altered, key, sha256=sha256)
        return location

    def get(self, key: str, dest: Path) -> None:
        self.inner.get(key, dest)

    def stat(self, key: str) -> ObjectInfo | None:
        return self.inner.stat(key)

    def list(self, prefix: str) -> list[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_object_altered_after_upload_fails_the_checksum(
    kind: str,
    s3_server: S3Server,  # noqa: F811
    gcs_server: GcsServer,  # noqa: F811
    etcd: Etcd,  # noqa: F811
    tmp_path: Path,
) -> None:
    config, creds = s3_store(s3_server, prefix="tamper/") if kind == "s3" else gcs_store(gcs_server, prefix="tamper/")
    inner = open_store(config, creds)
    backup = BackupConfig(store=config, etcd=etcd_config(etcd), work_dir=str(tmp_path / "work"))
    with pytest.raises(BackupFailed) as caught:
        take_backup(backup, creds, "c1", "cp-1", clock_at(), store=Tampering(inner, tmp_path))
    assert caught.value.reason == CHECKSUM_MISMATCH
    assert "sha256" in str(caught.value) and "deleted" in str(caught.value)
    assert inner.list("tamper/") == [], "an unverifiable object is not left to pass for a backup"


def test_size_mismatch_is_caught_without_download(tmp_path: Path, etcd: Etcd) -> None:  # noqa: F811
    class Shrinking(Tampering):
        def put(self, file: Path, key: str, *, sha256: str) -> str:
            location = self.inner.put(file, key, sha256=sha256)
            short = self.workdir / "short.db"
            short.write_bytes(file.read_bytes()[:-10])
            self.inner.put(short, key, sha256=sha256)
            return location

    config = fast_store(type="file", path=str(tmp_path / "store"))
    (tmp_path / "store").mkdir()
    backup = BackupConfig(store=config, etcd=etcd_config(etcd), work_dir=str(tmp_path / "work"), verify_download=False)
    with pytest.raises(BackupFailed) as caught:
        take_backup(backup, credentials.NONE, "c1", "cp-1", clock_at(),
                    store=Shrinking(FileStore(tmp_path / "store"), tmp_path))  # fmt: skip
    assert caught.value.reason == CHECKSUM_MISMATCH
    assert FileStore(tmp_path / "store").list("") == []


# --------------------------------------------------------------------------- credentials


def test_credentials_file_must_be_private_and_values_stay_hidden(tmp_path: Path) -> None:
    path = tmp_path / "s3.json"
    credentials.write_file(path, {"accessKeyId": "AKIAFILE", "secretAccessKey": "file-secret-value-123"})
    creds = credentials.from_file(str(path))
    assert creds.s3_keys() == ("AKIAFILE", "file-secret-value-123", None)
    assert "file-secret-value-123" not in repr(creds) and "AKIAFILE" not in f"{creds}"
    assert creds.redact("error: file-secret-value-123 bad") == "error: *** bad"

    path.chmod(0o644)
    with pytest.raises(BackupFailed) as caught:
        credentials.from_file(str(path))
    assert caught.value.reason == CREDENTIALS_INVALID and "0644" in str(caught.value)
    assert "file-secret-value-123" not in str(caught.value)

    with pytest.raises(BackupFailed):
        credentials.from_file(str(tmp_path / "absent.json"))


def test_credentials_from_a_secret() -> None:
    class Api:
        def get(self, path: str) -> dict[str, dict[str, str]]:
            assert path == "/api/v1/namespaces/kupd-system/secrets/s3-creds"
            return {"data": {"accessKeyId": _b64("AKIASECRET"), "secretAccessKey": _b64("s3cr3t-value\n")}}

    creds = credentials.from_secret(Api(), "kupd-system", "s3-creds")  # type: ignore[arg-type]  # a fake Client
    assert creds.s3_keys() == ("AKIASECRET", "s3cr3t-value", None)
    assert creds.source == "Secret kupd-system/s3-creds"
    with pytest.raises(BackupFailed):
        credentials.from_secret_data({"other": _b64("x")}, "Secret a/b")


def from_spec(backup: dict[str, Any]) -> BackupConfig:
    """The configuration the daemon derives from a DirectUpdate's spec.backup."""
    return BackupConfig.from_model(models.parse_spec(models.Backup, backup, root="spec.backup"))


def test_store_config_from_the_cr_spec() -> None:
    spec = {
        "required": True,
        "store": {
            "type": "s3", "bucket": "kupd-backups", "prefix": "prod/", "endpoint": "https://minio.example:9000",
            "region": "eu-west-1", "credentialsSecret": {"namespace": "kupd-system", "name": "s3"}, "retention": 7,
        },
        "etcd": {"endpoints": ["https://10.0.0.1:2379"], "caFile": "/etc/kubernetes/pki/etcd/ca.crt"},
    }  # fmt: skip
    config = from_spec(spec)
    assert config.store.retention == 7 and config.store.credentials_secret is not None
    assert config.etcd.endpoints == ("https://10.0.0.1:2379",)
    assert config.etcd.cert_file == "/etc/kubernetes/pki/etcd/healthcheck-client.crt"
    from kupd.errors import ValidationError

    for bad, field in (
        ({"bucket": "Bad_Bucket!"}, "spec.backup.store.bucket"),
        ({"prefix": "../up"}, "spec.backup.store.prefix"),
        ({"endpoint": "ftp://x"}, "spec.backup.store.endpoint"),
    ):
        with pytest.raises(ValidationError) as caught:
            from_spec({**spec, "store": {**spec["store"], **bad}})  # type: ignore[dict-item]
        assert caught.value.field == field
    with pytest.raises(ValidationError) as caught:
        from_spec({**spec, "etcd": {"endpoints": ["https://x:1/; rm -rf /"]}})
    assert caught.value.field.startswith("spec.backup.etcd.endpoints")


def test_gcs_store_type_is_used_for_gcs(gcs_server: GcsServer) -> None:  # noqa: F811
    assert isinstance(open_store(gcs_store(gcs_server)[0]), GCSStore)
