"""The agent's step sequence, checkpoints and config merge: pure parts of the node side."""

from __future__ import annotations

from pathlib import Path

import pytest

from kupd import config
from kupd.agent import step_sequence
from kupd.api.models import parse_directupdate_spec
from kupd.checkpoint import Checkpoint, CheckpointStore
from kupd.errors import ValidationError
from kupd.protocol import Grant


def names(refs: list) -> list[str]:  # type: ignore[type-arg]
    return [r.key for r in refs]


def test_first_control_plane_single_hop() -> None:
    assert names(step_sequence(["v1.32.0"], backup=True, control_plane=True, reboot="IfRequired")) == [
        "v1.32.0/preflight", "v1.32.0/backup", "v1.32.0/repository", "v1.32.0/kubeadm-package",
        "v1.32.0/kubeadm-upgrade", "v1.32.0/drain", "v1.32.0/kubelet-package", "v1.32.0/restart",
        "v1.32.0/reboot", "v1.32.0/verify", "v1.32.0/uncordon",
    ]


def test_worker_two_hops_drains_once_and_uncordons_once() -> None:
    keys = names(step_sequence(["v1.32.1", "v1.33.0"], backup=False, control_plane=False, reboot="Never"))
    assert [k for k in keys if k.endswith("/drain")] == ["v1.32.1/drain"]
    assert [k for k in keys if k.endswith("/uncordon")] == ["v1.33.0/uncordon"]
    assert not any(k.endswith(("/backup", "/reboot")) for k in keys)
    assert keys.index("v1.32.1/verify") < keys.index("v1.33.0/preflight")


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert store.load() == Checkpoint()
    work = parse_directupdate_spec({"version": "v1.32.0"}).node_work(
        ["v1.32.0"], control_plane=False, first_control_plane=False, backup=False)
    cp = Checkpoint(grant=Grant("op", "u", 2, "2026-11-27T12:00:00Z", work), phase="Upgrading")
    cp.step("v1.32.0/drain").state = "started"
    store.save(cp)
    back = store.load()
    assert back == cp and back.active
    assert (tmp_path / "checkpoint.json").stat().st_mode & 0o777 == 0o600


def test_config_fragments_merge_in_order(tmp_path: Path) -> None:
    usr, run, etc = (tmp_path / d for d in ("usr", "run", "etc"))
    for d in (usr, run, etc):
        d.mkdir()
    (usr / "00-defaults.toml").write_text('log_level = "info"\n[lease]\nmember_duration_seconds = 20\n')
    (run / "50-cloud-init.toml").write_text('node_name = "n1"\n[lease]\ncoordinator_duration_seconds = 9\n')
    (etc / "90-local.toml").write_text('log_level = "debug"\n')
    s = config.load([usr, run, etc])
    assert (s.node_name, s.log_level) == ("n1", "debug")
    assert (s.lease.member_duration_seconds, s.lease.coordinator_duration_seconds) == (20, 9)


@pytest.mark.parametrize(("text", "field"), [
    ('nodename = "x"\n', "nodename"),
    ('node_name = "Bad Name;rm"\n', "node_name"),
    ('[lease]\nmember_duration_seconds = 1\n', "lease.member_duration_seconds"),
    ('host = "docker"\n', "host"),
    ('state_dir = "/var/lib/../etc"\n', "path"),
])
def test_bad_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    (tmp_path / "10.toml").write_text(text)
    with pytest.raises(ValidationError) as e:
        config.load([tmp_path])
    assert e.value.field == field
