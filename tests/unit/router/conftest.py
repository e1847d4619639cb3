"""Fixtures for the router tests: stand-in servers, a router factory, an HTTP client and the real `openai`
SDK (sync and async), all on loopback."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict
from yarl import URL

from localai_operator.constants import FALLBACK_API_KEY_ENV
from localai_operator.router.discovery import Resolver, resolve
from localai_operator.router.server import ROUTER, Router, create_app, start
from localai_operator.router.slices import ApiAccess
from localai_operator.testing.standins import OpenAIStandIn, cloud_standin, local_standin
from localai_operator.wire import RouterConfig

API_KEY = "sk-cloud-test-key-5f0c2e9a7b1d"
CLIENT_KEY = "sk-client-own-key-do-not-forward"
LOCAL_MODEL = "mistral-7b-instruct"
MAPPED_CLOUD_MODEL = "deepseek-v3.2"
DEFAULT_CLOUD_MODEL = "cloud-default-model"
# Generous where a test does not exercise a timeout, so a loaded machine never triggers a fallback:
# client, router and stand-ins share one event loop here, and its lag counts against every timer.
RELAXED_BUDGET_MS = 10_000


def route_config(
    local: str | list[str],
    cloud: str | None = None,
    *,
    sensitive: bool = False,
    auth: list[str] | None = None,
    server: dict[str, Any] | None = None,
    local_extra: dict[str, Any] | None = None,
    defaults: bool = False,
    **policy: Any,
) -> dict[str, Any]:
    """A router config as the operator renders it; `policy` takes camelCase keys. `defaults`: the production
    connect timeout and first-token budget instead of the relaxed ones; `auth`: client-key directories."""
    relaxed = (
        {} if defaults else {"firstTokenTimeoutMs": RELAXED_BUDGET_MS, "connectTimeoutMs": RELAXED_BUDGET_MS}
    )
    config: dict[str, Any] = {
        "route": {"name": "chat", "namespace": "team-a"},
        "local": {"endpoints": [local] if isinstance(local, str) else local, **(local_extra or {})},
        "policy": {**relaxed, "sensitive": sensitive, **policy},
    }
    if auth is not None:
        config["auth"] = {"keyDirectories": auth}
    if server is not None:
        config["server"] = server
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


RawReply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server that answers each request with bytes a test writes out, and counts connections."""

    def __init__(self, reply: RawReply) -> None:
        self.reply = reply
        self.connections = 0
        self.closed = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                await self.reply(reader, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()

    async def __aenter__(self) -> URL:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return URL(f"http://127.0.0.1:{port}/v1/x")

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()


def answer(data: bytes) -> RawReply:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)

    return reply


def tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A CA-signed localhost certificate: the server's context and a client context trusting that CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    trusting = ssl.create_default_context(cafile=str(cert_path))
    return server, trusting


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
        resolver: Resolver = resolve,
        wall: Callable[[], float] = time.time,
        tls: ssl.SSLContext | None = None,
        api: ApiAccess | None = None,
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
            resolver=resolver,
            wall=wall,
            tls=tls,
            api=api,
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
    client: aiohttp.ClientSession,
    router: RunningRouter,
    path: str = "/chat/completions",
    body: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    started = time.monotonic()
    payload = chat_body() if body is None and data is None else body
    async with client.post(
        router.v1(path), json=payload if data is None else None, data=data, headers=headers
    ) as response:
        raw = await response.read()
        return Answer(response.status, CIMultiDict(response.headers), raw, time.monotonic() - started)


async def scrape(
    client: aiohttp.ClientSession, router: RunningRouter, headers: dict[str, str] | None = None
) -> str:
    async with client.get(f"{router.url}/metrics", headers=headers) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await response.text()


async def breaker_of(client: aiohttp.ClientSession, router: RunningRouter, endpoint: str) -> str:
    """An endpoint's breaker state as /readyz reports it."""
    async with client.get(f"{router.url}/readyz") as response:
        states = {e["url"]: e["breaker"] for e in (await response.json())["endpoints"]}
    return states[endpoint.rstrip("/")]


# The four ways a client calls: the SDK's sync and async clients, streaming or not.
SDK_MODES = [("async", False), ("async", True), ("sync", False), ("sync", True)]
SDK_IDS = ["async", "async-stream", "sync", "sync-stream"]


@dataclass
class Reply:
    """What the OpenAI SDK gave back, with the router's headers."""

    served_by: str | None
    fallback_reason: str | None
    text: str
    finish_reason: str | None
    usage: Any
    elapsed: float
    completion: Any = None  # the non-stream ChatCompletion
    chunks: list[Any] | None = None  # the stream's chunks


def sdk_client(router: RunningRouter, sync: bool, api_key: str = "sk-any-client-key") -> Any:
    """The OpenAI SDK pointed at the router, with retries off so each call is one request."""
    cls = openai.OpenAI if sync else openai.AsyncOpenAI
    return cls(base_url=router.v1(""), api_key=api_key, max_retries=0, timeout=60)


def _sync_chat(client: openai.OpenAI, stream: bool, kwargs: dict[str, Any]) -> Reply:
    started = time.monotonic()
    if stream:
        with client.chat.completions.create(stream=True, **kwargs) as chunks:
            received = list(chunks)
            headers = chunks.response.headers
        return _stream_reply(headers, received, started)
    raw = client.chat.completions.with_raw_response.create(**kwargs)
    return _reply(raw.headers, raw.parse(), started)


async def _async_chat(client: openai.AsyncOpenAI, stream: bool, kwargs: dict[str, Any]) -> Reply:
    started = time.monotonic()
    if stream:
        async with await client.chat.completions.create(stream=True, **kwargs) as chunks:
            received = [chunk async for chunk in chunks]
            headers = chunks.response.headers
        return _stream_reply(headers, received, started)
    raw = await client.chat.completions.with_raw_response.create(**kwargs)
    return _reply(raw.headers, raw.parse(), started)


def _reply(headers: Any, completion: Any, started: float) -> Reply:
    choice = completion.choices[0]
    return Reply(
        headers.get("x-served-by"),
        headers.get("x-fallback-reason"),
        choice.message.content or "",
        choice.finish_reason,
        completion.usage,
        time.monotonic() - started,
        completion=completion,
    )


def _stream_reply(headers: Any, chunks: list[Any], started: float) -> Reply:
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = next(
        (c.choices[0].finish_reason for c in reversed(chunks) if c.choices and c.choices[0].finish_reason),
        None,
    )
    usage = next((c.usage for c in reversed(chunks) if getattr(c, "usage", None)), None)
    return Reply(
        headers.get("x-served-by"),
        headers.get("x-fallback-reason"),
        text,
        finish,
        usage,
        time.monotonic() - started,
        chunks=chunks,
    )


async def sdk_chat(
    router: RunningRouter, sync: bool, stream: bool, api_key: str = "sk-any-client-key", **kwargs: Any
) -> Reply:
    """One chat completion through the router with the real OpenAI SDK."""
    kwargs.setdefault("model", LOCAL_MODEL)
    kwargs.setdefault("messages", [{"role": "user", "content": "hello"}])
    client = sdk_client(router, sync, api_key)
    if sync:
        with client:
            return await asyncio.to_thread(_sync_chat, client, stream, kwargs)
    async with client:
        return await _async_chat(client, stream, kwargs)
