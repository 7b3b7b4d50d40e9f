"""Backups by default: the policy a spec.backup means, the daemon's [backup] settings under a
DirectUpdate's own, and the Conditions the planner writes for each kind of backup record."""

from __future__ import annotations

from typing import Any

import pytest

from kupd import config
from kupd.api import models
from kupd.api.models import backup_policy
from kupd.backup.run import BackupConfig, BackupDefaults
from kupd.errors import ValidationError
from tests.unit.test_planner import UID, cluster, run


def config_of(spec: dict[str, Any], defaults: BackupDefaults | None = None) -> BackupConfig:
    return BackupConfig.from_model(models.parse_spec(models.Backup, spec, "spec.backup"), defaults=defaults)


@pytest.mark.parametrize(
    ("spec", "policy"),
    [({}, "Required"), ({"required": True}, "Required"), ({"required": False}, "Disabled"),
     ({"policy": "BestEffort"}, "BestEffort"), ({"policy": "BestEffort", "required": False}, "BestEffort"),
     ({"policy": "Disabled", "required": True}, "Disabled")],
)
def test_policy_reads_the_deprecated_required_when_unset(spec: dict[str, Any], policy: str) -> None:
    assert backup_policy(spec.get("policy"), spec.get("required")) == policy
    assert config_of(spec).policy == policy


def test_the_daemons_store_unless_the_directupdate_names_one() -> None:
    settings = config.parse({"backup": {"store": {"type": "file", "path": "/srv/backups"},
                                        "etcd": {"endpoints": ["https://10.0.0.5:2379"]}, "keepLocalSnapshots": 2}})
    defaults = BackupDefaults.from_settings(settings.backup)
    cfg = config_of({}, defaults)
    assert cfg.store is not None and cfg.store.path == "/srv/backups"
    assert cfg.etcd.endpoints == ("https://10.0.0.5:2379",) and cfg.keep_local_snapshots == 2
    own = config_of({"store": {"type": "s3", "bucket": "kupd-backups"}}, defaults)
    assert own.store is not None and own.store.type == "s3"
    assert own.etcd.endpoints == ("https://10.0.0.5:2379",), "etcd access still from the settings"
    assert config_of({}).store is None, "no store anywhere: the snapshot stays on the node"


@pytest.mark.parametrize(
    ("backup", "field"),
    [({"store": {"type": "s3"}}, "backup.store.bucket"), ({"stor": {}}, "backup"),
     ({"keepLocalSnapshots": 0}, "backup.keepLocalSnapshots"), ({"etcd": {"endpoints": ["ftp://x"]}}, "backup.etcd")],
)
def test_bad_backup_settings_are_refused_at_start(backup: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        config.parse({"backup": backup})
    assert e.value.field.startswith(field)


def _with_record(record: dict[str, Any]) -> dict[str, Any]:
    """Plan one round in which the first control-plane node reports `record` for its backup grant."""
    from kupd.planner import MemberView
    from kupd.protocol import Report
    from kupd.versions import Version

    nodes, members = cluster(1, 1)
    p = run({"version": "v1.32.0"}, nodes, members)
    g = p.status["nodes"][0]["grant"]
    assert g["backup"] is True
    members["cp-1"] = MemberView("cp-1", True, Version.parse("v1.31.2"),
                                 Report("op", UID, 3, g["versions"], "Upgrading", "repository",
                                        granted_at=g["grantedAt"], backup=record))
    status: dict[str, Any] = run({"version": "v1.32.0"}, nodes, members, status=p.status).status
    return status


def conds(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_conditions_for_each_kind_of_backup_record() -> None:
    base = {"location": "s3://b/k", "size": 10, "sha256": "a" * 64, "revision": 5, "node": "cp-1"}
    st = _with_record({**base, "verified": True, "uploaded": True})
    assert conds(st)["BackupSucceeded"] == ("True", "BackupVerified") and conds(st)["BackupUploaded"][0] == "True"
    st = _with_record({**base, "verified": True, "uploaded": False,
                       "message": "no backup store is configured (...); the verified snapshot stays on cp-1"})
    assert conds(st)["BackupSucceeded"] == ("True", "LocalSnapshotOnly")
    assert conds(st)["BackupUploaded"] == ("False", "NoStoreConfigured")
    assert st["phase"] == "Running"
    st = _with_record({**base, "verified": True, "uploaded": False, "message": "the upload failed (StoreUnreachable)"})
    assert conds(st)["BackupUploaded"] == ("False", "UploadFailed")
    st = _with_record({"location": "", "verified": False, "uploaded": False, "node": "cp-1",
                       "message": "EtcdUnreachable: ..."})
    assert conds(st)["BackupSucceeded"] == ("False", "BestEffortBackupFailed") and st["phase"] == "Running"
    # A record from a daemon before `uploaded` existed reads as uploaded.
    st = _with_record({**base, "verified": True})
    assert conds(st)["BackupSucceeded"] == ("True", "BackupVerified")


def test_backup_records_of_every_kind_survive_the_member_reports_checks() -> None:
    """What the agent reports (kupd/daemon.py's backup step) passes kupd.untrusted unchanged."""
    from kupd import untrusted

    local = {"location": "file:///var/lib/kupd/backup/snapshots/etcd-1.db", "size": 10, "sha256": "a" * 64,
             "revision": 5, "verified": True, "takenAt": "2026-12-01T10:00:00Z", "node": "cp-1",
             "uploaded": False, "message": "no backup store is configured (...)"}
    assert untrusted.backup(local, "backup") == local
    failed = {"location": "", "verified": False, "uploaded": False, "node": "cp-1", "message": "EtcdUnreachable: x"}
    assert untrusted.backup(failed, "backup") == failed
    with pytest.raises(untrusted.Invalid):
        untrusted.backup({"location": "", "verified": True}, "backup")
    with pytest.raises(untrusted.Invalid):
        untrusted.backup({**local, "message": "x" * 2049}, "backup")
