"""Make a status valid against its CRD schema before it is written: valid by construction.

Status carries values that came from nodes (a report's step, message, times, attempts, a backup
record). They pass kupd.untrusted's decoder first; this is the last line behind it: one value out
of the schema would make the API server refuse the whole write with 422, every time, and nothing
behind that operation would ever move again.

The walk follows the status model's JSON schema (kupd/api/models.py, which tests/unit/
test_crd_models.py keeps identical to the CRD's): strings are cut to maxLength, integers clamped to
their bounds, date-times normalised to RFC 3339 in UTC, lists cut to maxItems; a value of the wrong
type, outside its enum or pattern is dropped (or, when required, the object holding it). Pure.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

Schema = dict[str, Any]
_DROP = object()


@functools.cache
def _schema(model: type[BaseModel]) -> Schema:
    schema: Schema = model.model_json_schema(by_alias=True, mode="serialization")
    return schema


def conform(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """`data` fitted to `model`'s schema; `data` itself is not changed."""
    root = _schema(model)
    out = _value(root, root, data)
    return out if isinstance(out, dict) else {}


def _resolve(root: Schema, schema: Schema) -> Schema:
    while "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    # Optional fields are anyOf [X, null]: the value is never null here (None values are dropped).
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        if len(options) == 1:
            merged = {k: v for k, v in schema.items() if k != "anyOf"}
            return {**_resolve(root, options[0]), **merged}
    return schema


def _value(root: Schema, schema: Schema, value: Any) -> Any:
    schema = _resolve(root, schema)
    kind = schema.get("type")
    if value is None:
        return _DROP
    if "enum" in schema and value not in schema["enum"]:
        return _DROP
    fit = _FITS.get(kind) if isinstance(kind, str) else None
    if fit is None:
        return value
    return fit(root, schema, value)


def _string(root: Schema, schema: Schema, value: Any) -> Any:
    if not isinstance(value, str):
        return _DROP
    if schema.get("format") == "date-time":
        return _time(value)
    value = value[: schema.get("maxLength", len(value))]
    if len(value) < schema.get("minLength", 0):
        return _DROP
    pattern = schema.get("pattern")
    if pattern and not re.search(pattern, value):
        return _DROP
    return value


def _time(value: str) -> Any:
    try:
        t = datetime.fromisoformat(value.replace("z", "Z"))
        if t.tzinfo is None or t.utcoffset() is None:
            return _DROP
        return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError):
        return _DROP


def _integer(root: Schema, schema: Schema, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        return _DROP
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if lo is not None:
        value = max(value, lo)
    if hi is not None:
        value = min(value, hi)
    return value


def _number(root: Schema, schema: Schema, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return _DROP
    return _integer(root, {**schema}, value)


def _boolean(root: Schema, schema: Schema, value: Any) -> Any:
    return value if isinstance(value, bool) else _DROP


def _array(root: Schema, schema: Schema, value: Any) -> Any:
    if not isinstance(value, list):
        return _DROP
    items = schema.get("items") or {}
    out = [v for v in (_value(root, items, x) for x in value) if v is not _DROP]
    return out[: schema.get("maxItems", len(out))]


def _object(root: Schema, schema: Schema, value: Any) -> Any:
    if not isinstance(value, dict):
        return _DROP
    props: Schema = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    out: dict[str, Any] = {}
    for key, v in value.items():
        sub = props.get(key)
        if sub is None:
            if isinstance(extra, dict):
                sub = extra
            else:
                continue  # the API server would prune it; leave it out here
        fitted = _value(root, sub, v)
        if fitted is not _DROP:
            out[key] = fitted
    if any(r not in out for r in schema.get("required") or ()):
        return _DROP
    return out


_FITS: dict[str, Callable[[Schema, Schema, Any], Any]] = {
    "string": _string, "integer": _integer, "number": _number, "boolean": _boolean, "array": _array,
    "object": _object,
}
