"""The host reads each Kubernetes binary's version once per version of the file.

The real cluster showed kupd's member running kubeadm, the kubelet, kubectl and containerd on
every Lease renewal (every 2.5 s during an operation): four 100+ MB Go binaries each time. Real
binaries here (shell scripts that count their runs) in a throwaway root.
"""

from __future__ import annotations

import os
from pathlib import Path

from kupd.host.real import RealHost, RealHostConfig

KUBEADM = "#!/bin/sh\necho run >> {count}\necho {version}\n"


def write_kubeadm(root: Path, version: str, *, replace: bool) -> None:
    target = root / "usr/bin/kubeadm"
    text = KUBEADM.format(count=root / "runs", version=version)
    if replace:  # as dpkg installs a file: a new one renamed over the old (a new inode)
        tmp = target.with_name("kubeadm.dpkg-new")
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, target)
    else:  # written over in place (same inode)
        with open(target, "r+") as f:
            f.write(text)
            f.truncate()


def runs(root: Path) -> int:
    return len((root / "runs").read_text().splitlines())


def test_a_binary_is_run_once_per_version_of_its_file(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    write_kubeadm(tmp_path, "v1.36.3", replace=True)
    host = RealHost(RealHostConfig(node_name="node-1", root=str(tmp_path), package_manager="apt", kubeconfig=None))
    assert host.installed_versions()["kubeadm"] == "v1.36.3"
    assert host.installed_versions()["kubeadm"] == "v1.36.3"
    assert host.facts().kubeadm == "v1.36.3"
    assert runs(tmp_path) == 1
    # A package upgrade: a new file.
    write_kubeadm(tmp_path, "v1.37.2", replace=True)
    assert host.installed_versions()["kubeadm"] == "v1.37.2"
    assert runs(tmp_path) == 2
    # The same file written over: its mtime and ctime change.
    write_kubeadm(tmp_path, "v1.37.3", replace=False)
    assert host.installed_versions()["kubeadm"] == "v1.37.3"
    assert runs(tmp_path) == 3
    assert host.installed_versions()["kubelet"] is None  # not installed: nothing run, nothing cached


def test_a_failed_version_read_is_tried_again(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    write_kubeadm(tmp_path, "not-a-version", replace=True)
    host = RealHost(RealHostConfig(node_name="node-1", root=str(tmp_path), package_manager="apt", kubeconfig=None))
    assert host.installed_versions()["kubeadm"] is None
    assert host.installed_versions()["kubeadm"] is None
    assert runs(tmp_path) == 2
