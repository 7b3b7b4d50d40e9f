"""Everything the real cluster installs, built once and cached by a hash of its inputs.

- Go builds (each cached on its own by its script): the kupd-k8s busybox of each release stamp
  (k8s/build.sh), containerd at two versions and crictl (build-go.sh).
- From Debian: runc's .deb (carried in the repositories), the CNI plugins of
  containernetworking-plugins, busybox-static for the workloads' image.
- The packages and the signed per-minor repositories (packages.py), as an air-gap bundle.
- The images (oci.py): per release stamp, what `kubeadm config images list` names for the
  cluster's configuration, under the cluster's imageRepository; plus the pause image (a static C
  program) and the workloads' image.

`python -m tests.realcluster.artifacts` builds (or finds) them and prints where they are.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.host import repo_builder
from tests.realcluster import oci, packages
from tests.system.nspawn import cache_dir

HERE = Path(__file__).resolve().parent
REGISTRY = "registry.kupd.test"
PAUSE_TAG = "3.10.2"
WORKLOAD_IMAGE = f"{REGISTRY}/busybox:1.35"
CRICTL_VERSION = "v1.37.0"
ETCDUTL_VERSION = "v3.7.0"  # the etcd kubeadm 1.37 runs (etcdutl/go.mod pins it)
CNI_DIR = Path("/usr/lib/cni")
BUSYBOX_STATIC = Path("/bin/busybox")
BUSYBOX_APPLETS = ("sh", "sleep", "httpd", "cat", "echo", "touch", "ls", "mkdir", "wget", "date", "true", "test")
DEBIAN_DEBS = ("runc",)


@dataclass(frozen=True)
class Release:
    stamp: str  # the version the binaries report and the packages carry: v1.37.2
    source: str  # the go.mod folder of k8s/ it is built from: v1.37.2
    containerd: str  # containerd version packaged with it: v2.2.9

    @property
    def minor(self) -> str:
        return ".".join(self.stamp.split(".")[:2])

    @property
    def package_version(self) -> str:
        return self.stamp.lstrip("v") + "-1.1"


# The tier's upgrade. Two full releases (v1.36.3 -> v1.37.2) need a second cold Kubernetes build;
# docs/development/testing.md has the figures that decided for the fallback the issue allows:
# v1.37.2's source linked twice, stamped v1.37.1 and v1.37.2 (a patch upgrade).
FROM = Release("v1.37.1", "v1.37.2", "v2.2.9")
TO = Release("v1.37.2", "v1.37.2", "v2.3.7")


@dataclass(frozen=True)
class Artifacts:
    bundle: Path  # <bundle>/<minor>/deb/ + manifest.sha256
    images: dict[str, Path]  # stamp -> OCI archive of its control-plane images; "common" -> pause + workload
    busybox: dict[str, Path]  # stamp -> kupd-k8s binary (on the machine, for kubeadm/kubectl/etcdutl use)
    image_list: dict[str, list[str]]  # stamp -> kubeadm's image references
    etcdutl: Path  # upstream's etcdutl (on the machine: the test restores the uploaded snapshot with it)


def _run(argv: list[str], timeout: float = 3600, **kw: object) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return str(proc.stdout)


def go_builds(releases: tuple[Release, ...] = (FROM, TO)) -> tuple[dict[str, Path], dict[str, Path], Path]:
    """The busybox per stamp, containerd per version, crictl: built one after the other (each is
    a heavy build on a 2-core machine) or found in the cache."""
    busybox = {}
    for r in releases:
        out = _run(["bash", str(HERE / "k8s/build.sh"), r.source, r.stamp])
        busybox[r.stamp] = Path(out.strip().splitlines()[-1])
    containerd = {}
    for r in releases:
        out = _run(["bash", str(HERE / "build-go.sh"), "containerd", r.containerd])
        containerd[r.containerd] = Path(out.strip().splitlines()[-1])
    crictl = Path(_run(["bash", str(HERE / "build-go.sh"), "crictl", CRICTL_VERSION]).strip().splitlines()[-1])
    return busybox, containerd, crictl


def debian_debs(dest: Path) -> list[Path]:
    """Debian's own .debs the nodes install from the tier's repositories (runc)."""
    dest.mkdir(parents=True, exist_ok=True)
    found = [p for name in DEBIAN_DEBS for p in dest.glob(f"{name}_*.deb")]
    if len(found) == len(DEBIAN_DEBS):
        return found
    # apt's download sandbox user cannot write into root's cache folder.
    _run(["apt-get", "download", "-o", "APT::Sandbox::User=root", *DEBIAN_DEBS], cwd=dest, timeout=600)
    return [p for name in DEBIAN_DEBS for p in dest.glob(f"{name}_*.deb")]


def cluster_config(release: Release) -> str:
    """The ClusterConfiguration part that decides kubeadm's images (shared with kubeadm init)."""
    return f"""\
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: {release.stamp}
imageRepository: {REGISTRY}
proxy:
  disabled: true
"""


def image_list(busybox: Path, release: Release, work: Path) -> list[str]:
    cfg = work / f"images-{release.stamp}.yaml"
    cfg.write_text(cluster_config(release))
    out = _run([str(busybox), "kubeadm", "config", "images", "list", "--config", str(cfg)], timeout=120)
    return [line.strip() for line in out.splitlines() if line.strip().startswith(REGISTRY + "/")]


def _shared_libs(binary: Path) -> list[Path]:
    """The libraries a dynamically linked binary loads (with the loader); none for a static one."""
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False, timeout=60)
    libs = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        for p in parts:
            if p.startswith("/"):
                libs.append(Path(p))
                break
    return libs


def k8s_images(busybox: Path, refs: list[str]) -> list[oci.Image]:
    """One image per reference: the busybox, linked under the component's name (its command in
    kubeadm's static pod manifests), over a layer with the C library it was linked against."""
    libs = [oci.FileEntry(str(p).lstrip("/"), source=p.resolve(), mode=0o755) for p in _shared_libs(busybox)]
    base: list[oci.FileEntry] = [*libs, oci.FileEntry("tmp/", mode=0o1777), oci.FileEntry("var/run/", mode=0o755)]
    binary = [oci.FileEntry("usr/local/bin/kupd-k8s", source=busybox, mode=0o755)]
    images = []
    for ref in refs:
        component = ref.rsplit("/", 1)[1].split(":")[0]
        link = [oci.FileEntry(f"usr/local/bin/{component}", link="kupd-k8s")]
        images.append(oci.Image(ref, [base, binary, link], entrypoint=[f"/usr/local/bin/{component}"]))
    return images


# CoreDNS is not served by the Go module proxy. kubeadm's DNS addon runs this instead: it answers
# the Deployment's liveness (/health on 8080) and readiness (/ready on 8181) probes and serves no
# DNS (nothing in the tier resolves names). The addon stays enabled because kubeadm 1.37's
# `upgrade apply` preflight fails without a CoreDNS ConfigMap ("start version '' not supported").
COREDNS_STANDIN = """#!/bin/sh
# Stand-in for CoreDNS (kupd's real-cluster tier): answers kubeadm's probes, serves no DNS.
httpd -p 8080 -h /www
httpd -p 8181 -h /www
exec sleep 2147483647
"""


def coredns_image(ref: str) -> oci.Image:
    layer = [oci.FileEntry("bin/busybox", source=BUSYBOX_STATIC, mode=0o755),
             *(oci.FileEntry(f"bin/{a}", link="busybox") for a in BUSYBOX_APPLETS),
             oci.FileEntry("coredns", data=COREDNS_STANDIN.encode(), mode=0o755),
             oci.FileEntry("www/health", data=b"OK\n", mode=0o644),
             oci.FileEntry("www/ready", data=b"OK\n", mode=0o644)]
    return oci.Image(ref, [layer], entrypoint=["/coredns"], env=["PATH=/bin"])


def common_images(pause: Path) -> list[oci.Image]:
    layer = [oci.FileEntry("pause", source=pause, mode=0o755)]
    box = [oci.FileEntry("bin/busybox", source=BUSYBOX_STATIC, mode=0o755), oci.FileEntry("tmp/", mode=0o1777)]
    box += [oci.FileEntry(f"bin/{a}", link="busybox") for a in BUSYBOX_APPLETS]
    return [
        oci.Image(f"{REGISTRY}/pause:{PAUSE_TAG}", [layer], entrypoint=["/pause"]),
        oci.Image(WORKLOAD_IMAGE, [box], cmd=["sh"], env=["PATH=/bin"]),
    ]


def _inputs_hash(busybox: dict[str, Path], containerd: dict[str, Path], crictl: Path, debs: list[Path]) -> str:
    h = hashlib.sha256()
    for f in ("artifacts.py", "packages.py", "oci.py", "pause.c"):
        h.update((HERE / f).read_bytes())
    h.update(json.dumps([str(p) for p in (*busybox.values(), *containerd.values(), crictl, *debs)]).encode())
    h.update(json.dumps(sorted(p.name for p in CNI_DIR.iterdir())).encode())
    h.update(BUSYBOX_STATIC.read_bytes())
    h.update(json.dumps([asdict(FROM), asdict(TO)]).encode())
    return h.hexdigest()[:16]


def build(releases: tuple[Release, ...] = (FROM, TO)) -> Artifacts:
    for tool, pkg in ((CNI_DIR / "bridge", "containernetworking-plugins"), (BUSYBOX_STATIC, "busybox-static"),
                      (Path("/usr/bin/gcc"), "gcc"), (Path("/usr/bin/apt-ftparchive"), "apt-utils")):
        if not tool.exists():
            raise RuntimeError(f"{tool} is missing: install {pkg} (.ci/apt-packages.txt)")
    busybox, containerd, crictl = go_builds(releases)
    debs = debian_debs(cache_dir() / "realcluster-debian")
    key = _inputs_hash(busybox, containerd, crictl, debs)
    out = cache_dir() / f"realcluster-{key}"
    meta = out / "artifacts.json"
    lock_path = cache_dir() / ".realcluster.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not meta.exists():
            started = time.monotonic()
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            work = tmp / "work"
            work.mkdir(parents=True)
            gpg_key = repo_builder.make_key(tmp / "key")
            # The pause image's process, static so that it needs nothing in its image.
            pause = work / "pause"
            _run(["gcc", "-static", "-O2", "-o", str(pause), str(HERE / "pause.c")])
            images: dict[str, str] = {}
            refs: dict[str, list[str]] = {}
            (tmp / "images").mkdir()
            by_minor: dict[str, list[Path]] = {}
            for r in releases:
                refs[r.stamp] = image_list(busybox[r.stamp], r, work)
                pause_ref = f"{REGISTRY}/pause:{PAUSE_TAG}"
                if pause_ref not in refs[r.stamp]:
                    raise RuntimeError(f"kubeadm {r.stamp} expects another pause image: {refs[r.stamp]}")
                archive = tmp / "images" / f"k8s-{r.stamp}.tar"
                components = [x for x in refs[r.stamp] if x != pause_ref and "/coredns" not in x]
                dns = [coredns_image(x) for x in refs[r.stamp] if "/coredns" in x]
                oci.write_archive([*k8s_images(busybox[r.stamp], components), *dns], archive)
                images[r.stamp] = str(archive.relative_to(tmp))
                debs_dir = work / "debs" / r.stamp
                k8s = packages.k8s_debs(r.stamp, busybox[r.stamp], CNI_DIR, crictl / "crictl", CRICTL_VERSION)
                ctd = packages.containerd_deb(r.containerd, containerd[r.containerd])
                built = [packages.build(d, debs_dir, work / "pkg") for d in (*k8s, ctd)]
                by_minor.setdefault(r.minor, []).extend([*built, *debs])
            common = tmp / "images" / "common.tar"
            oci.write_archive(common_images(pause), common)
            images["common"] = str(common.relative_to(tmp))
            # Every minor's repository carries every containerd (as Docker's repositories do):
            # kupd pins the one the DirectUpdate names.
            containerds = [p for ps in by_minor.values() for p in ps if p.name.startswith("containerd_")]
            for minor, files in by_minor.items():
                packages.build_repo(tmp / "bundle" / minor / "deb", sorted({*files, *containerds}), gpg_key)
            repo_builder.write_manifest(tmp / "bundle")
            # gpg left an agent running for the key's home, which is about to move.
            subprocess.run(["gpgconf", "--homedir", str(gpg_key.home), "--kill", "gpg-agent"], check=False,
                           capture_output=True, timeout=30)
            shutil.rmtree(work)
            meta_tmp = tmp / "artifacts.json"
            meta_tmp.write_text(json.dumps({"images": images, "image_list": refs,
                                            "built_seconds": round(time.monotonic() - started, 1)}, indent=1))
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
    data = json.loads(meta.read_text())
    etcdutl = Path(_run(["bash", str(HERE / "build-go.sh"), "etcdutl", ETCDUTL_VERSION]).strip().splitlines()[-1])
    return Artifacts(bundle=out / "bundle", images={k: out / v for k, v in data["images"].items()},
                     busybox=busybox, image_list=data["image_list"], etcdutl=etcdutl / "etcdutl")


def main() -> int:
    started = time.monotonic()
    a = build()
    print(json.dumps({"bundle": str(a.bundle), "images": {k: str(v) for k, v in a.images.items()},
                      "busybox": {k: str(v) for k, v in a.busybox.items()}, "image_list": a.image_list,
                      "seconds": round(time.monotonic() - started, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GOFLAGS", "-buildvcs=false")
    sys.exit(main())
