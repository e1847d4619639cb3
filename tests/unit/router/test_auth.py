"""Client keys (FallbackRoute.spec.auth): 401 without a valid key, the key's name (never the key) in metrics
and logs, local gets the pool's own key, keys re-read when their Secret changes."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp import web

from localai_operator.constants import FALLBACK_API_KEY_ENV, LOCAL_API_KEY_ENV
from localai_operator.router.server import create_metrics_app
from localai_operator.testing.standins import OpenAIStandIn
from tests.unit.router.conftest import (
    API_KEY,
    SDK_IDS,
    SDK_MODES,
    RunningRouter,
    StartRouter,
    eventually,
    post,
    route_config,
    scrape,
    sdk_chat,
)

ALICE = "sk-alice-5d41402abc4b2a76b9719d91"
BOB = "sk-bob-7d793037a0760186574b0282"
POOL_KEY = "sk-pool-localai-e4da3b7fbbce2345"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A mounted client-key Secret: one file per key, named after the key's owner."""
    directory = tmp_path / "client-keys" / "chat-clients"
    directory.mkdir(parents=True)
    (directory / "alice").write_text(ALICE)
    (directory / "bob").write_text(BOB + "\n")  # kubectl create secret --from-file keeps the newline
    return directory


async def auth_router(
    start_router: StartRouter, local: OpenAIStandIn, cloud: OpenAIStandIn, keys: Path, **env: str
) -> RunningRouter:
    config = route_config(local.url, cloud.url, auth=[str(keys)])
    if env:
        config["local"]["apiKeyEnv"] = LOCAL_API_KEY_ENV
    return await start_router(config, env={FALLBACK_API_KEY_ENV: API_KEY, **env})


@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
async def test_a_request_without_a_valid_key_is_refused_401_as_an_openai_error(
    kind: str, stream: bool, local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, keys: Path
) -> None:
    router = await auth_router(start_router, local, cloud, keys)
    with pytest.raises(openai.AuthenticationError) as refused:
        await sdk_chat(router, sync=kind == "sync", stream=stream, api_key="sk-not-a-key-of-this-route")
    assert refused.value.status_code == 401
    assert refused.value.response.headers["X-Served-By"] == "router"
    assert refused.value.code == "invalid_api_key"
    assert local.counters.started == 0 and cloud.counters.started == 0


@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
async def test_a_request_with_a_valid_key_is_served(
    kind: str, stream: bool, local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, keys: Path
) -> None:
    router = await auth_router(start_router, local, cloud, keys)
    reply = await sdk_chat(router, sync=kind == "sync", stream=stream, api_key=ALICE)
    assert reply.served_by == "local" and reply.text.startswith("local-token-0")


async def test_no_key_at_all_is_refused_401(
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    keys: Path,
    client: aiohttp.ClientSession,
) -> None:
    router = await auth_router(start_router, local, cloud, keys)
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (401, "router")
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in answer.json()["error"]["message"]


async def test_the_x_api_key_header_is_accepted(
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    keys: Path,
    client: aiohttp.ClientSession,
) -> None:
    router = await auth_router(start_router, local, cloud, keys)
    assert (await post(client, router, headers={"x-api-key": ALICE})).status == 200


async def test_a_key_file_ending_in_a_newline_works(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, keys: Path
) -> None:
    router = await auth_router(start_router, local, cloud, keys)
    assert (await sdk_chat(router, sync=False, stream=False, api_key=BOB)).served_by == "local"


async def test_metrics_count_requests_by_key_name_and_refusals_by_reason_never_the_key(
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    keys: Path,
    client: aiohttp.ClientSession,
) -> None:
    router = await auth_router(start_router, local, cloud, keys)
    await post(client, router, headers={"Authorization": f"Bearer {ALICE}"})
    await post(client, router, headers={"Authorization": f"Bearer {ALICE}"})
    await post(client, router, headers={"Authorization": "Bearer sk-wrong"})
    await post(client, router)
    text = await scrape(client, router, {"Authorization": f"Bearer {BOB}"})
    lines = text.splitlines()
    assert 'localai_router_client_requests_total{key="alice"} 2' in lines
    assert 'localai_router_auth_failures_total{reason="invalid"} 1' in lines
    assert 'localai_router_auth_failures_total{reason="missing"} 1' in lines
    assert 'localai_router_requests_total{upstream="router",code="401"} 2' in lines
    assert ALICE not in text and BOB not in text


async def test_the_key_names_are_in_readyz_and_logs_never_hold_a_key(
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    keys: Path,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    router = await auth_router(start_router, local, cloud, keys)
    await post(client, router, headers={"Authorization": f"Bearer {ALICE}"})
    await post(client, router, headers={"Authorization": f"Bearer {BOB}x"})
    async with client.get(f"{router.url}/readyz", headers={"Authorization": f"Bearer {ALICE}"}) as response:
        assert (await response.json())["auth"] == ["alice", "bob"]
    assert "alice" in caplog.text and "invalid client key" in caplog.text
    assert ALICE not in caplog.text and BOB not in caplog.text


async def test_with_auth_local_gets_the_pools_key_and_never_the_clients(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, keys: Path
) -> None:
    local.api_key = POOL_KEY
    router = await auth_router(start_router, local, cloud, keys, **{LOCAL_API_KEY_ENV: POOL_KEY + "\n"})
    reply = await sdk_chat(router, sync=False, stream=False, api_key=ALICE)
    assert reply.served_by == "local"
    received = local.requests[-1].headers
    assert received["Authorization"] == f"Bearer {POOL_KEY}"
    assert not any(ALICE in value for value in received.values())


async def test_with_auth_a_local_without_a_pool_key_gets_no_client_credentials(
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    keys: Path,
    client: aiohttp.ClientSession,
) -> None:
    router = await auth_router(start_router, local, cloud, keys)
    await post(client, router, headers={"x-api-key": ALICE, "Cookie": "session=1"})
    received = local.requests[-1].headers
    assert "Authorization" not in received and "x-api-key" not in received and "Cookie" not in received


async def test_a_rotated_key_is_accepted_and_the_old_one_refused_without_restart(
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    keys: Path,
    client: aiohttp.ClientSession,
) -> None:
    router = await auth_router(start_router, local, cloud, keys)
    rotated = "sk-alice-rotated-1679091c5a880faf"
    (keys / "alice").write_text(rotated)

    async def accepted() -> bool:
        return (await post(client, router, headers={"x-api-key": rotated})).status == 200

    await eventually(accepted, 15, "the rotated key to be accepted")
    assert (await post(client, router, headers={"x-api-key": ALICE})).status == 401


async def test_with_auth_only_healthz_answers_without_a_key_and_the_metrics_port_needs_none(
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    keys: Path,
    client: aiohttp.ClientSession,
) -> None:
    router = await auth_router(start_router, local, cloud, keys)
    async with client.get(router.url + "/healthz") as response:
        assert response.status == 200
    # The probe's answer, without the key names, pod addresses and spend.
    async with client.get(router.url + "/readyz") as response:
        assert (response.status, await response.json()) == (200, {"status": "ready"})
    async with client.get(router.url + "/metrics") as response:
        assert (response.status, response.headers["X-Served-By"]) == (401, "router")
        assert "metrics port" in (await response.json())["error"]["message"]
    async with client.get(router.url + "/metrics", headers={"Authorization": "Bearer sk-wrong"}) as response:
        assert response.status == 401
    async with client.get(router.url + "/metrics", headers={"x-api-key": ALICE}) as response:
        assert response.status == 200
    runner = web.AppRunner(create_metrics_app(router.router))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with client.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200 and "localai_router_requests_total" in await response.text()
        async with client.get(f"http://127.0.0.1:{port}/readyz") as response:
            assert (await response.json())["auth"] == ["alice", "bob"]
    finally:
        await runner.cleanup()
