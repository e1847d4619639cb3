"""The /v1 paths the router serves: LocalAI's OpenAI-compatible and inference API, how the first-token
budget applies to each, and the stream format to read. Read from LocalAI's route tables at v3.12.0 and
v4.9.0 (`core/http/routes/openai.go`, `openresponses.go`, `jina.go`, `elevenlabs.go`, `anthropic.go`,
`localai.go`).

Not relayed: LocalAI's admin endpoints (`/v1/backend/*`: shutting down or loading backends must not be
one client key away), its MCP endpoints, and WebSocket upgrades (`GET /v1/realtime`).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final


class Budget(enum.Enum):
    """What `firstTokenTimeoutMs` bounds on a path."""

    # The first content token; a non-stream request is streamed from local and assembled.
    FIRST_TOKEN = "first_token"
    # The first byte of the answer: these endpoints answer at once once the model is loaded.
    FIRST_BYTE = "first_byte"
    # Nothing: media generation takes as long as it takes (requestTimeoutSeconds still applies).
    NONE = "none"


class StreamFormat(enum.Enum):
    CHAT = "chat"  # chat.completion.chunk
    COMPLETION = "completion"  # text_completion
    RESPONSES = "responses"  # Responses API events (`response.*`)
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ApiPath:
    """One relayed path, relative to /v1 (`{name}` matches one path segment)."""

    pattern: str
    methods: frozenset[str]
    budget: Budget
    stream: StreamFormat = StreamFormat.OTHER
    # Answered by the router from the model listings rather than relayed.
    listing: bool = False

    @property
    def token_usage(self) -> bool:
        """Answers carry OpenAI token usage (generation and embeddings), so their spend is priced by tokens;
        the others (audio, images, moderations, ...) only by a per-request price."""
        return self.budget is Budget.FIRST_TOKEN or self.pattern.endswith("/embeddings")

    @property
    def converts_to_stream(self) -> bool:
        """A non-stream request is sent to local as a stream, so its first token can be timed."""
        return self.budget is Budget.FIRST_TOKEN


_POST = frozenset({"POST"})
_GET = frozenset({"GET"})
F, B, N = Budget.FIRST_TOKEN, Budget.FIRST_BYTE, Budget.NONE

API_PATHS: Final = (
    ApiPath("/chat/completions", _POST, F, StreamFormat.CHAT),
    ApiPath("/completions", _POST, F, StreamFormat.COMPLETION),
    ApiPath("/engines/{model}/completions", _POST, F, StreamFormat.COMPLETION),
    ApiPath("/responses", _POST, F, StreamFormat.RESPONSES),
    ApiPath("/responses/{id}", _GET, B),
    ApiPath("/responses/{id}/cancel", _POST, B),
    ApiPath("/embeddings", _POST, B),
    ApiPath("/engines/{model}/embeddings", _POST, B),
    ApiPath("/rerank", _POST, B),
    ApiPath("/moderations", _POST, B),
    ApiPath("/tokenize", _POST, B),
    ApiPath("/detokenize", _POST, B),
    ApiPath("/models", _GET, B, listing=True),
    ApiPath("/models/{id}", _GET, B, listing=True),
    ApiPath("/edits", _POST, N),
    ApiPath("/messages", _POST, N),
    ApiPath("/audio/transcriptions", _POST, N),
    ApiPath("/audio/translations", _POST, N),
    ApiPath("/audio/speech", _POST, N),
    ApiPath("/audio/diarization", _POST, N),
    ApiPath("/audio/classification", _POST, N),
    ApiPath("/text-to-speech/{voice}", _POST, N),
    ApiPath("/sound-generation", _POST, N),
    ApiPath("/images/generations", _POST, N),
    ApiPath("/images/inpainting", _POST, N),
    ApiPath("/images/upscale", _POST, N),
    ApiPath("/detection", _POST, N),
    ApiPath("/depth", _POST, N),
    ApiPath("/vad", _POST, N),
    ApiPath("/face/{op}", _POST, N),
    ApiPath("/voice/{op}", _POST, N),
)
del F, B, N


def _regex(pattern: str) -> re.Pattern[str]:
    parts = [r"[^/]+" if p.startswith("{") else re.escape(p) for p in pattern.strip("/").split("/")]
    return re.compile("/" + "/".join(parts))


_EXACT: Final = {p.pattern: p for p in API_PATHS if "{" not in p.pattern}
_PATTERNS: Final = tuple((_regex(p.pattern), p) for p in API_PATHS if "{" in p.pattern)


def match(path: str) -> ApiPath | None:
    """The entry for a path relative to /v1 (e.g. "/chat/completions"), or None."""
    found = _EXACT.get(path)
    if found is not None:
        return found
    for regex, entry in _PATTERNS:
        if regex.fullmatch(path):
            return entry
    return None
