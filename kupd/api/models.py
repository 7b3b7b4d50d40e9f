"""The custom resources (crds/*.yaml) as pydantic models: the daemon's view of the wire format.

The API server enforces the CRD schemas at `kubectl apply`. The daemon validates every spec again
with these models before acting on it, because an object may have been stored under an older,
looser schema and because a refusal must reach a status Condition naming the field. Patterns come
from kupd.validate, the same constants the CRDs carry; a unit test (test_crd_models) walks both
schemas and fails when a property, bound, pattern, enum, default or required field differs.

Each cross-field validator below mirrors one CEL rule (`x-kubernetes-validations`) of the CRD and
reports the same field path (the rule's fieldPath).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails, PydanticCustomError

from kupd import rfc3339, validate
from kupd.errors import ValidationError

# The largest integer JSON and float64 carry exactly; bound of every int64 field in the CRDs.
INT64_MAX = 2**53 - 1
_CROSS_FIELD = "cross_field"


def _no_dotdot(value: str) -> str:
    if "/../" in f"/{value}/":
        raise ValueError("must not contain a '..' path segment")
    return value


def _rfc3339_with_offset(value: object) -> object:
    """A user-written time: the offset must be explicit, or the user's idea of "02:00" is a guess."""
    if not isinstance(value, str):
        return value
    if len(value) > 64 or not re.fullmatch(validate.RFC3339_TIME, value):
        raise ValueError("must be an RFC 3339 time with an explicit offset, like 2026-12-01T02:00:00Z")
    # Parsed here: in strict mode the wrapped validator takes datetimes only. The range check is
    # rfc3339's: `9999-12-31T23:59:59-01:00` matches the pattern but is no instant kupd can compute with.
    try:
        rfc3339.parse_time(value, "time")
    except ValidationError as e:
        raise ValueError(e.reason) from None
    return datetime.fromisoformat(value)


def _known_time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"{value!r} is not a time zone in the IANA database") from e
    return value


Version = Annotated[str, Field(pattern=validate.K8S_VERSION, max_length=32)]
VersionOrMinor = Annotated[str, Field(pattern=validate.K8S_VERSION_OR_MINOR, max_length=32)]
ContainerdVersion = Annotated[str, Field(pattern=validate.CONTAINERD_VERSION, max_length=32)]
SafePath = Annotated[str, Field(pattern=validate.SAFE_PATH, max_length=1024), AfterValidator(_no_dotdot)]
SafeUrl = Annotated[str, Field(pattern=validate.SAFE_URL, max_length=2048)]
DnsLabel = Annotated[str, Field(pattern=validate.DNS_LABEL, max_length=63)]
DnsSubdomain = Annotated[str, Field(pattern=validate.DNS_SUBDOMAIN, max_length=253)]
LabelKey = Annotated[str, Field(pattern=validate.LABEL_KEY, max_length=317)]
LabelValue = Annotated[str, Field(pattern=validate.LABEL_VALUE, max_length=63)]
LabelSelectorString = Annotated[str, Field(pattern=validate.LABEL_SELECTOR, max_length=1024)]
BucketName = Annotated[str, Field(pattern=validate.BUCKET_NAME, min_length=3, max_length=222)]
ObjectPrefix = Annotated[str, Field(pattern=validate.OBJECT_PREFIX, max_length=512)]
Int64 = Annotated[int, Field(ge=0, le=INT64_MAX)]
UserTime = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339_with_offset),
    Field(json_schema_extra={"pattern": validate.RFC3339_TIME, "maxLength": 64}),
]

DirectUpdatePhase = Literal["Pending", "Running", "Paused", "Succeeded", "Failed", "RequiresAttention"]
NodePhase = Literal["Pending", "Granted", "Upgrading", "Succeeded", "Failed", "Skipped", "Lost"]
NodeRole = Literal["ControlPlane", "Worker"]
Reboot = Literal["Never", "IfRequired", "Always"]
ScheduledUpdatePhase = Literal["Waiting", "Started", "Failed"]


def _refuse(field: str, message: str) -> PydanticCustomError:
    """A cross-field error that names the sub-field, like a CEL rule's fieldPath does."""
    return PydanticCustomError(_CROSS_FIELD, "{message}", {"field": field, "message": message})


class _Spec(BaseModel):
    """User-written input: immutable, camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class _Status(BaseModel):
    """Written by kupd: camelCase on the wire, unknown fields refused, assignments validated."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_assignment=True
    )


# -- spec -----------------------------------------------------------------------------------


class LabelSelectorRequirement(_Spec):
    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[LabelValue] | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _values_match_operator(self) -> LabelSelectorRequirement:
        wants_values = self.operator in ("In", "NotIn")
        if wants_values != bool(self.values):
            raise _refuse("values", "values must be empty when operator is Exists or DoesNotExist, "
                                    "and non-empty when it is In or NotIn")
        return self


class LabelSelector(_Spec):
    """metav1.LabelSelector; an empty selector selects everything."""

    match_labels: dict[LabelKey, LabelValue] | None = Field(default=None, max_length=64)
    match_expressions: list[LabelSelectorRequirement] | None = Field(default=None, max_length=32)


class Canary(_Spec):
    count: int | None = Field(default=None, ge=0, le=100)
    selector: LabelSelector | None = None
    bake_seconds: int = Field(default=0, ge=0, le=86400)

    @model_validator(mode="after")
    def _count_or_selector(self) -> Canary:
        if self.count and self.selector is not None:
            raise _refuse("count", "count and selector are mutually exclusive: set one of them")
        return self


class SecretRef(_Spec):
    namespace: DnsLabel
    name: DnsSubdomain


class BackupStore(_Spec):
    type: Literal["s3", "gcs", "file"]
    bucket: BucketName | None = None
    prefix: ObjectPrefix | None = None
    endpoint: SafeUrl | None = None
    region: DnsLabel | None = None
    path: SafePath | None = None
    credentials_secret: SecretRef | None = None
    retention: int = Field(default=10, ge=1, le=1000)

    @model_validator(mode="after")
    def _fields_match_type(self) -> BackupStore:
        if self.type != "file" and self.bucket is None:
            raise _refuse("bucket", "bucket is required when type is s3 or gcs")
        if self.type == "file" and self.bucket is not None:
            raise _refuse("bucket", "bucket applies to types s3 and gcs only")
        if self.type == "s3" and self.bucket is not None and (len(self.bucket) > 63 or "_" in self.bucket):
            raise _refuse("bucket", "an S3 bucket name has at most 63 characters and no underscores")
        if self.type == "file" and self.path is None:
            raise _refuse("path", "path is required when type is file")
        if self.type != "file" and self.path is not None:
            raise _refuse("path", "path applies to type file only")
        return self


class EtcdAccess(_Spec):
    endpoints: list[SafeUrl] = Field(min_length=1, max_length=7)
    ca_file: SafePath | None = None
    cert_file: SafePath | None = None
    key_file: SafePath | None = None

    @model_validator(mode="after")
    def _cert_with_key(self) -> EtcdAccess:
        if (self.cert_file is None) != (self.key_file is None):
            raise _refuse("keyFile", "certFile and keyFile must be set together")
        return self


class Backup(_Spec):
    required: bool = True
    store: BackupStore | None = None
    etcd: EtcdAccess | None = None


class DrainPolicy(_Spec):
    timeout_seconds: int = Field(default=600, ge=30, le=86400)
    grace_period_seconds: int = Field(default=-1, ge=-1, le=3600)
    delete_empty_dir_data: bool = False
    pod_selector: LabelSelectorString | None = None
    on_timeout: Literal["RequiresAttention", "ForceDelete"] = "RequiresAttention"

    @model_validator(mode="after")
    def _grace_within_timeout(self) -> DrainPolicy:
        if self.grace_period_seconds >= self.timeout_seconds:
            raise _refuse("gracePeriodSeconds", "gracePeriodSeconds must be less than timeoutSeconds")
        return self


class Mirror(_Spec):
    url: SafeUrl
    gpg_key_url: SafeUrl | None = None


class Bundle(_Spec):
    path: SafePath
    manifest: SafePath


class PackageSource(_Spec):
    type: Literal["upstream", "mirror", "bundle"] = "upstream"
    mirror: Mirror | None = None
    bundle: Bundle | None = None

    @model_validator(mode="after")
    def _source_matches_type(self) -> PackageSource:
        if (self.mirror is not None) != (self.type == "mirror"):
            raise _refuse("mirror", "mirror must be set when type is mirror, and only then")
        if (self.bundle is not None) != (self.type == "bundle"):
            raise _refuse("bundle", "bundle must be set when type is bundle, and only then")
        return self


class PrometheusQuery(_Spec):
    name: DnsLabel
    query: Annotated[str, Field(pattern=r"^[ -~]+$", min_length=1, max_length=1024)]
    expect: Literal["Empty", "NonEmpty"] = "Empty"


class PrometheusGate(_Spec):
    url: SafeUrl
    timeout_seconds: int = Field(default=10, ge=1, le=300)
    queries: list[PrometheusQuery] = Field(min_length=1, max_length=20)


class HealthGates(_Spec):
    nodes_ready: bool = True
    control_plane_pods: bool = True
    bake_seconds: int = Field(default=0, ge=0, le=86400)
    prometheus: PrometheusGate | None = None


class DirectUpdateSpec(_Spec):
    """spec of a DirectUpdate: upgrade the selected nodes to `version` now."""

    version: Version
    containerd_version: ContainerdVersion | None = None
    node_selector: LabelSelector | None = None
    concurrency: int = Field(default=1, ge=1, le=100)
    canary: Canary | None = None
    backup: Backup = Field(default_factory=Backup)
    drain: DrainPolicy = Field(default_factory=DrainPolicy)
    package_source: PackageSource = Field(default_factory=PackageSource)
    reboot: Reboot = "IfRequired"
    max_attempts: int = Field(default=3, ge=1, le=10)
    paused: bool = False
    health_gates: HealthGates | None = None

    def node_work(self, versions: list[str], *, control_plane: bool, first_control_plane: bool,
                  backup: bool) -> NodeWork:
        """What one node does in a turn of this operation: the spec's defaults are already applied."""
        return NodeWork(versions=versions, control_plane=control_plane, first_control_plane=first_control_plane,
                        backup=backup, max_attempts=self.max_attempts, reboot=self.reboot,
                        containerd_version=self.containerd_version, drain=self.drain,
                        package_source=self.package_source, backup_config=self.backup)


class NodeWork(_Spec):
    """One node's turn: which versions, in which role, and the parts of the DirectUpdate spec its
    steps need. Delivered in the node's grant Lease instead of the whole spec; built only by
    `DirectUpdateSpec.node_work`, so every default lives in the spec's model."""

    versions: list[Version] = Field(min_length=1, max_length=64)
    control_plane: bool
    first_control_plane: bool
    backup: bool
    """Whether this turn takes the etcd backup first (the first control-plane node's first hop)."""
    max_attempts: int = Field(ge=1, le=10)
    reboot: Reboot
    containerd_version: ContainerdVersion | None = None
    drain: DrainPolicy
    package_source: PackageSource
    backup_config: Backup


class UpdateScheduleTemplate(DirectUpdateSpec):
    """A DirectUpdate spec whose version may be a minor (v1.31): its newest patch when a run starts."""

    version: VersionOrMinor  # a wider pattern, the same type

    @property
    def is_minor(self) -> bool:
        return re.fullmatch(validate.K8S_VERSION, self.version) is None

    def for_version(self, version: str) -> DirectUpdateSpec:
        """The DirectUpdate spec of a run, with the minor resolved to the release `version`."""
        return DirectUpdateSpec.model_validate({**to_wire(self), "version": version})


class ScheduledUpdateSpec(_Spec):
    start_time: UserTime
    template: DirectUpdateSpec


class MaintenanceWindow(_Spec):
    duration_minutes: int = Field(ge=15, le=1440)


def _unique_dates(value: list[date]) -> list[date]:
    if len(set(value)) != len(value):
        raise ValueError("dates must be unique")
    return value


class UpdateScheduleSpec(_Spec):
    schedule: Annotated[str, Field(pattern=validate.CRON_SCHEDULE, max_length=128)]
    time_zone: Annotated[
        str, Field(pattern=validate.TIME_ZONE, max_length=64), AfterValidator(_known_time_zone)
    ] = "UTC"
    window: MaintenanceWindow | None = None
    blackout_dates: Annotated[list[date], AfterValidator(_unique_dates)] = Field(
        default_factory=list, max_length=366
    )
    concurrency_policy: Literal["Forbid", "Allow"] = "Forbid"
    successful_history_limit: int = Field(default=3, ge=0, le=100)
    failed_history_limit: int = Field(default=1, ge=0, le=100)
    suspend: bool = False
    template: UpdateScheduleTemplate


# -- status ---------------------------------------------------------------------------------


class Condition(_Status):
    """metav1.Condition."""

    type: Annotated[str, Field(pattern=validate.CONDITION_TYPE, max_length=316)]
    status: Literal["True", "False", "Unknown"]
    observed_generation: Int64 | None = None
    last_transition_time: datetime
    reason: Annotated[str, Field(pattern=validate.CONDITION_REASON, min_length=1, max_length=1024)]
    message: Annotated[str, Field(max_length=32768)]


class GrantRecord(_Status):
    """The record of a node's turn in `status.nodes[].grant`, stamped with the coordinator's epoch."""

    epoch: Int64
    versions: list[Version] = Field(max_length=64)
    first_control_plane: bool = False
    backup: bool = False
    granted_at: datetime | None = None


class NodeStatus(_Status):
    name: DnsSubdomain
    role: NodeRole
    canary: bool = False
    phase: NodePhase
    step: Annotated[str, Field(max_length=63)] | None = None
    attempts: int = Field(default=0, ge=0, le=100)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    from_version: Annotated[str, Field(max_length=64)] | None = None
    to_version: Annotated[str, Field(max_length=64)] | None = None
    message: Annotated[str, Field(max_length=2048)] | None = None
    retry_token: Annotated[str, Field(max_length=1024)] | None = None
    grant: GrantRecord | None = None


class Summary(_Status):
    total: int = Field(default=0, ge=0, le=100000)
    pending: int = Field(default=0, ge=0, le=100000)
    upgrading: int = Field(default=0, ge=0, le=100000)
    succeeded: int = Field(default=0, ge=0, le=100000)
    failed: int = Field(default=0, ge=0, le=100000)
    skipped: int = Field(default=0, ge=0, le=100000)


class BackupRecord(_Status):
    location: Annotated[str, Field(max_length=2048)]
    size: Int64 | None = None
    sha256: Annotated[str, Field(pattern=validate.SHA256_HEX, max_length=64)] | None = None
    revision: Int64 | None = None
    verified: bool = False
    taken_at: datetime | None = None
    node: Annotated[str, Field(max_length=253)] | None = None


class DirectUpdateStatus(_Status):
    phase: DirectUpdatePhase | None = None
    observed_generation: Int64 | None = None
    conditions: list[Condition] = Field(default_factory=list, max_length=32)
    coordinator: Annotated[str, Field(max_length=253)] | None = None
    epoch: Int64 | None = None
    hops: list[Version] = Field(default_factory=list, max_length=64)
    progress: Annotated[str, Field(pattern=validate.PROGRESS, max_length=13)] | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: Annotated[str, Field(max_length=4096)] | None = None
    summary: Summary | None = None
    backup: BackupRecord | None = None
    nodes: list[NodeStatus] = Field(default_factory=list, max_length=5000)


class ScheduledUpdateStatus(_Status):
    phase: ScheduledUpdatePhase | None = None
    operation: DnsSubdomain | None = None
    conditions: list[Condition] = Field(default_factory=list, max_length=32)
    observed_generation: Int64 | None = None


class HistoryEntry(_Status):
    name: DnsSubdomain
    phase: DirectUpdatePhase | None = None
    started_at: datetime | None = None


class UpdateScheduleStatus(_Status):
    last_schedule_time: datetime | None = None
    next_schedule_time: datetime | None = None
    active: list[DnsSubdomain] = Field(default_factory=list, max_length=100)
    history: list[HistoryEntry] = Field(default_factory=list, max_length=256)
    conditions: list[Condition] = Field(default_factory=list, max_length=32)
    observed_generation: Int64 | None = None


# -- wire -----------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def to_wire(model: BaseModel) -> dict[str, Any]:
    """The JSON-ready dict of a model as the API server stores it: camelCase, unset fields left out."""
    data: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return data


def parse_spec(model: type[M], obj: Mapping[str, Any], root: str = "spec") -> M:
    """Validate the spec of a custom object (or a bare spec) strictly, as the CRD schema would.

    Raises kupd.errors.ValidationError naming the first offending field as the API server does,
    like `spec.canary.count` or `spec.backup.etcd.endpoints[0]`.
    """
    if "spec" in obj or "kind" in obj or "apiVersion" in obj:
        spec = obj.get("spec")
        if spec is None:
            raise ValidationError(root, "Required value")
    else:
        spec = obj
    if not isinstance(spec, Mapping):
        raise ValidationError(root, f"must be an object, got {type(spec).__name__}")
    payload = json.dumps(spec, default=_json_default)
    try:
        # Strict JSON validation: "5" is not an integer and "true" not a boolean, as in the API
        # server; by alias only, since the wire is camelCase.
        return model.model_validate_json(payload, strict=True, by_alias=True, by_name=False)
    except PydanticValidationError as e:
        errors = e.errors(include_url=False)
        first = errors[0]
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        problems = [(error_path(root, err), str(err["msg"])) for err in errors]
        raise ValidationError(error_path(root, first), f"{first['msg']}{more}", problems) from e


def parse_directupdate_spec(obj: Mapping[str, Any]) -> DirectUpdateSpec:
    return parse_spec(DirectUpdateSpec, obj)


def parse_node_work(data: Mapping[str, Any], root: str = "work") -> NodeWork:
    """A NodeWork from its wire form (camelCase, as `to_wire` writes it)."""
    return parse_spec(NodeWork, data, root=root)


def parse_scheduledupdate_spec(obj: Mapping[str, Any]) -> ScheduledUpdateSpec:
    return parse_spec(ScheduledUpdateSpec, obj)


def parse_updateschedule_spec(obj: Mapping[str, Any]) -> UpdateScheduleSpec:
    return parse_spec(UpdateScheduleSpec, obj)


def error_path(root: str, error: ErrorDetails) -> str:
    """The API server's spelling of a pydantic error location: spec.nodes[0].name, spec.labels.app."""
    loc: list[str | int] = list(error["loc"])
    if "[key]" in loc:
        # A map key failed: the CEL rule on the map reports the map itself.
        loc = loc[: loc.index("[key]") - 1]
    if error["type"] == _CROSS_FIELD:
        ctx = error.get("ctx") or {}
        loc.append(str(ctx.get("field", "")))
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _json_default(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
