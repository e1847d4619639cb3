"""OCI image archives assembled from local files, for images that need no build tool: the real node's pause
image and tiny test images from Debian's busybox-static. What `RealNode.import_image` loads, as buildah's do."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from localai_operator.devcluster.binaries import cache_root

# Annotations containerd's importer reads: the full name first, the OCI tag as a fallback.
IMAGE_NAME_ANNOTATION: Final = "io.containerd.image.name"
REF_NAME_ANNOTATION: Final = "org.opencontainers.image.ref.name"
_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class ImageFile:
    """One entry of the image's single layer: a file (from `source` or `data`), a symlink (`link`) or, with
    neither, a directory."""

    path: str
    source: Path | None = None
    data: bytes | None = None
    link: str | None = None
    mode: int = 0o755


def write_image(
    archive: Path,
    name: str,
    files: Sequence[ImageFile],
    *,
    entrypoint: Sequence[str] = (),
    cmd: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Path:
    """Writes an OCI image layout tarball holding one linux/amd64 image called `name` (a full reference such as
    `localhost/localai-operator/pause:3.10.1`). Byte-for-byte reproducible: same inputs, same digests."""
    layer = _layer(files)
    diff_id = _digest(layer)
    environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})}
    runtime: dict[str, Any] = {
        "Env": [f"{key}={value}" for key, value in environment.items()],
        "WorkingDir": "/",
    }
    if entrypoint:
        runtime["Entrypoint"] = list(entrypoint)
    if cmd:
        runtime["Cmd"] = list(cmd)
    config = _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": _MANIFEST,
            "config": _descriptor(_CONFIG, config),
            "layers": [_descriptor(_LAYER, layer)],
        }
    )
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    **_descriptor(_MANIFEST, manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {IMAGE_NAME_ANNOTATION: name, REF_NAME_ANNOTATION: tag},
                }
            ],
        }
    )
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".tmp")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        _add(tar, "index.json", index)
        for blob in (layer, config, manifest):
            _add(tar, f"blobs/sha256/{_digest(blob).removeprefix('sha256:')}", blob)
    partial.replace(archive)
    return archive


def busybox_binary() -> Path:
    """Debian's static busybox, as `hack/node-packages.sh` caches it."""
    return cache_root() / "debian" / "busybox"


def busybox_image(archive: Path, name: str, busybox: Path | None = None) -> Path:
    """An image of Debian's static busybox with every applet linked in /bin (sh, sleep, wget, nslookup, httpd,
    nc, ...): about 2 MB, runnable anywhere. Entrypoint `sh`; pods pass their own command."""
    busybox = busybox or busybox_binary()
    if not busybox.is_file():
        raise FileNotFoundError(f"{busybox} is missing: run `make node-packages` (Debian's busybox-static)")
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.split()
    files = [
        ImageFile("bin/busybox", source=busybox),
        *(ImageFile(f"bin/{applet}", link="busybox") for applet in applets if applet != "busybox"),
        ImageFile("tmp", mode=0o1777),
        ImageFile("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"),
        ImageFile("etc/group", data=b"root:x:0:\nnogroup:x:65534:\n"),
        ImageFile("root", mode=0o700),
    ]
    return write_image(archive, name, files, entrypoint=["/bin/sh"])


def archive_image_names(archive: Path) -> list[str]:
    """The image names an OCI or Docker archive declares, as containerd's importer would name them."""
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        if "index.json" in names:
            index = _read_json(tar, "index.json")
            found = []
            for descriptor in index.get("manifests", []):
                annotations = descriptor.get("annotations") or {}
                ref = annotations.get(IMAGE_NAME_ANNOTATION) or annotations.get(REF_NAME_ANNOTATION, "")
                if any(c in ref for c in "/:@"):  # a tag alone names nothing without a base name
                    found.append(ref)
            return found
        if "manifest.json" in names:
            return [tag for entry in _read_json(tar, "manifest.json") for tag in entry.get("RepoTags") or []]
    raise ValueError(f"{archive} is neither an OCI image layout nor a Docker image archive")


def _layer(files: Sequence[ImageFile]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories: set[str] = set()
        for entry in sorted(files, key=lambda f: f.path):
            parts = entry.path.strip("/").split("/")
            for depth in range(1, len(parts)):
                parent = "/".join(parts[:depth])
                if parent not in directories:
                    directories.add(parent)
                    tar.addfile(_info(parent, tarfile.DIRTYPE, 0o755))
            path = "/".join(parts)
            if entry.link is not None:
                info = _info(path, tarfile.SYMTYPE, 0o777)
                info.linkname = entry.link
                tar.addfile(info)
            elif entry.source is None and entry.data is None:
                directories.add(path)
                tar.addfile(_info(path, tarfile.DIRTYPE, entry.mode))
            else:
                data = entry.data if entry.data is not None else entry.source.read_bytes()  # type: ignore[union-attr]
                mode = entry.mode if entry.data is None else 0o644
                info = _info(path, tarfile.REGTYPE, mode)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _info(path: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
    return info


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _info(name, tarfile.REGTYPE, 0o644)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _read_json(tar: tarfile.TarFile, name: str) -> Any:
    member = tar.extractfile(name)
    assert member is not None, f"{name} is not a regular file"
    return json.load(member)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}
