"""Cheap extraction of OpenAI `usage` token counts from relayed bytes, without parsing whole bodies.

Bodies can be large (embeddings), so this looks only after the last `"usage"` key with two regexes.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

_USAGE_KEY: Final = b'"usage"'
# A usage object is a few dozen bytes; nested *_details objects push it to a few hundred.
_USAGE_WINDOW: Final = 1024
_PROMPT: Final = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION: Final = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


class Usage(NamedTuple):
    prompt_tokens: int
    completion_tokens: int
    # Counted by the router's estimator (router/tokens.py), not reported by the upstream.
    estimated: bool = False


def usage_of(data: bytes) -> Usage | None:
    """Token counts of the last `usage` object in a JSON body or in the tail of an SSE stream."""
    at = data.rfind(_USAGE_KEY)
    if at < 0:
        return None
    window = data[at : at + _USAGE_WINDOW]
    prompt = _PROMPT.search(window)
    completion = _COMPLETION.search(window)
    if prompt is None and completion is None:
        return None
    return Usage(
        prompt_tokens=int(prompt.group(1)) if prompt else 0,
        completion_tokens=int(completion.group(1)) if completion else 0,
    )
