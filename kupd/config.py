"""Daemon configuration: TOML fragments merged in order, validated into one settings object.

Fragments are read from /usr/lib/kupd/config.d (the package's defaults), /run/kupd/config.d
(runtime, e.g. written by cloud-init), then /etc/kupd/config.d (the operator's), each folder's
*.toml in name order; a later fragment overrides the keys it sets, tables merge key by key
(the zincati convention). Unknown keys are errors: a typo must not silently keep a default.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kupd import validate
from kupd.errors import ValidationError

DEFAULT_DIRS = (Path("/usr/lib/kupd/config.d"), Path("/run/kupd/config.d"), Path("/etc/kupd/config.d"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LeaseSettings(_Strict):
    namespace: str = Field("kupd-system", description="Namespace of the member and coordinator Leases.")
    member_duration_seconds: int = Field(
        60, ge=5, le=600,
        description="A member whose lease is older than this is considered lost. Members renew every "
        "duration * renew_fraction: 60 * 0.33 is one small write per node every 20 s.",
    )
    coordinator_duration_seconds: int = Field(
        15, ge=3, le=600, description="How long a coordinator lease stays valid without renewal."
    )
    renew_fraction: float = Field(
        0.33, gt=0, lt=1, description="Renew when this fraction of the duration has passed."
    )
    # While no operation runs nothing waits on liveness: members and the coordinator renew rarely
    # and say so in leaseDurationSeconds (docs/development/protocol.md, "Idle and active").
    member_idle_renew_seconds: int = Field(
        3600, ge=10, le=86400,
        description="While no operation is active, members renew every this many seconds (jittered by "
        "10 %), declaring a lease of 3 times as long; an operation's start makes them renew at once and "
        "then every member_duration_seconds * renew_fraction.",
    )
    coordinator_idle_duration_seconds: int = Field(
        180, ge=3, le=3600,
        description="The coordinator Lease's duration while no operation is active (renewed every "
        "duration * renew_fraction); a lost coordinator is replaced within this while idle.",
    )
    watch_seconds: int = Field(
        3600, ge=30, le=86400,
        description="Watches ask the API server to end them after this many seconds, plus up to 50 % "
        "random jitter, so that re-opens are rare and spread out.",
    )


class SimulatedHostSettings(_Strict):
    state_file: str = Field("", description="JSON file with the simulated host's versions and faults.")
    step_seconds: float = Field(1.0, ge=0, le=3600, description="How long each simulated step takes.")
    initial_version: str = Field("v1.31.2", description="Kubernetes version installed at first start.")
    available_versions: list[str] = Field(
        default_factory=lambda: ["v1.31.2", "v1.31.3", "v1.32.0", "v1.32.1", "v1.33.0"],
        description="Versions the simulated package source offers.",
    )
    node_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels the simulated kubelet registers its Node with."
    )
    clock_offset_seconds: float = Field(
        0.0, ge=-86400, le=86400,
        description="Offset of the simulated node's wall clock, as its member Lease shows it (clock-skew tests).",
    )


# A step's deadline bounds one run of it. Package managers and kubeadm are never killed at the
# deadline: kupd waits for them to end their transaction, then reports the step Failed.
DEFAULT_STEP_DEADLINES: dict[str, float] = {
    "preflight": 600, "backup": 1800, "repository": 600, "kubeadm-package": 1800, "kubeadm-upgrade": 3600,
    "drain": 7200, "kubelet-package": 1800, "restart": 600, "reboot": 1800, "verify": 900, "uncordon": 300,
}


class StepSettings(_Strict):
    deadline_seconds: dict[str, float] = Field(
        default_factory=dict,
        description="How long one run of a step may take before the node reports it Failed "
        "(StepDeadlineExceeded), by step name, over the defaults: "
        + ", ".join(f"{k} {int(v)}" for k, v in DEFAULT_STEP_DEADLINES.items())
        + ". The drain step's is at least spec.drain.timeoutSeconds plus 5 minutes.",
    )

    @field_validator("deadline_seconds")
    @classmethod
    def _steps(cls, v: dict[str, float]) -> dict[str, float]:
        for step, seconds in v.items():
            if step not in DEFAULT_STEP_DEADLINES:
                raise ValueError(f"unknown step {step!r}; one of {', '.join(DEFAULT_STEP_DEADLINES)}")
            if not 1 <= seconds <= 86400:
                raise ValueError(f"deadline of {step} must be between 1 and 86400 seconds")
        return v

    def deadline(self, step: str) -> float:
        return float(self.deadline_seconds.get(step, DEFAULT_STEP_DEADLINES.get(step, 1800)))


class Settings(_Strict):
    node_name: str = Field("", description="This node's Kubernetes Node name; defaults to the hostname.")
    cluster_name: str = Field("kubernetes", description="Cluster name used in backup object names.")
    kubeconfig: str = Field("/etc/kupd/kubeconfig", description="Credentials the daemon uses.")
    state_dir: str = Field("/var/lib/kupd", description="Checkpoints and the agent's state.")
    host: Literal["real", "simulated"] = Field("real", description="Which host backend runs the steps.")
    control_plane: bool | None = Field(
        None, description="Whether this node is a control-plane node; None: read the Node's role label."
    )
    coordinator_eligible: Literal["control-plane", "any", "never"] = Field(
        "control-plane", description="Which daemons may become coordinator."
    )
    metrics_address: str = Field("127.0.0.1:9464", description="host:port for /metrics; empty disables.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level of messages written to the journal (or stderr).")
    lease: LeaseSettings = Field(default_factory=LeaseSettings)  # type: ignore[arg-type]
    simulated: SimulatedHostSettings = Field(default_factory=SimulatedHostSettings)  # type: ignore[arg-type]
    steps: StepSettings = Field(default_factory=StepSettings)
    real: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the real host backend (RealHostConfig field names; docs/usage/hosts.md).",
    )
    backup: dict[str, Any] = Field(
        default_factory=dict,
        description="The etcd backup's defaults on control-plane nodes, shaped like a DirectUpdate's "
        "spec.backup in camelCase: `store` (where snapshots go when the DirectUpdate names none), `etcd` "
        "(how to reach the local member; kubeadm's layout when unset), `workDir`, `verifyDownload`, "
        "`keepLocalSnapshots` (docs/usage/backups.md).",
    )

    @field_validator("node_name")
    @classmethod
    def _node(cls, v: str) -> str:
        return validate.node_name(v, "node_name") if v else v

    @field_validator("backup")
    @classmethod
    def _backup(cls, v: dict[str, Any]) -> dict[str, Any]:
        from kupd.backup.run import BackupDefaults

        BackupDefaults.from_settings(v)  # refuse a bad store at start, not at the first backup
        return v

    @field_validator("kubeconfig", "state_dir")
    @classmethod
    def _path(cls, v: str) -> str:
        return validate.safe_path(v, "path")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def fragments(dirs: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for d in dirs:
        if d.is_dir():
            files.extend(sorted(p for p in d.iterdir() if p.suffix == ".toml" and p.is_file()))
    return files


def load(dirs: Iterable[Path] = DEFAULT_DIRS, overrides: dict[str, Any] | None = None) -> Settings:
    data: dict[str, Any] = {}
    for path in fragments(dirs):
        try:
            with open(path, "rb") as f:
                data = merge(data, tomllib.load(f))
        except tomllib.TOMLDecodeError as e:
            raise ValidationError(str(path), f"invalid TOML: {e}") from e
    if overrides:
        data = merge(data, overrides)
    return parse(data)


def parse(data: dict[str, Any]) -> Settings:
    import pydantic

    try:
        return Settings.model_validate(data)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "config"
        raise ValidationError(field, err["msg"]) from e
