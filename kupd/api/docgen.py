"""Render docs/usage/crd-reference.md from the CRD schemas, so the reference cannot drift from them.

    python -m kupd.api.docgen            # rewrite docs/usage/crd-reference.md
    python -m kupd.api.docgen --check    # exit 1 when it is out of date

Run from the repository's root (the default paths are relative to it), or pass --crds and --output.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

CRD_DIR = Path("crds")
OUTPUT = Path("docs") / "usage" / "crd-reference.md"
ORDER = ("DirectUpdate", "ScheduledUpdate", "UpdateSchedule")
TEMPLATE = "spec.template"

Schema = dict[str, Any]


def load_crds(crd_dir: Path) -> dict[str, Schema]:
    crds: dict[str, Schema] = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        crds[doc["spec"]["names"]["kind"]] = doc
    return crds


def _fields(schema: Schema, path: str, required: bool) -> Iterator[tuple[str, Schema, bool]]:
    yield path, schema, required
    needed = set(schema.get("required", []))
    for name, sub in schema.get("properties", {}).items():
        yield from _fields(sub, f"{path}.{name}", name in needed)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _fields(schema["additionalProperties"], f"{path}.<key>", False)
    if "items" in schema:
        yield from _fields(schema["items"], f"{path}[]", False)


def _type(schema: Schema) -> str:
    t = str(schema.get("type", ""))
    if t == "array":
        return f"[]{_type(schema['items'])}"
    if t == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map[string]{_type(schema['additionalProperties'])}"
    if "format" in schema and t == "string":
        return f"string ({schema['format']})"
    return t


def _code(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def _constraints(schema: Schema) -> str:
    parts: list[str] = []
    if "enum" in schema:
        parts.append("one of " + ", ".join(_code(v) for v in schema["enum"]))
    if "minimum" in schema or "maximum" in schema:
        parts.append(f"{schema.get('minimum', '')}..{schema.get('maximum', '')}")
    for key, label in (("minLength", "min length"), ("maxLength", "max length"), ("minItems", "min items"),
                       ("maxItems", "max items"), ("maxProperties", "max entries")):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if "pattern" in schema:
        parts.append("pattern " + _code(schema["pattern"]))
    if schema.get("x-kubernetes-list-type") in ("set", "map"):
        keys = schema.get("x-kubernetes-list-map-keys")
        parts.append(f"unique by {', '.join(keys)}" if keys else "unique")
    for rule in schema.get("x-kubernetes-validations", []):
        parts.append("rule: " + str(rule["message"]).replace("|", "\\|"))
    return "; ".join(parts)


def render_kind(crd: Schema) -> str:
    spec = crd["spec"]
    names = spec["names"]
    version = spec["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    lines = [
        f"## {names['kind']}",
        "",
        root.get("description", ""),
        "",
        f"- API: `{spec['group']}/{version['name']}`, cluster-scoped, `kubectl get {names['plural']}` "
        f"(short name `{', '.join(names.get('shortNames', []))}`)",
        "- Columns: " + ", ".join(c["name"] for c in version.get("additionalPrinterColumns", [])),
        "",
    ]
    for part in ("spec", "status"):
        lines += [f"### {names['kind']}.{part}", "", "| field | type | required | default | constraints | "
                  "description |", "|---|---|---|---|---|---|"]
        for path, schema, required in _fields(root["properties"][part], part, False):
            if path == part or (path.startswith(TEMPLATE + ".") and path != TEMPLATE + ".version"):
                continue  # a template's fields are DirectUpdate.spec's, listed once
            default = _code(schema["default"]) if "default" in schema else ""
            desc = str(schema.get("description", "")).replace("|", "\\|").replace("\n", " ")
            if path == TEMPLATE:
                desc += " The fields of DirectUpdate.spec" + (
                    "; only version differs:" if names["kind"] == "UpdateSchedule" else ".")
            lines.append(f"| `{path}` | {_type(schema)} | {'yes' if required else ''} | {default} | "
                         f"{_constraints(schema)} | {desc} |")
        lines.append("")
    return "\n".join(lines)


def render(crds: dict[str, Schema]) -> str:
    head = [
        "# Custom resource reference",
        "",
        "<!-- Generated from crds/*.yaml by `python -m kupd.api.docgen`; edit the CRDs, not this file. -->",
        "",
        "kupd reads what to do from three cluster-scoped kinds in the `kupd.io/v1alpha1` API. The API "
        "server refuses any object that breaks a constraint below, naming the field; `kubectl explain "
        "directupdate.spec` shows the same descriptions.",
        "",
    ]
    kinds = [k for k in ORDER if k in crds] + sorted(set(crds) - set(ORDER))
    return "\n".join(head) + "\n" + "\n".join(render_kind(crds[k]) for k in kinds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when the reference is out of date")
    parser.add_argument("--crds", type=Path, default=CRD_DIR)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render(load_crds(args.crds))
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run python -m kupd.api.docgen", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
