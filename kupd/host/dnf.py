"""dnf (and yum, which is dnf on RHEL 8+) through their command line.

Exact pins are `name-version-release`; the Kubernetes packages are kept from `dnf upgrade` the
way upstream documents it, by `exclude=` in kubernetes.repo, and kupd installs with
`--disableexcludes=kubernetes`. That exclude line is the dnf "hold".
`root` other than "/" becomes `--installroot` (the host tests use it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from kupd import validate
from kupd.errors import CommandError, PermanentError
from kupd.host import parsers, runner
from kupd.host.packages import (
    HELD,
    InstallReport,
    NoSpace,
    PackageChange,
    PackageLocked,
    PackageNotFound,
    RepositoryError,
    UnsignedRepository,
)
from kupd.host.sources import DNF_REPO

QUERY_TIMEOUT = 300.0
INSTALL_TIMEOUT = 900.0
REPO_ID = "kubernetes"


class DnfManager:
    def __init__(self, root: str = "/", command: str = "dnf", releasever: str | None = None) -> None:
        if command not in ("dnf", "yum"):
            raise PermanentError(f"unknown package manager {command!r}")
        self.name = command
        self.command = command
        self.root = os.path.abspath(root)
        if self.root != "/":
            validate.safe_path(self.root, "root")
        if releasever is not None and not re.fullmatch(r"[0-9A-Za-z._-]{1,32}", releasever):
            raise PermanentError(f"releasever {releasever!r} is not valid")
        self.releasever = releasever
        # `dnf list` costs a second or more; the answer only changes when the repositories do.
        self._available: dict[str, list[str]] = {}

    def _base(self) -> list[str]:
        argv = [self.command, "-y", "--setopt=install_weak_deps=False", "--setopt=skip_if_unavailable=False"]
        if self.root != "/":
            argv += [
                f"--installroot={self.root}",
                f"--setopt=reposdir={self.root}/etc/yum.repos.d",
                f"--setopt=cachedir={self.root}/var/cache/dnf",
                f"--releasever={self.releasever or '9'}",
            ]
        elif self.releasever:
            argv.append(f"--releasever={self.releasever}")
        return argv

    def _run(self, args: list[str], what: str, timeout: float = QUERY_TIMEOUT,
             stop: runner.Stop = "kill") -> runner.Result:
        try:
            return runner.run(self._base() + args, timeout=timeout, stop=stop)
        except CommandError as e:
            raise _classify(what, e) from e

    def refresh(self) -> None:
        self._available.clear()
        self._run(["makecache", "--refresh"], "dnf makecache")

    def installed(self, package: str) -> str | None:
        return self._rpm_query([package]).get(validate.package_name(package))

    def _rpm_query(self, packages: list[str]) -> dict[str, str]:
        argv = ["rpm"] + ([f"--root={self.root}"] if self.root != "/" else [])
        argv += ["-q", "--qf", "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}\n", "--", *packages]
        # rpm -q exits 1 when a package is not installed; the output says which.
        result = runner.run(argv, check=False, timeout=QUERY_TIMEOUT)
        return parsers.rpm_query(result.stdout)

    def available(self, package: str) -> list[str]:
        validate.package_name(package)
        if package not in self._available:
            self._available[package] = self._list(package)
        return list(self._available[package])

    def _list(self, package: str) -> list[str]:
        try:
            argv = [*self._base(), f"--disableexcludes={REPO_ID}", "list", "--showduplicates", "--available"]
            result = runner.run([*argv, "--", package], timeout=QUERY_TIMEOUT)
        except CommandError as e:
            if "No matching Packages" in e.stderr + e.stdout:
                return []
            raise _classify(f"dnf list {package}", e) from e
        listed = parsers.dnf_list(result.stdout)
        versions = {p.version for p in listed if p.name == package and not p.installed}
        return sorted(versions, key=parsers.rpm_version_key)

    def is_held(self, package: str) -> bool:
        validate.package_name(package)
        repo = Path(self.root) / DNF_REPO
        try:
            text = repo.read_text()
        except FileNotFoundError:
            return False
        m = re.search(r"^exclude\s*=\s*(.*)$", text, re.MULTILINE)
        return bool(m and package in m.group(1).split())

    def install(self, pins: Mapping[str, str], hold: tuple[str, ...] = HELD) -> InstallReport:
        for name, version in pins.items():
            validate.package_name(name)
            validate.package_version(version, f"{name} version")
        before = self._rpm_query(list(pins))
        todo = {n: v for n, v in pins.items() if before.get(n) != v}
        held = tuple(sorted(n for n in pins if n in hold and self.is_held(n)))
        if not todo:
            return InstallReport(held=held)
        for name, version in todo.items():
            offered = self.available(name)
            if version not in offered:
                raise PackageNotFound(name, version, offered)
        specs = [f"{n}-{v.split(':', 1)[-1]}" for n, v in sorted(todo.items())]
        # `install` of an older version than installed would be refused; kupd never downgrades anyway.
        verb = "install"
        self._run([f"--disableexcludes={REPO_ID}", verb, "--", *specs], f"dnf install {' '.join(specs)}",
                  timeout=INSTALL_TIMEOUT, stop="wait")  # an rpm transaction is never killed
        after = self._rpm_query(list(pins))
        changes = []
        for n in pins:
            if after.get(n) != before.get(n):
                changes.append(PackageChange(n, before.get(n), after.get(n)))
            if n in todo and after.get(n) != pins[n]:
                raise PermanentError(f"{n} is at {after.get(n)} after installing {pins[n]}")
        return InstallReport(tuple(changes), unheld=held, held=held)


def _classify(what: str, e: CommandError) -> Exception:
    text = f"{e.stderr}\n{e.stdout}"
    low = text.lower()
    if e.timed_out and "waiting for process" in low:
        return PackageLocked(f"{what}: another process holds the rpm/dnf lock", 30.0)
    if "no space left" in low or "disk requirements" in low or "more space needed" in low:
        return NoSpace(f"{what}: disk full: {e}", 60.0)
    if "gpg check failed" in low or "not signed" in low or ("public key" in low and "not installed" in low):
        return UnsignedRepository(f"{what}: the repository is not signed by the configured key: {e}")
    if "failed to download metadata" in low or "cannot download repomd" in low or "curl error" in low:
        return RepositoryError(f"{what}: repository unreachable: {e}", 60.0)
    return e
