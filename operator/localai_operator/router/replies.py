"""Responses the router writes itself: OpenAI error objects with `X-Served-By: router` (404, 405, 413, 429,
5xx and every other refusal), and the SSE error event that ends a stream the upstream broke."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from aiohttp import web

from localai_operator.constants import FALLBACK_REASON_HEADER, SERVED_BY_HEADER, SERVED_BY_ROUTER

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
    status: int,
    message: str,
    *,
    error_type: str | None = None,
    code: str | None = None,
    fallback_reason: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
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
