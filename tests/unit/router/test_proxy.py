"""Egress through a proxy: the cloud hop goes through an HTTP CONNECT tunnel (TLS inside, to the provider, checked
against its certificate) with basic auth, HTTPS_PROXY / NO_PROXY are honoured as curl honours them, local never
goes through it, and a proxy that refuses shows in /readyz."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest

from localai_operator.router.proxy import bypassed, parse_proxy, proxy_for
from localai_operator.testing.standins import ConnectProxy, OpenAIStandIn, cloud_standin, refused_url
from tests.unit.router.conftest import API_KEY, StartRouter, route_config, sdk_chat, tls_contexts

FALLBACK_KEY_ENV = "LOCALAI_OPERATOR_FALLBACK_API_KEY"
USER, PASSWORD = "egress-user", "s3cret-proxy-pass"


@pytest.fixture
async def tls_cloud(tmp_path: Path) -> AsyncIterator[tuple[OpenAIStandIn, object]]:
    """A cloud stand-in on https://localhost with a certificate from a test CA, and a client context trusting it."""
    server, trusting = tls_contexts(tmp_path)
    standin = cloud_standin(api_key=API_KEY)
    await standin.start(ssl_context=server)
    yield standin, trusting
    await standin.stop()


@pytest.fixture
async def proxy(tls_cloud: tuple[OpenAIStandIn, object]) -> AsyncIterator[ConnectProxy]:
    cloud, _ = tls_cloud
    stand_in = ConnectProxy(("127.0.0.1", cloud.port), credentials=(USER, PASSWORD))
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


def proxied_route(cloud: OpenAIStandIn, proxy_url: str | None = None) -> dict[str, object]:
    config = route_config(refused_url(), cloud.url)
    fallback = config["fallback"]
    assert isinstance(fallback, dict)
    if proxy_url is not None:
        fallback.update(proxyURL=proxy_url, proxyUsernameEnv="PROXY_USER", proxyPasswordEnv="PROXY_PASSWORD")
    return config


async def test_a_fallback_goes_through_a_connect_proxy_with_basic_auth_and_tls_inside(
    tls_cloud: tuple[OpenAIStandIn, object], proxy: ConnectProxy, start_router: StartRouter
) -> None:
    cloud, trusting = tls_cloud
    env = {FALLBACK_KEY_ENV: API_KEY, "PROXY_USER": USER, "PROXY_PASSWORD": PASSWORD}
    router = await start_router(proxied_route(cloud, proxy.url), env=env, tls=trusting)  # type: ignore[arg-type]
    for stream in (False, True):
        reply = await sdk_chat(router, sync=False, stream=stream)
        assert (reply.served_by, reply.fallback_reason) == ("fallback", "connect_error")
        assert reply.text == "cloud-token-0 cloud-token-1 cloud-token-2 "
    assert proxy.tunnels and set(proxy.tunnels) == {f"localhost:{cloud.port}"}
    assert cloud.requests[-1].headers["Authorization"] == f"Bearer {API_KEY}"


async def test_https_proxy_from_the_environment_is_used_and_no_proxy_bypasses_it(
    tls_cloud: tuple[OpenAIStandIn, object], proxy: ConnectProxy, start_router: StartRouter
) -> None:
    cloud, trusting = tls_cloud
    through = f"http://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}"
    env = {FALLBACK_KEY_ENV: API_KEY, "HTTPS_PROXY": through}
    router = await start_router(proxied_route(cloud), env=env, tls=trusting)  # type: ignore[arg-type]
    assert (await sdk_chat(router, sync=False, stream=False)).served_by == "fallback"
    through_proxy = len(proxy.tunnels)  # the answer, and the model-list refresh of the cloud's models
    assert through_proxy >= 1
    bypassing = await start_router(
        proxied_route(cloud),
        env={**env, "NO_PROXY": "example.org,.localhost,10.0.0.0/8"},
        tls=trusting,  # type: ignore[arg-type]
    )
    assert (await sdk_chat(bypassing, sync=False, stream=False)).served_by == "fallback"
    assert len(proxy.tunnels) == through_proxy, "NO_PROXY names localhost: straight to the cloud"


async def test_a_proxy_that_refuses_fails_the_fallback_and_shows_in_readyz(
    tls_cloud: tuple[OpenAIStandIn, object],
    proxy: ConnectProxy,
    start_router: StartRouter,
    client: aiohttp.ClientSession,
) -> None:
    cloud, trusting = tls_cloud
    env = {FALLBACK_KEY_ENV: API_KEY, "PROXY_USER": USER, "PROXY_PASSWORD": "wrong-password"}
    router = await start_router(proxied_route(cloud, proxy.url), env=env, tls=trusting)  # type: ignore[arg-type]
    with pytest.raises(openai.APIStatusError) as failed:
        await sdk_chat(router, sync=False, stream=False)
    assert failed.value.status_code == 502 and "407" in failed.value.message
    assert proxy.refused and cloud.counters.started == 0
    async with client.get(f"{router.url}/readyz") as response:
        problems = (await response.json())["problems"]
    assert any("egress proxy" in p and "407" in p for p in problems), problems
    assert all("wrong-password" not in p for p in problems)


def test_no_proxy_matches_as_curl_does() -> None:
    assert bypassed("api.example.com", 443, "example.com")
    assert bypassed("api.example.com", 443, ".example.com")
    assert bypassed("example.com", 443, ".example.com")
    assert not bypassed("notexample.com", 443, "example.com")
    assert bypassed("anything", 443, "*")
    assert bypassed("10.1.2.3", 443, "10.0.0.0/8")
    assert not bypassed("11.1.2.3", 443, "10.0.0.0/8")
    assert bypassed("192.168.1.5", 443, "192.168.1.5")
    assert bypassed("[::1]", 443, "::1")
    assert bypassed("api.example.com", 443, "example.com:443")
    assert not bypassed("api.example.com", 443, "example.com:8443")
    assert bypassed("API.Example.COM", 443, " foo.org , example.com ")


def test_the_cluster_names_never_go_through_a_proxy_and_credentials_come_from_the_url() -> None:
    env = {"HTTPS_PROXY": "http://u:p%40ss@proxy.corp:3128"}
    assert proxy_for("https://cloud.ai.svc:443/v1", env) is None
    assert proxy_for("https://cloud.ai.svc.cluster.local/v1", env) is None
    found = proxy_for("https://api.holysheep.ai/v1", env)
    assert found is not None and (found.host, found.port, found.password) == ("proxy.corp", 3128, "p@ss")
    assert proxy_for("https://api.holysheep.ai/v1", {"https_proxy": "proxy.corp:3128"}) is not None
    assert proxy_for("https://api.holysheep.ai/v1", {**env, "NO_PROXY": "holysheep.ai"}) is None
    assert parse_proxy("http://p:1", "user", "pw").password == "pw"
    assert proxy_for("https://api.holysheep.ai/v1", {}) is None
