"""The images built without a Docker engine, run from their own root filesystems with `buildah run` (chroot
isolation, the host's loopback): the mirror serves the GGUF, the operator image's `fetch-models` downloads and
verifies it, and the model server answers as LocalAI v4.9.0 does. Needs root; the first run builds the images
(about 10 minutes on 2 cores), later runs take them from the cache."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localai_operator.devcluster import images
from tests.helpers import wait_for

# These build and run images on this machine (root, buildah), like the harness: with --kubeconfig (kind in
# GitHub Actions, where Docker builds the images) they have nothing to test.
pytestmark = pytest.mark.harness

MODEL = "gemma-3-270m"
API_KEY = "test-key"
MODEL_YAML = f"""\
name: {MODEL}
backend: llama-cpp
context_size: 2048
threads: 2
parameters:
  model: {images.MODEL_FILE}
  temperature: 0.2
  max_tokens: 48
  seed: 7
options:
  - parallel:1
"""
EMBEDDINGS_YAML = f"""\
name: {MODEL}-embeddings
context_size: 512
threads: 2
embeddings: true
parameters:
  model: {images.MODEL_FILE}
"""
BROKEN_YAML = """\
name: missing-weights
backend: llama-cpp
parameters:
  model: not-downloaded.gguf
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=10
        ) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _answers(url: str) -> bool:
    try:
        return _get(url)[0] == 200
    except OSError:
        return False


@dataclass
class Running:
    container: images.Container
    base: str
    log: Path

    def post(self, path: str, body: dict[str, Any], key: str | None = API_KEY) -> urllib.request.Request:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        return urllib.request.Request(f"{self.base}{path}", data=json.dumps(body).encode(), headers=headers)


@pytest.fixture(scope="module")
def operator_image() -> images.Image:
    return images.build("operator")


@pytest.fixture(scope="module")
def model_server_image() -> images.Image:
    return images.build("model-server")


@pytest.fixture(scope="module")
def mirror(model_server_image: images.Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("mirror") / "mirror.log"
    argv = ["python", images.MODEL_SERVER_PROGRAM, "mirror", "--host", "127.0.0.1", "--port", str(port)]
    with images.Container(model_server_image, argv, log=log) as container:
        base = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: _answers(f"{base}/healthz") or container.poll() is not None, 60, "the mirror to listen"
        )
        assert container.poll() is None, log.read_text()
        yield base


def _fetch_models(image: images.Image, mirror: str, work: Path, sha256: str) -> tuple[int, Path]:
    """Runs the operator image's init container program as the pool's Deployment does, on its own volumes."""
    config_dir, models_dir = work / "config", work / "models"
    config_dir.mkdir(parents=True)
    models_dir.mkdir()
    models_dir.chmod(0o777)  # the image runs as uid 65532, as in the pod
    (config_dir / f"{MODEL}.yaml").write_text(MODEL_YAML)
    manifest = [
        {"model": MODEL, "file": images.MODEL_FILE, "url": f"{mirror}/{images.MODEL_FILE}", "sha256": sha256}
    ]
    (config_dir / "downloads.json").write_text(json.dumps(manifest))
    argv = [
        "localai-operator",
        "fetch-models",
        "--manifest",
        "/config/downloads.json",
        "--config-dir",
        "/config",
        "--models-dir",
        "/models",
    ]
    volumes = {config_dir: "/config", models_dir: "/models"}
    with images.Container(image, argv, volumes=volumes, log=work / "fetch.log") as container:
        code = container.wait(300)
    return code, models_dir


@pytest.fixture(scope="module")
def fetched(operator_image: images.Image, mirror: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    code, models_dir = _fetch_models(
        operator_image, mirror, tmp_path_factory.mktemp("fetch"), images.MODEL_SHA256
    )
    assert code == 0, (models_dir.parent / "fetch.log").read_text()
    return models_dir / images.MODEL_FILE


def _models_dir(root: Path, gguf: Path, yamls: dict[str, str]) -> Path:
    models = root / "models"
    models.mkdir()
    os.link(gguf, models / gguf.name)
    for name, text in yamls.items():
        (models / name).write_text(text)
    return models


def _start_server(image: images.Image, models: Path, env: dict[str, str]) -> Running:
    port = _free_port()
    log = models.parent / "server.log"
    environment = {"LOCALAI_ADDRESS": f"127.0.0.1:{port}", "LOCALAI_MODELS_PATH": "/models", **env}
    container = images.Container(
        image,
        ["python", images.MODEL_SERVER_PROGRAM, "serve"],
        env=environment,
        volumes={models: "/models"},
        log=log,
    ).start()
    return Running(container, f"http://127.0.0.1:{port}", log)


@pytest.fixture(scope="module")
def server(
    model_server_image: images.Image, fetched: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    models = _models_dir(
        tmp_path_factory.mktemp("server"),
        fetched,
        {
            f"{MODEL}.yaml": MODEL_YAML,
            "missing-weights.yaml": BROKEN_YAML,
            "embeddings.yaml": EMBEDDINGS_YAML,
        },
    )
    running = _start_server(
        model_server_image, models, {"LOCALAI_LOAD_TO_MEMORY": MODEL, "LOCALAI_API_KEY": API_KEY}
    )
    try:
        wait_for(
            lambda: _answers(f"{running.base}/readyz") or running.container.poll() is not None,
            120,
            "the model server to become ready",
            describe=running.log.read_text,
        )
        assert running.container.poll() is None, running.log.read_text()
        yield running
    finally:
        running.container.stop()


def _events(request: urllib.request.Request) -> tuple[int, list[str]]:
    with urllib.request.urlopen(request, timeout=120) as response:
        lines = [line.decode().rstrip("\n") for line in response]
    return response.status, [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def test_an_image_is_built_once_and_then_comes_from_the_cache(operator_image: images.Image) -> None:
    before = operator_image.archive.stat().st_mtime_ns
    again = images.build("operator")
    assert again == operator_image
    assert again.archive.stat().st_mtime_ns == before
    assert images.cached("operator") == operator_image


def test_fetch_models_downloads_the_gguf_from_the_mirror_and_verifies_its_sha256(fetched: Path) -> None:
    assert fetched.stat().st_size == images.MODEL_SIZE
    digest = hashlib.sha256(fetched.read_bytes()).hexdigest()
    assert digest == images.MODEL_SHA256
    assert (fetched.parent / f"{MODEL}.yaml").read_text() == MODEL_YAML


def test_fetch_models_refuses_a_mirror_file_whose_sha256_differs(
    operator_image: images.Image, mirror: str, tmp_path: Path
) -> None:
    code, models_dir = _fetch_models(operator_image, mirror, tmp_path, "0" * 64)
    assert code == 1
    assert "checksum mismatch" in (tmp_path / "fetch.log").read_text()
    assert not (models_dir / images.MODEL_FILE).exists()


def test_the_model_server_streams_a_real_chat_completion_in_localais_shape(server: Running) -> None:
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Name a colour."}]}
    status, events = _events(server.post("/v1/chat/completions", body))
    assert status == 200
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[1:-1])
    assert text.strip(), f"no generated text in {chunks}"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_the_model_server_answers_a_non_streamed_chat_completion(server: Running) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}]}
    with urllib.request.urlopen(server.post("/v1/chat/completions", body), timeout=120) as response:
        answer = json.load(response)
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"].strip()
    assert answer["usage"]["completion_tokens"] > 0


def test_the_model_server_lists_exactly_the_models_whose_yamls_are_in_its_models_dir(server: Running) -> None:
    status, body = _get(f"{server.base}/v1/models", {"Authorization": f"Bearer {API_KEY}"})
    assert status == 200
    assert sorted(m["id"] for m in json.loads(body)["data"]) == sorted(
        [MODEL, f"{MODEL}-embeddings", "missing-weights"]
    )


def test_the_model_server_streams_a_completion_as_text_completion_chunks(server: Running) -> None:
    body = {"model": MODEL, "stream": True, "prompt": "The capital of France is", "max_tokens": 8}
    status, events = _events(server.post("/v1/completions", body))
    assert status == 200
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    assert "".join(c["choices"][0].get("text", "") for c in chunks).strip()
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_embeddings_are_served_for_a_model_whose_yaml_asks_for_them(server: Running) -> None:
    body = {"model": f"{MODEL}-embeddings", "input": "a red apple"}
    with urllib.request.urlopen(server.post("/v1/embeddings", body), timeout=120) as response:
        vector = json.load(response)["data"][0]["embedding"]
    assert len(vector) > 100
    assert all(isinstance(x, float) for x in vector)


def test_embeddings_are_refused_for_a_model_whose_yaml_does_not_ask_for_them(server: Running) -> None:
    try:
        urllib.request.urlopen(server.post("/v1/embeddings", {"model": MODEL, "input": "x"}), timeout=60)
        raise AssertionError("expected HTTP 500")
    except urllib.error.HTTPError as err:
        assert err.code == 500
        assert "embeddings: true" in json.load(err)["error"]["message"]


def test_a_stream_whose_model_cannot_load_ends_with_localais_error_event(server: Running) -> None:
    body = {"model": "missing-weights", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    status, events = _events(server.post("/v1/chat/completions", body))
    assert status == 200
    assert events[-1] == "[DONE]"
    error = json.loads(events[0])["error"]
    assert error["type"] == "server_error"
    assert "not-downloaded.gguf" in error["message"]


def test_the_model_server_needs_the_api_key_on_v1_but_not_on_its_probes(server: Running) -> None:
    status, body = _get(f"{server.base}/v1/models")
    assert status == 401
    assert json.loads(body)["error"]["message"] == "An authentication key is required"
    assert _get(f"{server.base}/healthz")[0] == 200
    assert _get(f"{server.base}/readyz")[0] == 200


def test_an_unknown_model_is_404_naming_it(server: Running) -> None:
    body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    try:
        urllib.request.urlopen(server.post("/v1/chat/completions", body), timeout=30)
        raise AssertionError("expected HTTP 404")
    except urllib.error.HTTPError as err:
        assert err.code == 404
        assert 'model "nope" not found' in json.load(err)["error"]["message"]


def test_the_model_server_is_not_ready_before_its_preloaded_model_is_loaded(
    model_server_image: images.Image, fetched: Path, tmp_path: Path
) -> None:
    models = _models_dir(tmp_path, fetched, {f"{MODEL}.yaml": MODEL_YAML})
    running = _start_server(model_server_image, models, {"LOCALAI_LOAD_TO_MEMORY": MODEL})
    seen_refused = False
    try:

        def ready() -> bool:
            nonlocal seen_refused
            if _answers(f"{running.base}/readyz"):
                # LocalAI v4.9.0 builds its HTTP server only after the preload: ready implies loaded.
                assert f"preloaded {MODEL}" in running.log.read_text()
                return True
            seen_refused = True
            return running.container.poll() is not None

        wait_for(
            ready, 120, "the model server to become ready", interval=0.05, describe=running.log.read_text
        )
        assert running.container.poll() is None, running.log.read_text()
    finally:
        running.container.stop()
    assert seen_refused


def test_a_preloaded_model_whose_file_is_missing_makes_the_server_exit_without_ever_listening(
    model_server_image: images.Image, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "missing-weights.yaml").write_text(BROKEN_YAML)
    running = _start_server(model_server_image, models, {"LOCALAI_LOAD_TO_MEMORY": "missing-weights"})
    try:
        code = running.container.wait(120)
    finally:
        running.container.stop()
    assert code != 0
    assert "LocalAI failed to start" in running.log.read_text()


def test_the_router_in_the_operator_image_runs_on_uvloop_and_says_so(
    operator_image: images.Image, tmp_path: Path
) -> None:
    # What the image installs is what benchmarks/router.py measures: the router on uvloop.
    port = _free_port()
    config = tmp_path / "router.yaml"
    config.write_text(f"local: {{endpoints: ['http://127.0.0.1:{_free_port()}/v1']}}\n")
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
            lambda: _answers(f"{base}/healthz") or container.poll() is not None, 60, "the router to listen"
        )
        assert container.poll() is None, log.read_text()
        status, metrics = _get(f"{base}/metrics")
    assert status == 200
    assert 'loop="uvloop"' in metrics.decode(), metrics.decode()
    assert "event loop: uvloop" in log.read_text(), log.read_text()
