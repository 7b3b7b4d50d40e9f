"""Store credentials: from a Kubernetes Secret (read at use time) or a root-only file.

Secret keys: `accessKeyId`, `secretAccessKey`, optional `sessionToken` (S3 and S3-compatible stores);
`serviceAccountJson` (GCS). A credentials file holds the same keys as a JSON object, or is itself a GCS
service-account key file. No value ever reaches a log line, an exception message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kupd import validate
from kupd.backup import CREDENTIALS_INVALID, CREDENTIALS_UNAVAILABLE, BackupFailed, BackupRetryable
from kupd.errors import PermanentError, RetryableError

if TYPE_CHECKING:
    from kupd.k8s import Client

KEYS = ("accessKeyId", "secretAccessKey", "sessionToken", "serviceAccountJson")


@dataclass(frozen=True, repr=False, eq=False)
class Credentials:
    """Secret values for one store; `source` (never a value) says where they came from."""

    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    service_account_json: str | None = None
    source: str = "none"
    _unknown: tuple[str, ...] = field(default=(), compare=False)

    def __repr__(self) -> str:
        have = [name for name, value in self._named() if value]
        return f"Credentials(source={self.source!r}, set={have})"

    __str__ = __repr__

    def _named(self) -> list[tuple[str, str | None]]:
        return [
            ("accessKeyId", self.access_key_id),
            ("secretAccessKey", self.secret_access_key),
            ("sessionToken", self.session_token),
            ("serviceAccountJson", self.service_account_json),
        ]

    @property
    def empty(self) -> bool:
        return not any(value for _, value in self._named())

    def s3_keys(self) -> tuple[str, str, str | None] | None:
        """(access key id, secret access key, session token), or None to use boto3's default chain."""
        if not self.access_key_id and not self.secret_access_key:
            return None
        if not self.access_key_id or not self.secret_access_key:
            missing = "secretAccessKey" if self.access_key_id else "accessKeyId"
            raise BackupFailed(CREDENTIALS_INVALID, f"{self.source} has no {missing}; S3 needs both keys")
        return self.access_key_id, self.secret_access_key, self.session_token or None

    def service_account_info(self) -> dict[str, Any] | None:
        """The parsed service-account key, or None when there is none."""
        if not self.service_account_json:
            return None
        try:
            info = json.loads(self.service_account_json)
        except ValueError:
            raise BackupFailed(
                CREDENTIALS_INVALID, f"serviceAccountJson in {self.source} is not valid JSON"
            ) from None
        if not isinstance(info, dict) or info.get("type") != "service_account":
            raise BackupFailed(
                CREDENTIALS_INVALID,
                f'serviceAccountJson in {self.source} is not a service-account key (no "type": '
                '"service_account")',
            )
        for needed in ("client_email", "private_key", "token_uri"):
            if not info.get(needed):
                raise BackupFailed(
                    CREDENTIALS_INVALID, f"serviceAccountJson in {self.source} has no {needed!r}"
                )
        return info

    def redact(self, text: str) -> str:
        """`text` with every secret value replaced by ***: for messages that quote a library's error.

        A store may echo a value back transformed, so each value is also matched base64-encoded
        (standard and URL-safe alphabets, at any byte alignment), URL-encoded, hex-encoded and
        JSON-escaped, all regardless of case."""
        pattern = self._pattern()
        return pattern.sub("***", text) if pattern is not None else text

    def _secrets(self) -> list[str]:
        values = [value for name, value in self._named() if value and name != "accessKeyId"]
        if self.service_account_json:
            try:
                info = json.loads(self.service_account_json)
            except ValueError:
                info = None
            if isinstance(info, dict):
                values += [v for k in ("private_key", "private_key_id") if isinstance(v := info.get(k), str)]
        if self.access_key_id:
            values.append(self.access_key_id)
        return [v for v in values if len(v) >= 4]

    def _pattern(self) -> re.Pattern[str] | None:
        forms: set[str] = set()
        for value in self._secrets():
            forms |= _encodings(value)
            # A PEM key is echoed line by line as often as whole.
            forms |= {line for line in value.splitlines() if len(line) >= 16}
        if not forms:
            return None
        alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
        return re.compile(alternatives, re.IGNORECASE)


NONE = Credentials()


def _encodings(value: str) -> set[str]:
    """The forms of `value` a store or library may echo: itself, URL-, hex- and JSON-encoded, and
    base64 in both alphabets. Base64 depends on where the value starts in the encoded text, so
    for each of the three alignments the part fully determined by the value is used."""
    raw = value.encode()
    forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value),
             urllib.parse.quote(value), raw.hex(), json.dumps(value)[1:-1]}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode()
        # Skip the characters that mix in the prefix's bits; stop before those mixing in padding.
        start = (shift * 8 + 5) // 6
        end = ((shift + len(raw)) * 8) // 6
        core = encoded[start:end]
        if len(core) >= 6:
            forms.add(core)
            forms.add(core.translate(_URLSAFE))
    return {f for f in forms if len(f) >= 4}


_URLSAFE = str.maketrans("+/", "-_")


def from_mapping(values: Mapping[str, str], source: str) -> Credentials:
    """Credentials from decoded key → value pairs (a Secret's data or a file's JSON object)."""
    unknown = tuple(sorted(k for k in values if k not in KEYS))
    return Credentials(
        access_key_id=_clean(values.get("accessKeyId")),
        secret_access_key=_clean(values.get("secretAccessKey")),
        session_token=_clean(values.get("sessionToken")),
        service_account_json=values.get("serviceAccountJson") or None,
        source=source,
        _unknown=unknown,
    )


def _clean(value: str | None) -> str | None:
    # A Secret made with `kubectl create secret --from-file` often ends in a newline.
    return value.strip() if value else None


def from_secret_data(data: Mapping[str, str] | None, source: str) -> Credentials:
    """Credentials from a Secret's `data` (base64 values), as the API returns it."""
    decoded: dict[str, str] = {}
    for key, value in (data or {}).items():
        try:
            decoded[key] = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise BackupFailed(
                CREDENTIALS_INVALID, f"{source}: key {key!r} is not base64-encoded UTF-8"
            ) from None
    creds = from_mapping(decoded, source)
    if creds.empty:
        raise BackupFailed(CREDENTIALS_INVALID, f"{source} has none of the keys {', '.join(KEYS)}")
    return creds


def from_secret(api: Client, namespace: str, name: str) -> Credentials:
    """Read the Secret now (not cached: a rotated key is used at the next backup)."""
    from kupd import k8s

    validate.node_name(namespace, "credentialsSecret.namespace")
    validate.node_name(name, "credentialsSecret.name")
    source = f"Secret {namespace}/{name}"
    try:
        secret = k8s.call(api.get, f"read {source}", k8s.path("", "v1", "secrets", name, namespace))
    except RetryableError as e:
        raise BackupRetryable(CREDENTIALS_UNAVAILABLE, f"cannot read {source}: {e}") from e
    except PermanentError as e:
        raise BackupFailed(CREDENTIALS_UNAVAILABLE, f"cannot read {source}: {e}") from e
    data = (secret or {}).get("data")
    return from_secret_data(data, source)


def from_file(path: str) -> Credentials:
    """Credentials from a file readable by its owner only (mode 0600 or stricter)."""
    validate.safe_path(path, "credentialsFile")
    source = f"file {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise BackupFailed(
            CREDENTIALS_UNAVAILABLE, f"cannot open credentials {source}: {e.strerror}"
        ) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise BackupFailed(
                CREDENTIALS_INVALID,
                f"credentials {source} has mode {stat.S_IMODE(st.st_mode):04o}; "
                "it must be readable by its owner only (chmod 600)",
            )
        if st.st_uid not in (0, os.geteuid()):
            raise BackupFailed(
                CREDENTIALS_INVALID, f"credentials {source} is owned by uid {st.st_uid}, not by root"
            )
        raw = f.read(1024 * 1024)
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise BackupFailed(CREDENTIALS_INVALID, f"credentials {source} is not a JSON object") from None
    if not isinstance(obj, dict):
        raise BackupFailed(CREDENTIALS_INVALID, f"credentials {source} is not a JSON object")
    if obj.get("type") == "service_account":
        return Credentials(service_account_json=raw.decode("utf-8"), source=source)
    values = {k: v for k, v in obj.items() if isinstance(v, str)}
    creds = from_mapping(values, source)
    if creds.empty:
        raise BackupFailed(
            CREDENTIALS_INVALID, f"credentials {source} has none of the keys {', '.join(KEYS)}"
        )
    return creds


def write_file(path: str | Path, values: Mapping[str, str]) -> None:
    """Write a credentials file (mode 0600): for `kupd` setup helpers and tests."""
    from kupd.fsutil import atomic_write

    atomic_write(path, (json.dumps(dict(values), indent=1) + "\n").encode(), mode=0o600)
