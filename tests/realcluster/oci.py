"""OCI image archives written from local files, for `ctr images import` on the nodes.

Nothing here talks to a registry: a node's containerd imports an OCI image layout tar
(`oci-layout`, `index.json`, `blobs/sha256/...`), and the reference it gets is the
`io.containerd.image.name` annotation of each manifest in the index. Layers are written with
fixed timestamps and owners, so the same input files give the same digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
# Uncompressed layers: the payload is a Go binary that compresses poorly and slowly, and the
# archive never leaves the machine.
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass(frozen=True)
class FileEntry:
    """One file of a layer: its path inside the image, where its bytes come from, its mode."""

    path: str
    source: Path | None = None
    data: bytes | None = None
    mode: int = 0o755
    link: str | None = None  # a symbolic link to this target instead of a regular file
    # A path ending in "/" (or a mode with the sticky bit, like /tmp's 0o1777) is a directory.


@dataclass
class Image:
    name: str  # the full reference, e.g. registry.kupd.test/kube-apiserver:v1.37.2
    layers: list[Sequence[FileEntry]]
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/bin:/usr/bin:/bin"])


def _layer(entries: Iterable[FileEntry]) -> tuple[bytes, str]:
    """A tar of the entries (parents created) and its diff ID (its digest: it is not compressed)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for e in sorted(entries, key=lambda e: e.path):
            parts = e.path.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(e.path.strip("/"))
            info.mode = e.mode
            if e.mode & 0o1000 or e.path.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            if e.link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = e.link
                tar.addfile(info)
                continue
            data = e.data if e.data is not None else (e.source.read_bytes() if e.source else b"")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    plain = raw.getvalue()
    return plain, "sha256:" + hashlib.sha256(plain).hexdigest()


def _blob(blobs: dict[str, bytes], data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return "sha256:" + digest


def write_archive(images: Sequence[Image], out: Path) -> Path:
    """One OCI layout tar holding every image (a layer shared by several is stored once)."""
    blobs: dict[str, bytes] = {}
    built: dict[int, tuple[bytes, str]] = {}
    manifests = []
    for image in images:
        layer_descs, diff_ids = [], []
        for layer in image.layers:
            key = id(layer)
            if key not in built:
                built[key] = _layer(layer)
            gz, diff_id = built[key]
            layer_descs.append({"mediaType": MEDIA_LAYER, "digest": _blob(blobs, gz), "size": len(gz)})
            diff_ids.append(diff_id)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": image.entrypoint or None, "Cmd": image.cmd or None, "Env": image.env},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        config_bytes = json.dumps(config, sort_keys=True).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": _blob(blobs, config_bytes), "size": len(config_bytes)},
            "layers": layer_descs,
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        manifests.append({
            "mediaType": MEDIA_MANIFEST,
            "digest": _blob(blobs, manifest_bytes),
            "size": len(manifest_bytes),
            "annotations": {"io.containerd.image.name": image.name, "org.opencontainers.image.ref.name": image.name},
            "platform": {"architecture": "amd64", "os": "linux"},
        })
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests}
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index, sort_keys=True).encode())
        for digest, data in sorted(blobs.items()):
            add(f"blobs/sha256/{digest}", data)
    tmp.rename(out)
    return out
