"""Debian packages of the real cluster, laid out like pkgs.k8s.io's, in signed per-minor repositories.

Each release gets kubeadm, kubelet, kubectl (the release's kupd-k8s busybox under the command's
name), kubernetes-cni (Debian's containernetworking-plugins in /opt/cni/bin) and cri-tools
(crictl); containerd is packaged the same way at its own versions. Names, file paths, the kubelet
unit and kubeadm's kubelet drop-in are upstream's. Differences from upstream, on purpose:
- the dependencies are only those the offline node image can satisfy (kubelet's iptables,
  socat, ethtool, conntrack and ebtables are left out: nothing in this tier uses them), and
  runc is Debian's own .deb, carried in each repository;
- containerd's unit has no OOMScoreAdjust=-999: the machine withholds CAP_SYS_RESOURCE, so no
  process may lower an oom_score_adj, and systemd would refuse to start the unit.

The repositories form an air-gap bundle as kupd reads it: <bundle>/<minor>/deb/ with a signed
InRelease and Release.key, plus manifest.sha256 over every file.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tests.host import repo_builder

KUBELET_UNIT = """\
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""

# Upstream's drop-in, word for word.
KUBEADM_DROPIN = "".join([
    "# Note: This dropin only works with kubeadm and kubelet v1.11+\n",
    "[Service]\n",
    'Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf'
    ' --kubeconfig=/etc/kubernetes/kubelet.conf"\n',
    'Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"\n',
    '# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the'
    " KUBELET_KUBEADM_ARGS variable dynamically\n",
    "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env\n",
    "# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably,"
    " the user should use\n",
    "# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS"
    " should be sourced from this file.\n",
    "EnvironmentFile=-/etc/default/kubelet\n",
    "ExecStart=\n",
    "ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS"
    " $KUBELET_EXTRA_ARGS\n",
])

CONTAINERD_UNIT = """\
[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target dbus.service

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/bin/containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity

[Install]
WantedBy=multi-user.target
"""

SANDBOX_IMAGE = "registry.kupd.test/pause:3.10.2"

CONTAINERD_CONFIG = f"""\
version = 3

[plugins."io.containerd.cri.v1.runtime"]
  # The machine withholds CAP_SYS_RESOURCE, so the -998 that CRI asks for a pod sandbox would
  # fail in runc ("can't get final child's PID from pipe: EOF"): no lower than containerd's own.
  restrict_oom_score_adj = true

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  SystemdCgroup = false

[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{SANDBOX_IMAGE}"
"""

# On the first install, like debhelper's snippet: enable the unit; never restart it on an
# upgrade (kupd restarts the kubelet and containerd itself, after the packages are in).
_ENABLE = """#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
  if [ -z "$2" ]; then systemctl enable {unit} >/dev/null 2>&1 || true; fi
fi
"""


@dataclass(frozen=True)
class Deb:
    name: str
    version: str
    files: dict[str, Path | str]  # path in the package -> source file, or text
    depends: str = ""
    conffiles: tuple[str, ...] = ()
    postinst: str | None = None
    description: str = ""


def build(deb: Deb, out: Path, work: Path) -> Path:
    root = work / f"{deb.name}_{deb.version}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "DEBIAN").mkdir(parents=True)
    for dest, src in deb.files.items():
        target = root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, Path):
            # A hard link where it can: the busybox is big, and dpkg-deb only reads it.
            try:
                target.hardlink_to(src)
            except OSError:
                shutil.copy2(src, target)
            target.chmod(0o755)
        else:
            target.write_text(src)
            target.chmod(0o644)
    control = textwrap.dedent(f"""\
        Package: {deb.name}
        Version: {deb.version}
        Architecture: amd64
        Maintainer: kupd tests <test@kupd.invalid>
        Section: admin
        Priority: optional
        Description: {deb.description or deb.name} (kupd real-cluster tier)
        """)
    if deb.depends:
        control += f"Depends: {deb.depends}\n"
    (root / "DEBIAN/control").write_text(control)
    if deb.conffiles:
        (root / "DEBIAN/conffiles").write_text("".join(f"{c}\n" for c in deb.conffiles))
    if deb.postinst:
        script = root / "DEBIAN/postinst"
        script.write_text(deb.postinst)
        script.chmod(0o755)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{deb.name}_{deb.version}_amd64.deb"
    # Uncompressed: the payload is a ~150 MB Go binary, and compressing it three times per
    # release would cost minutes of CPU for nothing.
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Znone", "--build", str(root), str(path)],
                   check=True, capture_output=True, text=True, timeout=600)
    shutil.rmtree(root, ignore_errors=True)
    return path


def k8s_debs(stamp: str, busybox: Path, cni_dir: Path, crictl: Path, crictl_version: str) -> list[Deb]:
    """kubeadm, kubelet, kubectl of one release (stamp "v1.37.2" -> package "1.37.2-1.1")."""
    v = stamp.lstrip("v") + "-1.1"
    cni_files: dict[str, Path | str] = {f"/opt/cni/bin/{p.name}": p
                                        for p in sorted(cni_dir.iterdir()) if p.is_file()}
    return [
        Deb("kubeadm", v, {"/usr/bin/kubeadm": busybox,
                           "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf": KUBEADM_DROPIN},
            depends="cri-tools (>= 1.30.0)",
            description="Command-line utility for administering a Kubernetes cluster"),
        Deb("kubelet", v, {"/usr/bin/kubelet": busybox, "/usr/lib/systemd/system/kubelet.service": KUBELET_UNIT},
            depends="kubernetes-cni (>= 1.1.1), mount, util-linux, iproute2",
            postinst=_ENABLE.format(unit="kubelet.service"), description="Node agent for Kubernetes clusters"),
        Deb("kubectl", v, {"/usr/bin/kubectl": busybox},
            description="Command-line utility for interacting with a Kubernetes cluster"),
        Deb("kubernetes-cni", "1.1.1-1.1", cni_files,
            description="Binaries required to provision kubernetes container networking"),
        Deb("cri-tools", crictl_version.lstrip("v") + "-1.1", {"/usr/bin/crictl": crictl},
            description="Command-line utility for interacting with a container runtime"),
    ]


def containerd_deb(version: str, bin_dir: Path) -> Deb:
    files: dict[str, Path | str] = {f"/usr/bin/{n}": bin_dir / n
                                    for n in ("containerd", "containerd-shim-runc-v2", "ctr")}
    files["/lib/systemd/system/containerd.service"] = CONTAINERD_UNIT
    files["/etc/containerd/config.toml"] = CONTAINERD_CONFIG
    return Deb("containerd", version.lstrip("v") + "-1", files, depends="runc (>= 1.1.0)",
               conffiles=("/etc/containerd/config.toml",), postinst=_ENABLE.format(unit="containerd.service"),
               description="An open and reliable container runtime")


def build_repo(repo: Path, debs: list[Path], key: repo_builder.Key) -> Path:
    """A flat signed repository like pkgs.k8s.io's (`deb [signed-by=...] URL /`)."""
    repo.mkdir(parents=True, exist_ok=True)
    for d in debs:
        dest = repo / d.name
        if not dest.exists():
            try:
                dest.hardlink_to(d)
            except OSError:
                shutil.copy2(d, dest)
    repo_builder.index_and_sign(repo, key)
    return repo
