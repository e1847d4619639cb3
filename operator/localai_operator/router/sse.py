"""Server-sent events as the router reads them: splitting a byte stream into events, telling content from
what comes before it, and recognising LocalAI's in-stream errors.

What LocalAI sends (mudler/LocalAI, `core/http/endpoints/openai/chat.go`):
- v3.12.0: `{"choices":[{"delta":{"role":"assistant"}}]}` first and at once (line 41, `responses <-
  initialMessage`, before `ComputeChoices`), every chunk with a `usage` object of zeros until the end;
  an inference error after the stream started is a chunk whose `delta.content` is `"Internal error: <err>"`
  with `finish_reason: "stop"` (line 590), then `data: [DONE]`; `data: {"error":"Internal error"}` when that
  chunk cannot be encoded (line 599). Completions do the same with `text`, without [DONE] (`completion.go`
  lines 153-176).
- v4.9.0: the role chunk comes with the first token (`chat_stream_workers.go`); an error is
  `data: {"error":{"message":…,"type":"server_error"}}` then `data: [DONE]` (`chat.go` lines 505-521).
"""

from __future__ import annotations

import enum
import re
from typing import Any, Final

from localai_operator.router import codec, http
from localai_operator.router.paths import StreamFormat

LOCALAI_ERROR_PREFIX: Final = "Internal error: "
# The largest event the router holds while it waits for its end. LocalAI's events are a few hundred bytes; the
# largest legitimate one is the Responses API's `response.completed`, which repeats the whole answer.
MAX_EVENT_BYTES: Final = 4 * 1024 * 1024
_FINISHED: Final = re.compile(rb'"finish_reason"\s*:\s*"')
_RESPONSES_TERMINAL: Final = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')
# Responses API events that only announce what follows.
_RESPONSES_PREAMBLE: Final = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.queued",
        "response.output_item.added",
        "response.content_part.added",
    }
)
_RESPONSES_ERRORS: Final = frozenset({"error", "response.failed"})
_DELTA_CONTENT_KEYS: Final = (
    "content",
    "reasoning",
    "reasoning_content",
    "refusal",
    "tool_calls",
    "function_call",
)


class Kind(enum.Enum):
    EMPTY = "empty"  # a comment, keep-alive, role-only chunk, empty delta or preamble event
    CONTENT = "content"  # a token, tool call, finish_reason, usage trailer or any other answer data
    ERROR = "error"  # the upstream reporting a failure inside a 200 stream
    DONE = "done"  # `data: [DONE]`


class EventTooLarge(http.Malformed):
    """An event grew past MAX_EVENT_BYTES without ending: the upstream failed."""


class EventSplitter:
    """Cuts a byte stream into complete events (each with its terminating blank line); an event larger
    than `limit` raises EventTooLarge."""

    __slots__ = ("_pending", "limit")

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self._pending = b""
        self.limit = limit

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._pending + chunk if self._pending else chunk
        if b"\r" in data:
            events = self._feed_crlf(data)
        else:
            events = []
            start = 0
            while (end := data.find(b"\n\n", start)) >= 0:
                events.append(data[start : end + 2])
                start = end + 2
            self._pending = data[start:] if start else data
        if len(self._pending) > self.limit:
            raise EventTooLarge(f"an event of the stream grew past {self.limit} bytes without ending")
        return events

    def _feed_crlf(self, data: bytes) -> list[bytes]:
        events: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n\n", start)
            crlf = data.find(b"\r\n\r\n", start)
            if crlf >= 0 and (end < 0 or crlf < end):
                cut = crlf + 4
            elif end >= 0:
                cut = end + 2
            else:
                break
            events.append(data[start:cut])
            start = cut
        self._pending = data[start:]
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete."""
        return self._pending


def event_data(event: bytes) -> bytes | None:
    """The `data` of an event (several data lines joined by newlines), None when it has none."""
    if event.startswith(b"data: ") and event.count(b"\n") <= 2 and b"\r" not in event:
        return event[6:].rstrip(b"\n")  # the common case: one data line
    lines = [line for line in event.replace(b"\r\n", b"\n").split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[6:] if line.startswith(b"data: ") else line[5:] for line in lines)


def _choice_has_content(choice: Any, fmt: StreamFormat) -> bool:
    if choice.__class__ is not dict:
        return False
    if choice.get("finish_reason") is not None:
        return True
    if fmt is StreamFormat.COMPLETION:
        return bool(choice.get("text"))
    delta = choice.get("delta")
    if delta.__class__ is not dict:
        return False
    if delta.get("content"):
        return True
    return any(delta.get(key) for key in _DELTA_CONTENT_KEYS)


def _is_localai_error_chunk(payload: dict[str, Any], fmt: StreamFormat) -> bool:
    for choice in payload.get("choices") or ():
        if not isinstance(choice, dict) or choice.get("finish_reason") is None:
            continue
        text = (
            choice.get("text")
            if fmt is StreamFormat.COMPLETION
            else (choice.get("delta") or {}).get("content")
        )
        if isinstance(text, str) and text.startswith(LOCALAI_ERROR_PREFIX):
            return True
    return False


def classify(data: bytes | None, fmt: StreamFormat) -> tuple[Kind, Any]:
    """What one event's data is, with its decoded payload (None when it is not JSON)."""
    if data is None:
        return Kind.EMPTY, None
    if data == b"[DONE]":
        return Kind.DONE, None
    try:
        payload = codec.loads(data)
    except ValueError:
        return Kind.CONTENT, None
    return kind_of(payload, fmt), payload


def payloads_of(raw: bytes) -> tuple[list[Any], bool] | None:
    """The decoded payloads of complete events in the canonical framing every OpenAI-compatible server and
    LocalAI use (`data: <one-line JSON>` and a blank line, repeated, maybe `data: [DONE]` last), with whether
    [DONE] ended them; None for any other framing (comments, `event:` lines, CRLF, multi-line data), which
    `classify_all` then reads event by event. One C call decodes the whole read."""
    if not raw.startswith(b"data: {") or b"\r" in raw:
        return None
    done = raw.endswith(b"data: [DONE]\n\n")
    body = raw[6 : -14 if done else None]
    if done and not body.endswith(b"\n\n"):
        return None
    joined = body.rstrip(b"\n").replace(b"\n\ndata: ", b",")
    if b"\n" in joined:
        return None
    try:
        payloads = codec.loads(b"[" + joined + b"]")
    except ValueError:
        return None
    return payloads, done


def classify_all(events: list[bytes], fmt: StreamFormat) -> list[tuple[Kind, Any]]:
    """`classify` for every event of one read, decoding their JSON in one call."""
    datas = [event_data(event) for event in events]
    done = bool(datas) and datas[-1] == b"[DONE]"
    objects = [d for d in (datas[:-1] if done else datas) if d is not None and d.startswith(b"{")]
    if len(objects) > 1 and len(objects) == len(datas) - done:
        try:
            payloads = codec.loads(b"[" + b",".join(objects) + b"]")
        except ValueError:
            pass
        else:
            out = [(kind_of(p, fmt), p) for p in payloads]
            if done:
                out.append((Kind.DONE, None))
            return out
    return [classify(d, fmt) for d in datas]


def kind_of(payload: Any, fmt: StreamFormat) -> Kind:
    """What a decoded event payload is."""
    if payload.__class__ is not dict:
        return Kind.CONTENT
    if payload.get("error"):
        return Kind.ERROR
    if fmt is StreamFormat.RESPONSES:
        kind = payload.get("type")
        if kind in _RESPONSES_ERRORS:
            return Kind.ERROR
        return Kind.EMPTY if kind in _RESPONSES_PREAMBLE else Kind.CONTENT
    if fmt is StreamFormat.OTHER:
        return Kind.CONTENT
    choices = payload.get("choices")
    if not choices:
        # The include_usage trailer has no choices; anything else without choices carries no token.
        return Kind.CONTENT if payload.get("usage") else Kind.EMPTY
    content = False
    for choice in choices:
        if _choice_has_content(choice, fmt):
            content = True
            if choice.get("finish_reason") is not None and _is_localai_error_chunk(payload, fmt):
                return Kind.ERROR
    return Kind.CONTENT if content else Kind.EMPTY


def error_message(payload: Any) -> str:
    """A readable message from an ERROR event's payload."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        response = payload.get("response")
        if isinstance(response, dict) and isinstance(response.get("error"), dict):
            return str(response["error"].get("message", "response failed"))
        for choice in payload.get("choices") or ():
            if isinstance(choice, dict):
                text = choice.get("text") or (choice.get("delta") or {}).get("content")
                if isinstance(text, str):
                    return text
    return "the upstream reported an error in the stream"


def usage_only(event: bytes) -> bool:
    """The `include_usage` trailer of a chat or completion stream: no choices, only usage."""
    if b'"usage"' not in event or b"[]" not in event:
        return False
    payload = classify(event_data(event), StreamFormat.CHAT)[1]
    return isinstance(payload, dict) and payload.get("choices") == [] and bool(payload.get("usage"))


def may_be_error(raw: bytes) -> bool:
    """False when no event in `raw` can be an error (checked on the bytes, before decoding)."""
    # Each marker holds "rror" or "failed": one scan of a clean read.
    if b"rror" not in raw and b"failed" not in raw:
        return False
    return b'"error"' in raw or b"Internal error" in raw or b'"response.failed"' in raw


class Tail:
    """What the bytes after the first content say about the end of a stream, without decoding tokens."""

    __slots__ = ("done", "events", "finished", "fmt")

    def __init__(self, fmt: StreamFormat) -> None:
        self.fmt = fmt
        self.done = False
        self.finished = False
        self.events = 0

    def suspicious(self, event: bytes) -> bool:
        """True when the event may be an error and must be classified."""
        return may_be_error(event)

    def see(self, event: bytes) -> None:
        self.events += 1
        if event.startswith(b"data: [DONE]"):
            self.done = True
        elif self.fmt is StreamFormat.RESPONSES:
            if any(marker in event for marker in _RESPONSES_TERMINAL):
                self.done = True
        elif _FINISHED.search(event):
            self.finished = True

    @property
    def complete(self) -> bool:
        """A stream may end here: [DONE], a terminal Responses event, or a finish_reason was seen."""
        return self.done or self.finished or self.fmt is StreamFormat.OTHER
