"""A stand-in for LocalAI's binary in tests and the demo: llama.cpp (llama-cpp-python) on CPU behind LocalAI's
HTTP surface, as far as the operator and the router rely on it; and the in-cluster model mirror.

    model_server.py serve     LocalAI, configured by its env and the model YAMLs in its models directory
    model_server.py mirror    GET/HEAD (with Range) of the files in /srv/mirror, on port 8080

Each behaviour copied from LocalAI names its source at the pinned v4.9.0 (paths in mudler/LocalAI):
- Env (`core/cli/run.go`, kong tags): LOCALAI_ADDRESS or ADDRESS (default `:8080`), LOCALAI_MODELS_PATH or
  MODELS_PATH (`/models`), LOCALAI_THREADS or THREADS, LOCALAI_CONTEXT_SIZE or CONTEXT_SIZE, LOCALAI_API_KEY or
  API_KEY (comma-separated keys), LOCALAI_LOAD_TO_MEMORY or LOAD_TO_MEMORY (comma-separated model names). Any other
  LOCALAI_* variable the pool renders is accepted and ignored, as kong ignores unknown ones.
- Model configs: every `*.yaml`/`*.yml` in the models directory whose name does not start with a dot
  (`core/config/model_config_loader.go`, ~line 650). Keys read: `name`, `parameters.model`, `context_size`,
  `threads` (over LOCALAI_THREADS: `core/backend/options.go`, effectiveThreads), `parameters.{temperature, top_p,
  top_k, min_p, max_tokens, seed, repeat_penalty, batch}` (`batch` sets n_batch and n_ubatch), `mmap`, `mmlock`,
  `cache_type_k`/`cache_type_v`, `flash_attention`, `stopwords`, `embeddings`, `options: [parallel:N]` (or env
  LLAMACPP_PARALLEL). Sampling defaults where neither the request nor the YAML sets them:
  `core/config/generic_defaults.go` (top_p 0.95, top_k 40, min_p 0, temperature 0.9, random seed).
- Startup (`core/application/startup.go` ~line 510, `core/cli/run.go` ~line 756): the models in LOAD_TO_MEMORY are
  loaded before the HTTP server is even built, so the port refuses connections until they are loaded; a model that
  fails to load makes the process exit non-zero. Other models load on their first request.
- `/healthz` and `/readyz` answer 200 with no body once listening, without a key (`core/http/routes/health.go`,
  `core/http/auth/public_routes.go`). The 503 `{"status":"starting"}` branch is unreachable from `local-ai run`.
- API keys (`core/http/auth/middleware.go`): `Authorization: Bearer <key>`, `x-api-key` or `xi-api-key`; otherwise
  401, `WWW-Authenticate: Bearer`, `{"error":{"code":401,"message":"An authentication key is required",
  "type":"invalid_request_error"}}`.
- `GET /v1/models` (`core/http/endpoints/openai/list.go`, `core/services/galleryop/list_models.go`,
  `pkg/model/loader.go` ListFilesInModelPath): the configured names, then loose files not referenced by a config and
  not skipped by suffix (`.gguf`, `.yaml`, `.partial`, ...).
- Request model (`core/http/middleware/request.go`): empty means the first listed model; an unknown one is 404
  `model "<m>" not found. To see available models, call GET /v1/models`.
- Chat streams (`core/http/endpoints/openai/chat.go`, `chat_stream_workers.go` processStream): nothing is sent
  before the first token; then a chunk with `delta: {"role":"assistant","content":null}`, the content chunks, a
  final chunk with an empty delta and `finish_reason` (`stop`, or `length` at max_tokens), a usage trailer with
  `choices: []` only if `stream_options.include_usage`, then `data: [DONE]`. A failure, model load included, is
  `data: {"error":{"code":"server_error","message":...,"type":"server_error"}}` then `data: [DONE]`, under 200.
- Completion streams (`core/http/endpoints/openai/completion.go`): `text_completion` chunks, no role chunk; a failure
  is a chunk with `text: "Internal error: <err>"` and `finish_reason: "stop"`, with no `[DONE]` after it.
- Non-streamed errors (`core/http/app.go` HTTPErrorHandler): `{"error":{"code":500,"message":...,"type":""}}`.
- Embeddings need `embeddings: true` in the model's YAML (the llama-cpp backend refuses otherwise).
- `options: [parallel:N]`: N slots answer at once (`backend/cpp/llama-cpp/grpc-server.cpp`); here N llama.cpp
  contexts over the same mmap'd weights, each of `context_size` tokens (v4.9.0's unified KV cache lets one slot use
  the whole context).
Not copied: LocalAI's prompt templates. LocalAI applies the GGUF's chat template (`core/config/gguf.go`);
llama-cpp-python's rendering of Gemma 3's template answers empty, so GGUFs of the gemma family use its built-in
`gemma` format, the same turn markup. Prompt token counts in stream usage are llama.cpp's tokenization of the
message texts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from aiohttp import web

MIRROR_DIR: Final = Path("/srv/mirror")
# pkg/model/loader.go, knownFilesToSkip and knownModelsNameSuffixToSkip.
_SKIPPED_FILES: Final = ("model_card", "readme", "readme.md")
_SKIPPED_SUFFIXES: Final = (
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
# ggml_type values of the KV cache types LocalAI's llama-cpp backend accepts.
_CACHE_TYPES: Final = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}
_PUBLIC_PATHS: Final = ("/healthz", "/readyz")


def env(names: tuple[str, ...], default: str = "", source: Mapping[str, str] = os.environ) -> str:
    for name in names:
        if source.get(name):
            return source[name]
    return default


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    models_path: Path
    threads: int
    context_size: int
    api_keys: tuple[str, ...]
    load_to_memory: tuple[str, ...]
    parallel: int

    @classmethod
    def from_env(cls, source: Mapping[str, str] = os.environ) -> Settings:
        address = env(("LOCALAI_ADDRESS", "ADDRESS"), ":8080", source)
        host, _, port = address.rpartition(":")
        return cls(
            host=host.strip("[]") or "0.0.0.0",
            port=int(port),
            models_path=Path(env(("LOCALAI_MODELS_PATH", "MODELS_PATH"), "/models", source)),
            threads=int(env(("LOCALAI_THREADS", "THREADS"), "0", source)),
            context_size=int(env(("LOCALAI_CONTEXT_SIZE", "CONTEXT_SIZE"), "0", source)),
            api_keys=tuple(split_list(env(("LOCALAI_API_KEY", "API_KEY"), "", source))),
            load_to_memory=tuple(split_list(env(("LOCALAI_LOAD_TO_MEMORY", "LOAD_TO_MEMORY"), "", source))),
            parallel=int(source.get("LLAMACPP_PARALLEL") or "0"),
        )


@dataclass(frozen=True)
class ModelConfig:
    """One model YAML, with LocalAI's defaults applied."""

    name: str
    model: str
    context_size: int
    threads: int
    parallel: int
    embeddings: bool
    sampling: dict[str, Any]
    batch: int | None
    mmap: bool
    mmlock: bool
    cache_type_k: str | None
    cache_type_v: str | None
    flash_attention: bool
    stopwords: tuple[str, ...]

    @classmethod
    def parse(cls, data: Mapping[str, Any], settings: Settings) -> ModelConfig:
        parameters = data.get("parameters") or {}
        parallel = settings.parallel or 1
        for option in data.get("options") or []:
            key, _, value = str(option).partition(":")
            if key.strip() in ("parallel", "n_parallel") and value.strip().isdigit():
                parallel = max(1, int(value))
        sampling = {
            key: parameters[key]
            for key in ("temperature", "top_p", "top_k", "min_p", "max_tokens", "seed", "repeat_penalty")
            if parameters.get(key) is not None
        }
        threads = int(data.get("threads") or settings.threads or os.cpu_count() or 4)
        return cls(
            name=str(data["name"]),
            model=str(parameters.get("model") or ""),
            context_size=int(data.get("context_size") or settings.context_size or 512),
            threads=threads,
            parallel=parallel,
            embeddings=bool(data.get("embeddings")),
            sampling=sampling,
            batch=int(parameters["batch"]) if parameters.get("batch") else None,
            mmap=data.get("mmap") is not False,
            mmlock=bool(data.get("mmlock")),
            cache_type_k=data.get("cache_type_k"),
            cache_type_v=data.get("cache_type_v"),
            flash_attention=str(data.get("flash_attention", "auto")).lower() in ("on", "true"),
            stopwords=tuple(str(s) for s in data.get("stopwords") or ()),
        )


def load_configs(settings: Settings) -> dict[str, ModelConfig]:
    configs: dict[str, ModelConfig] = {}
    for path in sorted(settings.models_path.glob("*")):
        if path.name.startswith(".") or path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and data.get("name"):
            config = ModelConfig.parse(data, settings)
            configs[config.name] = config
    return configs


def listed_models(configs: Mapping[str, ModelConfig], models_path: Path) -> list[str]:
    names = list(configs)
    referenced = {config.model for config in configs.values()}
    for path in sorted(models_path.iterdir()) if models_path.is_dir() else []:
        lower = path.name.lower()
        if path.is_dir() or lower in _SKIPPED_FILES or lower.endswith(_SKIPPED_SUFFIXES) or ".bak" in lower:
            continue
        if path.name not in referenced:
            names.append(path.name)
    return names


class Slots:
    """The llama.cpp contexts of one model; a request holds one for its whole generation."""

    def __init__(self, config: ModelConfig, models_path: Path) -> None:
        self.config = config
        self.models_path = models_path
        self._free: asyncio.Queue[Any] = asyncio.Queue()
        self._loaded = False
        self._lock = asyncio.Lock()

    async def ensure_loaded(self) -> None:
        async with self._lock:
            if self._loaded:
                return
            contexts = await asyncio.to_thread(self._load)
            for context in contexts:
                self._free.put_nowait(context)
            self._loaded = True

    def _load(self) -> list[Any]:
        from llama_cpp import Llama

        config = self.config
        path = self.models_path / config.model
        if not config.model or not path.is_file():
            raise FileNotFoundError(f"model file {path} of model {config.name!r} does not exist")
        kwargs: dict[str, Any] = {
            "model_path": str(path),
            "n_ctx": config.context_size,
            "n_threads": config.threads,
            "n_threads_batch": config.threads,
            "use_mmap": config.mmap,
            "use_mlock": config.mmlock,
            "embedding": config.embeddings,
            "flash_attn": config.flash_attention,
            "verbose": False,
        }
        if config.batch:
            kwargs.update(n_batch=config.batch, n_ubatch=config.batch)
        for key, value in (("type_k", config.cache_type_k), ("type_v", config.cache_type_v)):
            if value in _CACHE_TYPES:
                kwargs[key] = _CACHE_TYPES[str(value)]
        contexts = []
        for _ in range(config.parallel):
            llama = Llama(**kwargs)
            if str(llama.metadata.get("general.architecture", "")).startswith("gemma"):
                llama.chat_format = "gemma"
                llama.chat_handler = None
            contexts.append(llama)
        return contexts

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Any]:
        await self.ensure_loaded()
        llama = await self._free.get()
        try:
            yield llama
        finally:
            self._free.put_nowait(llama)


class RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind

    def response(self) -> web.Response:
        return web.json_response(
            {"error": {"code": self.status, "message": self.message, "type": self.kind}}, status=self.status
        )


@dataclass
class Server:
    settings: Settings
    configs: dict[str, ModelConfig]
    slots: dict[str, Slots] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.slots = {name: Slots(config, self.settings.models_path) for name, config in self.configs.items()}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/healthz", self._ok)
        app.router.add_get("/readyz", self._ok)
        for prefix in ("/v1", ""):
            app.router.add_get(f"{prefix}/models", self._models)
            app.router.add_post(f"{prefix}/chat/completions", self._chat)
            app.router.add_post(f"{prefix}/completions", self._completions)
            app.router.add_post(f"{prefix}/embeddings", self._embeddings)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not self.settings.api_keys or request.path in _PUBLIC_PATHS:
            response: web.StreamResponse = await handler(request)
            return response
        header = request.headers.get("Authorization", "")
        offered = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
        offered = offered or request.headers.get("x-api-key") or request.headers.get("xi-api-key")
        if offered in self.settings.api_keys:
            response = await handler(request)
            return response
        error = {"code": 401, "message": "An authentication key is required", "type": "invalid_request_error"}
        return web.json_response({"error": error}, status=401, headers={"WWW-Authenticate": "Bearer"})

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {"id": name, "object": "model"} for name in listed_models(self.configs, self.settings.models_path)
        ]
        return web.json_response({"object": "list", "data": data})

    async def _request(self, request: web.Request) -> tuple[dict[str, Any], Slots]:
        try:
            body = await request.json()
        except ValueError as err:
            raise RequestError(400, f"failed parsing request body: {err}", "") from err
        if not isinstance(body, dict):
            raise RequestError(400, "failed parsing request body: not a JSON object", "")
        name = str(body.get("model") or "")
        if not name:
            listed = listed_models(self.configs, self.settings.models_path)
            name = listed[0] if listed else ""
        if name not in self.slots:
            raise RequestError(
                404,
                f"model {json.dumps(name)} not found. To see available models, call GET /v1/models",
                "invalid_request_error",
            )
        return body, self.slots[name]

    def _sampling(self, body: Mapping[str, Any], config: ModelConfig) -> dict[str, Any]:
        merged: dict[str, Any] = {"temperature": 0.9, "top_p": 0.95, "top_k": 40, "min_p": 0.0}
        merged.update(config.sampling)
        for key in (
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "max_tokens",
            "seed",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
        ):
            if body.get(key) is not None:
                merged[key] = body[key]
        if "seed" not in merged:
            merged["seed"] = random.randint(0, 2**31 - 1)
        stop = body.get("stop") or []
        merged["stop"] = [*config.stopwords, *([stop] if isinstance(stop, str) else stop)]
        return merged

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body, slots = await self._request(request)
        except RequestError as err:
            return err.response()
        model = str(body.get("model") or slots.config.name)
        messages = [
            {"role": m.get("role", "user"), "content": _text(m.get("content"))}
            for m in body.get("messages") or []
        ]
        sampling = self._sampling(body, slots.config)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream_chat(request, slots, model, messages, sampling, include_usage)
        try:
            async with slots.slot() as llama:
                result = await asyncio.to_thread(llama.create_chat_completion, messages=messages, **sampling)
        except Exception as err:
            return _internal(err)
        choice = result["choices"][0]
        content = choice["message"].get("content") or ""
        return web.json_response(
            {
                "created": int(time.time()),
                "object": "chat.completion",
                "id": str(uuid.uuid4()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": choice.get("finish_reason") or "stop",
                        "message": {"role": "assistant", "content": content},
                    }
                ],
                "usage": _usage(result.get("usage")),
            }
        )

    async def _stream_chat(
        self,
        request: web.Request,
        slots: Slots,
        model: str,
        messages: list[dict[str, Any]],
        sampling: dict[str, Any],
        include_usage: bool,
    ) -> web.StreamResponse:
        ident, created = str(uuid.uuid4()), int(time.time())
        response = _event_stream(ident)
        finish = "stop"
        tokens = prompt_tokens = 0

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            return {
                "created": created,
                "object": "chat.completion.chunk",
                "id": ident,
                "model": model,
                "choices": [{"index": 0, "finish_reason": finish_reason, "delta": delta}],
            }

        try:
            async with slots.slot() as llama:
                prompt_tokens = await asyncio.to_thread(_count_tokens, llama, messages)
                generation = lambda: llama.create_chat_completion(messages=messages, stream=True, **sampling)  # noqa: E731
                async for piece in _in_thread(generation):
                    choice = piece["choices"][0]
                    finish = choice.get("finish_reason") or finish
                    text = (choice.get("delta") or {}).get("content")
                    if not text:
                        continue
                    if not response.prepared:
                        await response.prepare(request)
                        await _send(response, chunk({"role": "assistant", "content": None}, None))
                    tokens += 1
                    await _send(response, chunk({"content": text}, None))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as err:
            if not response.prepared:
                await response.prepare(request)
            error = {"code": "server_error", "message": str(err), "type": "server_error"}
            await _send(response, {"error": error})
            await response.write(b"data: [DONE]\n\n")
            return response
        if not response.prepared:
            await response.prepare(request)
            await _send(response, chunk({"role": "assistant", "content": None}, None))
        await _send(response, chunk({"content": None}, finish))
        if include_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
            }
            await _send(
                response,
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                },
            )
        await response.write(b"data: [DONE]\n\n")
        return response

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body, slots = await self._request(request)
        except RequestError as err:
            return err.response()
        model = str(body.get("model") or slots.config.name)
        prompt = body.get("prompt") or ""
        prompt = "".join(prompt) if isinstance(prompt, list) else str(prompt)
        sampling = self._sampling(body, slots.config)
        ident, created = str(uuid.uuid4()), int(time.time())
        if not body.get("stream"):
            try:
                async with slots.slot() as llama:
                    result = await asyncio.to_thread(llama.create_completion, prompt=prompt, **sampling)
            except Exception as err:
                return _internal(err)
            choice = result["choices"][0]
            return web.json_response(
                {
                    "created": created,
                    "object": "text_completion",
                    "id": ident,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": choice.get("finish_reason") or "stop",
                            "text": choice.get("text", ""),
                        }
                    ],
                    "usage": _usage(result.get("usage")),
                }
            )
        response = _event_stream(ident)
        await response.prepare(request)
        try:
            async with slots.slot() as llama:
                generation = lambda: llama.create_completion(prompt=prompt, stream=True, **sampling)  # noqa: E731
                async for piece in _in_thread(generation):
                    text = piece["choices"][0].get("text")
                    if text:
                        await _send(
                            response,
                            {
                                "created": int(time.time()),
                                "object": "text_completion",
                                "id": ident,
                                "model": model,
                                "choices": [{"index": 0, "finish_reason": None, "text": text}],
                            },
                        )
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as err:
            await _send(
                response,
                {
                    "created": created,
                    "object": "text_completion",
                    "id": ident,
                    "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop", "text": f"Internal error: {err}"}],
                },
            )
            return response
        await _send(
            response,
            {
                "created": created,
                "object": "text_completion",
                "id": ident,
                "model": model,
                "choices": [{"index": 0, "finish_reason": "stop"}],
            },
        )
        await response.write(b"data: [DONE]\n\n")
        return response

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        try:
            body, slots = await self._request(request)
        except RequestError as err:
            return err.response()
        if not slots.config.embeddings:
            return _internal(
                RuntimeError(f"model {slots.config.name!r} has no `embeddings: true` in its config")
            )
        texts = body.get("input") or ""
        texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
        try:
            async with slots.slot() as llama:
                vectors = [await asyncio.to_thread(llama.embed, text) for text in texts]
        except Exception as err:
            return _internal(err)
        data = [
            {"embedding": v[0] if v and isinstance(v[0], list) else v, "index": i, "object": "embedding"}
            for i, v in enumerate(vectors)
        ]
        return web.json_response(
            {
                "created": int(time.time()),
                "object": "list",
                "id": str(uuid.uuid4()),
                "model": str(body.get("model") or slots.config.name),
                "data": data,
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }
        )


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _count_tokens(llama: Any, messages: list[dict[str, Any]]) -> int:
    text = "\n".join(m["content"] for m in messages)
    return len(llama.tokenize(text.encode(), add_bos=True, special=False))


def _usage(usage: Mapping[str, int] | None) -> dict[str, int]:
    usage = usage or {}
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _internal(err: Exception) -> web.Response:
    return web.json_response({"error": {"code": 500, "message": str(err), "type": ""}}, status=500)


def _event_stream(ident: str) -> web.StreamResponse:
    return web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "Connection": "keep-alive",
            "X-Correlation-ID": ident,
        }
    )


async def _send(response: web.StreamResponse, payload: Mapping[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


async def _in_thread(make: Any) -> AsyncIterator[Any]:
    """Runs a blocking generator in a thread; stops it between tokens when the caller goes away."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def produce() -> None:
        try:
            iterator: Iterator[Any] = make()
            for item in iterator:
                if stop.is_set():
                    break
                loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
            loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
        except Exception as err:
            loop.call_soon_threadsafe(queue.put_nowait, ("error", err))

    worker = loop.run_in_executor(None, produce)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        await asyncio.shield(worker)


async def serve(settings: Settings) -> None:
    configs = load_configs(settings)
    server = Server(settings, configs)
    for name in settings.load_to_memory:
        if name not in server.slots:
            raise SystemExit(
                f"LocalAI failed to start: preloading model {name!r}: no config named {name!r} "
                f"in {settings.models_path}"
            )
        started = time.monotonic()
        try:
            await server.slots[name].ensure_loaded()
        except Exception as err:
            raise SystemExit(f"LocalAI failed to start: preloading model {name!r}: {err}") from err
        print(f"preloaded {name} in {time.monotonic() - started:.1f} s", flush=True)
    runner = web.AppRunner(server.app(), access_log=None, handler_cancellation=True, shutdown_timeout=2)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port, reuse_address=True).start()
    print(
        f"LocalAI stand-in serving {', '.join(configs) or 'no models'} on {settings.host}:{settings.port}",
        flush=True,
    )
    await _until_signalled()
    await runner.cleanup()


async def mirror(directory: Path, host: str, port: int) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        path = (directory / request.match_info["name"]).resolve()
        if path.parent != directory.resolve() or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)  # Range, HEAD and Content-Length, as fetch-models' resume needs

    app = web.Application()
    app.router.add_get("/healthz", _ok_response)
    app.router.add_get("/{name}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    print(f"mirror serving {sorted(p.name for p in directory.iterdir())} on {host}:{port}", flush=True)
    await _until_signalled()
    await runner.cleanup()


async def _ok_response(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="LocalAI's HTTP surface over llama.cpp (the default)")
    mirror_parser = sub.add_parser("mirror", help="serve the files of a directory over HTTP")
    mirror_parser.add_argument("--dir", type=Path, default=MIRROR_DIR)
    mirror_parser.add_argument("--host", default="0.0.0.0")
    mirror_parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    if args.command == "mirror":
        asyncio.run(mirror(args.dir, args.host, args.port))
    else:
        asyncio.run(serve(Settings.from_env()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
