"""CHANGELOG.md, debian/changelog and rpm.spec's %changelog name the same newest version and
date, and that version is pyproject's and kupd's; the license is MIT everywhere it is stated."""

from __future__ import annotations

import re
import tomllib
from datetime import datetime
from pathlib import Path

import kupd

ROOT = Path(__file__).resolve().parents[2]


def test_changelogs_agree() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert kupd.__version__ == version
    md = re.search(r"^## (\S+) — (\d{4}-\d\d-\d\d)$", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert md, "CHANGELOG.md has no '## VERSION — YYYY-MM-DD' heading"
    deb = (ROOT / "debian" / "changelog").read_text()
    deb_version = re.match(r"kupd \(([^)]+)\)", deb)
    deb_date = re.search(r"^ -- .+?  (.+)$", deb, re.M)
    assert deb_version and deb_date
    spec = (ROOT / "rpm.spec").read_text()
    rpm_version = re.search(r"^Version:\s+(\S+)$", spec, re.M)
    rpm_entry = re.search(r"^%changelog\n\* (\w{3} \w{3} \d\d \d{4}) .+ - (\S+)-\d+$", spec, re.M)
    assert rpm_version and rpm_entry
    assert md.group(1) == deb_version.group(1) == rpm_version.group(1) == rpm_entry.group(2) == version
    day = datetime.strptime(md.group(2), "%Y-%m-%d").date()
    assert datetime.strptime(deb_date.group(1), "%a, %d %b %Y %H:%M:%S %z").date() == day
    assert datetime.strptime(rpm_entry.group(1), "%a %b %d %Y").date() == day


def test_license_is_mit_everywhere() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == {"text": "MIT"}
    assert re.search(r"^License:\s+MIT$", (ROOT / "rpm.spec").read_text(), re.M)
    assert "Files: *\nCopyright: 2026 kupd developers\nLicense: MIT\n" in (ROOT / "debian" / "copyright").read_text()
