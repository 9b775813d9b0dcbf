"""Write container images as OCI image-layout tarballs, without Docker or a registry.

Why: the local node's containerd imports images from such tarballs (`ctr images import`), and
the machine has no Docker. An image here is a list of uncompressed layer tarballs plus the
runtime config (user, entrypoint, environment); layers are written once and reused by digest,
so a code change rewrites only the small project layer.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Layer:
    """An uncompressed layer tarball and its sha256 (which is also its OCI diff id)."""

    path: Path
    digest: str
    size: int


def layer_from_dir(root: Path, out: Path) -> Layer:
    """Pack the tree under `root` as a layer owned by root (ids 0), in a stable order."""
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in [*dirnames, *sorted(filenames)]:
                full = Path(dirpath) / name
                info = tar.gettarinfo(str(full), arcname=str(full.relative_to(root)))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isreg():
                    with full.open("rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
    tmp.rename(out)
    return layer_from_file(out)


def layer_from_file(path: Path) -> Layer:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return Layer(path, "sha256:" + sha.hexdigest(), path.stat().st_size)


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image's runtime config a pod uses."""

    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    user: str = ""
    exposed_ports: Sequence[str] = ()
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self, layers: Sequence[Layer]) -> dict[str, Any]:
        config: dict[str, Any] = {"Env": list(self.env), "WorkingDir": "/"}
        if self.entrypoint:
            config["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            config["Cmd"] = list(self.cmd)
        if self.user:
            config["User"] = self.user
        if self.exposed_ports:
            config["ExposedPorts"] = {f"{port}/tcp": {} for port in self.exposed_ports}
        if self.labels:
            config["Labels"] = dict(self.labels)
        return {
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        }


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _blob(tar: tarfile.TarFile, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    _add_bytes(tar, f"blobs/sha256/{digest}", data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


@dataclass(frozen=True)
class Image:
    """One image to write: its full reference (docker.io/library/x:tag style), layers, config."""

    name: str
    layers: Sequence[Layer]
    config: ImageConfig


def write_images(out: Path, images: Sequence[Image]) -> Path:
    """Write an OCI layout tarball holding `images`; a layer they share is stored once, so
    one `ctr images import` loads them all."""
    tmp = out.with_suffix(".tmp")
    written: set[str] = set()
    manifests = []
    with tarfile.open(tmp, "w") as tar:
        _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        for image in images:
            for layer in image.layers:
                if layer.digest not in written:
                    tar.add(str(layer.path), arcname=f"blobs/sha256/{layer.digest[7:]}")
                    written.add(layer.digest)
            config_desc = _blob(
                tar, json.dumps(image.config.to_json(image.layers), sort_keys=True).encode()
            )
            manifest = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer.digest,
                        "size": layer.size,
                    }
                    for layer in image.layers
                ],
            }
            manifest_desc = _blob(tar, json.dumps(manifest, sort_keys=True).encode())
            manifests.append(
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **manifest_desc,
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": image.name,
                        "org.opencontainers.image.ref.name": image.name.rsplit(":", 1)[-1],
                    },
                }
            )
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }
        _add_bytes(tar, "index.json", json.dumps(index).encode())
    tmp.rename(out)
    return out


def write_image(out: Path, name: str, layers: Sequence[Layer], config: ImageConfig) -> Path:
    return write_images(out, [Image(name, layers, config)])
