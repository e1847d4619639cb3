"""In-process stand-ins for a LocalAI server and a cloud provider, with scriptable failures.

Tests, the benchmark and `dev up` start them; `python -m localai_operator.router.standins` serves one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Final

from aiohttp import web

DEFAULT_LOCAL_MODELS: Final = ("mistral-7b-instruct",)
DEFAULT_CLOUD_MODELS: Final = ("deepseek-v3.2",)
_RECORDED_MAX: Final = 1000


@dataclass(frozen=True)
class Behaviour:
    """How the stand-in answers the next generation requests (chat, completions, embeddings)."""

    status: int = 200
    retry_after: str | None = None
    delay_before_headers: float = 0.0
    # Streams: headers go out at once, the first chunk after this delay.
    delay_before_first_chunk: float = 0.0
    token_interval: float = 0.0
    tokens: int = 3
    # Streams: drop the connection after this many tokens, without ending the chunked body.
    abort_after_tokens: int | None = None
    # Non-streaming: send the headers and half the body, then stall this long before the rest.
    body_stall: float = 0.0
    # Drop the connection with a TCP RST instead of answering.
    reset: bool = False
    # Read the request and never answer.
    hang: bool = False


@dataclass(frozen=True)
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Counters:
    started: int = 0
    completed: int = 0
    # Handlers that were cancelled or whose writes failed because the caller went away.
    cancelled: int = 0
    active: int = 0


@dataclass
class OpenAIStandIn:
    """A minimal OpenAI-compatible server. Change `behaviour` at any time; it applies to the next
    request. `requests` keeps the latest requests (bounded) with their headers, for assertions."""

    name: str = "local"
    models: tuple[str, ...] = DEFAULT_LOCAL_MODELS
    api_key: str | None = None
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: deque[Recorded] = field(default_factory=lambda: deque(maxlen=_RECORDED_MAX))
    counters: Counters = field(default_factory=Counters)
    # What `/standin/behaviour` changes are applied on top of (the CLI's flags), None: the defaults.
    initial: Behaviour | None = None
    port: int = field(default=0, init=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """The base URL, ending in /v1, as the router config expects."""
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            app.router.add_post(path, self._generate)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/readyz", self._ok)
        app.router.add_get("/healthz", self._ok)
        # Lets another process (the `dev up` demo) make this stand-in slow or failing, e.g.
        # {"delay_before_first_chunk": 5, "delay_before_headers": 5}; {} restores the defaults.
        app.router.add_post("/standin/behaviour", self._set_behaviour)
        return app

    async def _set_behaviour(self, request: web.Request) -> web.Response:
        changes = await request.json()
        base = self.initial if self.initial is not None else Behaviour()
        try:
            self.behaviour = replace(base, **changes)
        except TypeError as err:
            return web.json_response({"error": str(err)}, status=400)
        return web.json_response({"behaviour": self.behaviour.__dict__})

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(
            self.app(), handler_cancellation=True, access_log=None, shutdown_timeout=1
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=2048, reuse_address=True)
        await site.start()
        bound = self._runner.addresses[0][1]
        assert isinstance(bound, int)
        self.port = bound
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def set(self, **changes: Any) -> None:
        """A fresh behaviour: the defaults plus `changes`, e.g. `standin.set(status=500)`."""
        self.behaviour = replace(Behaviour(), **changes)

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        data = [{"id": m, "object": "model", "owned_by": self.name} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    @staticmethod
    def _unauthorized() -> web.Response:
        return web.json_response({"error": {"message": "invalid API key", "type": "invalid_request_error"}},
                                 status=401)  # fmt: skip

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Recorded(request.path, dict(request.headers), body, time.monotonic()))
        counters = self.counters
        counters.started += 1
        counters.active += 1
        behaviour = self.behaviour
        try:
            response = await self._answer(request, body, behaviour)
            counters.completed += 1
            return response
        except (asyncio.CancelledError, ConnectionError):
            counters.cancelled += 1
            raise
        finally:
            counters.active -= 1

    async def _answer(self, request: web.Request, body: bytes, b: Behaviour) -> web.StreamResponse:
        if b.reset:
            _reset(request)
            await asyncio.Event().wait()  # the dropped connection cancels this handler
        if b.hang:
            await asyncio.Event().wait()
        if not self._authorized(request):
            return self._unauthorized()
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return web.json_response({"error": {"message": "body is not a JSON object", "type": "invalid_request_error"}},
                                     status=400)  # fmt: skip
        model = str(payload.get("model") or self.models[0])
        await asyncio.sleep(b.delay_before_headers)
        if b.status != 200:
            headers = {"Retry-After": b.retry_after} if b.retry_after else None
            error = {
                "message": f"{self.name} stand-in error {b.status}",
                "type": "server_error",
                "code": b.status,
            }
            return web.json_response({"error": error}, status=b.status, headers=headers)
        if request.path.endswith("/embeddings"):
            return web.json_response(_embedding(model))
        chat = request.path.endswith("/chat/completions")
        if payload.get("stream"):
            return await self._stream(request, model, chat, b)
        text = "".join(self._token(i) for i in range(b.tokens))
        data = json.dumps(_completion(model, chat, text, b.tokens)).encode()
        if b.body_stall:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(data)
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            await asyncio.sleep(b.body_stall)
            await response.write(data[len(data) // 2 :])
            await response.write_eof()
            return response
        return web.Response(body=data, content_type="application/json")

    def _token(self, index: int) -> str:
        return f"{self.name}-token-{index} "

    async def _stream(self, request: web.Request, model: str, chat: bool, b: Behaviour) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        await asyncio.sleep(b.delay_before_first_chunk)
        for index in range(b.tokens):
            if b.abort_after_tokens is not None and index == b.abort_after_tokens:
                assert request.transport is not None
                request.transport.abort()
                await asyncio.Event().wait()
            if index and b.token_interval:
                await asyncio.sleep(b.token_interval)
            chunk = _chunk(model, chat, self._token(index), None)
            # CLOCK_MONOTONIC is system-wide on Linux: a client in another process can measure delay.
            chunk["x_sent_at"] = time.monotonic()
            await response.write(_sse(chunk))
        final = _chunk(model, chat, "", "stop")
        final["usage"] = _usage(b.tokens)
        await response.write(_sse(final))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _reset(request: web.Request) -> None:
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 makes close() send RST, the way a crashed process's kernel does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _usage(completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": 7, "completion_tokens": completion_tokens, "total_tokens": 7 + completion_tokens}


def _completion(model: str, chat: bool, text: str, tokens: int) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": "cmpl-standin",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _usage(tokens),
    }


def _chunk(model: str, chat: bool, text: str, finish: str | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if chat:
        choice["delta"] = {"content": text} if text else {}
    else:
        choice["text"] = text
    return {
        "id": "chunk-standin",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }


def _embedding(model: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.125, 1.0]}],
        "model": model,
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def local_standin(**kwargs: Any) -> OpenAIStandIn:
    return OpenAIStandIn(name="local", models=DEFAULT_LOCAL_MODELS, **kwargs)


def cloud_standin(api_key: str | None = None, **kwargs: Any) -> OpenAIStandIn:
    """A cloud provider that checks `Authorization: Bearer <api_key>` when a key is given."""
    return OpenAIStandIn(name="cloud", models=DEFAULT_CLOUD_MODELS, api_key=api_key, **kwargs)


def refused_url() -> str:
    """A base URL on a loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class UnacceptingListener:
    """A port whose accept queue is full, so a new connect hangs in SYN-SENT: what a dead pod still
    listed behind a Service looks like (a connect timeout, not a refusal)."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._fillers: list[socket.socket] = []
        # Linux admits backlog + 1 connections into the accept queue; a few more make sure it is full.
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", self.port))
            self._fillers.append(filler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        for filler in self._fillers:
            filler.close()
        self._listener.close()


async def _serve(standin: OpenAIStandIn, host: str, port: int) -> None:
    await standin.start(host, port)
    print(f"{standin.name} stand-in serving {host}:{standin.port} (base URL path /v1)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await standin.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["local", "cloud"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--models", help="comma-separated model ids to list")
    parser.add_argument("--api-key-env", help="cloud: require `Bearer <value of this variable>`")
    parser.add_argument("--tokens", type=int, default=Behaviour.tokens)
    parser.add_argument("--token-interval", type=float, default=0.02, help="seconds between streamed tokens")
    args = parser.parse_args(argv)
    behaviour = Behaviour(tokens=args.tokens, token_interval=args.token_interval)
    if args.kind == "local":
        standin = local_standin(behaviour=behaviour)
    else:
        key = os.environ.get(args.api_key_env, "") if args.api_key_env else None
        standin = cloud_standin(api_key=key or None, behaviour=behaviour)
    standin.initial = behaviour
    if args.models:
        standin.models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    asyncio.run(_serve(standin, args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
