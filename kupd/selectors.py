"""Label selectors: metav1.LabelSelector matching and the equality form of a selector string. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics; an empty or missing selector matches everything."""
    if not selector:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def parse_equality(text: str) -> dict[str, str]:
    """The equality form of a label selector string (`app=web,tier=db`) as matchLabels."""
    out: dict[str, str] = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        out[k.strip()] = v.strip().lstrip("=")
    return out
