"""In-process stand-ins for a LocalAI server and a cloud provider, with scriptable behaviour.

The LocalAI stand-in (`local_standin`, dialect "localai") answers in the shapes the real LocalAI v4.9.0 binary
was seen to send, each pinned by a test against the binary (tests/integration/test_localai.py):
- a chat stream sends nothing before the first token; then, together, `delta: {"role":"assistant","content":null}`,
  `delta: {"content":null}` and the first token; one event per token; two more `{"content":null}` events after the
  text; a last event with `finish_reason` ("length" when max_tokens cut the text) and `delta: {"content":null}`; a
  `{"choices":[],"usage":…}` trailer only with `stream_options.include_usage`; `data: [DONE]`. No `usage` in the
  other events; `id` is the `X-Correlation-Id` header's UUID;
- a completion stream: an event without `text`, one per token, one more without `text`, a last one with
  `finish_reason: "stop"` whatever cut the text, `data: [DONE]`;
- a non-streamed completion reports `usage` all zeros and `finish_reason: "stop"`; a non-streamed chat reports
  usage, `finish_reason: "length"` when max_tokens cut it, and a UUID `id` of its own;
- an unknown model is a 404 `model "<m>" not found. To see available models, call GET /v1/models`; a missing key
  a 401 `An authentication key is required` (Bearer, `x-api-key` or `xi-api-key` accepted); `/readyz` and
  `/healthz` answer 200 with an empty body and no key; `/v1/models` lists `{"id","object"}` only.
Behaviours reproduce older or rarer shapes on demand: `role_chunk="at_once"` (v3.12.0 sent the role chunk at once,
before any token: `core/http/endpoints/openai/chat.go` at v3.12.0, line 41), an inference error after the stream
started as `data: {"error":{"message":…,"type":"server_error"}}` then `data: [DONE]` (v4.9.0, `chat.go` lines
505-521, `error_shape="event"`) or as a chunk whose content is `"Internal error: <err>"` with `finish_reason:
"stop"` (v3.12.0, `error_shape="content"`), or, as v4.9.0 reports a backend error (a prompt longer than the context,
seen on the binary), as the error's text in a content delta followed by the error event (`error_shape="echoed"`).
The cloud stand-in (dialect "openai") keeps the shapes of OpenAI's API.

Tests, the benchmark and `dev up` start them; `python -m localai_operator.testing.standins` serves one.
The router never imports this package (an import-linter contract).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import struct
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from aiohttp import web

from localai_operator.testing.prefill import PromptCache

DEFAULT_LOCAL_MODELS: Final = ("mistral-7b-instruct",)
DEFAULT_CLOUD_MODELS: Final = ("deepseek-v3.2",)
LOCALAI_ERROR_PREFIX: Final = "Internal error: "
# LocalAI v4.9.0's answers (seen on the binary; tests/integration/test_localai.py pins each).
LOCALAI_UNAUTHORIZED: Final = {
    "error": {"code": 401, "message": "An authentication key is required", "type": "invalid_request_error"}
}
LOCALAI_KEY_HEADERS: Final = ("x-api-key", "xi-api-key")
# The `{"content":null}` events LocalAI sends after the text, before the one with finish_reason.
LOCALAI_TRAILING_NULL_EVENTS: Final = 2
# What LocalAI v4.9.0 answers once SIGTERM stopped its backend process (seen on the binary).
LOCALAI_BACKEND_UNAVAILABLE: Final = (
    'rpc error: code = Unavailable desc = connection error: desc = "transport: Error while dialing: dial tcp '
    '127.0.0.1:37033: connect: connection refused"'
)
Dialect = Literal["localai", "openai"]


def localai_unknown_model(model: str) -> dict[str, Any]:
    message = f'model "{model}" not found. To see available models, call GET /v1/models'
    return {"error": {"code": 404, "message": message, "type": "invalid_request_error"}}


_RECORDED_MAX: Final = 1000
_PROMPT_TOKENS: Final = 7


@dataclass(frozen=True)
class Behaviour:
    """How the stand-in answers the next generation requests."""

    status: int = 200
    retry_after: str | None = None
    # Before the response headers, on every path.
    delay_before_headers: float = 0.0
    # The first token comes this long after the headers (streams: after the role chunk).
    delay_before_first_chunk: float = 0.0
    token_interval: float = 0.0
    tokens: int = 3
    # Streams: drop the connection after this many tokens, without ending the chunked body.
    abort_after_tokens: int | None = None
    # Inference fails after this many tokens (0: before the first), reported in the stream as LocalAI does.
    fail_after_tokens: int | None = None
    # "echoed": LocalAI v4.9.0 on a backend error (a prompt longer than the context, seen on the binary): the error's
    # text as the first content (chat: right after the role event, without the `{"content":null}` one; completions:
    # as the first event), then, `echo_gap` seconds later in a write of its own, the error with gRPC's prefix (chat:
    # the error event and [DONE]; completions: an `Internal error: ` text chunk with finish_reason "stop", no [DONE]).
    error_shape: Literal["content", "event", "echoed"] = "content"
    echo_gap: float = 0.001
    role_chunk: Literal["at_once", "with_first_token"] = "at_once"
    # Streams: a `: keep-alive` comment this often while waiting for the first token (0: none).
    keepalive_interval: float = 0.0
    # Streams: end after the last token with neither a finish_reason nor [DONE].
    truncate: bool = False
    # Answer 200 with an empty body.
    empty_body: bool = False
    # Answer with a tool call instead of text.
    tool_call: bool = False
    # Non-stream: bytes of padding added to the answer (a large answer).
    answer_padding: int = 0
    # Non-streaming: send the headers and half the body, then stall this long before the rest.
    body_stall: float = 0.0
    # Answer 307 to this Location.
    redirect: str | None = None
    # Drop the connection with a TCP RST instead of answering.
    reset: bool = False
    # Read the request and never answer.
    hang: bool = False
    # LocalAI v4.9.0 once SIGTERM stopped its backend (seen on the binary): every generation request fails at once
    # with gRPC's Unavailable, as an error event under 200 (streams) or a 500.
    stopping: bool = False
    # Token usage: on every stream chunk as LocalAI sends it, only in the trailer a stream asks for with
    # `stream_options.include_usage` as OpenAI-style providers do, or never (non-stream answers too).
    usage: Literal["every_chunk", "when_asked", "never"] = "every_chunk"
    # Added to every response (e.g. what a provider sends that must not reach clients: Set-Cookie).
    headers: tuple[tuple[str, str], ...] = ()


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _raw_query(request: web.Request) -> str:
    """The query string exactly as it came on the request line, percent-escapes and all."""
    return request.raw_path.partition("?")[2]


@dataclass(frozen=True)
class Recorded:
    path: str
    # As sent on the request line, not decoded.
    query: str
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


def _usage(completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": _PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": _PROMPT_TOKENS + completion_tokens,
    }


def _sse(payload: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(payload).encode() + b"\n\n"


_INSTANT_STREAMS_MAX: Final = 64


def _instant_chat_stream(model: str, tokens: list[str], usage_trailer: bool) -> bytes:
    """What `_stream` writes for a chat answer with no delay, without a json.dumps per chunk: when it is
    the upstream of a benchmark, a stand-in that streams dearer than it answers would mislead."""
    name = json.dumps(model).encode()
    head = (
        b'data: {"created": ' + str(int(time.time())).encode() + b', "object": "chat.completion.chunk", '
        b'"id": "chunk-standin", "model": ' + name + b', "choices": [{"index": 0, "finish_reason": '
    )
    parts = [
        head
        + b'null, "delta": {"content": '
        + json.dumps(token).encode()
        + b'}}], "usage": '
        + json.dumps(_usage(i + 1)).encode()
        + b"}\n\n"
        for i, token in enumerate(tokens)
    ]
    usage = json.dumps(_usage(len(tokens))).encode()
    parts.append(head + b'"stop", "delta": {}}], "usage": ' + usage + b"}\n\n")
    if usage_trailer:
        parts.append(
            b'data: {"id": "chunk-standin", "object": "chat.completion.chunk", "model": '
            + name
            + b', "choices": [], "usage": '
            + usage
            + b"}\n\n"
        )
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


@dataclass
class OpenAIStandIn:
    """A LocalAI-like (or cloud-like) OpenAI-compatible server. Change `behaviour` at any time; it applies
    to the next request. `requests` keeps the latest requests (bounded) for assertions."""

    name: str = "local"
    models: tuple[str, ...] = DEFAULT_LOCAL_MODELS
    api_key: str | None = None
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: deque[Recorded] = field(default_factory=lambda: deque(maxlen=_RECORDED_MAX))
    counters: Counters = field(default_factory=Counters)
    # What `/standin/behaviour` changes are applied on top of (the CLI's flags), None: the defaults.
    initial: Behaviour | None = None
    # "localai": the shapes of the LocalAI v4.9.0 binary (the module docstring); "openai": OpenAI's.
    dialect: Dialect = "openai"
    # Slots, and a first token that waits for the prompt as llama.cpp's prompt cache makes it (testing/prefill.py).
    prompt_cache: PromptCache | None = None
    port: int = field(default=0, init=False)
    scheme: str = field(default="http", init=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)
    _plain: dict[tuple[int, str], Behaviour] = field(default_factory=dict, init=False, repr=False)
    _instant_streams: dict[tuple[str, int, bool, int], tuple[bytes, bytes]] = field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def url(self) -> str:
        """The base URL, ending in /v1, as the router config expects (https on localhost when served with TLS)."""
        if self.scheme == "https":
            return f"https://localhost:{self.port}/v1"
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024 * 1024)
        for path in (
            "chat/completions",
            "completions",
            "embeddings",
            "responses",
            "rerank",
            "tokenize",
            "images/generations",
            "audio/speech",
            "audio/transcriptions",
        ):
            app.router.add_post(f"/v1/{path}", self._generate)
        app.router.add_get("/v1/responses/{id}", self._generate)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/readyz", self._ok)
        app.router.add_get("/healthz", self._ok)
        # Lets another process (the `dev up` demo) make this stand-in slow or failing, e.g.
        # {"delay_before_first_chunk": 5, "delay_before_headers": 5}; {} restores the defaults.
        app.router.add_post("/standin/behaviour", self._set_behaviour)
        app.on_response_prepare.append(self._extra_headers)
        return app

    async def _extra_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        for name, value in self.behaviour.headers:
            response.headers.add(name, value)

    async def _set_behaviour(self, request: web.Request) -> web.Response:
        changes = await request.json()
        base = self.initial if self.initial is not None else Behaviour()
        try:
            self.behaviour = replace(base, **changes)
        except TypeError as err:
            return web.json_response({"error": str(err)}, status=400)
        return web.json_response({"behaviour": self.behaviour.__dict__})

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> str:
        self._runner = web.AppRunner(
            self.app(), handler_cancellation=True, access_log=None, shutdown_timeout=1
        )
        await self._runner.setup()
        site: web.BaseSite = (
            web.SockSite(self._runner, sock)
            if sock is not None
            else web.TCPSite(
                self._runner, host, port, backlog=2048, reuse_address=True, ssl_context=ssl_context
            )
        )
        await site.start()
        bound = self._runner.addresses[0][1]
        assert isinstance(bound, int)
        self.port = bound
        self.scheme = "https" if ssl_context is not None else "http"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def set(self, **changes: Any) -> None:
        """A fresh behaviour: the defaults plus `changes`, e.g. `standin.set(status=500)`."""
        self.behaviour = replace(Behaviour(), **changes)

    async def _ok(self, request: web.Request) -> web.Response:
        if self.dialect == "localai":
            return web.Response(status=200)  # LocalAI's probes: no body, no Content-Type
        return web.Response(text="ok")

    async def _models(self, request: web.Request) -> web.Response:
        self.requests.append(
            Recorded(request.path, _raw_query(request), dict(request.headers), b"", time.monotonic())
        )
        if not self._authorized(request):
            return self._unauthorized()
        if self.dialect == "localai":
            data = [{"id": m, "object": "model"} for m in self.models]
        else:
            data = [{"id": m, "object": "model", "owned_by": self.name} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    def _authorized(self, request: web.Request) -> bool:
        if self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return True
        return self.dialect == "localai" and any(
            request.headers.get(name) == self.api_key for name in LOCALAI_KEY_HEADERS
        )

    def _unauthorized(self) -> web.Response:
        if self.dialect == "localai":
            return web.json_response(LOCALAI_UNAUTHORIZED, status=401)
        return web.json_response(
            {"error": {"message": "invalid API key", "type": "invalid_request_error"}}, status=401
        )

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Recorded(request.path, _raw_query(request), dict(request.headers), body, time.monotonic())
        )
        counters = self.counters
        counters.started += 1
        counters.active += 1
        try:
            if self.prompt_cache is None:
                response = await self._answer(request, body, self.behaviour)
            else:
                async with self.prompt_cache.serving(_json_or_none(body)) as prefill:
                    b = self.behaviour
                    b = replace(b, delay_before_first_chunk=b.delay_before_first_chunk + prefill)
                    response = await self._answer(request, body, b)
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
        payload: Any = None
        if request.content_type == "application/json":
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                return web.json_response(
                    {"error": {"message": "body is not a JSON object", "type": "invalid_request_error"}},
                    status=400,
                )
        payload = payload or {}
        model = str(payload.get("model") or self.models[0])
        if self.dialect == "localai" and model not in self.models:
            return web.json_response(localai_unknown_model(model), status=404)
        await asyncio.sleep(b.delay_before_headers)
        if b.redirect is not None:
            return web.Response(status=307, headers={"Location": b.redirect})
        if b.status != 200:
            headers = {"Retry-After": b.retry_after} if b.retry_after else None
            error = {
                "message": f"{self.name} stand-in error {b.status}",
                "type": "server_error",
                "code": b.status,
            }
            return web.json_response({"error": error}, status=b.status, headers=headers)
        if b.empty_body:
            return web.Response(status=200, content_type="application/json")
        path = request.path.removeprefix("/v1/")
        if b.stopping and path in ("chat/completions", "completions"):
            return await self._stopping(request, payload, path == "chat/completions")
        if path in ("chat/completions", "completions"):
            chat = path == "chat/completions"
            if self.dialect == "localai":
                if payload.get("stream"):
                    return await self._localai_stream(request, payload, model, chat, b)
                return await self._localai_complete(payload, model, chat, b)
            if payload.get("stream"):
                return await self._stream(request, payload, model, chat, b)
            return await self._complete(request, payload, model, chat, b)
        if path == "responses":
            return await self._responses(request, payload, model, b)
        return await self._other(request, path, payload, model, b)

    def _token(self, index: int) -> str:
        return f"{self.name}-token-{index} "

    async def _wait_first_token(self, b: Behaviour, response: web.StreamResponse | None) -> None:
        if response is None or not b.keepalive_interval:
            await asyncio.sleep(b.delay_before_first_chunk)
            return
        deadline = time.monotonic() + b.delay_before_first_chunk
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, b.keepalive_interval))
            if deadline - time.monotonic() > 0:
                await response.write(b": keep-alive\n\n")

    async def _complete(
        self, request: web.Request, payload: dict[str, Any], model: str, chat: bool, b: Behaviour
    ) -> web.StreamResponse:
        await self._wait_first_token(b, None)
        if b.fail_after_tokens is not None:
            error = {
                "message": f"{self.name} stand-in: inference failed",
                "type": "server_error",
                "code": 500,
            }
            return web.json_response({"error": error}, status=500)
        await asyncio.sleep(max(0, b.tokens - 1) * b.token_interval)
        text = "".join(self._token(i) for i in range(b.tokens))
        choice: dict[str, Any] = {"index": 0, "finish_reason": "tool_calls" if b.tool_call else "stop"}
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": None if b.tool_call else text}
            if b.tool_call:
                message["tool_calls"] = [_tool_call_whole()]
            choice["message"] = message
            if payload.get("logprobs"):
                choice["logprobs"] = {"content": [_logprob(self._token(i)) for i in range(b.tokens)]}
        else:
            choice["text"] = text
        answer: dict[str, Any] = {
            "id": "cmpl-standin",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
        }
        if b.usage != "never":
            answer["usage"] = _usage(b.tokens)
        if b.answer_padding:
            answer["padding"] = "x" * b.answer_padding
        data = json.dumps(answer).encode()
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

    def _chunk(
        self,
        model: str,
        chat: bool,
        delta: dict[str, Any] | None,
        text: str | None,
        finish: str | None,
        tokens_so_far: int,
        usage: bool = True,
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["delta"] = delta if delta is not None else {}
        elif text:
            choice["text"] = text
        chunk: dict[str, Any] = {
            "created": int(time.time()),
            "object": "chat.completion.chunk" if chat else "text_completion",
            "id": "chunk-standin",
            "model": model,
            "choices": [choice],
        }
        if usage:
            chunk["usage"] = (
                _usage(tokens_so_far)
                if tokens_so_far
                else {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            )
        return chunk

    async def _stream(
        self, request: web.Request, payload: dict[str, Any], model: str, chat: bool, b: Behaviour
    ) -> web.StreamResponse:
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        instant = chat and self._instant(b) and not payload.get("logprobs")
        if instant and b.role_chunk == "with_first_token":
            # All of it at once: headers, the events and the chunked body's end in one write.
            include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            role, rest = self._instant_stream(model, b.tokens, include_usage)
            whole = web.Response(body=role + rest, headers=headers)
            whole.enable_chunked_encoding()
            return whole
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        if instant:
            include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            role, rest = self._instant_stream(model, b.tokens, include_usage)
            await response.write(role)
            await response.write(rest)
            await response.write_eof()
            return response
        every = b.usage == "every_chunk"
        role = _sse(self._chunk(model, chat, {"role": "assistant"}, None, None, 0, every)) if chat else b""
        if role and b.role_chunk == "at_once":
            await response.write(role)
            role = b""
        await self._wait_first_token(b, response)
        pieces = _tool_call_pieces() if b.tool_call and chat else [self._token(i) for i in range(b.tokens)]
        out = [role] if role else []
        for index, piece in enumerate(pieces):
            if b.abort_after_tokens is not None and index == b.abort_after_tokens:
                if out:
                    await response.write(b"".join(out))
                assert request.transport is not None
                request.transport.abort()
                await asyncio.Event().wait()
            if b.fail_after_tokens is not None and index == b.fail_after_tokens:
                out.append(self._error_event(model, chat, b, index))
                await response.write(b"".join(out))
                await response.write_eof()
                return response
            if index and b.token_interval:
                await response.write(b"".join(out))
                out = []
                await asyncio.sleep(b.token_interval)
            if isinstance(piece, dict):
                chunk = self._chunk(model, chat, piece, None, None, index + 1, every)
            else:
                delta = {"content": piece}
                chunk = self._chunk(model, chat, delta, piece, None, index + 1, every)
                if chat and payload.get("logprobs"):
                    chunk["choices"][0]["logprobs"] = {"content": [_logprob(piece)]}
            # CLOCK_MONOTONIC is system-wide on Linux: a client in another process can measure delay.
            chunk["x_sent_at"] = time.monotonic()
            out.append(_sse(chunk))
        if b.fail_after_tokens is not None and b.fail_after_tokens >= len(pieces):
            out.append(self._error_event(model, chat, b, len(pieces)))
        elif not b.truncate:
            finish = "tool_calls" if b.tool_call and chat else "stop"
            out.append(_sse(self._chunk(model, chat, {}, None, finish, len(pieces), every)))
            if (payload.get("stream_options") or {}).get("include_usage") and b.usage != "never":
                out.append(
                    _sse(
                        {
                            "id": "chunk-standin",
                            "object": "chat.completion.chunk",
                            "model": model,
                            "created": int(time.time()),
                            "choices": [],
                            "usage": _usage(len(pieces)),
                        }
                    )
                )
            out.append(b"data: [DONE]\n\n")
        await response.write(b"".join(out))
        await response.write_eof()
        return response

    async def _stopping(
        self, request: web.Request, payload: dict[str, Any], chat: bool
    ) -> web.StreamResponse:
        """LocalAI's answer once its backend is gone: chat.go's error event (completion.go's `Internal error:` text
        chunk) under 200 for a stream, else a 500."""
        if not payload.get("stream"):
            error = {"code": 500, "message": LOCALAI_BACKEND_UNAVAILABLE, "type": ""}
            return web.json_response({"error": error}, status=500)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if chat:
            error = {"code": "server_error", "message": LOCALAI_BACKEND_UNAVAILABLE, "type": "server_error"}
            await response.write(_sse({"error": error}) + b"data: [DONE]\n\n")
        else:
            text = LOCALAI_ERROR_PREFIX + LOCALAI_BACKEND_UNAVAILABLE
            choice = {"index": 0, "finish_reason": "stop", "text": text}
            await response.write(_sse({"object": "text_completion", "choices": [choice]}))
        await response.write_eof()
        return response

    @staticmethod
    def _localai_length(payload: dict[str, Any], b: Behaviour) -> tuple[int, bool]:
        """How many tokens LocalAI generates for `payload`, and whether max_tokens cut them."""
        limit = payload.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < b.tokens:
            return limit, True
        return b.tokens, False

    async def _localai_complete(
        self, payload: dict[str, Any], model: str, chat: bool, b: Behaviour
    ) -> web.StreamResponse:
        """A non-streamed answer as LocalAI v4.9.0 writes it once generation is over."""
        await self._wait_first_token(b, None)
        headers = {"X-Correlation-Id": str(uuid.uuid4())}
        if b.fail_after_tokens is not None:
            error = {"code": 500, "message": f"{self.name} stand-in: inference failed", "type": ""}
            return web.json_response({"error": error}, status=500, headers=headers)
        count, cut = self._localai_length(payload, b)
        await asyncio.sleep(max(0, count - 1) * b.token_interval)
        text = "".join(self._token(i) for i in range(count))
        choice: dict[str, Any] = {"index": 0}
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": None if b.tool_call else text}
            if b.tool_call:
                message["tool_calls"] = [_tool_call_whole()]
            choice["finish_reason"] = "tool_calls" if b.tool_call else ("length" if cut else "stop")
            choice["message"] = message
            usage = _usage(count)
        else:
            # LocalAI reports neither the length cut nor any usage for completions.
            choice["finish_reason"] = "stop"
            choice["text"] = text
            usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        answer = {
            "created": int(time.time()),
            "object": "chat.completion" if chat else "text_completion",
            "id": str(uuid.uuid4()),
            "model": model,
            "choices": [choice],
            "usage": usage,
        }
        if b.answer_padding:
            answer["padding"] = "x" * b.answer_padding
        return web.json_response(answer, headers=headers)

    async def _localai_stream(
        self, request: web.Request, payload: dict[str, Any], model: str, chat: bool, b: Behaviour
    ) -> web.StreamResponse:
        """A stream as LocalAI v4.9.0 sends it (the module docstring): headers and the first events together with
        the first token, unless `role_chunk="at_once"` or keep-alives need the headers earlier."""
        ident = str(uuid.uuid4())
        created = int(time.time())
        headers = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Correlation-Id": ident,
        }
        count, cut = self._localai_length(payload, b)
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))

        def event(choice: dict[str, Any]) -> bytes:
            body = {
                "created": created,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "id": ident,
                "model": model,
                "choices": [{"index": 0, "finish_reason": None, **choice}],
            }
            return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

        if chat:
            opening = [
                event({"delta": {"role": "assistant", "content": None}}),
                event({"delta": {"content": None}}),
            ]
            if b.fail_after_tokens == 0 and b.error_shape == "echoed":
                opening = opening[:1]  # the backend's error is its first reply: no empty one before it
            closing = [event({"delta": {"content": None}})] * LOCALAI_TRAILING_NULL_EVENTS
            finish = "tool_calls" if b.tool_call else ("length" if cut else "stop")
            closing.append(event({"finish_reason": finish, "delta": {"content": None}}))
            pieces: list[Any] = _tool_call_pieces() if b.tool_call else [self._token(i) for i in range(count)]
        else:
            opening = [] if b.fail_after_tokens == 0 and b.error_shape == "echoed" else [event({})]
            closing = [event({}), event({"finish_reason": "stop"})]
            pieces = [self._token(i) for i in range(count)]
        if chat and include_usage:
            trailer = {
                "id": ident,
                "created": created,
                "model": model,
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": _usage(len(pieces)),
            }
            closing.append(b"data: " + json.dumps(trailer, separators=(",", ":")).encode() + b"\n\n")
        response = web.StreamResponse(headers=headers)
        out: list[bytes] = []
        if b.role_chunk == "at_once" or b.keepalive_interval:
            await response.prepare(request)
            if b.role_chunk == "at_once":
                await response.write(b"".join(opening))
            else:
                out = list(opening)
            await self._wait_first_token(b, response)
        else:
            await self._wait_first_token(b, None)
            await response.prepare(request)
            out = list(opening)
        for index, piece in enumerate(pieces):
            if b.abort_after_tokens is not None and index == b.abort_after_tokens:
                if out:
                    await response.write(b"".join(out))
                assert request.transport is not None
                request.transport.abort()
                await asyncio.Event().wait()
            if b.fail_after_tokens is not None and index == b.fail_after_tokens:
                await self._localai_failure(response, out, event, model, chat, b, index)
                return response
            if index and b.token_interval:
                await response.write(b"".join(out))
                out = []
                await asyncio.sleep(b.token_interval)
            if isinstance(piece, dict):
                out.append(event({"delta": piece}))
            elif chat and payload.get("logprobs"):
                out.append(event({"delta": {"content": piece}, "logprobs": {"content": [_logprob(piece)]}}))
            elif chat:
                out.append(event({"delta": {"content": piece}}))
            else:
                out.append(event({"text": piece}))
        if b.fail_after_tokens is not None and b.fail_after_tokens >= len(pieces):
            await self._localai_failure(response, out, event, model, chat, b, len(pieces))
            return response
        if not b.truncate:
            out += [*closing, b"data: [DONE]\n\n"]
        await response.write(b"".join(out))
        await response.write_eof()
        return response

    async def _localai_failure(
        self,
        response: web.StreamResponse,
        out: list[bytes],
        event: Any,
        model: str,
        chat: bool,
        b: Behaviour,
        index: int,
    ) -> None:
        """Ends a LocalAI stream with an inference error in `b.error_shape`, after what `out` holds."""
        if b.error_shape != "echoed":
            out.append(self._error_event(model, chat, b, index))
            await response.write(b"".join(out))
            await response.write_eof()
            return
        # The backend's message as a token, then (each event is flushed on its own) gRPC's status of it.
        message = f"{self.name} stand-in: request exceeds the available context size"
        out.append(event({"delta": {"content": message}} if chat else {"text": message}))
        await response.write(b"".join(out))
        await asyncio.sleep(b.echo_gap)
        status = f"rpc error: code = Internal desc = {message}"
        if chat:
            error = {"error": {"code": "server_error", "message": status, "type": "server_error"}}
            await response.write(_sse(error) + b"data: [DONE]\n\n")
        else:
            await response.write(event({"finish_reason": "stop", "text": LOCALAI_ERROR_PREFIX + status}))
        await response.write_eof()

    def _instant(self, b: Behaviour) -> bool:
        """Nothing to wait for, fail or vary: the stream can be written at once, from `_instant_stream`."""
        key = (b.tokens, b.role_chunk)
        plain = self._plain.get(key)
        if plain is None:
            plain = self._plain[key] = Behaviour(tokens=b.tokens, role_chunk=b.role_chunk)
        return b == plain

    def _instant_stream(self, model: str, tokens: int, include_usage: bool) -> tuple[bytes, bytes]:
        """The role chunk and the rest of an instant chat stream, built once a second per shape: as the
        upstream of a benchmark, a stand-in that streams dearer than it answers would mislead."""
        key = (model, tokens, include_usage, int(time.time()))
        found = self._instant_streams.get(key)
        if found is None:
            if len(self._instant_streams) >= _INSTANT_STREAMS_MAX:
                self._instant_streams.clear()
            role = _sse(self._chunk(model, True, {"role": "assistant"}, None, None, 0))
            rest = _instant_chat_stream(model, [self._token(i) for i in range(tokens)], include_usage)
            found = self._instant_streams[key] = (role, rest)
        return found

    def _error_event(self, model: str, chat: bool, b: Behaviour, index: int) -> bytes:
        message = f"{self.name} stand-in: inference failed"
        error = {"error": {"code": "server_error", "message": message, "type": "server_error"}}
        if b.error_shape == "event":
            return _sse(error) + b"data: [DONE]\n\n"
        text = LOCALAI_ERROR_PREFIX + message
        event = _sse(self._chunk(model, chat, {"content": text}, text, "stop", index))
        return event + (b"data: [DONE]\n\n" if chat else b"")

    async def _responses(
        self, request: web.Request, payload: dict[str, Any], model: str, b: Behaviour
    ) -> web.StreamResponse:
        text = "".join(self._token(i) for i in range(b.tokens))
        final = {
            "id": "resp-standin",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": model,
            "output": [
                {
                    "type": "message",
                    "id": "msg-standin",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "usage": {
                "input_tokens": _PROMPT_TOKENS,
                "output_tokens": b.tokens,
                "total_tokens": _PROMPT_TOKENS + b.tokens,
            },
        }
        if not payload.get("stream"):
            await self._wait_first_token(b, None)
            await asyncio.sleep(max(0, b.tokens - 1) * b.token_interval)
            return web.json_response(final)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        started = dict(final, status="in_progress", output=[])
        await response.write(
            _sse({"type": "response.created", "sequence_number": 0, "response": started}, "response.created")
        )
        await self._wait_first_token(b, response)
        for index in range(b.tokens):
            if index and b.token_interval:
                await asyncio.sleep(b.token_interval)
            delta = {
                "type": "response.output_text.delta",
                "sequence_number": index + 1,
                "item_id": "msg-standin",
                "output_index": 0,
                "content_index": 0,
                "delta": self._token(index),
            }
            await response.write(_sse(delta, "response.output_text.delta"))
        if not b.truncate:
            done = {"type": "response.completed", "sequence_number": b.tokens + 1, "response": final}
            await response.write(_sse(done, "response.completed"))
        await response.write_eof()
        return response

    async def _other(
        self, request: web.Request, path: str, payload: dict[str, Any], model: str, b: Behaviour
    ) -> web.StreamResponse:
        await self._wait_first_token(b, None)
        if path == "embeddings":
            data: dict[str, Any] = {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.125, 1.0]}],
                "model": model,
                "usage": {"prompt_tokens": 4, "total_tokens": 4},
            }
            if b.answer_padding:
                data["data"][0]["embedding"] = [0.5] * (b.answer_padding // 4)
            return web.json_response(data)
        if path == "rerank":
            documents = payload.get("documents") or []
            results = [{"index": i, "relevance_score": 1 / (i + 1)} for i in range(len(documents))]
            return web.json_response({"model": model, "results": results, "usage": {"total_tokens": 5}})
        if path == "tokenize":
            return web.json_response({"tokens": [1, 2, 3]})
        if path == "images/generations":
            return web.json_response(
                {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(b"PNG").decode()}]}
            )
        if path == "audio/transcriptions":
            return web.json_response({"text": f"{self.name} transcription"})
        if path == "audio/speech":
            response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
            await response.prepare(request)
            for _ in range(max(1, b.tokens)):
                await response.write(b"RIFF" + bytes(1020))
                if b.token_interval:
                    await asyncio.sleep(b.token_interval)
            await response.write_eof()
            return response
        if request.method == "GET" and path.startswith("responses/"):
            return web.json_response(
                {"id": path.split("/", 1)[1], "object": "response", "status": "completed", "model": model}
            )
        return web.json_response(
            {"error": {"message": f"{path} not found", "type": "invalid_request_error"}}, status=404
        )


def _logprob(token: str) -> dict[str, Any]:
    return {"token": token, "logprob": -0.25, "bytes": list(token.encode()), "top_logprobs": []}


def _tool_call_whole() -> dict[str, Any]:
    return {
        "id": "call-standin",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }


def _tool_call_pieces() -> list[Any]:
    return [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call-standin",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ],
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
    ]


def _reset(request: web.Request) -> None:
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 makes close() send RST, the way a crashed process's kernel does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def local_standin(**kwargs: Any) -> OpenAIStandIn:
    """A LocalAI v4.9.0 (its shapes: the module docstring)."""
    kwargs.setdefault("models", DEFAULT_LOCAL_MODELS)
    return OpenAIStandIn(name="local", dialect="localai", **kwargs)


def cloud_standin(api_key: str | None = None, **kwargs: Any) -> OpenAIStandIn:
    """A cloud provider that checks `Authorization: Bearer <api_key>` when a key is given."""
    return OpenAIStandIn(name="cloud", models=DEFAULT_CLOUD_MODELS, api_key=api_key, **kwargs)


def refused_url() -> str:
    """A base URL on a loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class ConnectProxy:
    """An HTTP CONNECT proxy, as corporate egress proxies are: checks `Proxy-Authorization: Basic` when given
    credentials (407 otherwise), records each tunnel's target and relays bytes both ways to `upstream`
    (host, port) whatever name was asked (a test's fake cloud on loopback)."""

    def __init__(self, upstream: tuple[str, int], credentials: tuple[str, str] | None = None) -> None:
        self.upstream = upstream
        self.credentials = credentials
        self.tunnels: list[str] = []
        self.refused: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            fields = {
                k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)
            }
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            if self.credentials is not None:
                token = base64.b64encode(":".join(self.credentials).encode()).decode()
                if fields.get("proxy-authorization") != f"Basic {token}":
                    self.refused.append(target)
                    writer.write(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                        b'Proxy-Authenticate: Basic realm="egress"\r\nContent-Length: 0\r\n\r\n'
                    )
                    return
            self.tunnels.append(target)
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError):
                    while data := await source.read(65536):
                        sink.write(data)
                        await sink.drain()
                sink.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()


class UnacceptingListener:
    """A port whose accept queue is full, so a new connect hangs in SYN-SENT: what a dead pod still
    listed behind a Service looks like (a connect timeout, not a refusal). `release()` starts serving
    the socket with `standin`: connects whose SYN was dropped then succeed on the kernel's retry
    (1 s later), which is what a burst of new connections to a busy but healthy pod looks like."""

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

    async def release(self, standin: OpenAIStandIn) -> None:
        """Serve this port with `standin` from now on (a large backlog: the queue is full no more)."""
        self._listener.listen(2048)
        self._listener.setblocking(False)
        await standin.start(sock=self._listener)
        for filler in self._fillers:
            filler.close()
        self._fillers = []

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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
