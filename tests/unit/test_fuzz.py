"""Property-based fuzzing (hypothesis) of everything that parses untrusted text: the CR models,
kupd.validate, kupd.versions and the command-output parsers.

The properties: nothing raises anything but kupd's ValidationError (or OutputError for command
output), and whatever is accepted matches the strict ASCII pattern it claims to, so no shell
metacharacter, control character, newline or Unicode look-alike gets through.
"""

from __future__ import annotations

import contextlib
import copy
import re
import string
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from kupd import validate
from kupd.api import models
from kupd.errors import ValidationError
from kupd.host import parsers
from kupd.versions import Version

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters an attacker reaches for, mixed with the ones valid values are made of, so generated
# strings are often almost valid (the interesting case) rather than plain noise.
NASTY = ";|&$`'\"\\<>(){}[]*?!~#%^\n\r\t\x00\x0b\x1b /.:=,+-_@"
LOOKALIKES = "\u0661\uff11\u0660\u03bd\u0430\u0435\u043e\u2011\u2212\u200b\u202e\u00a0\ufeff\u0131\u212a"
ALPHABET = string.ascii_letters + string.digits + NASTY + LOOKALIKES
texts = st.one_of(
    st.text(alphabet=ALPHABET, max_size=80),
    st.text(max_size=40),  # any Unicode at all
    st.sampled_from(["v1.32.0", "1.7.22", "/var/lib/kupd", "https://mirror.example/deb", "app=web",
                     "kupd-backups", "us-east-1", "kupd/backups/"]).flatmap(
        lambda ok: st.tuples(st.text(alphabet=ALPHABET, max_size=6), st.text(alphabet=ALPHABET, max_size=6)).map(
            lambda ab: ab[0] + ok + ab[1])),
)
ASCII_PRINTABLE = re.compile(r"[\x21-\x7e]*")


def _strict(pattern: str, value: str) -> None:
    assert re.fullmatch(pattern, value, re.ASCII), f"{value!r} accepted but does not match {pattern}"
    assert value.isascii() and "\n" not in value and "\x00" not in value


# -- kupd.validate -------------------------------------------------------------------------

VALIDATORS: list[tuple[Callable[[str, str], str], str]] = [
    (validate.k8s_version, validate.K8S_VERSION),
    (validate.containerd_version, validate.CONTAINERD_VERSION),
    (validate.package_version, validate.PACKAGE_VERSION),
    (validate.package_name, validate.PACKAGE_NAME),
    (validate.node_name, validate.DNS_SUBDOMAIN),
    (validate.safe_path, validate.SAFE_PATH),
    (validate.safe_url, validate.SAFE_URL),
    (validate.bucket_name, validate.BUCKET_NAME),
    (validate.object_prefix, validate.OBJECT_PREFIX),
]


@pytest.mark.parametrize(("check", "pattern"), VALIDATORS, ids=[v[0].__name__ for v in VALIDATORS])
@FUZZ
@given(value=texts)
def test_validators_accept_only_strict_ascii(check: Callable[[str, str], str], pattern: str, value: str) -> None:
    try:
        out = check(value, "field")
    except ValidationError as e:
        assert e.field == "field"
        return
    assert out == value
    _strict(pattern, value)
    assert ASCII_PRINTABLE.fullmatch(value), f"{value!r} has whitespace or control characters"
    if check in (validate.safe_path, validate.object_prefix):
        assert ".." not in value.split("/")


@FUZZ
@given(value=st.one_of(st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2), st.binary(max_size=8)))
def test_validators_refuse_non_strings(value: Any) -> None:
    for check, _ in VALIDATORS:
        with pytest.raises(ValidationError):
            check(value, "field")


# -- the CR models ---------------------------------------------------------------------------

BASE: dict[str, Any] = {"version": "v1.32.0", "backup": {"required": False}}
# Every spec string that can reach a command, a path, a URL or an API selector, with the pattern
# an accepted value must match. `None` in a path: a map key (the value is fixed).
STRING_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("version", {}, validate.K8S_VERSION),
    ("containerdVersion", {}, validate.CONTAINERD_VERSION),
    ("packageSource.mirror.url", {"packageSource": {"type": "mirror", "mirror": {"url": "https://m.example/"}}},
     validate.SAFE_URL),
    ("packageSource.mirror.gpgKeyUrl",
     {"packageSource": {"type": "mirror", "mirror": {"url": "https://m.example/"}}}, validate.SAFE_URL),
    ("packageSource.bundle.path",
     {"packageSource": {"type": "bundle", "bundle": {"path": "/srv/b", "manifest": "/srv/b.json"}}},
     validate.SAFE_PATH),
    ("packageSource.bundle.manifest",
     {"packageSource": {"type": "bundle", "bundle": {"path": "/srv/b", "manifest": "/srv/b.json"}}},
     validate.SAFE_PATH),
    ("backup.store.path", {"backup": {"required": False, "store": {"type": "file", "path": "/b"}}},
     validate.SAFE_PATH),
    ("backup.store.bucket", {"backup": {"required": False, "store": {"type": "s3", "bucket": "bkt"}}},
     validate.BUCKET_NAME),
    ("backup.store.prefix", {"backup": {"required": False, "store": {"type": "s3", "bucket": "bkt"}}},
     validate.OBJECT_PREFIX),
    ("backup.store.endpoint", {"backup": {"required": False, "store": {"type": "s3", "bucket": "bkt"}}},
     validate.SAFE_URL),
    ("backup.store.region", {"backup": {"required": False, "store": {"type": "s3", "bucket": "bkt"}}},
     validate.DNS_LABEL),
    ("backup.store.credentialsSecret.name",
     {"backup": {"required": False, "store": {"type": "s3", "bucket": "bkt",
                                              "credentialsSecret": {"namespace": "ns", "name": "n"}}}},
     validate.DNS_SUBDOMAIN),
    ("backup.store.credentialsSecret.namespace",
     {"backup": {"required": False, "store": {"type": "s3", "bucket": "bkt",
                                              "credentialsSecret": {"namespace": "ns", "name": "n"}}}},
     validate.DNS_LABEL),
    ("backup.etcd.caFile", {"backup": {"required": False, "etcd": {"endpoints": ["https://127.0.0.1:2379"]}}},
     validate.SAFE_PATH),
    ("drain.podSelector", {}, validate.LABEL_SELECTOR),
]


def _set(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    node = out
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, re.sub(r"(?<!^)([A-Z])", r"_\1", part).lower())
    return obj


@pytest.mark.parametrize(("path", "extra", "pattern"), STRING_FIELDS, ids=[f[0] for f in STRING_FIELDS])
@FUZZ
@given(value=texts)
def test_directupdate_string_fields_accept_only_strict_values(path: str, extra: dict[str, Any], pattern: str,
                                                              value: str) -> None:
    spec = _set({**copy.deepcopy(BASE), **copy.deepcopy(extra)}, path, value)
    try:
        parsed = models.parse_directupdate_spec(spec)
    except ValidationError as e:
        assert e.field.startswith("spec"), e.field
        return
    got = _get(parsed, path)
    assert got == value
    _strict(pattern, value)


@FUZZ
@given(value=texts)
def test_endpoints_and_label_maps_accept_only_strict_values(value: str) -> None:
    for spec, pattern in (
        (_set(BASE, "backup.etcd", {"endpoints": [value]}), validate.SAFE_URL),
        (_set(BASE, "nodeSelector", {"matchLabels": {"app": value}}), validate.LABEL_VALUE),
        (_set(BASE, "nodeSelector", {"matchLabels": {value: "x"}}), validate.LABEL_KEY),
    ):
        try:
            models.parse_directupdate_spec(spec)
        except ValidationError:
            continue
        _strict(pattern, value)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63) | st.floats(allow_nan=False)
    | texts,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(
        ["version", "containerdVersion", "nodeSelector", "concurrency", "canary", "backup", "drain",
         "packageSource", "reboot", "maxAttempts", "paused", "store", "etcd", "type", "bucket", "path",
         "url", "mirror", "bundle", "endpoints", "matchLabels", "matchExpressions", "count", "selector",
         "podSelector", "timeoutSeconds", "required", "schedule", "timeZone", "template", "startTime"])
        | texts, children, max_size=5),
    max_leaves=20,
)


@FUZZ
@given(spec=st.dictionaries(st.sampled_from(["version", "backup", "drain", "canary", "packageSource",
                                              "nodeSelector", "concurrency", "containerdVersion"]) | texts,
                            JSON, max_size=6))
def test_cr_models_raise_only_validation_errors(spec: dict[str, Any]) -> None:
    for parse in (models.parse_directupdate_spec, models.parse_scheduledupdate_spec,
                  models.parse_updateschedule_spec):
        try:
            parse(spec)
        except ValidationError as e:
            assert e.field.startswith("spec")


@FUZZ
@given(obj=JSON)
def test_cr_models_refuse_non_objects_cleanly(obj: Any) -> None:
    assume(not isinstance(obj, dict))
    with pytest.raises(ValidationError):
        models.parse_directupdate_spec({"apiVersion": "kupd.io/v1alpha1", "spec": obj})


# -- versions --------------------------------------------------------------------------------

STRICT_VERSION = r"v?(0|[1-9][0-9]{0,3}|[0-9]{1,4})\.[0-9]{1,4}\.[0-9]{1,4}"


@FUZZ
@given(text=texts)
def test_version_parse_raises_only_validation_errors_and_round_trips(text: str) -> None:
    try:
        v = Version.parse(text)
    except ValidationError:
        return
    assert re.fullmatch(r"v[0-9]+\.[0-9]+\.[0-9]+", str(v))
    assert Version.parse(str(v)) == v


@FUZZ
@given(text=texts)
@example(text="v\u0661.31.2")
@example(text="v1.\uff13\uff11.2")
def test_version_parse_accepts_only_ascii_versions(text: str) -> None:
    try:
        Version.parse(text)
    except ValidationError:
        return
    assert re.fullmatch(STRICT_VERSION, text.strip(), re.ASCII), f"{text!r} accepted"


@FUZZ
@given(text=texts)
def test_version_from_package_raises_only_validation_errors(text: str) -> None:
    with contextlib.suppress(ValidationError):
        Version.from_package(text)


# -- command-output parsers ------------------------------------------------------------------

lines = st.lists(st.one_of(
    texts,
    st.sampled_from(["Kubernetes v1.31.2", "Client Version: v1.31.2", "containerd github.com/containerd/containerd "
                     "v1.7.22 7f7fdf5", "[upgrade/versions] Cluster version: v1.31.2",
                     "[upgrade/versions] kubeadm version: v1.32.0", "COMPONENT   NODE   CURRENT   TARGET",
                     "kubelet     cp-1   v1.31.2   v1.32.0", "Installed Packages", "Available Packages",
                     "kubeadm.x86_64  1.32.0-150500.1.1  kubernetes", "kubeadm 0:1.31.2-150500.1.1",
                     "        kubeadm upgrade apply v1.32.0", "active"]),
), max_size=8).map("\n".join)

PARSERS: list[Callable[[str], Any]] = [
    parsers.kubeadm_version, parsers.kubelet_version, parsers.kubectl_version, parsers.containerd_version,
    parsers.upgrade_plan, parsers.dnf_list, parsers.rpm_query, parsers.systemctl_is_active,
]


@pytest.mark.parametrize("parse", PARSERS, ids=[f.__name__ for f in PARSERS])
@FUZZ
@given(text=lines)
def test_output_parsers_raise_only_their_typed_errors(parse: Callable[[str], Any], text: str) -> None:
    try:
        out = parse(text)
    except (parsers.OutputError, ValidationError):
        return
    if isinstance(out, Version):
        assert re.fullmatch(r"v[0-9]+\.[0-9]+\.[0-9]+", str(out))
    if parse is parsers.systemctl_is_active:
        assert re.fullmatch(r"[a-z-]+", out)


@FUZZ
@given(text=lines)
@example(text="containerd github.com/containerd/containerd v\u0661.7.22 7f7fdf5\n")
def test_containerd_version_is_always_ascii(text: str) -> None:
    try:
        out = parsers.containerd_version(text)
    except parsers.OutputError:
        return
    assert re.fullmatch(r"[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}", out), out


@FUZZ
@given(evr=st.one_of(texts, st.from_regex(r"[0-9a-z:.~-]{0,12}", fullmatch=True)))
@example(evr="x:1.2-1")
def test_rpm_version_key_raises_only_typed_errors(evr: str) -> None:
    try:
        epoch, parts = parsers.rpm_version_key(evr)
    except (parsers.OutputError, ValidationError):
        return
    assert epoch >= 0 and isinstance(parts, list)


# -- redaction of store answers -----------------------------------------------------------------


def _encoded_forms(value: str) -> dict[str, str]:
    import base64
    import urllib.parse

    raw = value.encode()
    return {"plain": value, "upper": value.upper(), "lower": value.lower(), "swapcase": value.swapcase(),
            "base64": base64.b64encode(raw).decode(), "base64url": base64.urlsafe_b64encode(raw).decode(),
            "url": urllib.parse.quote(value, safe=""), "url-plus": urllib.parse.quote_plus(value),
            "hex": raw.hex(), "HEX": raw.hex().upper()}


@FUZZ
@given(secret=st.text(alphabet=string.ascii_letters + string.digits + "/+=-_ :?&%~.", min_size=12, max_size=60),
       prefix=st.binary(max_size=5), around=st.tuples(st.text(max_size=20), st.text(max_size=20)))
def test_redaction_covers_the_encodings_a_store_may_echo(secret: str, prefix: bytes,
                                                         around: tuple[str, str]) -> None:
    import base64

    from kupd.backup.credentials import Credentials

    creds = Credentials(access_key_id="AKIAEXAMPLE", secret_access_key=secret)
    forms = _encoded_forms(secret)
    # Base64 of a longer text the secret is part of: each alignment encodes it differently.
    forms["embedded-base64"] = base64.b64encode(prefix + secret.encode()).decode()
    for how, form in forms.items():
        out = creds.redact(around[0] + form + around[1])
        assert "***" in out, f"{how}: {form!r} not redacted"
        stripped = out.replace("***", "\x00")
        if how in ("plain", "upper", "lower", "swapcase", "url", "url-plus", "hex", "HEX"):
            assert form not in stripped and secret not in stripped, f"{how} leaked: {out!r}"
        else:
            # Base64: only the part fully determined by the secret is known; what remains is the
            # prefix's own encoding, a character mixing its bits in, and the padded end.
            residue = len(around[0]) + len(around[1]) + (len(prefix) * 4 + 2) // 3 + 1 + 4
            assert len(out) <= residue + 3, f"{how} left too much: {out!r}"
