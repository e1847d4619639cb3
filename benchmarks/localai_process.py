"""Real `local-ai` v4.9.0 processes on loopback for the benchmarks, configured as the operator configures a pool's
LocalAI (galleries off, web UI off, the model preloaded) from a model YAML the caller renders: the binary and
backends directory `make images` builds (shared/REAL-LOCALAI.md), one process group each, stopped on exit."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

STARTUP_SECONDS = 300.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def localai_processes(
    binary: Path,
    backends: Path,
    gguf: Path,
    roots: Sequence[Path],
    model: str,
    model_yaml: str,
    *,
    threads: int = 1,
    log_level: str = "debug",
) -> Iterator[list[str]]:
    """One `local-ai` per directory of `roots` serving `model` (`model_yaml`, with `gguf` linked beside it), each
    logging to ROOT/localai.log; yields their base URLs (…/v1) once every one answers /readyz."""
    processes: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for root in roots:
            models = root / "models"
            models.mkdir(parents=True)
            (models / gguf.name).symlink_to(gguf.resolve())
            (models / f"{model}.yaml").write_text(model_yaml)
            port = free_port()
            env = {
                **os.environ,
                "LOCALAI_ADDRESS": f"127.0.0.1:{port}",
                "LOCALAI_MODELS_PATH": str(models),
                "LOCALAI_BACKENDS_PATH": str(backends.resolve()),
                "LOCALAI_DATA_PATH": str(root / "data"),
                "LOCALAI_CONFIG_DIR": str(root / "config"),
                "LOCALAI_THREADS": str(threads),
                "LOCALAI_LOG_LEVEL": log_level,
                "LOCALAI_GALLERIES": "[]",
                "LOCALAI_BACKEND_GALLERIES": "[]",
                "LOCALAI_AUTOLOAD_GALLERIES": "false",
                "LOCALAI_AUTOLOAD_BACKEND_GALLERIES": "false",
                "LOCALAI_DISABLE_WEBUI": "true",
                "LOCALAI_LOAD_TO_MEMORY": model,
            }
            with (root / "localai.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [str(binary), "run"],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
            urls.append(f"http://127.0.0.1:{port}/v1")
        deadline = time.monotonic() + STARTUP_SECONDS
        for url, process, root in zip(urls, processes, roots, strict=True):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"local-ai for {url} exited; see {root}/localai.log")
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(url.removesuffix("/v1") + "/readyz", timeout=2) as answer,
                ):
                    if answer.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"local-ai for {url} not ready after {STARTUP_SECONDS:.0f} s")
                time.sleep(0.5)
        yield urls
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
