"""Simulated nodes on a real control plane: each node is a real `kupd daemon` process with the
simulated host. Used by `kupd demo`, the cluster-tier tests and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kupd.fsutil import atomic_write_json, read_json
from kupd.sim.devcluster import ControlPlane


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, int | float):
            lines.append(f"{k} = {v}")
        elif isinstance(v, list):
            lines.append(f"{k} = [{', '.join(repr(str(x)).replace(chr(39), chr(34)) for x in v)}]")
        else:
            lines.append(f'{k} = "{v}"')
    out = "\n".join(lines) + "\n"
    for k, v in tables:
        out += f"\n[{prefix}{k}]\n" + _toml(v, f"{prefix}{k}.")
    return out


@dataclass
class SimNode:
    name: str
    control_plane: bool
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def state_file(self) -> Path:
        return self.dir / "state" / "simulated-host.json"

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = read_json(self.state_file)
        return data

    def faults(self, faults: dict[str, Any]) -> None:
        atomic_write_json(str(self.state_file) + ".faults.json", faults)

    @property
    def log(self) -> Path:
        return self.dir / "daemon.log"


@dataclass
class SimCluster:
    cp: ControlPlane
    workdir: Path
    step_seconds: float = 0.5
    initial_version: str = "v1.31.2"
    available: list[str] = field(default_factory=lambda: ["v1.31.2", "v1.31.3", "v1.32.0", "v1.32.1", "v1.33.0"])
    member_seconds: int = 8
    coordinator_seconds: int = 5
    nodes: dict[str, SimNode] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    log_level: str = "info"

    def add_node(self, name: str, control_plane: bool = False, start: bool = True,
                 extra: dict[str, Any] | None = None) -> SimNode:
        d = self.workdir / name
        (d / "config.d").mkdir(parents=True, exist_ok=True)
        (d / "state").mkdir(exist_ok=True)
        cfg: dict[str, Any] = {
            "node_name": name, "kubeconfig": str(self.cp.admin_kubeconfig), "state_dir": str(d / "state"),
            "host": "simulated", "control_plane": control_plane, "metrics_address": "", "log_level": self.log_level,
            "coordinator_eligible": "control-plane",
            "lease": {"member_duration_seconds": self.member_seconds,
                      "coordinator_duration_seconds": self.coordinator_seconds},
            "simulated": {"state_file": str(d / "state" / "simulated-host.json"),
                          "step_seconds": self.step_seconds, "initial_version": self.initial_version,
                          "available_versions": self.available},
        }
        for k, v in (extra or {}).items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k].update(v)
            else:
                cfg[k] = v
        (d / "config.d" / "10-sim.toml").write_text(_toml(cfg))
        node = SimNode(name, control_plane, d)
        self.nodes[name] = node
        if start:
            self.start(name)
        return node

    def start(self, name: str) -> None:
        node = self.nodes[name]
        log = open(node.log, "ab")  # noqa: SIM115 - owned by the child
        env = dict(os.environ, **self.extra_env)
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "kupd", "daemon", "--config-dir", str(node.dir / "config.d")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[name]
        if node.proc and node.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, sig)
            node.proc.wait(30)
        node.proc = None

    def alive(self, name: str) -> bool:
        p = self.nodes[name].proc
        return p is not None and p.poll() is None

    def stop(self) -> None:
        for name in list(self.nodes):
            self.kill(name, signal.SIGTERM)
