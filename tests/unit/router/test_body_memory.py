"""Request bodies live only as long as their request: freed when it ends by reference counting alone, so the router
holds no more body bytes than its body budget (server.bodyBufferBytes) allows, whenever its garbage collector runs."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
import yaml

from localai_operator.api import FallbackRoute
from localai_operator.constants import FALLBACK_API_KEY_ENV
from localai_operator.render.route import DEFAULT_MEMORY_LIMIT, memory_bytes, router_config
from localai_operator.router import intake, tokens
from localai_operator.router.body import parse
from localai_operator.testing.standins import OpenAIStandIn
from tests.unit.router.conftest import API_KEY, LOCAL_MODEL, StartRouter, eventually, post, route_config
from tests.unit.router.test_entrypoint import free_port, is_ready, router_command

MIB = 1024 * 1024


def image_chat(size: int, stream: bool = False) -> bytes:
    """A chat request of `size` bytes, most of them an inline image (what a max-size body usually is)."""
    head = json.dumps(
        {
            "model": LOCAL_MODEL,
            "stream": stream,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "describe"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,"}},
                    ],
                }
            ],
        }
    )
    at = head.index("base64,") + len("base64,")
    return head[:at].encode() + b"A" * (size - len(head)) + head[at:].encode()


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The cyclic garbage collector off (as between two of its runs), tracemalloc on."""
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()
        gc.enable()


def body_bytes_alive() -> int:
    """Bytes the router's body reader allocated that are still alive."""
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, intake.__file__)])
    return sum(stat.size for stat in snapshot.statistics("filename"))


@pytest.mark.parametrize("stream", [False, True], ids=["assembled", "stream"])
@pytest.mark.parametrize("served_by", ["local", "fallback"])
async def test_a_request_body_is_freed_when_its_answer_ends_without_waiting_for_a_garbage_collection(
    start_router: StartRouter,
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    client: aiohttp.ClientSession,
    no_collector: None,
    served_by: str,
    stream: bool,
) -> None:
    # A reference cycle through a local attempt kept each body (up to maxRequestBytes) past its request until the
    # collector ran: eight 16 MiB bodies at once took the router to 1.6x its 256 Mi limit (benchmarks/router.py).
    router = await start_router(route_config(local.url, cloud.url))
    if served_by == "fallback":
        local.behaviour = replace(local.behaviour, status=500)
    body = image_chat(MIB, stream)
    for _ in range(4):
        answer = await post(client, router, data=body, headers={"Content-Type": "application/json"})
        assert (answer.status, answer.served_by) == (200, served_by)
    assert router.router.buffer.used == 0
    assert body_bytes_alive() < MIB // 4, f"{body_bytes_alive() / MIB:.1f} MiB of request bodies still alive"


def estimate(raw: bytes, decode_limit: int | None = None) -> int:
    """The estimator's prompt tokens of a body; `decode_limit` raised to decode every value whole (the reference)."""
    if decode_limit is None:
        return tokens.prompt_tokens(parse(raw))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokens, "DECODE_LIMIT", decode_limit)
        return tokens.prompt_tokens(parse(raw))


LARGE_PROMPTS = {
    "inline image": image_chat(3 * MIB),
    "long ascii text": json.dumps({"messages": [{"role": "user", "content": "word " * 300_000}]}).encode(),
    # Escapes, 2- to 4-byte characters and surrogate pairs cross every window boundary somewhere.
    "escapes and non-ascii": json.dumps(
        {"messages": [{"role": "user", "name": "n", "content": 'a\n"\\é日😀\t' * 60_000}]}, ensure_ascii=False
    ).encode(),
    "escaped non-ascii": json.dumps({"messages": [{"role": "user", "content": "é日😀x" * 50_000}]}).encode(),
    "backslashes": json.dumps({"prompt": "\\" * 200_001 + "x"}).encode(),
    "text parts": json.dumps(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "abc " * 100_000}] * 3}]}
    ).encode(),
    "prompt list": json.dumps({"prompt": ["abcd" * 20_000, [1, 2, 3], "日本" * 40_000]}).encode(),
    "input items": json.dumps(
        {"input": [{"role": "user", "content": "x" * 200_000}], "instructions": "be brief " * 20_000}
    ).encode(),
}


@pytest.mark.parametrize("raw", LARGE_PROMPTS.values(), ids=LARGE_PROMPTS.keys())
def test_a_large_prompt_is_estimated_from_its_bytes_as_if_decoded_whole(raw: bytes) -> None:
    assert estimate(raw) == estimate(raw, decode_limit=1 << 40) > 0


def test_estimating_a_max_size_prompt_allocates_no_copy_of_it(no_collector: None) -> None:
    # The estimator used to decode the whole `messages` value: a copy of its bytes and a string as large, 32 MiB
    # more for each 16 MiB request it priced or learned a prefill rate from.
    body = parse(image_chat(16 * MIB))
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    assert estimate(body.raw) == tokens.REPLY_PRIMING_TOKENS + tokens.MESSAGE_TOKENS + 2 + tokens.IMAGE_TOKENS
    assert tracemalloc.get_traced_memory()[1] - before < MIB


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def test_eight_max_size_bodies_at_once_keep_the_router_under_the_memory_limit_it_is_rendered_for(
    local: OpenAIStandIn, cloud: OpenAIStandIn, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # The router process with the config the operator renders for a route with the defaults (256 Mi limit, 96 MiB
    # body budget, 16 MiB bodies), eight max-size bodies at once: to local (first token after 0.5 s), then with
    # local failing, to the cloud. Peak RSS (VmHWM) of each phase: 272 / 382-417 MiB on main before the bodies were
    # freed with their requests and read into buffers of their size, 160 / 163-169 MiB after (benchmarks/router.py).
    route = FallbackRoute.parse(
        {
            "metadata": {"name": "chat", "namespace": "team-a"},
            "spec": {
                "primary": {"url": local.url},
                "fallback": {"baseURL": cloud.url, "apiKeySecretRef": {"name": "k", "key": "k"}},
            },
        }
    )
    config = router_config(route)
    limit = memory_bytes(DEFAULT_MEMORY_LIMIT)
    assert limit is not None and config.server.body_buffer_bytes < limit
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_none=True)))
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *router_command(path, "--host", "127.0.0.1", "--port", str(port)),
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), FALLBACK_API_KEY_ENV: API_KEY},
        stderr=asyncio.subprocess.DEVNULL,
    )
    body = image_chat(config.policy.max_request_bytes - 64)
    local.behaviour = replace(local.behaviour, delay_before_first_chunk=0.5, role_chunk="with_first_token")

    async def one() -> int:
        async with client.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=120),
        ) as response:
            await response.read()
            return response.status

    try:
        await eventually(lambda: is_ready(client, port), 30, "the router process to be ready")
        assert await one() == 200  # imports and first connections
        peaks = {}
        for phase in ("local", "cloud"):
            if phase == "cloud":
                local.behaviour = replace(local.behaviour, status=500)
            Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
            assert await asyncio.gather(*(one() for _ in range(8))) == [200] * 8
            peaks[phase] = vm_kib(process.pid, "VmHWM") * 1024
        assert local.counters.started and cloud.counters.started
        assert max(peaks.values()) < limit, {phase: f"{peak / MIB:.0f} MiB" for phase, peak in peaks.items()}
    finally:
        process.terminate()
        await process.wait()
