"""Token counts estimated from text, for answers that report no usage: pure, no tokenizer to download, a few
microseconds per kilobyte.

The estimate leans high, since it prices spend against a cap: ASCII text at one token per 4 characters, rounded
up (OpenAI's rule of thumb for English; code and numbers run a little denser), every non-ASCII character as one
token (CJK text is about one token per character; accented Latin letters are counted generously), each chat
message 4 tokens of framing on top of its text (OpenAI's chat format: role and separators) and 3 for the reply's
priming, each image part 85 tokens (OpenAI's base cost of an image). A prompt given as token ids counts exactly.

`prompt_tokens(body)` reads what a request asks (`messages`, `prompt` or `input`); `text_tokens(text)` reads
relayed answer text, and `TextCount` counts a stream's text the same way as its events pass (characters only, no
text kept). They are what docs/router.md documents as "the estimator": used for cloud answers without usage and
for local answers whose usage is missing or all zero (LocalAI's non-streamed completions).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

from localai_operator.router import codec
from localai_operator.router.body import BodyError, Buffer, JsonBody, item_spans, object_members, skip_value
from localai_operator.router.paths import StreamFormat

CHARS_PER_TOKEN: Final = 4
MESSAGE_TOKENS: Final = 4
REPLY_PRIMING_TOKENS: Final = 3
IMAGE_TOKENS: Final = 85
# Members of a request body that hold the prompt, by API: chat (messages), completions (prompt), embeddings and
# the Responses API (input), and the Responses API's system text (instructions).
PROMPT_MEMBERS: Final = ("messages", "prompt", "input", "instructions")
# The string members of a stream event that hold answer text (those `answer_text` reads), by stream format: found in
# the event's bytes, so the text is counted without decoding the event. A Responses API stream's text is its
# `delta`s only (its done events repeat the whole text as `text`).
_CHAT_KEYS: Final = (b'"content"', b'"reasoning_content"', b'"refusal"', b'"arguments"')
TEXT_KEYS: Final = {
    StreamFormat.CHAT: _CHAT_KEYS,
    StreamFormat.COMPLETION: (b'"text"',),
    StreamFormat.RESPONSES: (b'"delta"',),
}
_QUOTE: Final = ord('"')
_BETWEEN: Final = b" \t\r\n:"
_STRING_END: Final = re.compile(rb'(?:[^"\\]|\\.)*"')
# A prompt value up to this size is decoded and counted; a larger one (a 16 MiB inline image, a long document) is
# read from the body's bytes, its strings counted in windows of this size: never a copy of the body.
DECODE_LIMIT: Final = 64 * 1024
# The longest JSON escape (a surrogate pair, \uXXXX\uXXXX): a window never ends inside one.
_ESCAPE_BYTES: Final = 12
_INT: Final = re.compile(rb"-?[0-9]+(?![0-9.eE])")
_HIGH_SURROGATE: Final = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}")


def text_tokens(text: str | bytes) -> int:
    """Tokens of a piece of text (UTF-8 bytes or a string)."""
    if not text:
        return 0
    if isinstance(text, bytes):
        if text.isascii():
            return math.ceil(len(text) / CHARS_PER_TOKEN)
        text = text.decode("utf-8", "replace")
    if text.isascii():
        return math.ceil(len(text) / CHARS_PER_TOKEN)
    ascii_chars = sum(1 for char in text if char < "\x80")
    return math.ceil(ascii_chars / CHARS_PER_TOKEN) + (len(text) - ascii_chars)


class TextCount:
    """A stream's text, counted as it passes: `tokens` equals `text_tokens` of all the text added."""

    __slots__ = ("ascii", "other")

    def __init__(self) -> None:
        self.ascii = 0
        self.other = 0

    def add(self, text: str) -> None:
        if text.isascii():
            self.ascii += len(text)
            return
        ascii_chars = sum(1 for char in text if char < "\x80")
        self.ascii += ascii_chars
        self.other += len(text) - ascii_chars

    def add_event(self, event: bytes, keys: tuple[bytes, ...]) -> None:
        """The text of a stream event (its SSE bytes; `keys`: TEXT_KEYS of its format), read from the bytes: each
        text member once (an event has one of each), a plain ASCII string by its length, one with escapes or
        non-ASCII characters decoded on its own."""
        for key in keys:
            at = event.find(key)
            while at >= 0:
                start = at + len(key)
                while start < len(event) and event[start] in _BETWEEN:  # `: ` between a key and its value
                    start += 1
                if start < len(event) and event[start] == _QUOTE and b":" in event[at + len(key) : start]:
                    self._add_string(event, start + 1)
                    break
                at = event.find(key, start)

    def _add_string(self, event: bytes, start: int) -> None:
        """The JSON string that starts at `start` (after its opening quote)."""
        end = event.find(b'"', start)
        if end < 0:
            return
        value = event[start:end]
        if b"\\" not in value and value.isascii():
            self.ascii += len(value)
            return
        found = _STRING_END.match(event, start)
        if found is None:
            return
        try:
            self.add(codec.loads(b'"' + event[start : found.end()]))
        except ValueError:
            return

    @property
    def tokens(self) -> int:
        return math.ceil(self.ascii / CHARS_PER_TOKEN) + self.other


def _content_tokens(content: Any) -> int:
    """Tokens of a message's content: a string, or a list of parts (text, images, audio)."""
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                kind = part.get("type")
                if isinstance(kind, str) and ("image" in kind or "audio" in kind or "file" in kind):
                    total += IMAGE_TOKENS
                else:
                    total += text_tokens(str(part.get("text") or part.get("content") or ""))
            else:
                total += _value_tokens(part)
        return total
    return 0


def _value_tokens(value: Any) -> int:
    """Tokens of a `prompt` or `input`: text, token ids, lists of either, or Responses API message items."""
    if isinstance(value, str):
        return text_tokens(value)
    if isinstance(value, int):
        return 1  # a token id
    if isinstance(value, list):
        return sum(_value_tokens(item) for item in value)
    if isinstance(value, dict):  # a message item (Responses API input, chat message)
        return (
            MESSAGE_TOKENS + _content_tokens(value.get("content")) + text_tokens(str(value.get("name") or ""))
        )
    return 0


def prompt_tokens(body: JsonBody | None) -> int:
    """Tokens of what a request asks: its messages (with their framing), prompt or input."""
    if body is None:
        return 0
    total = 0
    for member in body.members:
        if member.key not in PROMPT_MEMBERS:
            continue
        try:
            if member.key == "messages":
                total += _messages_tokens(body.raw, member.value_start, member.end)
            else:
                total += _value_tokens_at(body.raw, member.value_start, member.end)
        except (ValueError, BodyError):
            continue
    return total


def _decoded(raw: Buffer, start: int, end: int) -> Any:
    return codec.loads(bytes(raw[start:end]))


def _message_tokens(message: Any) -> int:
    if not isinstance(message, dict):
        return 0
    return (
        MESSAGE_TOKENS + _content_tokens(message.get("content")) + text_tokens(str(message.get("name") or ""))
    )


def _messages_tokens(raw: Buffer, start: int, end: int) -> int:
    if end - start <= DECODE_LIMIT:
        value = _decoded(raw, start, end)
        if not isinstance(value, list):
            return _value_tokens(value)
        return REPLY_PRIMING_TOKENS + sum(_message_tokens(message) for message in value)
    if raw[start] != ord("["):
        return _value_tokens_at(raw, start, end)
    return REPLY_PRIMING_TOKENS + sum(_message_tokens_at(raw, s, e) for s, e in item_spans(raw, start))


def _message_tokens_at(raw: Buffer, start: int, end: int) -> int:
    """`_message_tokens` of the message at raw[start:end], read from the bytes when it is large."""
    if end - start <= DECODE_LIMIT:
        return _message_tokens(_decoded(raw, start, end))
    if raw[start] != ord("{"):
        return 0
    total = MESSAGE_TOKENS
    members, _ = object_members(raw, start)
    for member in members:
        if member.key == "content":
            total += _content_tokens_at(raw, member.value_start, member.end)
        elif member.key == "name":
            total += _scalar_text_tokens_at(raw, member.value_start, member.end)
    return total


def _content_tokens_at(raw: Buffer, start: int, end: int) -> int:
    """`_content_tokens` of the content at raw[start:end], read from the bytes when it is large."""
    if end - start <= DECODE_LIMIT:
        return _content_tokens(_decoded(raw, start, end))
    first = raw[start]
    if first == _QUOTE:
        return _string_tokens(raw, start, end)
    if first != ord("["):
        return 0
    total = 0
    for s, e in item_spans(raw, start):
        if e - s <= DECODE_LIMIT:
            total += _content_tokens([_decoded(raw, s, e)])
        elif raw[s] == ord("{"):
            total += _part_tokens_at(raw, s)
        else:
            total += _value_tokens_at(raw, s, e)
    return total


def _part_tokens_at(raw: Buffer, start: int) -> int:
    """A large content part (an object): an image, audio or file part by its type, else its text."""
    members, _ = object_members(raw, start)
    spans = {m.key: (m.value_start, m.end) for m in members}
    if "type" in spans:
        kind = _decoded(raw, *spans["type"]) if spans["type"][1] - spans["type"][0] <= DECODE_LIMIT else None
        if isinstance(kind, str) and ("image" in kind or "audio" in kind or "file" in kind):
            return IMAGE_TOKENS
    for key in ("text", "content"):
        if key in spans:
            return _scalar_text_tokens_at(raw, *spans[key])
    return 0


def _scalar_text_tokens_at(raw: Buffer, start: int, end: int) -> int:
    """`text_tokens(str(value))` of a string (or a small value) at raw[start:end]."""
    if raw[start] == _QUOTE:
        return _string_tokens(raw, start, end)
    if end - start <= DECODE_LIMIT:
        return text_tokens(str(_decoded(raw, start, end) or ""))
    return 0


def _value_tokens_at(raw: Buffer, start: int, end: int) -> int:
    """`_value_tokens` of the value at raw[start:end], read from the bytes when it is large."""
    if end - start <= DECODE_LIMIT:
        return _value_tokens(_decoded(raw, start, end))
    first = raw[start]
    if first == _QUOTE:
        return _string_tokens(raw, start, end)
    if first == ord("["):
        return sum(_value_tokens_at(raw, s, e) for s, e in item_spans(raw, start))
    if first == ord("{"):
        return _message_tokens_at(raw, start, end)
    return 1 if _INT.match(raw, start) or raw.startswith((b"true", b"false"), start) else 0


def _string_tokens(raw: Buffer, start: int, end: int) -> int:
    """`text_tokens` of the JSON string raw[start:end] (quotes included), decoded window by window: a window ends
    neither inside a UTF-8 sequence nor inside an escape."""
    end = min(end, skip_value(raw, start)) - 1
    count = TextCount()
    pos = start + 1
    while pos < end:
        cut = min(pos + DECODE_LIMIT, end)
        if cut < end:
            while cut > pos and 0x80 <= raw[cut] < 0xC0:
                cut -= 1
            back = raw.rfind(b"\\", max(pos, cut - _ESCAPE_BYTES), cut)
            if back >= 0:
                run = back
                while run > pos and raw[run - 1] == 0x5C:
                    run -= 1
                if run > pos:
                    cut = run
                    # Nor between the two escapes of a surrogate pair (one character).
                    if cut - 6 > pos and _HIGH_SURROGATE.fullmatch(raw, cut - 6, cut):
                        cut -= 6
                else:  # a window of backslashes: cut after an even number of them, between two escapes
                    length = back + 1 - pos
                    cut = pos + length - length % 2
        window = bytes(raw[pos:cut])
        if 0x5C not in window:
            if window.isascii():
                count.ascii += len(window)
            else:
                count.add(window.decode("utf-8", "replace"))
        else:
            try:
                count.add(json.loads(b'"' + window + b'"', strict=False))
            except ValueError:
                count.add(window.decode("utf-8", "replace"))
        pos = cut
    return count.tokens


def answer_text(payload: Any) -> str:
    """The text of a decoded answer or stream event (chat, completion, Responses API), for `text_tokens`."""
    if not isinstance(payload, dict):
        return ""
    parts: list[str] = []
    for choice in payload.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        for holder in (choice.get("delta"), choice.get("message"), choice):
            if isinstance(holder, dict):
                for key in ("content", "text", "reasoning_content", "refusal"):
                    value = holder.get(key)
                    if isinstance(value, str):
                        parts.append(value)
                calls = holder.get("tool_calls")
                if isinstance(calls, list):
                    parts.extend(
                        str((call.get("function") or {}).get("arguments") or "")
                        for call in calls
                        if isinstance(call, dict)
                    )
    delta = payload.get("delta")
    if isinstance(delta, str):  # a Responses API text delta
        parts.append(delta)
    return "".join(parts)
