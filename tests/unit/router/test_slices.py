"""The router follows a pool's ready pods through the EndpointSlice watch, against a real aiohttp stand-in of the
Kubernetes API on loopback: a pod that turns Ready takes requests within a second, one that turns unready takes
no new one, and the requests in flight on it that have sent the client nothing go on elsewhere (one that has,
finishes there); a 410 relists, and without the watch the router follows DNS."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from localai_operator.router.policy import FallbackReason
from localai_operator.router.relay import UNAVAILABLE_SETTLE_SECONDS
from localai_operator.router.slices import ApiAccess
from localai_operator.testing.standins import OpenAIStandIn, local_standin
from tests.unit.router.conftest import RunningRouter, StartRouter, chat_body, eventually, post, route_config
from tests.unit.router.test_pods import Names

TOKEN = "router-sa-token"
SERVICE, NAMESPACE = "gpu-pool-pods", "team-a"
PODS = ("127.0.0.21", "127.0.0.22")


class FakeApiServer:
    """The EndpointSlice list and watch of one namespace, as the API server serves them."""

    def __init__(self) -> None:
        self.slices: dict[str, dict[str, Any]] = {}
        self.version = 100
        self.watchers: list[asyncio.Queue[dict[str, Any] | None]] = []
        self.refuse: int | None = None
        self.tokens: list[str | None] = []
        self.lists = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def access(self) -> ApiAccess:
        return ApiAccess(f"http://127.0.0.1:{self.port}", token=TOKEN)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices", self._serve)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for queue in self.watchers:
            queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    def put(self, name: str, ready: dict[str, bool], port: int) -> None:
        """Create or change a slice: `ready` maps each pod address to its ready condition."""
        self.version += 1
        kind = "MODIFIED" if name in self.slices else "ADDED"
        self.slices[name] = {
            "metadata": {
                "name": name,
                "resourceVersion": str(self.version),
                "labels": {"kubernetes.io/service-name": SERVICE},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [a], "conditions": {"ready": r}} for a, r in ready.items()],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        }
        self._send({"type": kind, "object": self.slices[name]})

    def send_gone(self) -> None:
        self._send({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}})

    def _send(self, event: dict[str, Any]) -> None:
        for queue in self.watchers:
            queue.put_nowait(event)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.tokens.append(request.headers.get("Authorization"))
        assert request.query["labelSelector"] == f"kubernetes.io/service-name={SERVICE}"
        if self.refuse is not None:
            return web.json_response({"kind": "Status", "code": self.refuse}, status=self.refuse)
        if request.query.get("watch") != "1":
            self.lists += 1
            return web.json_response(
                {"items": list(self.slices.values()), "metadata": {"resourceVersion": str(self.version)}}
            )
        assert request.query["allowWatchBookmarks"] == "true" and request.query["resourceVersion"]
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.watchers.append(queue)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            while (event := await queue.get()) is not None:
                await response.write(json.dumps(event).encode() + b"\n")
        finally:
            self.watchers.remove(queue)
        return response


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def pods() -> AsyncIterator[list[OpenAIStandIn]]:
    started = []
    port = 0
    for address in PODS:
        standin = local_standin()
        standin.name = address
        await standin.start(address, port)
        port = standin.port  # every pod on the same port, as a pool's pods are
        started.append(standin)
    yield started
    for standin in started:
        await standin.stop()


def watched_route(port: int, cloud: str | None = None) -> dict[str, Any]:
    """The pool's route: sensitive, or with `cloud` as its fallback."""
    local = {
        "discovery": {
            "url": f"http://{SERVICE}.{NAMESPACE}.svc:{port}/v1",
            "intervalSeconds": 600,
            "endpointSlices": {"service": SERVICE, "namespace": NAMESPACE},
        },
        "pool": "gpu-pool",
    }
    # Requests spread by in-flight count (no prefix affinity), so that each pod is asked in turn.
    return route_config([], cloud, local_extra=local, sensitive=cloud is None, affinity={"enabled": False})


def endpoints(router: RunningRouter) -> list[str]:
    return [e.base_url for e in router.router.route.endpoints]


async def test_a_pod_that_turns_ready_takes_requests_within_a_second_and_one_that_turns_unready_none(
    api: FakeApiServer, pods: list[OpenAIStandIn], start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    port = pods[0].port
    api.put("gpu-pool-pods-abc", {PODS[0]: True, PODS[1]: False}, port)
    router = await start_router(watched_route(port), api=api.access, resolver=Names())
    assert endpoints(router) == [f"http://{PODS[0]}:{port}/v1"]
    assert api.tokens[0] == f"Bearer {TOKEN}"

    api.put("gpu-pool-pods-abc", {PODS[0]: True, PODS[1]: True}, port)
    became_ready = time.monotonic()
    await eventually(lambda: len(endpoints(router)) == 2, 1.0, "the second pod within a second of Ready")
    assert time.monotonic() - became_ready < 1.0
    answers = [await post(client, router) for _ in range(4)]
    assert {a.status for a in answers} == {200} and pods[1].counters.completed >= 1

    # A slow request on the first pod is in flight when that pod turns unready: it finishes, new ones avoid it.
    pods[0].set(delay_before_first_chunk=0.5)
    in_flight = asyncio.create_task(post(client, router))
    await eventually(lambda: pods[0].counters.active == 1, 5, "a request in flight on the first pod")
    api.put("gpu-pool-pods-abc", {PODS[0]: False, PODS[1]: True}, port)
    turned = time.monotonic()
    await eventually(lambda: len(endpoints(router)) == 1, 1.0, "the unready pod gone within a second")
    assert time.monotonic() - turned < 1.0
    before = pods[0].counters.started
    assert [(await post(client, router)).status for _ in range(4)] == [200] * 4
    assert pods[0].counters.started == before, "no new request for the unready pod"
    assert (await in_flight).status == 200


async def test_a_watch_whose_version_is_gone_lists_again(
    api: FakeApiServer, pods: list[OpenAIStandIn], start_router: StartRouter
) -> None:
    port = pods[0].port
    api.put("s", {PODS[0]: True}, port)
    router = await start_router(watched_route(port), api=api.access, resolver=Names())
    await eventually(lambda: api.watchers, 5, "the watch to open")
    api.slices["s"]["endpoints"].append({"addresses": [PODS[1]], "conditions": {"ready": True}})
    api.send_gone()  # the change above is only in the next list
    await eventually(lambda: len(endpoints(router)) == 2, 5, "the relist after 410")
    assert api.lists == 2


async def test_without_the_watch_the_router_follows_dns_and_says_why(
    api: FakeApiServer,
    pods: list[OpenAIStandIn],
    start_router: StartRouter,
    client: aiohttp.ClientSession,
) -> None:
    api.refuse = 403  # the Role is missing
    port = pods[0].port
    router = await start_router(watched_route(port), api=api.access, resolver=Names(PODS[1]))
    await eventually(lambda: endpoints(router) == [f"http://{PODS[1]}:{port}/v1"], 5, "the pods by DNS")
    async with client.get(f"{router.url}/readyz") as response:
        problems = (await response.json())["problems"]
    assert any("EndpointSlices" in p and "403" in p for p in problems), problems
    assert (await post(client, router)).status == 200


def slow_on(standin: OpenAIStandIn) -> None:
    """The pod is busy with a long answer: nothing comes for a minute."""
    standin.set(delay_before_first_chunk=60)


async def test_a_request_in_flight_on_a_pod_that_leaves_goes_to_another_before_anything_reached_the_client(
    api: FakeApiServer, pods: list[OpenAIStandIn], start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    port = pods[0].port
    api.put("s", {PODS[0]: True, PODS[1]: False}, port)
    router = await start_router(watched_route(port), api=api.access, resolver=Names())
    slow_on(pods[0])
    in_flight = asyncio.create_task(post(client, router))
    await eventually(lambda: pods[0].counters.active == 1, 5, "the request on the first pod")

    # The first pod stops (a rollout, a scale-down): LocalAI would end what it answers in an error ~15 s later.
    api.put("s", {PODS[0]: False, PODS[1]: True}, port)
    answer = await asyncio.wait_for(in_flight, 10)

    assert (answer.status, answer.served_by) == (200, "local")
    assert PODS[1] in answer.json()["choices"][0]["message"]["content"]
    await eventually(lambda: pods[0].counters.cancelled == 1, 5, "the first pod's request to be dropped")


async def test_a_sensitive_request_whose_only_pod_leaves_waits_for_the_next_pod_instead_of_failing(
    api: FakeApiServer, pods: list[OpenAIStandIn], start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    port = pods[0].port
    api.put("s", {PODS[0]: True}, port)
    router = await start_router(watched_route(port), api=api.access, resolver=Names())
    slow_on(pods[0])
    in_flight = asyncio.create_task(post(client, router))
    await eventually(lambda: pods[0].counters.active == 1, 5, "the request on the pod")

    api.put("s", {PODS[0]: False}, port)  # maxSurge 0: the old pod goes before the new one is Ready
    await eventually(
        lambda: router.router.relay.waiting[FallbackReason.POOL_COLD] == 1, 5, "the request to wait"
    )
    api.put("s", {PODS[0]: False, PODS[1]: True}, port)
    answer = await asyncio.wait_for(in_flight, 10)

    assert (answer.status, answer.served_by) == (200, "local")
    assert PODS[1] in answer.json()["choices"][0]["message"]["content"]


async def test_a_stream_that_reached_the_client_finishes_on_the_pod_that_leaves(
    api: FakeApiServer, pods: list[OpenAIStandIn], start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    port = pods[0].port
    api.put("s", {PODS[0]: True, PODS[1]: True}, port)
    router = await start_router(watched_route(port), api=api.access, resolver=Names())
    for pod in pods:
        pod.set(tokens=6, token_interval=0.1)
    async with client.post(router.v1("/chat/completions"), json=chat_body(stream=True)) as response:
        first = await response.content.readline()
        assert first.startswith(b"data: ")
        serving = next(i for i, pod in enumerate(pods) if pod.counters.active)
        api.put("s", {PODS[serving]: False, PODS[1 - serving]: True}, port)
        await eventually(lambda: len(endpoints(router)) == 1, 5, "the pod to leave")
        whole = (first + await response.read()).decode()
    assert whole.rstrip().endswith("data: [DONE]") and "error" not in whole
    assert whole.count(f"{PODS[serving]}-token-") == 6


async def test_a_sensitive_request_refused_by_a_stopping_localai_goes_to_the_next_pod_once_the_pod_leaves(
    api: FakeApiServer, pods: list[OpenAIStandIn], start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    # SIGTERM reaches LocalAI a moment before the router hears that its pod is terminating; meanwhile the pod
    # answers every request gRPC's Unavailable (a 500 here).
    port = pods[0].port
    api.put("s", {PODS[0]: True}, port)
    router = await start_router(watched_route(port), api=api.access, resolver=Names())
    pods[0].set(stopping=True)
    in_flight = asyncio.create_task(post(client, router))
    await eventually(lambda: pods[0].counters.completed == 1, 5, "the stopping pod's answer")
    api.put("s", {PODS[0]: False, PODS[1]: True}, port)
    answer = await asyncio.wait_for(in_flight, 10)

    assert (answer.status, answer.served_by) == (200, "local")
    assert PODS[1] in answer.json()["choices"][0]["message"]["content"]


async def test_localais_unavailable_stands_when_its_pod_stays_ready(
    api: FakeApiServer, pods: list[OpenAIStandIn], start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    port = pods[0].port
    api.put("s", {PODS[0]: True}, port)
    router = await start_router(watched_route(port), api=api.access, resolver=Names())
    pods[0].set(stopping=True)

    answer = await post(client, router)

    assert answer.status == 500 and "code = Unavailable" in answer.json()["error"]["message"]
    assert answer.elapsed >= UNAVAILABLE_SETTLE_SECONDS
    assert pods[0].counters.completed == 1


async def test_an_answer_being_assembled_on_a_pod_that_leaves_goes_to_the_cloud_at_once(
    api: FakeApiServer,
    pods: list[OpenAIStandIn],
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    client: aiohttp.ClientSession,
) -> None:
    # A non-stream request is streamed from the pod and assembled: its first token came in time, the rest never
    # will (the pod stops). Nothing reached the client, so the cloud answers it instead, without waiting.
    port = pods[0].port
    api.put("s", {PODS[0]: True}, port)
    router = await start_router(watched_route(port, cloud.url), api=api.access, resolver=Names())
    pods[0].set(tokens=4, token_interval=60)
    in_flight = asyncio.create_task(post(client, router))
    await eventually(lambda: pods[0].counters.active == 1, 5, "the request on the pod")
    await eventually(
        lambda: router.router.metrics.ttft.count(("local",)) == 1, 5, "the first token to reach the router"
    )

    api.put("s", {PODS[0]: False}, port)
    answer = await asyncio.wait_for(in_flight, 10)

    assert (answer.status, answer.served_by, answer.headers["X-Fallback-Reason"]) == (
        200,
        "fallback",
        "pool_cold",
    )
