"""No key in logs: the redacting filter, and the router never logging the key in the first place."""

from __future__ import annotations

import io
import logging

import aiohttp
import pytest

from localai_operator.router import redact
from localai_operator.testing.standins import OpenAIStandIn, refused_url
from tests.unit.router.conftest import API_KEY, CLIENT_KEY, StartRouter, post, route_config


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    logger = logging.getLogger("test.redaction")
    logger.handlers = [logging.StreamHandler(stream)]
    logger.propagate = False
    redact.install([API_KEY], logger)
    return logger, stream


def test_redaction_masks_the_key_in_messages_and_arguments(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.warning("key is " + API_KEY)
    logger.warning("key is %s", API_KEY)
    logger.warning("headers %r", {"x-key": API_KEY})
    assert API_KEY not in stream.getvalue()
    assert stream.getvalue().count(redact.MASK) == 3


def test_redaction_masks_bearer_tokens_of_any_value(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.warning("Authorization: Bearer %s, authorization='bearer %s'", CLIENT_KEY, "another-token")
    assert CLIENT_KEY not in stream.getvalue() and "another-token" not in stream.getvalue()


def test_redaction_masks_the_key_in_tracebacks(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise RuntimeError(f"upstream rejected {API_KEY}")
    except RuntimeError:
        logger.exception("failed")
    assert "RuntimeError" in stream.getvalue()
    assert API_KEY not in stream.getvalue()


async def test_router_logs_never_contain_the_api_key(
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # caplog's handler has no redacting filter: this checks the router never logs the key at all.
    caplog.set_level(logging.DEBUG)
    router = await start_router(route_config(refused_url(), cloud.url))
    await post(client, router, headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    cloud.set(status=401)
    await post(client, router)
    await cloud.stop()
    await post(client, router)
    async with client.get(router.v1("/models")):
        pass
    assert caplog.records, "expected the failures above to be logged"
    assert API_KEY not in caplog.text
    assert CLIENT_KEY not in caplog.text
