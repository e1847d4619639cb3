"""Secrets by reference: read by name when a pass needs them, kept as a version and key names only."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from localai_operator.api.kinds import Kind
from localai_operator.control.kube import ApiError
from localai_operator.control.secrets import FRESH_SECONDS, Secrets, secret_info


class Server:
    """What the API server answers to GET secrets/<name>, and how often it was asked."""

    def __init__(self, **secrets: dict[str, Any]) -> None:
        self.secrets = secrets
        self.gets: list[tuple[str | None, str]] = []

    async def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        assert kind.kind == "Secret"
        self.gets.append((namespace, name))
        await asyncio.sleep(0)
        if name == "forbidden":
            raise ApiError(403, "Forbidden", 'secrets "forbidden" is forbidden')
        if name == "broken":
            raise ApiError(503, "ServiceUnavailable", "etcd is down")
        return self.secrets.get(name)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_secret_is_kept_as_its_version_and_key_names_only() -> None:
    secret = {"metadata": {"resourceVersion": "3"}, "data": {"api-key": "c2stc2VjcmV0"}}
    info = secret_info(secret)
    assert (info.resource_version, info.keys) == ("3", frozenset({"api-key"}))
    assert "c2stc2VjcmV0" not in repr(info)


async def test_passes_asking_for_one_secret_at_once_share_one_get_and_a_later_pass_reads_again() -> None:
    server, clock = Server(key={"metadata": {"resourceVersion": "1"}, "data": {"k": "dg=="}}), Clock()
    secrets = Secrets(server, clock=clock)
    found = await asyncio.gather(*(secrets.read("team-a", ["key"]) for _ in range(10)))
    assert all(f["key"] is not None and f["key"].keys == {"k"} for f in found)
    assert server.gets == [("team-a", "key")]
    clock.now += FRESH_SECONDS + 1
    server.secrets["key"]["metadata"]["resourceVersion"] = "2"  # rotated
    assert (await secrets.read("team-a", ["key"]))["key"].resource_version == "2"  # type: ignore[union-attr]
    assert len(server.gets) == 2


async def test_a_missing_or_unreadable_secret_reads_as_none_and_other_failures_are_the_passes() -> None:
    secrets = Secrets(Server(), clock=Clock())
    assert await secrets.read("team-a", ["absent", "forbidden"]) == {"absent": None, "forbidden": None}
    with pytest.raises(ApiError):
        await secrets.read("team-a", ["broken"])
    with pytest.raises(ApiError):
        await secrets.read("team-a", ["broken"])  # a failed read is not kept
