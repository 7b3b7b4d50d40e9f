"""etcd snapshots against a real etcd (Debian's etcd-server) with TLS client-certificate authentication:
the snapshot is taken, verified, restored with etcdctl into a second etcd that gives the data back;
unreachable endpoints and wrong certificates fail quickly with a clear reason."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from kupd import cli
from kupd.backup import (
    ETCD_CERTIFICATES_MISSING,
    ETCD_TLS_REJECTED,
    ETCD_UNREACHABLE,
    SNAPSHOT_INVALID,
    BackupFailed,
    BackupRetryable,
    credentials,
)
from kupd.backup import etcd as etcd_mod
from kupd.backup.run import BackupConfig, take_backup
from kupd.backup.stores import FileStore, StoreConfig
from tests.host.backup_servers import (
    FILL_KEYS,
    Etcd,
    clock_at,
    etcd,  # noqa: F401 - fixture
    etcd_config,
    fill_value,
    free_port,
    pki,  # noqa: F401 - fixture
    start_etcd,
)


def file_config(server: Etcd, tmp_path: Path, **etcd_overrides: object) -> BackupConfig:
    (tmp_path / "store").mkdir(exist_ok=True)
    return BackupConfig(
        store=StoreConfig(type="file", path=str(tmp_path / "store")),
        etcd=etcd_config(server, **etcd_overrides),
        work_dir=str(tmp_path / "work"),
    )


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_snapshot_is_verified_uploaded_and_restores_the_data(etcd: Etcd, tmp_path: Path) -> None:  # noqa: F811
    config = file_config(etcd, tmp_path)
    clock = clock_at()
    durations_before = sample("kupd_backup_duration_seconds_count", {"stage": "total"})

    record = take_backup(config, credentials.NONE, "prod-eu", "cp-1", clock)

    assert record.verified
    assert record.node == "cp-1"
    assert record.taken_at == clock.now()
    assert record.total_keys >= FILL_KEYS
    assert record.revision >= FILL_KEYS // 50
    assert record.etcd_endpoint == etcd.endpoint
    assert record.key == f"prod-eu/etcd-20261127T040000Z-cp-1-r{record.revision}.db"
    stored = tmp_path / "store" / record.key
    assert record.location == f"file://{stored}"
    data = stored.read_bytes()
    assert len(data) == record.size
    assert hashlib.sha256(data).hexdigest() == record.sha256
    assert stat_mode(stored) == 0o600, "a snapshot holds every Secret of the cluster"
    assert not list((tmp_path / "work").iterdir()), "the local snapshot is removed after the upload"
    status = record.to_status()
    assert status == {
        "location": record.location,
        "size": record.size,
        "sha256": record.sha256,
        "revision": record.revision,
        "verified": True,
        "takenAt": "2026-11-27T04:00:00Z",
        "node": "cp-1",
        "uploaded": True,
    }
    assert "revision" in record.event_message()
    assert sample("kupd_backup_last_success_timestamp_seconds") == clock.now().timestamp()
    assert sample("kupd_backup_duration_seconds_count", {"stage": "total"}) == durations_before + 1

    # Restore with etcdctl (which checks the sha256 trailer) and read the data back from a new etcd.
    peer_port = free_port()
    restored_dir = tmp_path / "restored" / "data"
    restored_dir.parent.mkdir()
    subprocess.run(
        [
            "etcdctl", "snapshot", "restore", str(stored), f"--data-dir={restored_dir}",
            "--name=kupd-restored", f"--initial-cluster=kupd-restored=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
        ],
        check=True, capture_output=True, timeout=60, env={**os.environ, "ETCDCTL_API": "3"},
    )  # fmt: skip
    restored = start_etcd(restored_dir, etcd.pki, name="kupd-restored", peer_port=peer_port)
    try:
        out = restored.etcdctl("get", "--prefix", "/registry/test/", "-w", "json")
        kvs = json.loads(out)["kvs"]
        assert len(kvs) == FILL_KEYS
        import base64

        got = {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode() for kv in kvs}
        assert got["/registry/test/key-00000"] == fill_value(0)
        assert got[f"/registry/test/key-{FILL_KEYS - 1:05d}"] == fill_value(FILL_KEYS - 1)
    finally:
        restored.stop()


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_first_answering_endpoint_is_used(etcd: Etcd, tmp_path: Path) -> None:  # noqa: F811
    dead = f"https://127.0.0.1:{free_port()}"
    config = file_config(etcd, tmp_path, endpoints=(dead, etcd.endpoint))
    record = take_backup(config, credentials.NONE, "c1", "cp-1", clock_at())
    assert record.etcd_endpoint == etcd.endpoint


def test_unreachable_etcd_fails_fast_with_the_reason(etcd: Etcd, tmp_path: Path) -> None:  # noqa: F811
    dead = f"https://127.0.0.1:{free_port()}"
    config = file_config(etcd, tmp_path, endpoints=(dead,))
    before = sample("kupd_backup_failures_total", {"reason": ETCD_UNREACHABLE})
    started = time.monotonic()
    with pytest.raises(BackupRetryable) as caught:
        take_backup(config, credentials.NONE, "c1", "cp-1", clock_at())
    assert time.monotonic() - started < 15
    assert caught.value.reason == ETCD_UNREACHABLE
    assert dead in str(caught.value) and "refused" in str(caught.value)
    assert sample("kupd_backup_failures_total", {"reason": ETCD_UNREACHABLE}) == before + 1
    assert not list((tmp_path / "store").glob("**/*.db"))


def test_client_certificate_from_another_ca_is_refused(etcd: Etcd, tmp_path: Path) -> None:  # noqa: F811
    config = file_config(
        etcd, tmp_path, cert_file=str(etcd.pki.other_client_cert), key_file=str(etcd.pki.other_client_key)
    )
    with pytest.raises(BackupFailed) as caught:
        take_backup(config, credentials.NONE, "c1", "cp-1", clock_at())
    assert caught.value.reason == ETCD_TLS_REJECTED
    assert "client certificate" in str(caught.value)


def test_server_not_signed_by_ca_file_is_refused(etcd: Etcd, tmp_path: Path) -> None:  # noqa: F811
    config = file_config(etcd, tmp_path, ca_file=str(etcd.pki.other_ca))
    with pytest.raises(BackupFailed) as caught:
        take_backup(config, credentials.NONE, "c1", "cp-1", clock_at())
    assert caught.value.reason == ETCD_TLS_REJECTED
    assert "server certificate" in str(caught.value)


def test_missing_certificate_file_is_named(etcd: Etcd, tmp_path: Path) -> None:  # noqa: F811
    config = file_config(etcd, tmp_path, cert_file=str(tmp_path / "nope.crt"))
    with pytest.raises(BackupFailed) as caught:
        take_backup(config, credentials.NONE, "c1", "cp-1", clock_at())
    assert caught.value.reason == ETCD_CERTIFICATES_MISSING
    assert "nope.crt" in str(caught.value)


def test_corrupted_or_truncated_snapshot_fails_verification(etcd: Etcd, tmp_path: Path) -> None:  # noqa: F811
    config = etcd_config(etcd)
    good = tmp_path / "good.db"
    etcd_mod.save_snapshot(config, good)
    status, digest = etcd_mod.verify(config, good)
    assert status.total_keys >= FILL_KEYS and digest.trailer_ok

    # A byte flipped in the middle: bolt may still open it, the trailer no longer matches.
    flipped = tmp_path / "flipped.db"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(BackupFailed) as caught:
        etcd_mod.verify(config, flipped)
    assert caught.value.reason == SNAPSHOT_INVALID

    # Cut short: no trailer, or not a database at all.
    for size in (len(data) - 4096, 100):
        cut = tmp_path / f"cut-{size}.db"
        cut.write_bytes(good.read_bytes()[:size])
        with pytest.raises(BackupFailed) as caught:
            etcd_mod.verify(config, cut)
        assert caught.value.reason == SNAPSHOT_INVALID


def test_snapshot_status_parsers() -> None:
    # etcd 3.4 etcdctl and 3.5+ etcdutl print the same fields (etcdutl adds "version").
    s = etcd_mod.parse_snapshot_status('{"hash":20210965,"revision":2,"totalKey":5,"totalSize":20480}\n')
    assert (s.hash, s.revision, s.total_keys, s.total_size) == (20210965, 2, 5, 20480)
    s = etcd_mod.parse_snapshot_status('{"hash":1,"revision":9,"totalKey":7,"totalSize":4096,"version":"3.5.0"}')
    assert s.revision == 9
    with pytest.raises(BackupFailed):
        etcd_mod.parse_snapshot_status("Error: invalid database")
    with pytest.raises(BackupFailed):
        etcd_mod.check_snapshot_status(dataclasses.replace(s, total_keys=0))


def test_kupd_backup_now(etcd: Etcd, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    conf = tmp_path / "backup.toml"
    (tmp_path / "store").mkdir()
    conf.write_text(
        '[backup]\ncluster = "lab"\n'
        f'[backup.store]\ntype = "file"\npath = "{tmp_path / "store"}"\nretention = 2\n'
        f'[backup.etcd]\ncaFile = "{etcd.pki.ca}"\n'
    )
    argv = [
        "backup", "now", "--config", str(conf), "--etcd-endpoint", etcd.endpoint,
        "--cert", str(etcd.pki.client_cert), "--key", str(etcd.pki.client_key), "--node", "cp-9",
        "--work-dir", str(tmp_path / "work"), "-o", "json",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["node"] == "cp-9" and out["verified"] is True
    assert out["key"].startswith("lab/etcd-") and out["key"].endswith(f"-cp-9-r{out['revision']}.db")
    assert (tmp_path / "store" / out["key"]).stat().st_size == out["size"]
    assert FileStore(tmp_path / "store").stat(out["key"]).sha256 == out["sha256"]  # type: ignore[union-attr]

    # Failure: exit 1, the reason on stderr.
    assert cli.main([*argv[:4], "--etcd-endpoint", f"https://127.0.0.1:{free_port()}", *argv[6:]]) == 1
    err = capsys.readouterr().err
    assert "EtcdUnreachable" in err
