"""Make a status valid against its CRD schema before it is written: valid by construction.

Status carries values that came from nodes (a report's step, message, times, attempts, a backup
record). They pass kupd.untrusted's decoder first; this is the last line behind it: one value out
of the schema would make the API server refuse the whole write with 422, every time, and nothing
behind that operation would ever move again.

The walk follows the status model's JSON schema (kupd/api/models.py, which the unit test of the
CRD models keeps identical to the CRD's): strings are cut to maxLength, integers clamped to
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


Fit = Callable[[Any], Any]


@functools.cache
def _fitter(model: type[BaseModel]) -> Fit:
    root = _schema(model)
    return _compile(root, root)


def conform(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """`data` fitted to `model`'s schema; `data` itself is not changed."""
    out = _fitter(model)(data)
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


def _compile(root: Schema, schema: Schema) -> Fit:
    """The fitting function of one schema node, built once (a status of 1000 nodes is walked often)."""
    schema = _resolve(root, schema)
    kind = schema.get("type")
    fit = _by_type(root, schema, kind) if isinstance(kind, str) else _same
    enum = schema.get("enum")
    if enum is not None:
        allowed = list(enum)
        inner = fit

        def fit(value: Any) -> Any:
            return inner(value) if value in allowed else _DROP
    return fit


def _same(value: Any) -> Any:
    return _DROP if value is None else value


def _by_type(root: Schema, schema: Schema, kind: str) -> Fit:
    build = _BUILDERS.get(kind)
    return build(root, schema) if build is not None else _same


def _string(root: Schema, schema: Schema) -> Fit:
    if schema.get("format") == "date-time":
        return _time
    max_len, min_len = schema.get("maxLength"), schema.get("minLength", 0)
    pattern = re.compile(schema["pattern"]) if schema.get("pattern") else None

    def string(value: Any) -> Any:
        if not isinstance(value, str):
            return _DROP
        if max_len is not None:
            value = value[:max_len]
        if len(value) < min_len or (pattern is not None and not pattern.search(value)):
            return _DROP
        return value
    return string


def _number(root: Schema, schema: Schema) -> Fit:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    types: tuple[type, ...] = (int,) if schema.get("type") == "integer" else (int, float)

    def number(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, types):
            return _DROP
        if isinstance(value, float) and not math.isfinite(value):
            return _DROP
        if lo is not None and value < lo:
            value = lo
        if hi is not None and value > hi:
            value = hi
        return value
    return number


def _boolean(root: Schema, schema: Schema) -> Fit:
    return lambda value: value if isinstance(value, bool) else _DROP


def _array(root: Schema, schema: Schema) -> Fit:
    item = _compile(root, schema.get("items") or {})
    max_items = schema.get("maxItems")

    def array(value: Any) -> Any:
        if not isinstance(value, list):
            return _DROP
        out = [v for v in map(item, value) if v is not _DROP]
        return out[:max_items] if max_items is not None else out
    return array


def _object(root: Schema, schema: Schema) -> Fit:
    props = {k: _compile(root, v) for k, v in (schema.get("properties") or {}).items()}
    extra_schema = schema.get("additionalProperties")
    extra = _compile(root, extra_schema) if isinstance(extra_schema, dict) else None
    required = tuple(schema.get("required") or ())

    def obj(value: Any) -> Any:
        if not isinstance(value, dict):
            return _DROP
        out: dict[str, Any] = {}
        for key, v in value.items():
            fit = props.get(key, extra)
            if fit is None:
                continue  # the API server would prune it; leave it out here
            fitted = fit(v)
            if fitted is not _DROP:
                out[key] = fitted
        for r in required:
            if r not in out:
                return _DROP
        return out
    return obj


_BUILDERS: dict[str, Callable[[Schema, Schema], Fit]] = {
    "string": _string, "integer": _number, "number": _number, "boolean": _boolean, "array": _array,
    "object": _object,
}


def _time(value: Any) -> Any:
    if not isinstance(value, str) or len(value) > 64:
        return _DROP
    return _time_text(value)


@functools.lru_cache(maxsize=4096)
def _time_text(value: str) -> Any:
    try:
        t = datetime.fromisoformat(value.replace("z", "Z"))
        if t.tzinfo is None or t.utcoffset() is None:
            return _DROP
        return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError):
        return _DROP
