"""Label selectors (kupd/selectors.py): the string grammar kubectl takes and metav1.LabelSelector,
one matcher for both."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kupd import selectors, validate
from kupd.errors import ValidationError

WEB_DB = {"app": "web", "tier": "db"}
WEB_FRONT = {"app": "web", "tier": "front"}
BARE: dict[str, str] = {}


@pytest.mark.parametrize(
    ("text", "matching"),
    [
        ("app=web,tier!=db", [WEB_FRONT]),  # the CRD's own example
        ("app==web", [WEB_DB, WEB_FRONT]),
        ("tier!=db", [WEB_FRONT, BARE]),  # != matches a missing key
        ("tier in (db,cache)", [WEB_DB]),
        ("tier notin (db)", [WEB_FRONT, BARE]),  # notin matches a missing key
        ("tier", [WEB_DB, WEB_FRONT]),
        ("!tier", [BARE]),
        ("app=web, tier in (front, db)", [WEB_DB, WEB_FRONT]),
        ("example.com/team=x", []),
        ("", [WEB_DB, WEB_FRONT, BARE]),
    ],
)
def test_string_grammar(text: str, matching: list[dict[str, str]]) -> None:
    sel = selectors.parse(text)
    assert [labels for labels in (WEB_DB, WEB_FRONT, BARE) if sel.matches(labels)] == matching


@pytest.mark.parametrize("text", ["app=web,", "app in ()", "app in (a", "=web", "app=we b", "app=(x)", "a,,b",
                                  "app in (x) extra"])
def test_bad_strings_name_the_field(text: str) -> None:
    with pytest.raises(ValidationError) as e:
        selectors.parse(text, "spec.drain.podSelector")
    assert e.value.field == "spec.drain.podSelector"


def test_label_selector_object() -> None:
    sel = selectors.from_label_selector({
        "matchLabels": {"app": "web"},
        "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]},
                             {"key": "zone", "operator": "DoesNotExist"}]})
    assert [sel.matches(x) for x in (WEB_DB, WEB_FRONT, {**WEB_FRONT, "zone": "a"}, BARE)] == [
        False, True, False, False]
    assert selectors.from_label_selector({}).matches(BARE)
    assert selectors.from_label_selector(None).matches(WEB_DB)
    with pytest.raises(ValidationError, match=r"matchExpressions\[0\]\.operator"):
        selectors.from_label_selector({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]})


# -- properties: the two spellings mean the same ------------------------------------------------

keys = st.sampled_from(["app", "tier", "example.com/zone"])
values = st.sampled_from(["a", "b", "c"])
label_sets = st.dictionaries(keys, values, max_size=3)


@st.composite
def requirements(draw: Any) -> tuple[str, dict[str, Any]]:
    key = draw(keys)
    op = draw(st.sampled_from(["=", "!=", "in", "notin", "exists", "!"]))
    vs = sorted(draw(st.sets(values, min_size=1, max_size=3)))
    if op == "=":
        return f"{key}={vs[0]}", {"key": key, "operator": "In", "values": vs[:1]}
    if op == "!=":
        return f"{key}!={vs[0]}", {"key": key, "operator": "NotIn", "values": vs[:1]}
    if op in ("in", "notin"):
        return f"{key} {op} ({','.join(vs)})", {"key": key, "operator": "In" if op == "in" else "NotIn",
                                                 "values": vs}
    if op == "exists":
        return key, {"key": key, "operator": "Exists"}
    return f"!{key}", {"key": key, "operator": "DoesNotExist"}


@given(st.lists(requirements(), min_size=1, max_size=4), label_sets)
def test_string_and_object_forms_agree(reqs: list[tuple[str, dict[str, Any]]], labels: dict[str, str]) -> None:
    text = ",".join(t for t, _ in reqs)
    # Every string the parser takes is one the CRD's pattern admits, so the API server lets it through.
    assert re.fullmatch(validate.LABEL_SELECTOR, text)
    by_text = selectors.parse(text)
    by_object = selectors.from_label_selector({"matchExpressions": [o for _, o in reqs]})
    assert by_text.matches(labels) == by_object.matches(labels)
