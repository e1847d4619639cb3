"""One request's state as it goes through the router: what was asked, which snapshot and budget apply,
where it was served and why. One value, created at admission and handed from step to step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import web

from localai_operator.constants import SERVED_BY_LOCAL
from localai_operator.router import body as bodies
from localai_operator.router import codec, tokens
from localai_operator.router.paths import ApiPath, StreamFormat
from localai_operator.router.policy import FallbackReason
from localai_operator.router.upstream import Cloud, Route

if TYPE_CHECKING:
    from localai_operator.router.telemetry import RequestTrace

# The body LocalAI gets when a non-stream request is streamed from it (to time its first token): the
# client's fields, `stream` set, and the usage trailer asked for (LocalAI >= 4 sends usage only then).
_STREAMED: dict[str, bytes] = {"stream": b"true", "stream_options": b'{"include_usage":true}'}
_STREAMED_KEYS: Final = frozenset(_STREAMED)
_STREAMED_MEMBERS: Final = b",".join(b'"' + k.encode() + b'":' + v for k, v in _STREAMED.items())
# The member a client stream gets when it did not ask for usage: LocalAI's streams carry usage only then.
_USAGE_KEYS: Final = frozenset({"stream_options"})
_USAGE_MEMBER: Final = b'"stream_options":{"include_usage":true}'
_USAGE_FORMATS: Final = (StreamFormat.CHAT, StreamFormat.COMPLETION)


@dataclass(slots=True)
class Attempt:
    request: web.Request
    route: Route
    api: ApiPath
    # The path relative to /v1, as requested (e.g. "/chat/completions").
    path: str
    # Router clock (monotonic seconds) at arrival; every duration metric counts from here.
    started: float
    raw: bytes | bytearray
    body: bodies.JsonBody | None
    # The client's key name (routes with spec.auth), for logs and metrics.
    key_name: str | None
    # The cloud this request may fall back to (None: sensitive route, no fallback, or a path it lacks).
    cloud: Cloud | None
    # Event-loop time when the first-token budget ends (None: no budget applies).
    deadline: float | None
    served_by: str = SERVED_BY_LOCAL
    fallback_reason: FallbackReason | None = None
    # Router clock when the first content token (or first byte) reached the client or was read.
    first_token_at: float | None = None
    # Response headers went to the client: from here on a failure can only end or cut the answer.
    committed: bool = False
    # Why a request that would have had a cloud has none (the spend cap is reached), for the metrics.
    blocked: str | None = None
    # The upstream (local or cloud) was asked for a stream's usage that the client did not ask for: its usage
    # event is not relayed.
    usage_hidden: bool = False
    # The request's spans, when the router's telemetry is on (router/telemetry.py).
    trace: RequestTrace | None = None
    # The prompt's tokens by the estimator, once asked for.
    _prompt_tokens: int | None = None

    def prompt_tokens(self) -> int:
        """The prompt's tokens by the estimator (router/tokens.py), counted once."""
        if self._prompt_tokens is None:
            self._prompt_tokens = tokens.prompt_tokens(self.body)
        return self._prompt_tokens

    @property
    def client_stream(self) -> bool:
        return self.body is not None and self.body.stream

    @property
    def streamed_from_local(self) -> bool:
        """A non-stream request sent to local as a stream, assembled back into one answer."""
        return (
            self.deadline is not None
            and self.api.converts_to_stream
            and self.body is not None
            and not self.body.stream
        )

    def local_body(self) -> list[bodies.Segment] | bytes | bytearray:
        if self.body is not None and self.streamed_from_local:
            appended = self.body.appended(_STREAMED_KEYS, _STREAMED_MEMBERS)
            return appended if appended is not None else self.body.rewritten(drop=(), put=_STREAMED)
        if self.body is not None and self.body.stream and self.api.stream in _USAGE_FORMATS:
            # Counted tokens: LocalAI's streams send usage only when asked (docs/localai-facts.md §12).
            options = self.body.value("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                self.usage_hidden = True
                appended = self.body.appended(_USAGE_KEYS, _USAGE_MEMBER)
                if appended is not None:
                    return appended
                options = options if isinstance(options, dict) else {}
                put = {"stream_options": codec.dumps({**options, "include_usage": True})}
                return self.body.rewritten(drop=(), put=put)
        return self.raw

    def cloud_body(self, cloud: Cloud, cloud_lists: bool) -> list[bodies.Segment] | bytes | bytearray:
        """Only `model` rewritten and LocalAI-only fields dropped; every other byte as the client sent it."""
        if self.body is None:
            return self.raw
        model = cloud.fallback.cloud_model(self.body.model, cloud_lists)
        drop = [m.key for m in self.body.members if m.key in bodies.LOCALAI_ONLY_FIELDS]
        put = {"model": bodies.json_string(model)}
        if self.body.stream and self.api.stream in (StreamFormat.CHAT, StreamFormat.COMPLETION):
            # OpenAI-style providers send a stream's usage only when asked: without it the spend goes uncounted.
            options = self.body.value("stream_options")
            options = options if isinstance(options, dict) else {}
            if options.get("include_usage") is not True:
                self.usage_hidden = True
                put["stream_options"] = codec.dumps({**options, "include_usage": True})
        return self.body.rewritten(drop=drop, put=put)
