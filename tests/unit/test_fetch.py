"""`localai-operator fetch-models`, the init container, against a real HTTP origin on loopback.

The origin serves a few MB of random bytes, honours `Range: bytes=N-`, records every request's headers and can
be told to drop the first connection early, answer with an error status, serve other bytes or send the body with
chunked transfer encoding.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from localai_operator import cli, fetch

PAYLOAD = random.Random(20240607).randbytes(3 * 2**20 + 12345)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
MODEL = "mistral-7b-instruct"
FILE = "mistral-7b-instruct.Q4_K_M.gguf"
TOKEN_ENV = "FETCH_TEST_HF_TOKEN"
TOKEN = "hf_secret_token_9c1e4b7a2f6d"
OTHER_MODEL = "mistral-7b-embeddings"
REPO_ROOT = Path(__file__).resolve().parents[2]
# What LocalAI v4.9.0 makes of a models directory. /v1/models lists loose files, skipping these names and suffixes
# (pkg/model/loader.go, knownFilesToSkip, knownModelsNameSuffixToSkip, ListFilesInModelPath)...
LOCALAI_SKIPPED_NAMES = {"model_card", "readme", "readme.md"}
LOCALAI_SKIPPED_SUFFIXES = (
    ".tmpl",
    ".keep",
    ".yaml",
    ".yml",
    ".json",
    ".txt",
    ".pt",
    ".onnx",
    ".md",
    ".ds_store",
    ".",
    ".safetensors",
    ".bin",
    ".gguf",
    ".ggml",
    ".ckpt",
    ".zip",
    ".tag",
    ".bak",
    ".partial",
    ".tar.gz",
)


def localai_lists(file_names: Iterable[str]) -> set[str]:
    return {
        name
        for name in file_names
        if name.lower() not in LOCALAI_SKIPPED_NAMES
        and not name.lower().endswith(LOCALAI_SKIPPED_SUFFIXES)
        and ".bak" not in name.lower()
    }


def localai_lists_as_models(models_dir: Path) -> set[str]:
    return localai_lists(p.name for p in models_dir.iterdir() if not p.is_dir())


def localai_loads_as_configs(models_dir: Path) -> set[str]:
    """...and every top-level *.yaml / *.yml that is not a dotfile is a served model
    (core/config/model_config_loader.go, LoadModelConfigsFromPath)."""
    return {
        p.name for p in models_dir.iterdir() if p.suffix in {".yaml", ".yml"} and not p.name.startswith(".")
    }


@dataclass
class Origin:
    """What the loopback server serves; tests change the fields to misbehave."""

    url: str = ""
    payload: bytes = PAYLOAD
    status: int = 200
    drop_first_after: int | None = None
    chunked: bool = False
    requests: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: _OriginServer

    def do_GET(self) -> None:
        origin = self.server.origin
        with origin.lock:
            origin.requests.append(dict(self.headers.items()))
            first = len(origin.requests) == 1
        if origin.status != 200:
            self.send_error(origin.status)
            return
        self.protocol_version = "HTTP/1.1" if origin.chunked else "HTTP/1.0"
        body, start = origin.payload, 0
        requested = self.headers.get("Range")
        if requested:
            start = int(requested.removeprefix("bytes=").removesuffix("-"))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        if origin.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        end = len(body)
        if first and origin.drop_first_after is not None:
            # Promise the whole body, send part of it, then close: a connection lost mid-download.
            end = start + origin.drop_first_after
            self.close_connection = True
        if not origin.chunked:
            self.wfile.write(body[start:end])
            return
        for at in range(start, end, 2**18):
            piece = body[at : min(at + 2**18, end)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        if end == len(body):
            self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test's captured stderr to what fetch prints


class _OriginServer(ThreadingHTTPServer):
    origin: Origin

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-body (fetch stopping at maxBytes) is no error of the origin's: socketserver
        would print a traceback into the test's captured stderr, racing fetch's own one line."""


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = _OriginServer(("127.0.0.1", 0), _Handler)
    server.origin = Origin(url=f"http://127.0.0.1:{server.server_address[1]}/{FILE}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield server.origin
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retries back off with time.sleep; record the delays instead of waiting them out."""
    delays: list[float] = []
    monkeypatch.setattr(fetch.time, "sleep", delays.append)
    return delays


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """The pool's ConfigMap as mounted: model YAMLs, the manifest and the backend gallery."""
    path = tmp_path / "config"
    path.mkdir()
    (path / f"{MODEL}.yaml").write_text(f"name: {MODEL}\nparameters:\n  model: {FILE}\n")
    (path / f"{OTHER_MODEL}.yaml").write_text(f"name: {OTHER_MODEL}\nparameters:\n  model: {FILE}\n")
    (path / "backend_gallery.yaml").write_text("- name: llama-cpp\n")
    return path


def item(
    origin: Origin, *, sha256: str | None = PAYLOAD_SHA, token_env: str | None = None, model: str = MODEL
) -> fetch.Download:
    return fetch.Download(model, FILE, origin.url, sha256, token_env)


def write_manifest(path: Path, *items: fetch.Download) -> Path:
    entries = [
        {"model": i.model, "file": i.file, "url": i.url, "sha256": i.sha256, "tokenEnv": i.token_env}
        | ({"sizeBytes": i.size_bytes} if i.size_bytes is not None else {})
        | ({"maxBytes": i.max_bytes} if i.max_bytes is not None else {})
        for i in items
    ]
    path.write_text(json.dumps(entries))
    return path


def run_main(tmp_path: Path, config_dir: Path, models_dir: Path, *items: fetch.Download) -> int:
    manifest = write_manifest(tmp_path / "downloads.json", *items)
    return fetch.main(str(manifest), str(config_dir), str(models_dir))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def partial_of(models_dir: Path) -> Path:
    return models_dir / f".{FILE}.partial"


def marker_of(models_dir: Path) -> Path:
    return models_dir / ".localai-operator" / "verified" / f"{FILE}.sha256"


def test_main_downloads_verifies_and_renames_the_model_file_then_marks_it_verified(
    origin: Origin, tmp_path: Path, config_dir: Path, models_dir: Path
) -> None:
    assert run_main(tmp_path, config_dir, models_dir, item(origin)) == 0

    assert sha256_of(models_dir / FILE) == PAYLOAD_SHA
    assert not partial_of(models_dir).exists()
    assert marker_of(models_dir).read_text().startswith(f"{PAYLOAD_SHA} {len(PAYLOAD)} ")
    assert "Range" not in origin.requests[0]


def test_main_installs_the_yaml_of_every_model_in_the_manifest_and_nothing_else_of_the_configmap(
    origin: Origin, tmp_path: Path, config_dir: Path, models_dir: Path
) -> None:
    assert run_main(tmp_path, config_dir, models_dir, item(origin)) == 0

    installed = {p.name for p in models_dir.iterdir() if not p.name.startswith(".")}
    assert installed == {FILE, f"{MODEL}.yaml"}  # not the other model's YAML, not the backend gallery
    assert (models_dir / f"{MODEL}.yaml").read_text() == (config_dir / f"{MODEL}.yaml").read_text()


def test_fetch_models_removes_a_stale_yaml_and_a_stale_gguf_and_leaves_nothing_localai_would_serve_by_mistake(
    origin: Origin, tmp_path: Path, config_dir: Path, models_dir: Path
) -> None:
    """The acceptance case: a models volume that served `tinyllama` before the pool stopped naming it."""
    (models_dir / "tinyllama.yaml").write_text(
        "name: tinyllama\nparameters:\n  model: tinyllama.Q4_K_M.gguf\n"
    )
    (models_dir / "tinyllama.Q4_K_M.gguf").write_bytes(b"GGUF stale weights")
    (models_dir / ".tinyllama.Q4_K_M.gguf.verified").write_text("old marker")  # where earlier builds kept it
    (models_dir / "lost+found").mkdir()
    manifest = write_manifest(tmp_path / "downloads.json", item(origin))
    command = [
        sys.executable,
        "-m",
        "localai_operator.cli",
        "fetch-models",
        "--manifest",
        str(manifest),
        "--config-dir",
        str(config_dir),
        "--models-dir",
        str(models_dir),
    ]

    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False)

    assert result.returncode == 0, result.stderr
    assert "removed tinyllama.yaml: no model of the pool uses it" in result.stdout
    for stale in ("tinyllama.yaml", "tinyllama.Q4_K_M.gguf", ".tinyllama.Q4_K_M.gguf.verified"):
        assert not (models_dir / stale).exists(), stale
    assert (models_dir / "lost+found").is_dir()
    assert marker_of(models_dir).exists()
    assert localai_loads_as_configs(models_dir) == {f"{MODEL}.yaml"}
    assert localai_lists_as_models(models_dir) == set()


def test_the_verified_marker_is_nothing_localai_lists_or_loads(origin: Origin, models_dir: Path) -> None:
    fetch.fetch(item(origin), models_dir)

    assert marker_of(models_dir).exists()
    assert localai_lists_as_models(models_dir) == set()
    assert localai_loads_as_configs(models_dir) == set()
    # The old place was listed by /v1/models as a model named after the marker.
    assert localai_lists({f".{FILE}.verified"}) == {f".{FILE}.verified"}


def test_a_partial_download_of_a_model_still_served_is_kept_for_resuming(
    origin: Origin, tmp_path: Path, config_dir: Path, models_dir: Path
) -> None:
    half = len(PAYLOAD) // 2
    partial_of(models_dir).write_bytes(PAYLOAD[:half])
    (models_dir / ".gone.gguf.partial").write_bytes(b"abandoned")

    assert run_main(tmp_path, config_dir, models_dir, item(origin)) == 0

    assert [r.get("Range") for r in origin.requests] == [f"bytes={half}-"]
    assert not (models_dir / ".gone.gguf.partial").exists()


def test_a_file_shared_by_two_models_is_downloaded_once_and_both_yamls_are_installed(
    origin: Origin, tmp_path: Path, config_dir: Path, models_dir: Path
) -> None:
    assert run_main(tmp_path, config_dir, models_dir, item(origin), item(origin, model=OTHER_MODEL)) == 0

    assert len(origin.requests) == 1
    assert localai_loads_as_configs(models_dir) == {f"{MODEL}.yaml", f"{OTHER_MODEL}.yaml"}


def test_a_marker_written_by_an_earlier_build_is_adopted_without_hashing_the_file_again(
    origin: Origin, tmp_path: Path, config_dir: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = models_dir / FILE
    target.write_bytes(PAYLOAD)
    st = target.stat()
    (models_dir / f".{FILE}.verified").write_text(f"{PAYLOAD_SHA} {st.st_size} {st.st_mtime_ns}")

    def no_hashing(*_: Any) -> Any:
        raise AssertionError("a file with a matching marker was hashed again")

    monkeypatch.setattr(fetch, "_hash_file", no_hashing)
    assert run_main(tmp_path, config_dir, models_dir, item(origin)) == 0

    assert origin.requests == []
    assert marker_of(models_dir).exists() and not (models_dir / f".{FILE}.verified").exists()


def test_the_backends_directory_on_the_model_volume_is_writable_by_the_pods_group(
    origin: Origin, tmp_path: Path, config_dir: Path, models_dir: Path
) -> None:
    assert run_main(tmp_path, config_dir, models_dir, item(origin)) == 0

    backends = models_dir / ".localai-operator" / "backends"
    assert backends.is_dir() and backends.stat().st_mode & 0o2070 == 0o2070


def test_an_existing_partial_file_is_resumed_with_a_range_request(origin: Origin, models_dir: Path) -> None:
    half = len(PAYLOAD) // 2
    partial_of(models_dir).write_bytes(PAYLOAD[:half])

    assert fetch.fetch(item(origin), models_dir) == "downloaded"

    assert [r.get("Range") for r in origin.requests] == [f"bytes={half}-"]
    assert sha256_of(models_dir / FILE) == PAYLOAD_SHA


def test_a_partial_file_that_already_holds_every_byte_is_installed_when_the_origin_answers_416(
    origin: Origin, models_dir: Path
) -> None:
    partial_of(models_dir).write_bytes(PAYLOAD)

    assert fetch.fetch(item(origin), models_dir) == "downloaded"

    assert [r.get("Range") for r in origin.requests] == [f"bytes={len(PAYLOAD)}-"]
    assert sha256_of(models_dir / FILE) == PAYLOAD_SHA


def test_a_dropped_connection_is_resumed_from_where_it_stopped_and_completes(
    origin: Origin, models_dir: Path, sleeps: list[float]
) -> None:
    received = 1_000_000
    origin.drop_first_after = received

    assert fetch.fetch(item(origin), models_dir) == "downloaded"

    assert [r.get("Range") for r in origin.requests] == [None, f"bytes={received}-"]
    assert len(sleeps) == 1
    assert sha256_of(models_dir / FILE) == PAYLOAD_SHA
    assert not partial_of(models_dir).exists()


def test_a_dropped_connection_without_a_sha256_is_resumed_instead_of_installed_truncated(
    origin: Origin, models_dir: Path, sleeps: list[float]
) -> None:
    origin.drop_first_after = 1_000_000

    assert fetch.fetch(item(origin, sha256=None), models_dir) == "downloaded"

    assert len(origin.requests) == 2
    assert (models_dir / FILE).read_bytes() == PAYLOAD


def test_a_chunked_body_cut_short_is_resumed_and_completes(
    origin: Origin, models_dir: Path, sleeps: list[float]
) -> None:
    origin.chunked = True
    origin.drop_first_after = 3 * 2**19

    assert fetch.fetch(item(origin), models_dir) == "downloaded"

    # Where it resumes depends on how much http.client handed over before the cut; that it resumes does not.
    assert len(origin.requests) == 2
    assert origin.requests[1]["Range"].startswith("bytes=")
    assert sha256_of(models_dir / FILE) == PAYLOAD_SHA


def test_checksum_mismatch_fails_naming_the_model_and_leaves_no_file_behind(
    origin: Origin, tmp_path: Path, config_dir: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin.payload = random.Random(1).randbytes(len(PAYLOAD))

    assert run_main(tmp_path, config_dir, models_dir, item(origin)) == 1

    err = capsys.readouterr().err
    assert MODEL in err
    assert "checksum mismatch" in err
    assert not (models_dir / FILE).exists()
    assert not partial_of(models_dir).exists()


def test_a_present_file_with_the_right_sha256_is_not_downloaded_again(
    origin: Origin, models_dir: Path
) -> None:
    (models_dir / FILE).write_bytes(PAYLOAD)

    assert fetch.fetch(item(origin), models_dir) == "present"

    assert origin.requests == []
    assert marker_of(models_dir).exists()


def test_a_present_file_with_a_wrong_sha256_is_replaced(origin: Origin, models_dir: Path) -> None:
    (models_dir / FILE).write_bytes(PAYLOAD[:-1] + b"\x00")

    assert fetch.fetch(item(origin), models_dir) == "downloaded"

    assert len(origin.requests) == 1
    assert sha256_of(models_dir / FILE) == PAYLOAD_SHA


def test_the_token_named_by_token_env_is_sent_as_a_bearer_authorization_on_every_request(
    origin: Origin, models_dir: Path, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    origin.drop_first_after = 500_000

    fetch.fetch(item(origin, token_env=TOKEN_ENV), models_dir)

    assert len(origin.requests) == 2
    assert [r.get("Authorization") for r in origin.requests] == [f"Bearer {TOKEN}"] * 2


def test_the_token_never_appears_in_the_output_even_when_attempts_fail(
    origin: Origin,
    tmp_path: Path,
    config_dir: Path,
    models_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    sleeps: list[float],
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    origin.drop_first_after = 500_000
    run_main(tmp_path, config_dir, models_dir, item(origin, token_env=TOKEN_ENV))
    origin.status = 403
    run_main(tmp_path, config_dir, tmp_path / "elsewhere", item(origin, token_env=TOKEN_ENV))

    out, err = capsys.readouterr()
    assert "attempt 1 failed" in out
    assert "HTTP 403" in err
    assert TOKEN not in out + err


def test_http_403_fails_fast_naming_the_model_and_hinting_at_the_token_secret(
    origin: Origin,
    tmp_path: Path,
    config_dir: Path,
    models_dir: Path,
    capsys: pytest.CaptureFixture[str],
    sleeps: list[float],
) -> None:
    origin.status = 403

    assert run_main(tmp_path, config_dir, models_dir, item(origin, token_env=TOKEN_ENV)) == 1

    assert len(origin.requests) == 1
    assert sleeps == []
    err = capsys.readouterr().err
    assert f"model {MODEL}" in err
    assert "HTTP 403" in err
    assert "token Secret" in err


def test_http_404_fails_fast_without_a_token_hint(
    origin: Origin, models_dir: Path, sleeps: list[float]
) -> None:
    origin.status = 404

    with pytest.raises(fetch.FetchError, match=f"model {MODEL}: .*HTTP 404$"):
        fetch.fetch(item(origin), models_dir)

    assert len(origin.requests) == 1
    assert sleeps == []


def test_cli_fetch_models_downloads_and_installs_configs_in_process(
    origin: Origin, tmp_path: Path, config_dir: Path, models_dir: Path
) -> None:
    manifest = write_manifest(tmp_path / "downloads.json", item(origin))
    argv = ["fetch-models", "--manifest", str(manifest), "--config-dir", str(config_dir)]

    assert cli.main([*argv, "--models-dir", str(models_dir)]) == 0

    assert sha256_of(models_dir / FILE) == PAYLOAD_SHA
    assert (models_dir / f"{MODEL}.yaml").exists()


def test_cli_fetch_models_works_end_to_end_as_a_subprocess(
    origin: Origin, tmp_path: Path, config_dir: Path
) -> None:
    manifest = write_manifest(tmp_path / "downloads.json", item(origin))
    models_dir = tmp_path / "fresh" / "models"  # created by fetch-models
    command = [sys.executable, "-m", "localai_operator.cli", "fetch-models", "--manifest", str(manifest)]
    command += ["--config-dir", str(config_dir), "--models-dir", str(models_dir)]

    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False)

    assert result.returncode == 0, result.stderr
    assert f"model {MODEL}: downloaded {FILE}" in result.stdout
    assert sha256_of(models_dir / FILE) == PAYLOAD_SHA
    assert (models_dir / f"{MODEL}.yaml").exists()


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_download_larger_than_max_bytes_stops_there_and_fails_naming_the_model(
    origin: Origin,
    tmp_path: Path,
    config_dir: Path,
    models_dir: Path,
    capsys: pytest.CaptureFixture[str],
    chunked: bool,
) -> None:
    origin.chunked = chunked
    bounded = fetch.Download(MODEL, FILE, origin.url, None, None, max_bytes=2**20)
    assert run_main(tmp_path, config_dir, models_dir, bounded) == 1
    err = one_line_error(capsys)
    assert MODEL in err and f"larger than {2**20} bytes" in err
    assert not (models_dir / FILE).exists() and not partial_of(models_dir).exists()


def test_a_download_of_another_size_than_size_bytes_fails_naming_the_model(
    origin: Origin, tmp_path: Path, config_dir: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    declared = fetch.Download(MODEL, FILE, origin.url, None, None, size_bytes=len(PAYLOAD) + 1)
    assert run_main(tmp_path, config_dir, models_dir, declared) == 1
    err = one_line_error(capsys)
    assert f"has {len(PAYLOAD)} bytes, not the {len(PAYLOAD) + 1} of source.sizeBytes" in err
    exact = fetch.Download(MODEL, FILE, origin.url, PAYLOAD_SHA, None, size_bytes=len(PAYLOAD))
    assert run_main(tmp_path, config_dir, models_dir, exact) == 0


@pytest.mark.parametrize("name", ["..", "subdir"])
def test_a_directory_where_the_file_would_be_is_one_line_naming_the_model_never_a_traceback(
    origin: Origin,
    tmp_path: Path,
    config_dir: Path,
    models_dir: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    (models_dir / "subdir").mkdir()
    odd = fetch.Download(MODEL, name, origin.url, None, None)
    assert run_main(tmp_path, config_dir, models_dir, odd) == 1
    assert MODEL in one_line_error(capsys)


def test_any_other_failure_of_a_model_is_one_line_naming_the_model(
    origin: Origin, tmp_path: Path, config_dir: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (models_dir / FILE).write_bytes(PAYLOAD)
    marker_of(models_dir).parent.parent.mkdir()
    marker_of(models_dir).parent.write_text("")  # where the verified marker goes: an OSError, no FetchError
    assert run_main(tmp_path, config_dir, models_dir, item(origin)) == 1
    err = one_line_error(capsys)
    assert (
        f"model {MODEL}: {FILE}: FileExistsError" in err
        or f"model {MODEL}: {FILE}: NotADirectoryError" in err
    )
