"""OCI archives the harness assembles for its real node: named as containerd's importer names them, reproducible."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from localai_operator.devcluster.oci import ImageFile, archive_image_names, write_image
from localai_operator.devcluster.realnode import normalize_image_name

FILES = [
    ImageFile("bin/hello", data=b"#!/bin/sh\necho hello\n"),
    ImageFile("bin/hi", link="hello"),
    ImageFile("tmp"),
]


def test_an_image_archive_names_its_image_as_containerd_imports_it(tmp_path: Path) -> None:
    archive = write_image(tmp_path / "image.tar", "localhost/demo/hello:1", FILES, entrypoint=["/bin/hello"])

    assert archive_image_names(archive) == ["localhost/demo/hello:1"]
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        [descriptor] = json.load(member)["manifests"]
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == "1"


def test_the_same_files_make_the_same_archive_byte_for_byte(tmp_path: Path) -> None:
    first = write_image(tmp_path / "a.tar", "localhost/demo/hello:1", FILES)
    second = write_image(tmp_path / "b.tar", "localhost/demo/hello:1", FILES)

    assert first.read_bytes() == second.read_bytes()


def test_a_docker_archive_is_named_by_its_repo_tags(tmp_path: Path) -> None:
    archive = tmp_path / "docker.tar"
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["example/app:2"], "Layers": []}]).encode()
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))

    assert archive_image_names(archive) == ["example/app:2"]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("example/app:2", "docker.io/example/app:2"),
        ("localhost/demo/hello:1", "localhost/demo/hello:1"),
        ("registry.example:5000/app", "registry.example:5000/app:latest"),
        ("localai-operator:dev-abc", "docker.io/library/localai-operator:dev-abc"),
    ],
)
def test_image_names_are_normalised_as_containerd_stores_them(given: str, stored: str) -> None:
    assert normalize_image_name(given) == stored
