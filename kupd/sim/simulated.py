"""The simulated host: the Host interface over a JSON state file, for the demo, the cluster
tests and the benchmarks.

Each step takes `step_seconds`, then applies its effect atomically and appends it to an
effect log, so a kill in the middle of a step leaves no effect and the log proves that no
effect was applied twice. Faults are read from `<state>.faults.json` on every call, so a test
injects them while the daemon runs: {"fail": {"kubeadm-upgrade": 1}} fails that step once,
{"hang": {"drain": 30}} makes it take 30 s longer.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kupd import hazards
from kupd.api.models import PackageSource
from kupd.errors import CommandError, PermanentError
from kupd.fsutil import atomic_write_json, read_json
from kupd.host import runner
from kupd.host.base import HostFacts
from kupd.versions import Version


class SimulatedHost:
    def __init__(self, state_file: str | Path, step_seconds: float = 1.0, initial_version: str = "v1.31.2",
                 available: list[str] | None = None) -> None:
        self.path = Path(state_file)
        self.faults_path = Path(str(self.path) + ".faults.json")
        self.step_seconds = step_seconds
        self.available = sorted({Version.parse(v) for v in (available or [initial_version])})
        self._lock = threading.Lock()
        if not self.path.exists():
            atomic_write_json(self.path, {
                "versions": {"kubeadm": initial_version, "kubelet": initial_version,
                             "kubectl": initial_version, "containerd": "1.7.22"},
                "running_kubelet": initial_version,
                "cluster_version": initial_version,
                "repo_minor": f"v{Version.parse(initial_version).major}.{Version.parse(initial_version).minor}",
                "boot_id": str(uuid.uuid4()),
                "effects": [],
            })

    # -- state --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = read_json(self.path)
        return data

    def _faults(self) -> dict[str, Any]:
        data: dict[str, Any] = read_json(self.faults_path) if self.faults_path.exists() else {}
        return data

    def _maybe_crash(self, step: str, when: str) -> None:
        """A one-shot SIGKILL of this very process at a chosen point, for the resume tests."""
        faults = self._faults()
        crash = faults.get("crash") or {}
        if crash.get(step) == when:
            del crash[step]
            atomic_write_json(self.faults_path, faults)
            os.kill(os.getpid(), signal.SIGKILL)

    def _apply(self, effect: str, change: dict[str, Any], step: str = "") -> None:
        with self._lock:
            st = self.state()
            for k, v in change.items():
                if isinstance(v, dict):
                    st.setdefault(k, {}).update(v)
                else:
                    st[k] = v
            st["effects"].append(effect)
            atomic_write_json(self.path, st)
        if step:
            self._maybe_crash(step, "after")

    def _work(self, step: str) -> None:
        self._maybe_crash(step, "before")
        faults = self._faults()
        # Deadline-aware, like every wait of a step: a hang fault ends at the step's deadline.
        runner.sleep(self.step_seconds + float((faults.get("hang") or {}).get(step, 0)))
        fail = faults.get("fail") or {}
        if fail.get(step, 0) > 0:
            fail[step] -= 1
            atomic_write_json(self.faults_path, faults)
            raise CommandError(["simulated", step], 1, "", f"simulated failure of step {step}")
        if step in (faults.get("fail_permanently") or []):
            raise PermanentError(f"simulated permanent failure of step {step}")

    # -- Host ---------------------------------------------------------------------------
    def facts(self) -> HostFacts:
        st = self.state()
        v = st["versions"]
        # A test gives the host hazardous facts through the faults file ("node_facts", the wire form).
        given = self._faults().get("node_facts")
        facts = hazards.decode(json.dumps(given)) if isinstance(given, dict) else None
        return HostFacts("simulated", st["boot_id"], v["kubeadm"], v["kubelet"], v["kubectl"], v["containerd"],
                         facts)

    def preflight(self, version: str) -> None:
        self._work("preflight")
        if Version.parse(version) not in self.available:
            raise PermanentError(f"version {version} is not offered by the package source")

    def set_package_source(self, source: PackageSource | None) -> None:
        """The simulated package source is the configured list of versions, whatever the spec says."""

    def newest_patch(self, minor: str, source: Mapping[str, Any] | None = None) -> str:
        mk = Version.parse(minor + ".0").minor_key
        cands = [v for v in self.available if v.minor_key == mk]
        if not cands:
            raise PermanentError(f"the package source offers no {minor} release")
        return str(max(cands))

    def configure_repository(self, version: str) -> None:
        v = Version.parse(version)
        minor = f"v{v.major}.{v.minor}"
        self._work("repository")
        if self.state()["repo_minor"] != minor:
            self._apply(f"repository {minor}", {"repo_minor": minor}, "repository")

    def install_kubeadm(self, version: str) -> None:
        self._work("kubeadm-package")
        if self.state()["versions"]["kubeadm"] != version:
            self._apply(f"install kubeadm {version}", {"versions": {"kubeadm": version}}, "kubeadm-package")

    def kubeadm_upgrade(self, version: str, first_control_plane: bool, control_plane: bool) -> None:
        self._work("kubeadm-upgrade")
        st = self.state()
        if st["versions"]["kubeadm"] != version:
            raise PermanentError(f"kubeadm is {st['versions']['kubeadm']}, not {version}")
        if st.get("upgraded_to") != version:
            mode = "apply" if first_control_plane else "node"
            self._apply(f"kubeadm upgrade {mode} {version}", {"upgraded_to": version}, "kubeadm-upgrade")

    def install_kubelet(self, version: str, containerd: str | None) -> None:
        self._work("kubelet-package")
        st = self.state()
        if st["versions"]["kubelet"] != version:
            self._apply(f"install kubelet kubectl {version}", {"versions": {"kubelet": version, "kubectl": version}},
                        "kubelet-package")
        if containerd and st["versions"]["containerd"] != containerd.lstrip("v"):
            self._apply(f"install containerd {containerd}", {"versions": {"containerd": containerd.lstrip("v")}})

    def restart_services(self) -> None:
        self._work("restart")
        st = self.state()
        if st["running_kubelet"] != st["versions"]["kubelet"]:
            self._apply(f"restart kubelet {st['versions']['kubelet']}", {"running_kubelet": st["versions"]["kubelet"]},
                        "restart")

    def verify(self, version: str) -> None:
        self._work("verify")
        st = self.state()
        if st["versions"]["kubelet"] != version or st["running_kubelet"] != version:
            raise PermanentError(f"kubelet is {st['versions']['kubelet']} (running {st['running_kubelet']}), "
                                 f"expected {version}")

    def reboot_required(self) -> bool:
        return bool(self._faults().get("reboot_required"))

    def reboot(self) -> None:
        self._work("reboot")
        self._apply("reboot", {"boot_id": str(uuid.uuid4())}, "reboot")
