"""Kubernetes label selectors: one parser and one matcher for every selector kupd reads.

Two spellings compile to the same requirements:
- the string form kubectl takes (`-l`), used by spec.drain.podSelector: `app=web,tier!=db`,
  `env in (prod,staging)`, `env notin (dev)`, `gpu` (exists), `!legacy` (does not exist);
- metav1.LabelSelector (matchLabels + matchExpressions), used by spec.nodeSelector,
  spec.canary.selector and PodDisruptionBudgets.
The semantics are apimachinery's `labels.Selector`: all requirements must hold; `!=` and `notin`
also match objects that lack the key; an empty selector matches everything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kupd import validate
from kupd.errors import ValidationError

IN, NOT_IN, EXISTS, DOES_NOT_EXIST = "In", "NotIn", "Exists", "DoesNotExist"
OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST)

_KEY = re.compile(validate.LABEL_KEY)
_VALUE = re.compile(validate.LABEL_VALUE)


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == IN:
            return self.key in labels and labels[self.key] in self.values
        if self.operator == NOT_IN:
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == EXISTS:
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


EVERYTHING = Selector()


def _key(text: str, field: str) -> str:
    if len(text) > 317 or not _KEY.fullmatch(text):
        raise ValidationError(field, f"{text[:64]!r} is not a label key")
    return text


def _value(text: str, field: str) -> str:
    if len(text) > 63 or not _VALUE.fullmatch(text):
        raise ValidationError(field, f"{text[:64]!r} is not a label value")
    return text


# One requirement of the string form. Set-based first: `in`/`notin` are words, not keys.
_SET = re.compile(r"\s*(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\s*")
_EQ = re.compile(r"\s*(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)\s*")
_EXISTS = re.compile(r"\s*(?P<neg>!?)\s*(?P<key>[^\s!=(),]+)\s*")


def parse(text: str | None, field: str = "selector") -> Selector:
    """The string form (kubectl's `-l`). Raises ValidationError naming `field` on bad input."""
    if text is None or not text.strip():
        return EVERYTHING
    if len(text) > 4096:
        raise ValidationError(field, "selector is longer than 4096 characters")
    reqs: list[Requirement] = []
    pos = 0
    while pos <= len(text):
        m = _SET.match(text, pos)
        if m is not None and _at_boundary(text, m.end()):
            raw = m.group("values")
            if not raw.strip():
                raise ValidationError(field, f"{m.group('op')} needs at least one value")
            values = [_value(v.strip(), field) for v in raw.split(",")]
            op = IN if m.group("op") == "in" else NOT_IN
            reqs.append(Requirement(_key(m.group("key"), field), op, frozenset(values)))
        elif (m := _EQ.match(text, pos)) is not None and _at_boundary(text, m.end()):
            key, value = _key(m.group("key"), field), _value(m.group("value"), field)
            op = NOT_IN if m.group("op") == "!=" else IN
            reqs.append(Requirement(key, op, frozenset({value})))
        elif (m := _EXISTS.match(text, pos)) is not None and _at_boundary(text, m.end()):
            op = DOES_NOT_EXIST if m.group("neg") else EXISTS
            reqs.append(Requirement(_key(m.group("key"), field), op))
        else:
            raise ValidationError(field, f"cannot parse the selector at {text[pos:pos + 40]!r}")
        pos = m.end() + 1  # past the comma
    return Selector(tuple(reqs))


def _at_boundary(text: str, end: int) -> bool:
    return end == len(text) or text[end] == ","


def from_label_selector(sel: Mapping[str, Any] | None, field: str = "selector") -> Selector:
    """metav1.LabelSelector (camelCase, as the API gives it). None or {} selects everything."""
    if not sel:
        return EVERYTHING
    if not isinstance(sel, Mapping):
        raise ValidationError(field, "must be a label selector object")
    reqs: list[Requirement] = []
    labels = sel.get("matchLabels") or {}
    if not isinstance(labels, Mapping):
        raise ValidationError(f"{field}.matchLabels", "must be a map")
    for k, v in sorted(labels.items()):
        reqs.append(Requirement(_key(str(k), f"{field}.matchLabels"),
                                IN, frozenset({_value(str(v), f"{field}.matchLabels")})))
    exprs = sel.get("matchExpressions") or []
    if not isinstance(exprs, list):
        raise ValidationError(f"{field}.matchExpressions", "must be a list")
    for i, expr in enumerate(exprs):
        where = f"{field}.matchExpressions[{i}]"
        if not isinstance(expr, Mapping):
            raise ValidationError(where, "must be an object")
        op = expr.get("operator")
        if op not in OPERATORS:
            raise ValidationError(f"{where}.operator", f"{str(op)[:40]!r} is not one of {', '.join(OPERATORS)}")
        values = expr.get("values") or []
        if not isinstance(values, list):
            raise ValidationError(f"{where}.values", "must be a list")
        if (op in (IN, NOT_IN)) != bool(values):
            raise ValidationError(f"{where}.values", "must be non-empty for In and NotIn, empty otherwise")
        reqs.append(Requirement(_key(str(expr.get("key", "")), f"{where}.key"), op,
                                frozenset(_value(str(v), f"{where}.values") for v in values)))
    return Selector(tuple(reqs))


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics; an empty or missing selector matches everything."""
    return from_label_selector(selector).matches(labels)
