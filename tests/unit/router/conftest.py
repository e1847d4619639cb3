"""Fixtures for the router tests: stand-in servers, a router factory and an HTTP client, all on loopback."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from multidict import CIMultiDict

from localai_operator.constants import FALLBACK_API_KEY_ENV
from localai_operator.router.config import RouterConfig
from localai_operator.router.server import ROUTER, Router, create_app, start
from localai_operator.router.standins import OpenAIStandIn, cloud_standin, local_standin

API_KEY = "sk-cloud-test-key-5f0c2e9a7b1d"
CLIENT_KEY = "sk-client-own-key-do-not-forward"
LOCAL_MODEL = "mistral-7b-instruct"
MAPPED_CLOUD_MODEL = "deepseek-v3.2"
DEFAULT_CLOUD_MODEL = "cloud-default-model"
# Generous where a test does not exercise a timeout, so a loaded machine never triggers a fallback:
# client, router and stand-ins share one event loop here, and its lag counts against every timer.
RELAXED_BUDGET_MS = 10_000


def route_config(
    local: str | list[str], cloud: str | None = None, *, sensitive: bool = False, **policy: Any
) -> dict[str, Any]:
    """A router config as the operator renders it; `policy` takes camelCase keys."""
    config: dict[str, Any] = {
        "route": {"name": "chat", "namespace": "team-a"},
        "local": {"endpoints": [local] if isinstance(local, str) else local},
        "policy": {
            "firstTokenTimeoutMs": RELAXED_BUDGET_MS,
            "connectTimeoutMs": RELAXED_BUDGET_MS,
            "sensitive": sensitive,
            **policy,
        },
    }
    if cloud is not None:
        config["fallback"] = {
            "provider": "stand-in",
            "baseURL": cloud,
            "apiKeyEnv": FALLBACK_API_KEY_ENV,
            "modelMap": {LOCAL_MODEL: MAPPED_CLOUD_MODEL},
            "defaultModel": DEFAULT_CLOUD_MODEL,
            "pricePerMillionTokens": 0.42,
        }
    return config


@dataclass
class RunningRouter:
    url: str
    app: web.Application
    config_path: Path

    @property
    def router(self) -> Router:
        return self.app[ROUTER]

    def v1(self, path: str) -> str:
        return f"{self.url}/v1{path}"


StartRouter = Callable[..., Awaitable[RunningRouter]]


async def eventually(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `predicate` (plain or async) until truthy; fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


@pytest.fixture
async def local() -> AsyncIterator[OpenAIStandIn]:
    standin = local_standin()
    await standin.start()
    yield standin
    await standin.stop()


@pytest.fixture
async def cloud() -> AsyncIterator[OpenAIStandIn]:
    standin = cloud_standin(api_key=API_KEY)
    await standin.start()
    yield standin
    await standin.stop()


@pytest.fixture
async def start_router(tmp_path: Path) -> AsyncIterator[StartRouter]:
    runners: list[web.AppRunner] = []

    async def _start(
        config: dict[str, Any],
        *,
        config_path: Path | None = None,
        watch: bool = False,
        reload_interval: float = 0.05,
        env: dict[str, str] | None = None,
    ) -> RunningRouter:
        path = config_path or tmp_path / f"router-{len(runners)}.yaml"
        if config_path is None:
            path.write_text(yaml.safe_dump(config))
        content = path.read_bytes()
        app = create_app(
            RouterConfig.from_yaml(content),
            config_path=path if watch else None,
            config_content=content,
            reload_interval=reload_interval,
            env={FALLBACK_API_KEY_ENV: API_KEY} if env is None else env,
        )
        runner, port = await start(app)
        runners.append(runner)
        return RunningRouter(f"http://127.0.0.1:{port}", app, path)

    yield _start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


def chat_body(model: str = LOCAL_MODEL, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": stream}


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def served_by(self) -> str | None:
        return self.headers.get("X-Served-By")


async def post(
    client: aiohttp.ClientSession, router: RunningRouter, path: str = "/chat/completions",
    body: Any = None, data: bytes | None = None, headers: dict[str, str] | None = None,
) -> Answer:  # fmt: skip
    started = time.monotonic()
    payload = chat_body() if body is None and data is None else body
    async with client.post(router.v1(path), json=payload if data is None else None, data=data,
                           headers=headers) as response:  # fmt: skip
        raw = await response.read()
        return Answer(response.status, CIMultiDict(response.headers), raw, time.monotonic() - started)
