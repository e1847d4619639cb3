"""Hot reload of the config file, updated the way a mounted ConfigMap is (a `..data` symlink swap)."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from localai_operator.testing.standins import OpenAIStandIn, local_standin
from tests.unit.router.conftest import RunningRouter, StartRouter, chat_body, eventually, post, route_config


class ConfigMapVolume:
    """A directory laid out like a ConfigMap volume: router.yaml -> ..data/router.yaml, ..data -> ..<n>."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._versions = itertools.count()
        self.path = root / "router.yaml"

    def write(self, content: str) -> None:
        version = self.root / f"..{next(self._versions)}"
        version.mkdir()
        (version / "router.yaml").write_text(content)
        staged = self.root / "..data_tmp"
        staged.symlink_to(version.name)
        # The kubelet's atomic writer: one rename makes the new version visible.
        os.replace(staged, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/router.yaml")

    def write_config(self, config: dict[str, Any]) -> None:
        self.write(yaml.safe_dump(config))


async def wait_for_reloads(router: RunningRouter, count: int) -> None:
    await eventually(
        lambda: router.router.metrics.reloads.value(("applied",)) == count,
        10,
        f"{count} reloads to be applied",
    )


async def test_config_change_is_applied_without_restart(
    local: OpenAIStandIn, tmp_path: Path, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    other = local_standin()
    other.name = "other"
    await other.start()
    try:
        volume = ConfigMapVolume(tmp_path)
        volume.write_config(route_config(local.url))
        router = await start_router({}, config_path=volume.path, watch=True)
        assert (await post(client, router)).json()["choices"][0]["message"]["content"].startswith("local-")
        volume.write_config(route_config(other.url))

        async def switched() -> bool:
            answer = await post(client, router)
            return bool(answer.json()["choices"][0]["message"]["content"].startswith("other-"))

        await eventually(switched, 10, "requests to reach the endpoint of the new config")
    finally:
        await other.stop()


async def test_invalid_config_change_keeps_the_old_config(
    local: OpenAIStandIn, tmp_path: Path, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    volume = ConfigMapVolume(tmp_path)
    volume.write_config(route_config(local.url))
    router = await start_router({}, config_path=volume.path, watch=True)
    volume.write("local: {endpoints: []}\n")
    await eventually(
        lambda: router.router.metrics.reloads.value(("rejected",)) == 1,
        10,
        "the invalid config to be rejected",
    )
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (200, "local")


async def test_in_flight_stream_finishes_on_the_old_config(
    local: OpenAIStandIn, tmp_path: Path, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(tokens=6, token_interval=0.1)
    volume = ConfigMapVolume(tmp_path)
    volume.write_config(route_config(local.url))
    router = await start_router({}, config_path=volume.path, watch=True)
    async with client.post(router.v1("/chat/completions"), json=chat_body(stream=True)) as response:
        first = b""
        while b"local-token-" not in first:
            first = await response.content.readline()
        volume.write_config(route_config("http://127.0.0.1:9/v1"))
        await wait_for_reloads(router, 1)
        rest = await response.content.read()
    assert rest.count(b"local-token-") == 5 and rest.endswith(b"data: [DONE]\n\n")


async def test_hot_reload_under_load_loses_no_request(
    local: OpenAIStandIn, tmp_path: Path, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    other = local_standin()
    await other.start()
    try:
        local.set(delay_before_headers=0.01)
        other.set(delay_before_headers=0.01)
        volume = ConfigMapVolume(tmp_path)
        volume.write_config(route_config(local.url))
        router = await start_router({}, config_path=volume.path, watch=True, reload_interval=0.02)
        stop = asyncio.Event()
        statuses: list[int] = []

        async def worker() -> None:
            while not stop.is_set():
                statuses.append((await post(client, router)).status)

        workers = [asyncio.create_task(worker()) for _ in range(16)]
        for round_ in range(10):
            target = other if round_ % 2 == 0 else local
            volume.write_config(route_config(target.url))
            await wait_for_reloads(router, round_ + 1)
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*workers)
    finally:
        await other.stop()
    assert len(statuses) > 100
    assert set(statuses) == {200}
    assert local.counters.completed > 0 and other.counters.completed > 0
