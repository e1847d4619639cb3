"""JSON on the router's hot path: the events of every stream local sends (decoded to find the first content
and to assemble non-stream answers) and the assembled answers. pydantic-core's parser and serializer (a
project dependency through pydantic) do it in about half and a quarter of the stdlib's time
(`benchmarks/router.py` notes); anything they refuse that the stdlib takes (a lone surrogate escape, a
non-UTF-8 encoding) goes through the stdlib, so the results are json.loads' and valid JSON as json.dumps'."""

from __future__ import annotations

import json
from typing import Any

import pydantic_core


def loads(data: bytes) -> Any:
    """json.loads(data); raises ValueError on what it refuses."""
    try:
        return pydantic_core.from_json(data)
    except ValueError:
        return json.loads(data)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of a decoded payload (non-ASCII characters as they are, not escaped)."""
    try:
        return pydantic_core.to_json(value)
    except ValueError:
        return json.dumps(value).encode()
