"""Responses the router writes itself: OpenAI error objects with `X-Served-By: router`, the SSE error event
that ends a stream the upstream broke, and the middleware that turns every other error aiohttp or a bug
would produce (404, 405, 413, a bare 500) into the same shape."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from localai_operator.constants import FALLBACK_REASON_HEADER, SERVED_BY_HEADER, SERVED_BY_ROUTER
from localai_operator.router.metrics import RouterMetrics

log = logging.getLogger(__name__)

INVALID_REQUEST: Final = "invalid_request_error"
UPSTREAM_ERROR: Final = "upstream_error"
SERVER_ERROR: Final = "server_error"
RATE_LIMIT: Final = "rate_limit_error"

_BY_STATUS: Final = {
    400: (INVALID_REQUEST, "invalid_request"),
    401: (INVALID_REQUEST, "invalid_api_key"),
    404: (INVALID_REQUEST, "not_found"),
    405: (INVALID_REQUEST, "method_not_allowed"),
    408: (INVALID_REQUEST, "request_timeout"),
    413: (INVALID_REQUEST, "request_too_large"),
    415: (INVALID_REQUEST, "unsupported_media_type"),
    429: (RATE_LIMIT, "rate_limited"),
}


def error_body(message: str, error_type: str, code: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    ).encode()


def sse_error_event(message: str, code: str) -> bytes:
    return b"data: " + error_body(message, UPSTREAM_ERROR, code) + b"\n\n"


def error(
    status: int, message: str, *, error_type: str | None = None, code: str | None = None,
    fallback_reason: str | None = None, headers: Mapping[str, str] | None = None,
) -> web.Response:  # fmt: skip
    default_type, default_code = _BY_STATUS.get(
        status, (SERVER_ERROR if status >= 500 else INVALID_REQUEST, None)
    )
    out = {SERVED_BY_HEADER: SERVED_BY_ROUTER, **(headers or {})}
    if fallback_reason is not None:
        out[FALLBACK_REASON_HEADER] = fallback_reason
    return web.Response(
        status=status,
        body=error_body(message, error_type or default_type, code or default_code),
        content_type="application/json",
        headers=out,
    )


def _message_of(exc: web.HTTPException, request: web.Request) -> str:
    if exc.status == 404:
        return (
            f"no such endpoint: {request.method} {request.path} (the router serves the OpenAI API under /v1)"
        )
    if exc.status == 405:
        return f"{request.method} is not allowed on {request.path}"
    if exc.status == 413:
        return "the request body is larger than this route accepts (policy.maxRequestBytes)"
    return exc.reason or "request refused"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(metrics: RouterMetrics) -> Middleware:
    """OpenAI error objects for aiohttp's own refusals and for anything a handler did not expect."""

    @web.middleware
    async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            response = error(exc.status, _message_of(exc, request), headers=headers)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            response = error(
                500, "the router failed to handle this request; see its log", code="router_error"
            )
        metrics.requests.inc((SERVED_BY_ROUTER, str(response.status)))
        return response

    return openai_errors
