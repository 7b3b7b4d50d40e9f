"""docs/usage/configuration.md documents every setting of kupd.config, and its examples load."""

from __future__ import annotations

import re
import tomllib

from kupd import config, configdoc
from tests.paths import ROOT


def test_configuration_doc_is_current() -> None:
    current = (ROOT / configdoc.OUTPUT).read_text()
    assert configdoc.splice(current, configdoc.render()) == current, (
        "docs/usage/configuration.md is out of date: run `python -m kupd.configdoc`")


def test_every_setting_has_a_description() -> None:
    rows = [ln for ln in configdoc.render().splitlines() if ln.startswith("| `")]
    assert len(rows) >= len(config.Settings.model_fields)
    missing = [ln.split("|")[1].strip() for ln in rows if not ln.rstrip(" |").rsplit("|", 1)[-1].strip()]
    assert not missing, f"settings without a description (add one in kupd/config.py): {missing}"


def test_every_field_is_in_the_tables() -> None:
    text = configdoc.render()
    for name in config.Settings.model_fields:
        assert f"`{name}`" in text or f"`[{name}]`" in text


def test_toml_examples_are_valid_settings() -> None:
    doc = (ROOT / configdoc.OUTPUT).read_text()
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.S)
    assert blocks
    for block in blocks:
        config.parse(tomllib.loads(block))


def test_render_values() -> None:
    assert configdoc.toml_value(None) == "unset"
    assert configdoc.toml_value(True) == "true"
    assert configdoc.toml_value(["a", 1]) == '["a", 1]'
    assert configdoc.toml_value({"k": "v"}) == '{k = "v"}'
