"""`localai-operator router --config PATH`: serves, stops cleanly on SIGTERM, refuses an invalid config."""

from __future__ import annotations

import asyncio
import gc
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import yaml

from localai_operator.constants import FALLBACK_API_KEY_ENV
from localai_operator.router.server import GC_YOUNG_THRESHOLD, tune_gc
from localai_operator.testing.standins import OpenAIStandIn
from tests.unit.router.conftest import API_KEY, eventually, route_config


async def is_ready(client: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with client.get(f"http://127.0.0.1:{port}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def router_command(config: Path, *flags: str) -> list[str]:
    """The `localai-operator router` command for a config file, as a fresh interpreter runs it."""
    return [sys.executable, "-m", "localai_operator.cli", "router", "--config", str(config), *flags]


async def test_router_command_serves_and_exits_cleanly_on_sigterm(
    local: OpenAIStandIn, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(route_config(local.url)))
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *router_command(config, "--host", "127.0.0.1", "--port", str(port)),
        env={"PATH": "/usr/bin:/bin", FALLBACK_API_KEY_ENV: API_KEY},
        stderr=asyncio.subprocess.PIPE,
    )

    try:
        await eventually(lambda: is_ready(client, port), 30, "the router process to be ready")
        async with client.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "m"}
        ) as response:
            assert response.headers["X-Served-By"] == "local"
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0
        assert b"listening on 127.0.0.1" in stderr and API_KEY.encode() not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_router_command_refuses_an_invalid_config(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("local: {endpoints: []}\n")
    process = await asyncio.create_subprocess_exec(
        *router_command(config),
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert b"set endpoints" in stderr


async def test_router_command_refuses_an_unknown_key_naming_it(tmp_path: Path) -> None:
    # `baseUrl` for `baseURL` used to send traffic (and the key) to the default provider silently.
    config = tmp_path / "router.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "local": {"endpoints": ["http://127.0.0.1:9/v1"]},
                "fallback": {"baseUrl": "http://127.0.0.1:9/v1"},
            }
        )
    )
    process = await asyncio.create_subprocess_exec(
        *router_command(config),
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert b"fallback.baseUrl" in stderr


async def test_router_command_takes_a_log_level(
    local: OpenAIStandIn, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(route_config(local.url)))
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *router_command(config, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        env={"PATH": "/usr/bin:/bin"},
        stderr=asyncio.subprocess.PIPE,
    )

    try:
        await eventually(lambda: is_ready(client, port), 30, "the router process to be ready")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    # INFO lines ("listening on ...") are below the level asked for.
    assert process.returncode == 0 and b"listening on" not in stderr


async def run_router_briefly(
    argv: list[str], config: Path, client: aiohttp.ClientSession
) -> tuple[bytes, str]:
    """Start a router process, read its /metrics once it is ready, stop it: its stderr and the metrics."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *argv,
        "router",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env={"PATH": "/usr/bin:/bin"},
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(lambda: is_ready(client, port), 30, "the router process to be ready")
        async with client.get(f"http://127.0.0.1:{port}/metrics") as response:
            metrics = await response.text()
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return stderr, metrics


async def test_the_router_runs_on_uvloop_and_says_so_in_its_log_and_metrics(
    local: OpenAIStandIn, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(route_config(local.url)))
    stderr, metrics = await run_router_briefly([sys.executable, "-m", "localai_operator.cli"], config, client)
    assert b"event loop: uvloop" in stderr
    assert re.search(
        r'^localai_router_build_info\{version="[^"]+",loop="uvloop",python="[^"]+"\} 1$', metrics, re.M
    )


async def test_without_uvloop_the_router_falls_back_to_asyncio_and_says_so(
    local: OpenAIStandIn, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(route_config(local.url)))
    # None in sys.modules makes `import uvloop` raise ImportError, as on a platform without its wheels.
    without_uvloop = (
        "import sys; sys.modules['uvloop'] = None; from localai_operator.cli import main; sys.exit(main())"
    )
    stderr, metrics = await run_router_briefly([sys.executable, "-c", without_uvloop], config, client)
    assert b"uvloop cannot be imported" in stderr and b"event loop: asyncio" in stderr
    assert re.search(r'^localai_router_build_info\{[^}]*loop="asyncio"[^}]*\} 1$', metrics, re.M)


def test_once_up_the_startup_objects_leave_the_collectors_view_and_young_collections_are_rarer() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        assert before[0] < GC_YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
