"""kupd's CRDs in a test control plane, and the malformed custom resources every layer must refuse.

`install_crds(cp)` is what every cluster test module calls before it touches a DirectUpdate: it
server-side-applies crds/ (a no-op when they are already there) and returns once the API server
serves the three kinds. MALFORMED lists custom resources that are each wrong in exactly one field,
with the field path the API server and kupd.api.models must both name.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

from kupd.sim.devcluster import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
EXAMPLES_DIR = ROOT / "examples"
KINDS = {"DirectUpdate": "directupdates", "ScheduledUpdate": "scheduledupdates", "UpdateSchedule": "updateschedules"}
CRD_NAMES = tuple(f"{plural}.kupd.io" for plural in KINDS.values())


def install_crds(cp: ControlPlane, timeout: float = 60.0) -> None:
    """Apply crds/ and wait until the kinds are Established and served. Safe to call repeatedly."""
    # The same field manager as ControlPlane.install_crds, so either may run first.
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    cp.kubectl("wait", "--for=condition=Established", *(f"crd/{n}" for n in CRD_NAMES),
               f"--timeout={int(timeout)}s")
    # Established means the API server serves the kinds; discovery (which kubectl and the
    # Python client resolve kinds through) can trail it by a moment.
    deadline = time.monotonic() + timeout
    while True:
        res = cp.kubectl("get", ",".join(KINDS.values()), "-o", "name", check=False)
        if res.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"kupd kinds not served after {timeout}s: {res.stderr.strip()}")
        time.sleep(0.2)


# -- malformed custom resources ---------------------------------------------------------------


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


BASE_SPECS: dict[str, dict[str, Any]] = {
    "DirectUpdate": {"version": "v1.31.2"},
    "ScheduledUpdate": {"startTime": "2026-12-01T02:00:00Z", "template": {"version": "v1.31.2"}},
    "UpdateSchedule": {"schedule": "0 2 * * sat", "timeZone": "Europe/Berlin", "template": {"version": "v1.31"}},
}


@dataclasses.dataclass(frozen=True)
class Malformed:
    """A custom resource wrong in one field. `spec` is merged into the kind's valid base spec;
    `drop` removes keys of the spec (dotted) after the merge."""

    id: str
    kind: str
    field: str
    spec: dict[str, Any] = dataclasses.field(default_factory=dict)
    drop: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "bad-" + self.id

    def object(self) -> dict[str, Any]:
        spec = _merge(BASE_SPECS[self.kind], self.spec)
        for dotted in self.drop:
            *parents, last = dotted.split(".")
            node = spec
            for p in parents:
                node = node[p]
            del node[last]
        return {"apiVersion": "kupd.io/v1alpha1", "kind": self.kind, "metadata": {"name": self.name},
                "spec": spec}


def _du(id_: str, field_: str, spec: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> Malformed:
    return Malformed(id_, "DirectUpdate", field_, spec or {}, drop)


HUGE = "v1." + "1" * 10_000 + ".2"
VALID_S3 = {"type": "s3", "bucket": "etcd-backups"}
VALID_SELECTOR_EXPR = {"key": "pool", "operator": "In", "values": ["a"]}

MALFORMED: list[Malformed] = [
    # version
    _du("version-missing", "spec.version", drop=("version",)),
    _du("version-minor-only", "spec.version", {"version": "v1.31"}),
    _du("version-no-v", "spec.version", {"version": "1.31.2"}),
    _du("version-shell", "spec.version", {"version": "v1.31.2; rm -rf /"}),
    _du("version-subshell", "spec.version", {"version": "$(reboot)"}),
    _du("version-newline", "spec.version", {"version": "v1.31.2\nv1.30.0"}),
    _du("version-fullwidth-digit", "spec.version", {"version": "v1.\uff131.2"}),
    _du("version-arabic-indic-digit", "spec.version", {"version": "v1.3\u0661.2"}),
    _du("version-prerelease", "spec.version", {"version": "v1.31.2-rc.0"}),
    _du("version-leading-zero", "spec.version", {"version": "v1.031.2"}),
    _du("version-number", "spec.version", {"version": 1.31}),
    _du("version-10k-chars", "spec.version", {"version": HUGE}),
    _du("containerd-shell", "spec.containerdVersion", {"containerdVersion": "1.7.22 && reboot"}),
    # scheduling knobs
    _du("concurrency-zero", "spec.concurrency", {"concurrency": 0}),
    _du("concurrency-negative", "spec.concurrency", {"concurrency": -1}),
    _du("concurrency-huge", "spec.concurrency", {"concurrency": 100000}),
    _du("concurrency-string", "spec.concurrency", {"concurrency": "5"}),
    _du("max-attempts-11", "spec.maxAttempts", {"maxAttempts": 11}),
    _du("paused-string", "spec.paused", {"paused": "yes"}),
    _du("reboot-enum", "spec.reboot", {"reboot": "Sometimes"}),
    # unknown fields (strict field validation)
    _du("unknown-top", "spec.force", {"force": True}),
    _du("unknown-nested", "spec.drain.force", {"drain": {"force": True}}),
    _du("unknown-camel-case-typo", "spec.nodeselector", {"nodeselector": {}}),
    # selectors
    _du("selector-operator", "spec.nodeSelector.matchExpressions[0].operator",
        {"nodeSelector": {"matchExpressions": [{"key": "pool", "operator": "Matches", "values": ["a"]}]}}),
    _du("selector-exists-with-values", "spec.nodeSelector.matchExpressions[0].values",
        {"nodeSelector": {"matchExpressions": [{"key": "pool", "operator": "Exists", "values": ["a"]}]}}),
    _du("selector-in-without-values", "spec.nodeSelector.matchExpressions[1].values",
        {"nodeSelector": {"matchExpressions": [VALID_SELECTOR_EXPR, {"key": "pool", "operator": "In"}]}}),
    _du("selector-bad-key", "spec.nodeSelector.matchExpressions[0].key",
        {"nodeSelector": {"matchExpressions": [{"key": "pool;reboot", "operator": "Exists"}]}}),
    _du("selector-label-key-injection", "spec.nodeSelector.matchLabels",
        {"nodeSelector": {"matchLabels": {"pool`reboot`": "a"}}}),
    _du("selector-label-value-subshell", "spec.nodeSelector.matchLabels.pool",
        {"nodeSelector": {"matchLabels": {"pool": "$(reboot)"}}}),
    # canary
    _du("canary-count-and-selector", "spec.canary.count",
        {"canary": {"count": 2, "selector": {"matchLabels": {"canary": "true"}}}}),
    _du("canary-count-101", "spec.canary.count", {"canary": {"count": 101}}),
    _du("canary-bake-negative", "spec.canary.bakeSeconds", {"canary": {"bakeSeconds": -5}}),
    # backup store
    _du("store-type", "spec.backup.store.type", {"backup": {"store": {"type": "ftp", "bucket": "b-1"}}}),
    _du("s3-without-bucket", "spec.backup.store.bucket", {"backup": {"store": {"type": "s3"}}}),
    _du("gcs-without-bucket", "spec.backup.store.bucket", {"backup": {"store": {"type": "gcs"}}}),
    _du("bucket-subshell", "spec.backup.store.bucket",
        {"backup": {"store": {"type": "s3", "bucket": "$(reboot)"}}}),
    _du("bucket-s3-underscore", "spec.backup.store.bucket",
        {"backup": {"store": {"type": "s3", "bucket": "etcd_backups"}}}),
    _du("bucket-double-dot", "spec.backup.store.bucket", {"backup": {"store": {"type": "gcs", "bucket": "a..b"}}}),
    _du("prefix-subshell", "spec.backup.store.prefix",
        {"backup": {"store": VALID_S3 | {"prefix": "$(reboot)/x"}}}),
    _du("prefix-traversal", "spec.backup.store.prefix", {"backup": {"store": VALID_S3 | {"prefix": "../../etc"}}}),
    _du("prefix-10k-chars", "spec.backup.store.prefix", {"backup": {"store": VALID_S3 | {"prefix": "a" * 10_000}}}),
    _du("endpoint-subshell", "spec.backup.store.endpoint",
        {"backup": {"store": VALID_S3 | {"endpoint": "https://s3.example.com/$(reboot)"}}}),
    _du("endpoint-file-scheme", "spec.backup.store.endpoint",
        {"backup": {"store": VALID_S3 | {"endpoint": "file:///etc/passwd"}}}),
    _du("region-injection", "spec.backup.store.region",
        {"backup": {"store": VALID_S3 | {"region": "eu-central-1 --debug"}}}),
    _du("secret-namespace", "spec.backup.store.credentialsSecret.namespace",
        {"backup": {"store": VALID_S3 | {"credentialsSecret": {"namespace": "Kube_System", "name": "s"}}}}),
    _du("retention-zero", "spec.backup.store.retention", {"backup": {"store": VALID_S3 | {"retention": 0}}}),
    _du("file-without-path", "spec.backup.store.path", {"backup": {"store": {"type": "file"}}}),
    _du("file-with-bucket", "spec.backup.store.bucket",
        {"backup": {"store": {"type": "file", "path": "/backups", "bucket": "etcd"}}}),
    _du("path-traversal", "spec.backup.store.path",
        {"backup": {"store": {"type": "file", "path": "/var/backups/../../etc"}}}),
    _du("path-relative", "spec.backup.store.path", {"backup": {"store": {"type": "file", "path": "backups"}}}),
    _du("path-subshell", "spec.backup.store.path",
        {"backup": {"store": {"type": "file", "path": "/backups/$(reboot)"}}}),
    # etcd access
    _du("etcd-too-many-endpoints", "spec.backup.etcd.endpoints",
        {"backup": {"etcd": {"endpoints": [f"https://10.0.0.{i}:2379" for i in range(8)]}}}),
    _du("etcd-endpoint-flag", "spec.backup.etcd.endpoints[1]",
        {"backup": {"etcd": {"endpoints": ["https://10.0.0.1:2379", "https://10.0.0.2:2379 --insecure"]}}}),
    _du("etcd-cert-without-key", "spec.backup.etcd.keyFile",
        {"backup": {"etcd": {"endpoints": ["https://10.0.0.1:2379"], "certFile": "/etc/k/c.crt"}}}),
    _du("etcd-ca-newline", "spec.backup.etcd.caFile",
        {"backup": {"etcd": {"endpoints": ["https://10.0.0.1:2379"], "caFile": "/etc/ca.crt\n/etc/shadow"}}}),
    # drain
    _du("drain-timeout-short", "spec.drain.timeoutSeconds", {"drain": {"timeoutSeconds": 10}}),
    _du("drain-grace-over-timeout", "spec.drain.gracePeriodSeconds",
        {"drain": {"timeoutSeconds": 60, "gracePeriodSeconds": 120}}),
    _du("drain-pod-selector-shell", "spec.drain.podSelector", {"drain": {"podSelector": "app=web; reboot"}}),
    _du("drain-on-timeout-enum", "spec.drain.onTimeout", {"drain": {"onTimeout": "Ignore"}}),
    # package source
    _du("mirror-type-without-mirror", "spec.packageSource.mirror", {"packageSource": {"type": "mirror"}}),
    _du("upstream-with-bundle", "spec.packageSource.bundle",
        {"packageSource": {"bundle": {"path": "/b", "manifest": "/b/SHA256SUMS"}}}),
    _du("mirror-url-newline", "spec.packageSource.mirror.url",
        {"packageSource": {"type": "mirror", "mirror": {"url": "https://m.example.com/\nrm -rf /"}}}),
    _du("mirror-gpg-url-subshell", "spec.packageSource.mirror.gpgKeyUrl",
        {"packageSource": {"type": "mirror", "mirror": {"url": "https://m.example.com/k8s",
                                                        "gpgKeyUrl": "https://m.example.com/$(id).key"}}}),
    _du("bundle-manifest-traversal", "spec.packageSource.bundle.manifest",
        {"packageSource": {"type": "bundle", "bundle": {"path": "/b", "manifest": "/b/../../etc/shadow"}}}),
    # ScheduledUpdate
    Malformed("su-start-missing", "ScheduledUpdate", "spec.startTime", drop=("startTime",)),
    Malformed("su-start-no-offset", "ScheduledUpdate", "spec.startTime", {"startTime": "2026-12-01T02:00:00"}),
    Malformed("su-start-words", "ScheduledUpdate", "spec.startTime", {"startTime": "tomorrow"}),
    Malformed("su-template-minor", "ScheduledUpdate", "spec.template.version", {"template": {"version": "v1.31"}}),
    Malformed("su-template-concurrency", "ScheduledUpdate", "spec.template.concurrency",
              {"template": {"concurrency": 0}}),
    Malformed("su-template-unknown", "ScheduledUpdate", "spec.template.force", {"template": {"force": True}}),
    # UpdateSchedule
    Malformed("us-cron-minute-61", "UpdateSchedule", "spec.schedule", {"schedule": "61 2 * * *"}),
    Malformed("us-cron-six-fields", "UpdateSchedule", "spec.schedule", {"schedule": "0 0 2 * * *"}),
    Malformed("us-cron-macro", "UpdateSchedule", "spec.schedule", {"schedule": "@daily"}),
    Malformed("us-cron-injection", "UpdateSchedule", "spec.schedule", {"schedule": "0 2 * * *; reboot"}),
    Malformed("us-tz-traversal", "UpdateSchedule", "spec.timeZone", {"timeZone": "Europe/../../etc/passwd"}),
    Malformed("us-tz-shell", "UpdateSchedule", "spec.timeZone", {"timeZone": "Europe/Berlin; reboot"}),
    Malformed("us-window-short", "UpdateSchedule", "spec.window.durationMinutes",
              {"window": {"durationMinutes": 10}}),
    Malformed("us-blackout-month-13", "UpdateSchedule", "spec.blackoutDates[1]",
              {"blackoutDates": ["2026-12-24", "2026-13-01"]}),
    Malformed("us-policy-enum", "UpdateSchedule", "spec.concurrencyPolicy", {"concurrencyPolicy": "Replace"}),
    Malformed("us-history-limit", "UpdateSchedule", "spec.successfulHistoryLimit",
              {"successfulHistoryLimit": 101}),
    Malformed("us-template-no-v", "UpdateSchedule", "spec.template.version", {"template": {"version": "1.31"}}),
    Malformed("us-template-patchless-injection", "UpdateSchedule", "spec.template.version",
              {"template": {"version": "v1.31 $(reboot)"}}),
]
