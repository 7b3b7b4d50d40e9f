"""Turns ScheduledUpdates and UpdateSchedules into DirectUpdates when they are due.

Runs inside the coordinator. `Scheduler.reconcile()` lists both kinds, creates the
DirectUpdates that are due, moves the maintenance window of still-active operations to the
current firing (so an operation paused by a closed window resumes in the next one instead of a
second operation starting), prunes history and writes status. It returns when it next needs to
run; the coordinator also calls it whenever one of the three kinds changes.

Every decision is made by a pure function (`decide_scheduled_update`, `decide_update_schedule`)
from the listed objects and the injected clock; this module's I/O only executes the decision.

Crash safety: the DirectUpdate a firing creates has a deterministic name
(`<schedule>-<yymmddhhmm>` of the firing in UTC; a ScheduledUpdate's has the ScheduledUpdate's
own name), and status is written only after the create, so a crash between the two re-runs the
create, gets AlreadyExists for an object it owns and carries on: never two operations.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from kupd import conditions, k8s, validate
from kupd.api.models import (
    DirectUpdateSpec,
    parse_scheduledupdate_spec,
    parse_spec,
    parse_updateschedule_spec,
    to_wire,
)
from kupd.clock import Clock
from kupd.conditions import Condition
from kupd.errors import PermanentError, RetryableError, ValidationError
from kupd.k8s import API_VERSION, DIRECTUPDATES, SCHEDULEDUPDATES, UPDATESCHEDULES, Client
from kupd.protocol import ANN_WINDOW_END, ANN_WINDOW_START
from kupd.rfc3339 import format_time, parse_time
from kupd.schedule import CronSchedule, Window
from kupd.windows import window_annotations

log = logging.getLogger(__name__)

# Labels and annotations on the DirectUpdates the scheduler creates.
LABEL_CREATED_BY = "kupd.io/created-by"
LABEL_CREATOR_UID = "kupd.io/creator-uid"
ANN_SCHEDULE = "kupd.io/schedule"
ANN_SCHEDULED_UPDATE = "kupd.io/scheduled-update"
ANN_SCHEDULED_TIME = "kupd.io/scheduled-time"
ANN_REQUESTED_VERSION = "kupd.io/requested-version"
CREATED_BY_SCHEDULED_UPDATE = "scheduledupdate"
CREATED_BY_UPDATE_SCHEDULE = "updateschedule"

FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
FIELD_MANAGER = "kupd-scheduler"
MAX_ACTIVE_LISTED = 100  # status.active maxItems in the CRD

# Condition types and reasons.
COND_VALID = "Valid"
COND_STARTED = "Started"  # ScheduledUpdate
COND_SCHEDULED = "Scheduled"  # UpdateSchedule: the outcome of the most recent firing
R_SPEC_VALID = "SpecValid"
R_INVALID_SPEC = "InvalidSpec"
R_WAITING = "WaitingForStartTime"
R_CREATED = "OperationCreated"
R_RESUMED = "OperationResumed"
R_MISSED = "MissedFiring"
R_SUSPENDED = "Suspended"
R_RESOLVE_FAILED = "VersionResolutionFailed"
R_NAME_CONFLICT = "NameConflict"
R_CREATE_FAILED = "CreateFailed"
R_NOT_YET = "NoFiringYet"
R_EVALUATION_FAILED = "EvaluationFailed"

_MINOR = re.compile(r"^v(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})$")

ResolveMinor = Callable[[str], str]
"""Maps a minor like v1.31 to the newest patch release the package source offers, like v1.31.4."""
Obj = dict[str, Any]


# -- the decisions (pure) --------------------------------------------------------------
@dataclass(frozen=True)
class NewOperation:
    """A DirectUpdate to create; its version may still be a minor to resolve."""

    name: str
    template: DirectUpdateSpec
    labels: dict[str, str]
    annotations: dict[str, str]
    owner: Obj


@dataclass
class Decision:
    """What to do for one schedule object; executed by `Scheduler`."""

    create: NewOperation | None = None
    set_windows: dict[str, dict[str, str | None]] = field(default_factory=dict)
    """DirectUpdate name -> window annotations to merge into it."""
    delete: list[str] = field(default_factory=list)
    status: Obj = field(default_factory=dict)
    """The status fields to write (merged over the current status)."""
    conditions: list[Condition] = field(default_factory=list)
    wake: datetime | None = None


def operation_name(schedule_name: str, firing: datetime) -> str:
    """`<schedule>-<yymmddhhmm>` of the firing in UTC: at most 52 + 11 = 63 characters."""
    return f"{schedule_name}-{firing.strftime('%y%m%d%H%M')}"


def owner_reference(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {
        "apiVersion": obj.get("apiVersion", API_VERSION),
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": False,
    }


def is_owned_by(child: Obj, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in child.get("metadata", {}).get("ownerReferences") or [])


def operation_spec(template: DirectUpdateSpec, version: str) -> Obj:
    """The spec of the DirectUpdate a run creates: the template with its version resolved,
    validated as a DirectUpdate spec (errors name `spec.template.<field>`)."""
    spec = parse_spec(DirectUpdateSpec, {**to_wire(template), "version": version}, root="spec.template")
    return to_wire(spec)


def resolve_version(requested: str, resolve_minor: ResolveMinor, field: str = "spec.template.version") -> str:
    """The exact version for a template version: itself, or the newest patch of a minor."""
    if not _MINOR.match(requested):
        return validate.k8s_version(requested, field)
    resolved = resolve_minor(requested)
    validate.k8s_version(resolved, f"{field} (resolved from {requested})")
    if not resolved.startswith(requested + "."):
        raise ValidationError(field, f"{requested} resolved to {resolved}, not a patch release of it")
    return resolved


def decide_scheduled_update(obj: Obj, child: Obj | None, now: datetime) -> Decision:
    """A ScheduledUpdate: create its DirectUpdate at spec.startTime, once."""
    meta, status = obj["metadata"], obj.get("status") or {}
    name = meta["name"]
    generation = meta.get("generation")
    d = Decision(status={"observedGeneration": generation})
    if status.get("phase") == "Started" and status.get("operation"):
        d.status.update(phase="Started", operation=status["operation"])
        return d
    try:
        parsed = parse_scheduledupdate_spec(obj)
        start = parsed.start_time.astimezone(UTC)
    except ValidationError as e:
        d.status["phase"] = "Failed"
        d.conditions = [Condition(COND_VALID, "False", R_INVALID_SPEC, str(e))]
        return d
    d.conditions.append(Condition(COND_VALID, "True", R_SPEC_VALID, "the spec is valid"))
    if child is not None and is_owned_by(child, meta["uid"]):
        # Created earlier; the status write that should have followed did not happen.
        d.status.update(phase="Started", operation=child["metadata"]["name"])
        d.conditions.append(Condition(COND_STARTED, "True", R_CREATED,
                                      f"created DirectUpdate {child['metadata']['name']}"))
        return d
    if now < start:
        d.status["phase"] = "Waiting"
        d.conditions.append(Condition(COND_STARTED, "False", R_WAITING, f"starts at {format_time(start)}"))
        d.wake = start
        return d
    d.create = NewOperation(
        name=name,
        template=parsed.template,
        labels={LABEL_CREATED_BY: CREATED_BY_SCHEDULED_UPDATE, LABEL_CREATOR_UID: meta["uid"]},
        annotations={ANN_SCHEDULED_UPDATE: name, ANN_SCHEDULED_TIME: format_time(start),
                     ANN_REQUESTED_VERSION: parsed.template.version},
        owner=owner_reference(obj),
    )
    late = now - start
    note = f" ({_duration(late)} after startTime)" if late >= timedelta(minutes=1) else ""
    d.status.update(phase="Started", operation=name)
    d.conditions.append(Condition(COND_STARTED, "True", R_CREATED, f"created DirectUpdate {name}{note}"))
    return d


def decide_update_schedule(obj: Obj, children: Sequence[Obj], now: datetime) -> Decision:
    """An UpdateSchedule: fire per cron, keep active operations in the current window, prune."""
    meta, status = obj["metadata"], obj.get("status") or {}
    name = meta["name"]
    d = Decision(status={"observedGeneration": meta.get("generation")})
    try:
        parsed = parse_updateschedule_spec(obj)
        cron = CronSchedule.parse(
            parsed.schedule, parsed.time_zone, parsed.window.duration_minutes if parsed.window else None,
            [d.isoformat() for d in parsed.blackout_dates],
        )
        policy = parsed.concurrency_policy
        keep_ok, keep_failed = parsed.successful_history_limit, parsed.failed_history_limit
        last = _optional_time(status.get("lastScheduleTime"), "status.lastScheduleTime")
    except ValidationError as e:
        d.status["nextScheduleTime"] = None
        d.conditions = [Condition(COND_VALID, "False", R_INVALID_SPEC, str(e))]
        return d
    d.conditions.append(Condition(COND_VALID, "True", R_SPEC_VALID, "the spec is valid"))

    ordered = sorted(children, key=_scheduled_at, reverse=True)
    active = [c for c in ordered if _phase(c) not in FINISHED_PHASES]
    kept: list[Obj] = []
    counts = {"Succeeded": 0, "Failed": 0}
    for c in ordered:
        phase = _phase(c)
        if phase not in FINISHED_PHASES:
            continue
        counts[phase] += 1
        if counts[phase] > (keep_ok if phase == "Succeeded" else keep_failed):
            d.delete.append(c["metadata"]["name"])
        else:
            kept.append(c)
    active_names = [c["metadata"]["name"] for c in active]
    d.status["history"] = [_history_entry(c) for c in kept]

    if parsed.suspend:
        d.status.update(active=sorted(active_names)[:MAX_ACTIVE_LISTED], nextScheduleTime=None)
        d.conditions.append(Condition(COND_SCHEDULED, "False", R_SUSPENDED, "spec.suspend is true"))
        return d

    since = last or _optional_time(meta.get("creationTimestamp"), "metadata.creationTimestamp")
    due = cron.due(since, now)
    if due.firing is not None and due.window is not None:
        firing, window = due.firing, due.window
        wanted = window_annotations(window.start, window.end)
        for c in active:
            annotations = c["metadata"].get("annotations") or {}
            if any(annotations.get(k) != v for k, v in wanted.items()):
                d.set_windows[c["metadata"]["name"]] = wanted
        this_name = operation_name(name, firing)
        if this_name in active_names:
            cond = Condition(COND_SCHEDULED, "True", R_CREATED,
                             f"created DirectUpdate {this_name} for the firing at {format_time(firing)}")
        elif policy == "Forbid" and active_names:
            cond = Condition(
                COND_SCHEDULED, "True", R_RESUMED,
                f"firing at {format_time(firing)}: {', '.join(active_names)} still active, so no new "
                f"operation starts (concurrencyPolicy Forbid); it continues in this window"
                + (f" until {format_time(window.end)}" if window.end else ""),
            )
        else:
            d.create = NewOperation(
                name=this_name,
                template=parsed.template,
                labels={LABEL_CREATED_BY: CREATED_BY_UPDATE_SCHEDULE, LABEL_CREATOR_UID: meta["uid"]},
                annotations={ANN_SCHEDULE: name, ANN_SCHEDULED_TIME: format_time(firing),
                             ANN_REQUESTED_VERSION: parsed.template.version,
                             **{k: v for k, v in wanted.items() if v is not None}},
                owner=owner_reference(obj),
            )
            active_names.append(this_name)
            late = due.late_by(now)
            note = f", {_duration(late)} late" if late >= timedelta(minutes=1) else ""
            cond = Condition(
                COND_SCHEDULED, "True", R_CREATED,
                f"created DirectUpdate {this_name} for the firing at {format_time(firing)}{note}",
            )
        d.status["lastScheduleTime"] = format_time(firing)
        d.conditions.append(cond)
    elif due.missed is not None:
        window = cron.window_for(due.missed)
        d.conditions.append(Condition(
            COND_SCHEDULED, "False", R_MISSED,
            f"the firing at {format_time(due.missed)} was missed: its window closed at "
            f"{format_time(window.end) if window.end else '?'} before kupd could start it",
        ))
    elif last is None:
        d.conditions.append(Condition(COND_SCHEDULED, "False", R_NOT_YET, "the schedule has not fired yet"))
    following = cron.next_firing(now)
    d.status.update(active=sorted(active_names)[:MAX_ACTIVE_LISTED],
                    nextScheduleTime=format_time(following) if following else None)
    d.wake = following
    return d


# -- the I/O ---------------------------------------------------------------------------
class Scheduler:
    """Executes the decisions against the API server through `api`; `resolve_minor` asks the
    package source."""

    def __init__(self, api: Client, clock: Clock, resolve_minor: ResolveMinor,
                 retry_seconds: float = 30.0) -> None:
        self.api = api
        self.clock = clock
        self.resolve_minor = resolve_minor
        self.retry = timedelta(seconds=retry_seconds)

    def reconcile(self) -> datetime | None:
        """One pass over every schedule; returns when the next pass is needed (None: no timer)."""
        now = self.clock.now()
        scheduled = self._list(SCHEDULEDUPDATES)
        recurring = self._list(UPDATESCHEDULES)
        children = self._list(DIRECTUPDATES, label_selector=LABEL_CREATED_BY)
        by_uid: dict[str, list[Obj]] = {}
        for c in children:
            uid = (c["metadata"].get("labels") or {}).get(LABEL_CREATOR_UID, "")
            if is_owned_by(c, uid):
                by_uid.setdefault(uid, []).append(c)
        wakes: list[datetime] = []
        for obj in scheduled:
            uid = obj["metadata"]["uid"]
            child = next((c for c in by_uid.get(uid, [])
                          if c["metadata"]["name"] == obj["metadata"]["name"]), None)
            wakes += self._run(SCHEDULEDUPDATES, obj, partial(decide_scheduled_update, obj, child, now), now)
        for obj in recurring:
            children_of = by_uid.get(obj["metadata"]["uid"], [])
            wakes += self._run(UPDATESCHEDULES, obj, partial(decide_update_schedule, obj, children_of, now), now)
        return min(wakes, default=None)

    def _run(self, plural: str, obj: Obj, decide: Callable[[], Decision], now: datetime) -> list[datetime]:
        """Decide and act for one object. Whatever goes wrong stays with that object: the others
        of this pass still fire, and the failure is a Condition on the object that caused it."""
        name = obj["metadata"]["name"]
        try:
            d = decide()
            self._execute(plural, obj, d, now)
        except RetryableError as e:
            log.warning("%s %s: %s; retrying", plural, name, e)
            return [now + timedelta(seconds=e.delay)]
        except PermanentError as e:
            # A refusal (RBAC, admission): nothing to do but say so and look again later.
            log.warning("%s %s: %s; trying again in %s", plural, name, e, self.retry)
        except Exception as e:  # a stored object kupd cannot evaluate must not stop the others
            log.exception("%s %s could not be evaluated", plural, name)
            failed = Decision(status={"observedGeneration": obj["metadata"].get("generation")}, conditions=[
                Condition(COND_VALID, "False", R_EVALUATION_FAILED,
                          f"kupd could not evaluate this object ({type(e).__name__}: {str(e)[:300]}); "
                          "it is retried on every pass, and other schedules are not affected")])
            try:
                self._write_status(plural, obj, failed, now)
            except Exception as e2:
                log.warning("%s %s: writing its status: %s", plural, name, e2)
            return [now + self.retry]
        return [d.wake] if d.wake is not None else []

    def _execute(self, plural: str, obj: Obj, d: Decision, now: datetime) -> None:
        for child, window in d.set_windows.items():
            log.info("moving the window of DirectUpdate %s to %s", child, window)
            self._call(f"moving the window of DirectUpdate {child}", self.api.patch, _path(DIRECTUPDATES, child),
                       {"metadata": {"annotations": window}}, kind="merge", ignore_missing=True)
        if d.create is not None:
            self._create(d)
        for child in d.delete:
            log.info("deleting DirectUpdate %s beyond the history limit", child)
            self._call(f"deleting DirectUpdate {child}", self.api.delete, _path(DIRECTUPDATES, child),
                       propagationPolicy="Background", ignore_missing=True)
        self._write_status(plural, obj, d, now)

    def _create(self, d: Decision) -> None:
        assert d.create is not None
        new = d.create
        try:
            spec = operation_spec(new.template, resolve_version(new.template.version, self.resolve_minor))
        except ValidationError as e:
            self._fail(d, new, R_RESOLVE_FAILED, str(e))
            return
        except Exception as e:  # the package source is I/O: any failure there is worth a retry
            self._fail(d, new, R_RESOLVE_FAILED, f"resolving {new.template.version}: {e}", retry=True)
            return
        body = {
            "apiVersion": API_VERSION,
            "kind": "DirectUpdate",
            "metadata": {"name": new.name, "labels": new.labels, "annotations": new.annotations,
                         "ownerReferences": [new.owner]},
            "spec": spec,
        }
        what = f"creating DirectUpdate {new.name}"
        try:
            k8s.call(self.api.create, what, _path(DIRECTUPDATES), body, fieldManager=FIELD_MANAGER)
            log.info("created DirectUpdate %s (version %s)", new.name, spec["version"])
        except k8s.Conflict:
            existing = self._call(f"reading DirectUpdate {new.name}", self.api.get, _path(DIRECTUPDATES, new.name),
                                  ignore_missing=True)
            if existing is not None and is_owned_by(existing, new.owner["uid"]):
                return  # created by an earlier pass that did not get to write status
            self._fail(d, new, R_NAME_CONFLICT,
                       f"a DirectUpdate named {new.name} exists and was not created by this schedule")
        except PermanentError as e:
            self._fail(d, new, R_CREATE_FAILED, str(e))

    def _fail(self, d: Decision, new: NewOperation, reason: str, message: str, retry: bool = False) -> None:
        """The create did not happen: say so instead of claiming it did, and do not consume the firing.

        A retryable failure is tried again after `retry_seconds`; a permanent one on every pass
        (cheaply: the same status is not rewritten) until the spec or the conflict changes."""
        log.warning("%s: %s", new.name, message)
        if retry:
            again = self.clock.now() + self.retry
            d.wake = again if d.wake is None else min(d.wake, again)
        kind_cond = COND_STARTED if new.owner["kind"] == "ScheduledUpdate" else COND_SCHEDULED
        d.conditions = [c for c in d.conditions if c.type != kind_cond]
        d.conditions.append(Condition(kind_cond, "False", reason, message))
        if kind_cond == COND_STARTED:
            d.status["phase"] = "Waiting" if retry else "Failed"
            d.status.pop("operation", None)
        else:
            d.status.pop("lastScheduleTime", None)
            d.status["active"] = [n for n in d.status.get("active", []) if n != new.name]

    def _write_status(self, plural: str, obj: Obj, d: Decision, now: datetime) -> None:
        current = obj.get("status") or {}
        status = dict(d.status)
        status["conditions"] = merge_conditions(current.get("conditions") or [], d.conditions, now,
                                                obj["metadata"].get("generation"))
        if all(current.get(k) == v for k, v in status.items()):
            return
        body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "status": status}
        # A 409 means the object changed since it was listed: the next pass sees the new version.
        self._call("writing status", self.api.patch, _path(plural, obj["metadata"]["name"], "status"), body,
                   kind="merge", fieldManager=FIELD_MANAGER, ignore_missing=True)

    def _list(self, plural: str, label_selector: str | None = None) -> list[Obj]:
        result = self._call(f"listing {plural}", self.api.list, _path(plural), labelSelector=label_selector)
        items: list[Obj] = result.get("items") or []
        return items

    def _call(self, what: str, fn: Callable[..., Obj], *args: Any, ignore_missing: bool = False,
              **kwargs: Any) -> Any:
        try:
            return k8s.call(fn, what, *args, **kwargs)
        except k8s.NotFound:
            if ignore_missing:
                return None
            raise


def merge_conditions(current: Sequence[Mapping[str, Any]], wanted: Sequence[Condition], now: datetime,
                     generation: int | None) -> list[Obj]:
    """Conditions after this pass (see kupd.conditions.merge); a schedule's messages may be long."""
    return conditions.merge(current, wanted, now, generation, message_limit=32000)


def _optional_time(value: object, field: str) -> datetime | None:
    return None if value in (None, "") else parse_time(value, field)


def _phase(child: Obj) -> str:
    return str((child.get("status") or {}).get("phase") or "Pending")


def _scheduled_at(child: Obj) -> str:
    meta = child["metadata"]
    annotations = meta.get("annotations") or {}
    return str(annotations.get(ANN_SCHEDULED_TIME) or meta.get("creationTimestamp") or "")


def _history_entry(child: Obj) -> Obj:
    entry: Obj = {"name": child["metadata"]["name"], "phase": _phase(child)}
    started = (child.get("status") or {}).get("startedAt") or _scheduled_at(child)
    if started:
        entry["startedAt"] = started
    return entry


def _duration(delta: timedelta) -> str:
    return str(timedelta(seconds=round(delta.total_seconds())))


def _path(plural: str, name: str | None = None, subresource: str | None = None) -> str:
    return k8s.kupd_path(plural, name, subresource)


__all__ = [
    "ANN_REQUESTED_VERSION", "ANN_SCHEDULE", "ANN_SCHEDULED_TIME", "ANN_SCHEDULED_UPDATE", "ANN_WINDOW_END",
    "ANN_WINDOW_START", "LABEL_CREATED_BY", "LABEL_CREATOR_UID", "Decision", "Scheduler", "Window",
    "decide_scheduled_update", "decide_update_schedule", "operation_name",
]
