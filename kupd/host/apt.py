"""apt through python-apt: exact candidates, holds around the install, a report of what changed.

`root` other than "/" runs apt and dpkg on an alternate root (dpkg `--root`, maintainer scripts
run without chroot with $DPKG_ROOT set, which is how dpkg itself supports alternate roots).
Operators never set it; the host tests do, so they exercise this same code.
apt_pkg configuration is process-global: every operation sets it again before it opens a cache.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from kupd import validate
from kupd.errors import CommandError, PermanentError
from kupd.host import runner
from kupd.host.packages import (
    DEPENDENCY_UPGRADES,
    HELD,
    InstallReport,
    NoSpace,
    PackageChange,
    PackageLocked,
    PackageNotFound,
    RepositoryError,
    UnsignedRepository,
)

DPKG_TIMEOUT = 600.0

# Hooks the machine's own apt.conf.d may carry (docker-clean, needrestart...): they act on the
# machine, never on an alternate root, so they are dropped when operating on one.
_HOOKS = (
    "DPkg::Pre-Invoke",
    "DPkg::Post-Invoke",
    "DPkg::Pre-Install-Pkgs",
    "DPkg::Post-Invoke-Success",
    "APT::Update::Pre-Invoke",
    "APT::Update::Post-Invoke",
    "APT::Update::Post-Invoke-Success",
)


def _apt() -> tuple[Any, Any]:
    try:
        import apt
        import apt_pkg
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise PermanentError("python3-apt is not installed; kupd needs it on apt hosts") from e
    return apt, apt_pkg


# apt_pkg.config is one per process: the machine's values, taken before kupd changes any, are put
# back before each operation, so an operation on one root never sees another's settings.
_pristine: dict[str, tuple[str | None, list[str]]] = {}
# ...and one operation at a time: the coordinator's thread probes a repository in a scratch root
# while the agent's thread may be installing on the machine's own; each configures apt_pkg.config
# and then reads it, which must not interleave.
_APT_LOCK = threading.RLock()
_F = TypeVar("_F", bound=Callable[..., Any])


def _serialized(fn: _F) -> _F:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with _APT_LOCK:
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]  # same signature as fn


def _restore_pristine(c: Any, scalars: set[str], lists: set[str]) -> None:
    list_keys = lists | set(_HOOKS) | {"APT::Architectures", "DPkg::Options"}
    for key in sorted(scalars | list_keys | {"APT::Sandbox::User"}):
        if key not in _pristine:
            is_list = key in list_keys
            _pristine[key] = (
                None if is_list or not c.exists(key) else c.find(key),
                list(c.value_list(key)) if is_list else [],
            )
    list_keys |= {k for k, (_, values) in _pristine.items() if values}
    for key, (value, values) in _pristine.items():
        if key in list_keys:
            c.clear(key)
            for v in values:
                c.set(key + "::", v)
        elif value is not None:
            c.set(key, value)
        else:
            c.clear(key)  # only leaves get here: keys with children always exist


class _Progress:
    """Collects dpkg's error messages, which python-apt otherwise only reports as a return code."""

    def __init__(self) -> None:
        apt, _ = _apt()
        outer = self

        class Install(apt.progress.base.InstallProgress):  # type: ignore[misc,name-defined]
            def error(self, pkg: str, errormsg: str) -> None:
                outer.errors.append(f"{pkg}: {errormsg.strip()}")

        self.errors: list[str] = []
        self.install = Install()
        self.fetch = apt.progress.base.AcquireProgress()


class AptManager:
    name = "apt"

    def __init__(self, root: str = "/", sandbox_user: str | None = None) -> None:
        self.root = os.path.abspath(root)
        if self.root != "/":
            validate.safe_path(self.root, "root")
        if sandbox_user is not None:
            validate.package_name(sandbox_user, "sandbox_user")
        self.sandbox_user = sandbox_user

    # -- configuration --------------------------------------------------------------------------

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel.lstrip("/"))

    @property
    def admindir(self) -> str:
        return self.path("var/lib/dpkg")

    def _configure(self) -> Any:
        _, apt_pkg = _apt()
        c = apt_pkg.config
        overrides: dict[str, str] = {}
        lists: dict[str, list[str]] = {}
        if self.root != "/":
            for d in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/log/apt",
                      "etc/apt/sources.list.d", "etc/apt/preferences.d", "etc/apt/trusted.gpg.d",
                      "var/lib/dpkg/updates", "var/lib/dpkg/info"):
                os.makedirs(self.path(d), exist_ok=True)
            for f in ("var/lib/dpkg/status", "var/lib/dpkg/available"):
                if not os.path.exists(self.path(f)):
                    open(self.path(f), "a").close()
            overrides = {
                "Dir": self.root + "/",
                "Dir::State": self.path("var/lib/apt") + "/",
                "Dir::State::Lists": self.path("var/lib/apt/lists") + "/",
                "Dir::State::status": self.path("var/lib/dpkg/status"),
                "Dir::State::extended_states": self.path("var/lib/apt/extended_states"),
                "Dir::Cache": self.path("var/cache/apt") + "/",
                "Dir::Cache::archives": self.path("var/cache/apt/archives") + "/",
                "Dir::Cache::pkgcache": "",
                "Dir::Cache::srcpkgcache": "",
                "Dir::Etc": self.path("etc/apt") + "/",
                "Dir::Etc::sourcelist": self.path("etc/apt/sources.list"),
                "Dir::Etc::sourceparts": self.path("etc/apt/sources.list.d") + "/",
                "Dir::Etc::preferences": self.path("etc/apt/preferences"),
                "Dir::Etc::preferencesparts": self.path("etc/apt/preferences.d") + "/",
                "Dir::Etc::trusted": self.path("etc/apt/trusted.gpg"),
                "Dir::Etc::trustedparts": self.path("etc/apt/trusted.gpg.d") + "/",
                "Dir::Log": self.path("var/log/apt") + "/",
                "Dir::Bin::dpkg": "/usr/bin/dpkg",
            }
            lists = {hook: [] for hook in _HOOKS}
            lists["APT::Architectures"] = []
            lists["DPkg::Options"] = [f"--root={self.root}", "--force-script-chrootless"]
        if self.sandbox_user:
            overrides["APT::Sandbox::User"] = self.sandbox_user
        overrides["APT::Install-Recommends"] = "false"
        overrides["Dpkg::Use-Pty"] = "false"
        _restore_pristine(c, set(overrides), set(lists) | {"DPkg::Options"})
        for key, value in overrides.items():
            c.set(key, value)
        for key, values in lists.items():
            c.clear(key)
            for value in values:
                c.set(key + "::", value)
        present = c.value_list("DPkg::Options")
        for opt in ("--force-confold", "--force-confdef"):
            if opt not in present:
                c.set("DPkg::Options::", opt)
        os.environ["DEBIAN_FRONTEND"] = "noninteractive"
        apt_pkg.init_system()
        return apt_pkg

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        apt, _ = _apt()
        try:
            yield
        except apt.cache.LockFailedException as e:
            raise PackageLocked(f"{what}: another process holds the package lock: {e}", delay=30.0) from e
        except apt.cache.FetchFailedException as e:
            raise _fetch_error(what, str(e)) from e
        except SystemError as e:
            text = str(e)
            if "lock" in text.lower():
                raise PackageLocked(f"{what}: another process holds the package lock: {text}", 30.0) from e
            raise PermanentError(f"{what} failed: {text}") from e

    def _cache(self) -> Any:
        apt, _ = _apt()
        self._configure()
        with self._errors("reading the package cache"):
            return apt.Cache(progress=apt.progress.base.OpProgress())

    # -- queries --------------------------------------------------------------------------------

    @_serialized
    def refresh(self) -> None:
        apt, _ = _apt()
        self._configure()
        with self._errors("apt update"):
            cache = apt.Cache(progress=apt.progress.base.OpProgress())
            try:
                cache.update(apt.progress.base.AcquireProgress(), raise_on_error=True)
            except apt.cache.FetchFailedException as e:
                raise _fetch_error("apt update", str(e)) from e
            cache.close()

    @_serialized
    def installed(self, package: str) -> str | None:
        validate.package_name(package)
        cache = self._cache()
        if package not in cache or cache[package].installed is None:
            return None
        return str(cache[package].installed.version)

    @_serialized
    def available(self, package: str) -> list[str]:
        validate.package_name(package)
        cache = self._cache()
        if package not in cache:
            return []
        return [str(v.version) for v in sorted(cache[package].versions) if v.downloadable]

    @_serialized
    def is_held(self, package: str) -> bool:
        validate.package_name(package)
        _, apt_pkg = _apt()
        cache = self._cache()
        return package in cache and cache[package]._pkg.selected_state == apt_pkg.SELSTATE_HOLD

    # -- changes --------------------------------------------------------------------------------

    def _dpkg(self, args: list[str], input_text: str | None = None) -> runner.Result:
        argv = ["dpkg"]
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        if self.root != "/":
            argv += [f"--root={self.root}", "--force-script-chrootless"]
        try:
            # dpkg is never killed mid-run: it waits past a deadline (runner's stop="wait").
            return runner.run(argv + args, input_text=input_text, timeout=DPKG_TIMEOUT, env=env, stop="wait")
        except CommandError as e:
            if "no space left" in e.stderr.lower():
                raise NoSpace(f"dpkg: disk full under {self.root}: {e}", 60.0) from e
            if "lock" in e.stderr.lower():
                raise PackageLocked(f"dpkg: another process holds the dpkg lock: {e}", 30.0) from e
            raise

    def _set_selections(self, selections: dict[str, str]) -> None:
        if selections:
            lines = "".join(f"{n} {s}\n" for n, s in sorted(selections.items()))
            self._dpkg(["--set-selections"], input_text=lines)

    @_serialized
    def recover(self) -> bool:
        """Finish an interrupted dpkg run (a crash, a full disk) so the next install can proceed."""
        updates = self.path("var/lib/dpkg/updates")
        pending = os.path.isdir(updates) and any(n.isdigit() for n in os.listdir(updates))
        if not pending:
            cache = self._cache()
            pending = any(p.installed is not None and p._pkg.current_state not in (0, 6)
                          for p in (cache[n] for n in HELD if n in cache))
        if pending:
            self._dpkg(["--configure", "--pending"])
        return pending

    @_serialized
    def install(self, pins: Mapping[str, str], hold: tuple[str, ...] = HELD) -> InstallReport:
        _, apt_pkg = _apt()
        for name, version in pins.items():
            validate.package_name(name)
            validate.package_version(version, f"{name} version")
        self.recover()
        cache = self._cache()
        before = {n: (str(cache[n].installed.version) if n in cache and cache[n].installed else None)
                  for n in pins}
        to_hold = tuple(n for n in pins if n in hold)
        todo = {n: v for n, v in pins.items() if before[n] != v}
        for name, version in todo.items():
            if name not in cache or cache[name].versions.get(version) is None:
                raise PackageNotFound(name, version, self.available(name) if name in cache else [])
        held_now = {n for n in pins if n in cache and cache[n]._pkg.selected_state == apt_pkg.SELSTATE_HOLD}
        unheld = tuple(sorted(n for n in todo if n in held_now))
        if not todo:
            rehold = tuple(sorted(n for n in to_hold if n not in held_now))
            self._set_selections(dict.fromkeys(rehold, "hold"))
            return InstallReport(held=rehold)
        self._set_selections(dict.fromkeys(unheld, "install"))
        try:
            extra = self._commit(todo)
        finally:
            # Holds go back on even when the install failed, so the host is as the operator left it.
            self._set_selections(dict.fromkeys(sorted({*to_hold, *unheld}), "hold"))
        cache = self._cache()
        changes = []
        for n in pins:
            now = str(cache[n].installed.version) if cache[n].installed else None
            if now != before[n]:
                changes.append(PackageChange(n, before[n], now))
            if n in todo and now != pins[n]:
                raise PermanentError(f"{n} is at {now} after installing {pins[n]}")
        return InstallReport(tuple(changes), unheld, tuple(sorted({*to_hold, *unheld})), extra)

    def _commit(self, todo: Mapping[str, str]) -> tuple[str, ...]:
        cache = self._cache()
        for name, version in todo.items():
            pkg = cache[name]
            pkg.candidate = pkg.versions.get(version)
            pkg.mark_install(auto_fix=False, from_user=True)
        if cache.broken_count:
            broken = [p.name for p in cache if p.is_inst_broken]
            raise PermanentError(f"installing {_pins(todo)} would leave broken dependencies: {broken}")
        extra = []
        for pkg in cache.get_changes():
            if pkg.name in todo:
                continue
            if pkg.marked_install and pkg.installed is None:
                extra.append(pkg.name)
                continue
            if pkg.marked_upgrade and pkg.name in DEPENDENCY_UPGRADES:
                extra.append(f"{pkg.name}={pkg.candidate.version}")
                continue
            raise PermanentError(
                f"installing {_pins(todo)} would also change {pkg.name}; kupd leaves other packages alone"
            )
        progress = _Progress()
        free_before = shutil.disk_usage(self.root).free
        with self._errors(f"installing {_pins(todo)}"):
            try:
                ok = cache.commit(progress.fetch, progress.install)
            except SystemError as e:
                raise self._install_error(todo, str(e), progress.errors, free_before) from e
        if not ok or progress.errors:
            raise self._install_error(todo, "dpkg failed", progress.errors, free_before)
        return tuple(sorted(extra))

    def _install_error(
        self, todo: Mapping[str, str], text: str, errors: list[str], free_before: int
    ) -> Exception:
        detail = "; ".join(errors) or text
        if "No space left" in detail or "not enough free space" in detail.lower():
            return NoSpace(f"installing {_pins(todo)}: disk full under {self.root}: {detail}", 60.0)
        if "lock" in detail.lower() and "could not" in detail.lower():
            return PackageLocked(f"installing {_pins(todo)}: {detail}", 30.0)
        return PermanentError(f"installing {_pins(todo)} failed: {detail}")


def _pins(pins: Mapping[str, str]) -> str:
    return ", ".join(f"{n}={v}" for n, v in sorted(pins.items()))


def _fetch_error(what: str, text: str) -> Exception:
    low = text.lower()
    if "no_pubkey" in low or "is not signed" in low or "signatures" in low or "signed-by" in low:
        return UnsignedRepository(f"{what}: the repository is not signed by the configured key: {text}")
    if "no space left" in low:
        return NoSpace(f"{what}: disk full: {text}", 60.0)
    return RepositoryError(f"{what}: repository unreachable: {text}", 60.0)
