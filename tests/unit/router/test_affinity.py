"""Prefix-aware balancing bounded by free slots: a prompt's repeats go to the pod that served it last (whose
prompt cache holds it), a session keeps its pod whatever its prompts, a busy or broken warm pod is overridden,
and no pod is given more requests than its slots while another has free ones. Stand-in pods with llama.cpp's
slots and prompt cache (testing/prefill.py); the client is the real OpenAI SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yaml

from localai_operator.router import affinity as affinities
from localai_operator.router import body as bodies
from localai_operator.router.affinity import TABLE_SIZE, Affinity, Outcome, Ring, request_key
from localai_operator.router.policy import Breaker
from localai_operator.testing.prefill import PromptCache
from localai_operator.testing.standins import OpenAIStandIn, local_standin
from localai_operator.wire import RouterConfig
from tests.unit.router.conftest import (
    LOCAL_MODEL,
    RunningRouter,
    StartRouter,
    eventually,
    route_config,
    scrape,
    sdk_chat,
)
from tests.unit.router.test_prompt_budget import text

SLOTS = 2


@pytest.fixture
async def pods() -> AsyncIterator[list[OpenAIStandIn]]:
    started = [
        local_standin(prompt_cache=PromptCache(slots=SLOTS, tokens_per_second=20_000)) for _ in range(2)
    ]
    for pod in started:
        await pod.start()
    yield started
    for pod in started:
        await pod.stop()


def pool(pods: list[OpenAIStandIn], cloud: str | None = None, **policy: Any) -> dict[str, Any]:
    return route_config([p.url for p in pods], cloud, local_extra={"slots": {LOCAL_MODEL: SLOTS}}, **policy)


def conversation(system: str, *turns: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}]
    for index, turn in enumerate(turns):
        messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": turn})
    return messages


def pods_that_saw(pods: list[OpenAIStandIn], marker: str) -> set[int]:
    return {i for i, pod in enumerate(pods) for r in pod.requests if marker in r.body.decode()}


async def affinity_counts(client: aiohttp.ClientSession, router: RunningRouter) -> dict[str, int]:
    counts = {}
    for line in (await scrape(client, router)).splitlines():
        if line.startswith("localai_router_affinity_requests_total{"):
            counts[line.split('"')[1]] = int(float(line.split()[-1]))
    return counts


SYSTEMS = [f"system prompt {i}: " + text(400, i) for i in range(3)]


async def three_prompts_four_rounds(router: RunningRouter) -> None:
    for round_ in range(4):
        for system in SYSTEMS:
            reply = await sdk_chat(
                router, sync=False, stream=round_ % 2 == 0, messages=conversation(system, "hi")
            )
            assert reply.served_by == "local"


async def test_the_repeats_of_a_prompt_go_to_the_pod_that_served_it(
    pods: list[OpenAIStandIn], start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(pool(pods))
    await three_prompts_four_rounds(router)
    for index in range(len(SYSTEMS)):
        assert len(pods_that_saw(pods, f"system prompt {index}:")) == 1
    assert await affinity_counts(client, router) == {"hit": 9, "override": 0, "moved": 0, "new": 3}


async def test_four_prompts_on_two_pods_with_two_slots_are_homed_two_and_two(
    pods: list[OpenAIStandIn], start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    # llama.cpp keeps a pod's prompts resident only while it has no more live prompts than slots: whatever the
    # ring positions of this run's ports, each pod is home to exactly two of the four, and stays so.
    systems = [f"live prompt {i}: " + text(400, 10 + i) for i in range(4)]
    router = await start_router(pool(pods))
    for _ in range(3):
        for system in systems:
            reply = await sdk_chat(router, sync=False, stream=False, messages=conversation(system, "hi"))
            assert reply.served_by == "local"
    homes = [pods_that_saw(pods, f"live prompt {i}:") for i in range(4)]
    assert all(len(home) == 1 for home in homes), homes
    assert sorted(next(iter(home)) for home in homes) == [0, 0, 1, 1]
    assert await affinity_counts(client, router) == {"hit": 8, "override": 0, "moved": 0, "new": 4}


async def test_without_affinity_the_same_prompt_lands_on_both_pods(
    pods: list[OpenAIStandIn], start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(pool(pods, affinity={"enabled": False}))
    await three_prompts_four_rounds(router)
    assert pods_that_saw(pods, "system prompt 0:") == {0, 1}
    assert await affinity_counts(client, router) == {"hit": 0, "override": 0, "moved": 0, "new": 0}


async def test_a_conversation_keeps_its_pod_as_it_grows(
    pods: list[OpenAIStandIn], start_router: StartRouter
) -> None:
    router = await start_router(pool(pods))
    system = "grow: " + text(300, 9)
    turns = ["first question"]
    for number in range(4):
        await sdk_chat(router, sync=False, stream=True, messages=conversation(system, *turns))
        turns += [f"answer {number}", f"question {number}"]
    assert len(pods_that_saw(pods, "grow:")) == 1
    assert all(p.prompt_cache is not None for p in pods)
    warm = next(p for p in pods if any("grow:" in r.body.decode() for r in p.requests))
    assert warm.prompt_cache is not None and warm.prompt_cache.last[2] < 10, (
        "the last turn read only its news"
    )


async def test_a_session_header_or_user_field_keeps_the_pod_whatever_the_prompt(
    pods: list[OpenAIStandIn], start_router: StartRouter
) -> None:
    router = await start_router(pool(pods))
    for seed in range(6):
        await sdk_chat(
            router,
            sync=False,
            stream=False,
            messages=conversation(f"header {seed}: " + text(50, seed), "hi"),
            extra_headers={"X-Session-Id": "session-a"},
        )
        await sdk_chat(
            router,
            sync=True,
            stream=True,
            messages=conversation(f"user {seed}: " + text(50, seed), "hi"),
            user="bob",
        )
    assert len({i for seed in range(6) for i in pods_that_saw(pods, f"header {seed}:")}) == 1
    assert len({i for seed in range(6) for i in pods_that_saw(pods, f"user {seed}:")}) == 1


async def test_a_warm_pod_with_its_slots_busy_is_overridden_and_no_pod_takes_more_than_its_slots(
    pods: list[OpenAIStandIn], start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(pool(pods))
    messages = conversation("busy: " + text(200, 3), "hi")
    await sdk_chat(router, sync=False, stream=True, messages=messages)
    for pod in pods:
        pod.set(delay_before_first_chunk=0.5)
    # Five at once: the warm pod takes two, the other the next two although it never saw the prompt, and the
    # fifth waits for a slot (no fallback) rather than going over one.
    replies = [
        asyncio.ensure_future(sdk_chat(router, sync=False, stream=True, messages=messages)) for _ in range(5)
    ]
    caches = [p.prompt_cache for p in pods]
    assert caches[0] is not None and caches[1] is not None
    await eventually(lambda: caches[0].busy == SLOTS and caches[1].busy == SLOTS, 5, "both pods' slots busy")
    assert all(r.served_by == "local" for r in await asyncio.gather(*replies))
    assert (caches[0].peak, caches[1].peak) == (SLOTS, SLOTS)
    counts = await affinity_counts(client, router)
    # The prompt stays home: a request beyond its slots is an override, never a move (the fifth one, woken by
    # whichever pod freed a slot first, is either).
    assert (counts["new"], counts["moved"], counts["hit"] + counts["override"]) == (1, 0, 5)
    assert counts["hit"] >= 2 and counts["override"] >= 2


async def test_an_open_breaker_on_the_warm_pod_sends_the_prompt_to_the_other_pod(
    pods: list[OpenAIStandIn], cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(
        pool(pods, cloud.url, circuitBreaker={"failureThreshold": 1, "openSeconds": 60})
    )
    messages = conversation("breaker: " + text(200, 4), "hi")
    await sdk_chat(router, sync=False, stream=True, messages=messages)
    (warm,) = pods_that_saw(pods, "breaker:")
    pods[warm].set(status=500)
    failed = await sdk_chat(router, sync=False, stream=True, messages=messages)
    assert (failed.served_by, failed.fallback_reason) == ("fallback", "status_5xx")
    moved = await sdk_chat(router, sync=False, stream=True, messages=messages)
    assert (moved.served_by, moved.fallback_reason) == ("local", None)
    assert pods_that_saw(pods, "breaker:") == {0, 1}
    assert (await affinity_counts(client, router))["moved"] == 1


async def test_a_warm_pod_that_refuses_connections_hands_its_prompts_to_the_other_pod(
    pods: list[OpenAIStandIn], cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(pool(pods, cloud.url))
    messages = conversation("gone: " + text(200, 5), "hi")
    await sdk_chat(router, sync=False, stream=True, messages=messages)
    (warm,) = pods_that_saw(pods, "gone:")
    await pods[warm].stop()
    for _ in range(3):
        assert (await sdk_chat(router, sync=False, stream=True, messages=messages)).served_by == "local"
    lines = (await scrape(client, router)).splitlines()
    assert "localai_router_local_retries_total 1" in lines, "only the first found the pod gone"
    # Counted per attempt: the first one after the stop went to the warm pod, then to the other.
    assert await affinity_counts(client, router) == {"hit": 3, "override": 0, "moved": 1, "new": 1}


async def remembered_keys(client: aiohttp.ClientSession, router: RunningRouter) -> int:
    async with client.get(f"{router.url}/readyz") as response:
        keys = (await response.json())["affinity"]["keys"]
    assert isinstance(keys, int)
    return keys


async def test_a_pod_that_leaves_the_ready_set_takes_its_prompts_with_it(
    pods: list[OpenAIStandIn], start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(pool(pods))
    messages = conversation("leaves: " + text(200, 6), "hi")
    await sdk_chat(router, sync=False, stream=True, messages=messages)
    await sdk_chat(router, sync=False, stream=True, messages=conversation("stays: " + text(200, 7), "hi"))
    (warm,) = pods_that_saw(pods, "leaves:")
    (other_home,) = pods_that_saw(pods, "stays:")  # the ring's choice: either pod
    remaining = 1 - warm
    # The warm pod leaves the ready set (the same snapshot swap as an EndpointSlice or config change): its keys are
    # forgotten, the remaining pod's kept.
    router.router.apply(RouterConfig.from_yaml(yaml.safe_dump(pool([pods[remaining]])).encode()))
    assert await remembered_keys(client, router) == (1 if other_home == remaining else 0)
    assert (await sdk_chat(router, sync=False, stream=True, messages=messages)).served_by == "local"
    assert pods_that_saw(pods, "leaves:") == {0, 1}
    # It comes back under the same address (a restarted pod would, with an empty cache): it is home to nothing,
    # so its old prompt is placed anew rather than called warm.
    router.router.apply(RouterConfig.from_yaml(yaml.safe_dump(pool(pods)).encode()))
    await sdk_chat(router, sync=False, stream=True, messages=messages)
    assert await affinity_counts(client, router) == {"hit": 0, "override": 0, "moved": 0, "new": 3}


async def test_endless_distinct_prompts_are_remembered_up_to_the_table_size(
    pods: list[OpenAIStandIn],
    start_router: StartRouter,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(affinities, "TABLE_SIZE", 4)
    router = await start_router(pool(pods))
    for seed in range(12):
        messages = conversation(f"hostile {seed}: " + text(20, seed), "hi")
        assert (await sdk_chat(router, sync=False, stream=False, messages=messages)).served_by == "local"
        assert await remembered_keys(client, router) == min(seed + 1, 4)
    # The newest are remembered: a repeat of the last prompt is a hit, one of the first a new key again.
    await sdk_chat(
        router, sync=False, stream=False, messages=conversation("hostile 11: " + text(20, 11), "hi")
    )
    await sdk_chat(router, sync=False, stream=False, messages=conversation("hostile 0: " + text(20, 0), "hi"))
    assert await affinity_counts(client, router) == {"hit": 1, "override": 0, "moved": 0, "new": 13}


def key_of(messages: list[dict[str, str]], limit: int = 4096, model: str = "m", **extra: Any) -> int | None:
    return request_key(
        bodies.parse(json.dumps({"model": model, "messages": messages, **extra}).encode()), None, limit
    )


def test_a_conversations_key_is_its_system_prompt_and_first_user_turn() -> None:
    first = key_of(conversation("be brief", "what is a slot?"))
    assert key_of(conversation("be brief", "what is a slot?", "a place", "and a cache?")) == first
    assert key_of(conversation("be brief", "what is a KV cache?")) != first
    assert key_of(conversation("be verbose", "what is a slot?")) != first
    assert key_of(conversation("be brief", "what is a slot?"), model="other") != first


def test_only_the_first_prefix_bytes_key_a_request() -> None:
    system = text(2000, 5)
    assert key_of(conversation(system, "one"), limit=1024) == key_of(conversation(system, "two"), limit=1024)
    assert key_of(conversation(system + "x", "one"), limit=1024) == key_of(
        conversation(system, "one"), limit=1024
    )


def test_a_named_session_is_the_key_in_order_of_precedence() -> None:
    raw = json.dumps(
        {"model": "m", "messages": conversation("s", "q"), "user": "bob", "prompt_cache_key": "pc"}
    )
    parsed = bodies.parse(raw.encode())
    by_cache_key = request_key(parsed, None, 4096)
    assert by_cache_key == key_of(conversation("other", "q2"), prompt_cache_key="pc")
    assert request_key(parsed, "from-header", 4096) == request_key(
        bodies.parse(b'{"model":"m"}'), "from-header", 4096
    )
    assert key_of(conversation("s", "q"), user="") == key_of(conversation("s", "q")), (
        "an empty user names nobody"
    )


def test_completions_and_responses_prompts_are_keyed_too() -> None:
    def key(body: dict[str, Any]) -> int | None:
        return request_key(bodies.parse(json.dumps({"model": "m", **body}).encode()), None, 4096)

    assert key({"prompt": "once upon"}) == key({"prompt": "once upon"}) != key({"prompt": "twice upon"})
    assert key({"instructions": "be brief", "input": "hi"}) != key({"instructions": "be long", "input": "hi"})
    assert key({"stream": True}) is None


def test_the_table_forgets_the_oldest_keys_beyond_its_size() -> None:
    table = Affinity()
    for key in range(TABLE_SIZE + 100):
        table.served(key, "http://pod-a/v1", Outcome.NEW)
    assert len(table) == TABLE_SIZE


def test_keys_whose_home_left_are_forgotten_and_the_others_kept() -> None:
    table = Affinity()
    a, b = "http://10.0.0.1:8080/v1", "http://10.0.0.2:8080/v1"
    table.keep((a, b))
    for key in range(10):
        table.served(key, a if key % 2 else b, Outcome.NEW)
    table.keep((a, b))
    assert len(table) == 10
    table.keep((b,))
    assert len(table) == 5
    table.keep((a, b))
    assert len(table) == 5


class Pod:
    """What the choice reads of an endpoint: its in-flight count and its breaker."""

    def __init__(self) -> None:
        self.outstanding = 0
        self.breaker = Breaker(5, 30)


@pytest.mark.parametrize("first_key", [0, 1000, 7_777_777])
def test_four_new_prompts_on_two_pods_with_two_slots_are_spread_two_and_two(first_key: int) -> None:
    # Whatever their ring positions: a pod home to as many recent keys as it has slots takes no new one while
    # another has fewer, so every prompt stays resident.
    table = Affinity()
    pods = [Pod(), Pod()]
    urls = ("http://10.0.0.1:8080/v1", "http://10.0.0.2:8080/v1")
    homes = []
    for key in range(first_key, first_key + 4):
        index, outcome = table.choose(key, pods, urls, 0.0, None, lambda pod: True, slots=2)
        assert index is not None and outcome is Outcome.NEW
        table.served(key, urls[index], outcome)
        homes.append(index)
    assert sorted(homes) == [0, 0, 1, 1]


def test_removing_a_pod_from_the_ring_moves_only_its_own_keys() -> None:
    urls = ("http://10.0.0.1:8080/v1", "http://10.0.0.2:8080/v1", "http://10.0.0.3:8080/v1")
    before = Ring(urls)
    after = Ring(urls[:2])
    keys = range(0, 1 << 32, (1 << 32) // 2000)
    homes = [next(iter(before.walk(k))) for k in keys]
    moved = [
        k for k, home in zip(keys, homes, strict=True) if home != 2 and next(iter(after.walk(k))) != home
    ]
    assert not moved
    assert 0.25 < homes.count(2) / len(homes) < 0.42, "each pod owns about a third of the ring"
