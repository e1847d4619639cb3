"""A JSON request body read once: the spans of its top-level members, `model` and `stream`, and rewrites
for each hop built from slices of the original bytes, so a 16 MiB body (inline images) is never copied,
decoded or re-encoded as a whole.

The scan checks the top-level structure and the nesting depth only; values are skipped, not validated:
local LocalAI and the cloud reject malformed JSON inside a value themselves, with their own 400.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

Buffer = bytes | bytearray
Segment = bytes | memoryview

# Go's encoding/json (LocalAI) refuses more; a deeper body is answered 400 without relaying it.
MAX_DEPTH: Final = 10_000
# Up to this size the body is scanned by json's C scanner (values are built, then dropped); larger ones by
# skipping values over the bytes, so that nothing of the size of the body is allocated.
SMALL_BODY: Final = 256 * 1024
# Up to this size a rewrite that only appends members copies the body into one buffer.
APPEND_LIMIT: Final = 64 * 1024
_WS: Final = re.compile(rb"[ \t\n\r]*")
_WS_TEXT: Final = re.compile(r"[ \t\n\r]*")
_SCALAR: Final = re.compile(rb"-?[0-9][0-9.eE+-]*|true|false|null")
_STRUCTURAL: Final = re.compile(rb'["{}\[\]]')
_OPEN: Final = frozenset(b"{[")
_QUOTE: Final = ord('"')
_MATCHING: Final = {ord("}"): ord("{"), ord("]"): ord("[")}

# Fields LocalAI reads that the OpenAI API does not define (core/schema/openai.go, core/schema/prediction.go
# at v3.12.0 and v4.9.0), plus llama.cpp sampler names clients send to LocalAI. An OpenAI-compatible
# provider may reject them (OpenAI answers 400 "Unrecognized request argument"), so the cloud never gets them.
LOCALAI_ONLY_FIELDS: Final = frozenset(
    {
        "backend",
        "batch",
        "clip_skip",
        "files",
        "grammar",
        "grammar_json_functions",
        "ignore_eos",
        "min_p",
        "mirostat",
        "mirostat_eta",
        "mirostat_tau",
        "model_base_name",
        "n_keep",
        "negative_prompt",
        "negative_prompt_scale",
        "pooling",
        "pooling_half_life_tokens",
        "ref_images",
        "repeat_last_n",
        "repeat_penalty",
        "rope_freq_base",
        "rope_freq_scale",
        "step",
        "tfz",
        "tokenizer",
        "top_k",
        "translate",
        "typical_p",
    }
)


class BodyError(ValueError):
    """The body is not a JSON object the router can route; the message says what is wrong."""


class Member(NamedTuple):
    key: str
    start: int  # the key's opening quote
    value_start: int
    end: int  # one past the value


@dataclass(slots=True)
class JsonBody:
    raw: Buffer
    members: list[Member]
    model: str | None
    stream: bool

    def has(self, key: str) -> bool:
        return any(m.key == key for m in self.members)

    def value(self, key: str) -> Any:
        """The decoded value of a top-level member (meant for small ones), None when absent or malformed."""
        for member in self.members:
            if member.key == key:
                try:
                    return json.loads(self.raw[member.value_start : member.end])
                except ValueError:
                    return None
        return None

    def appended(self, keys: frozenset[str], members: bytes) -> bytes | None:
        """A small object with `members` (`"key":value,...`, the members named `keys`) added after its last
        member, in one buffer; None when the body already has one of `keys` or is large (then `rewritten`,
        which does not copy it)."""
        if len(self.raw) > APPEND_LIMIT or not self.members:
            return None
        for member in self.members:
            if member.key in keys:
                return None
        return bytes(self.raw[: self.members[-1].end]) + b"," + members + b"}"

    def rewritten(self, drop: Iterable[str] = (), put: Mapping[str, bytes] | None = None) -> list[Segment]:
        """The object with `drop` keys removed and `put` keys set (in place when present, else appended),
        as segments: slices of the original for the members kept as they were (one slice per run of them,
        with the separators between them)."""
        dropped = frozenset(drop)
        put = put or {}
        view = memoryview(self.raw)
        parts: list[Segment] = []
        run_start = run_end = -1
        present = set()
        for member in self.members:
            key = member.key
            present.add(key)
            if key not in put and key not in dropped:
                if run_start < 0:
                    run_start = member.start
                run_end = member.end
                continue
            if run_start >= 0:
                parts.append(view[run_start:run_end])
                run_start = -1
            if key in put:
                parts.append(bytes(view[member.start : member.value_start]) + put[key])
        if run_start >= 0:
            parts.append(view[run_start:run_end])
        parts.extend(_key(k) + b":" + v for k, v in put.items() if k not in present)
        out: list[Segment] = [b"{"]
        for index, part in enumerate(parts):
            if index:
                out.append(b",")
            out.append(part)
        out.append(b"}")
        return out


def _key(name: str) -> bytes:
    """A member name as JSON."""
    if name.isascii() and name.isidentifier():
        return b'"' + name.encode() + b'"'
    return json.dumps(name).encode()


def _skip_ws(raw: Buffer, pos: int) -> int:
    match = _WS.match(raw, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _error(message: str, pos: int) -> BodyError:
    return BodyError(f"the request body is not valid JSON: {message} at byte {pos}")


def _skip_string(raw: Buffer, pos: int) -> int:
    """One past the string whose opening quote is at `pos` (memchr speed on long strings)."""
    at = pos + 1
    while True:
        quote = raw.find(b'"', at)
        if quote < 0:
            raise _error("unterminated string", pos)
        backslashes = 0
        while raw[quote - 1 - backslashes] == 0x5C:
            backslashes += 1
        if backslashes % 2 == 0:
            return quote + 1
        at = quote + 1


def _skip_value(raw: Buffer, pos: int) -> int:
    """One past the JSON value starting at `pos`."""
    if pos >= len(raw):
        raise _error("a value is missing", pos)
    first = raw[pos]
    if first == _QUOTE:
        return _skip_string(raw, pos)
    if first not in _OPEN:
        match = _SCALAR.match(raw, pos)
        if match is None:
            raise _error("unexpected character", pos)
        return match.end()
    stack = bytearray([first])
    at = pos + 1
    while True:
        found = _STRUCTURAL.search(raw, at)
        if found is None:
            raise _error("unclosed object or array", pos)
        at = found.start()
        char = raw[at]
        if char == _QUOTE:
            at = _skip_string(raw, at)
        elif char in _OPEN:
            if len(stack) >= MAX_DEPTH:
                raise BodyError(f"the request body nests deeper than {MAX_DEPTH} levels")
            stack.append(char)
            at += 1
        else:
            if stack[-1] != _MATCHING[char]:
                raise _error("mismatched bracket", at)
            stack.pop()
            at += 1
            if not stack:
                return at


def item_spans(raw: Buffer, start: int) -> list[tuple[int, int]]:
    """The (start, end) of each element of the JSON array opening at `start`, as far as `raw` holds whole
    ones: a window cut from a longer body ends at its last complete element instead of failing."""
    spans: list[tuple[int, int]] = []
    if start >= len(raw) or raw[start] != ord("["):
        return spans
    pos = _skip_ws(raw, start + 1)
    try:
        while pos < len(raw) and raw[pos] != ord("]"):
            end = _skip_value(raw, pos)
            spans.append((pos, end))
            pos = _skip_ws(raw, end)
            if pos >= len(raw) or raw[pos] != ord(","):
                break
            pos = _skip_ws(raw, pos + 1)
    except BodyError:
        pass
    return spans


_DECODER: Final[Any] = json.decoder.JSONDecoder()
_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = json.scanner.make_scanner(_DECODER)
_SCAN_STRING: Final[Callable[[str, int], tuple[str, int]]] = json.decoder.scanstring  # type: ignore[attr-defined]


def _members_small(raw: Buffer) -> list[Member]:
    """Top-level members by json's C scanner. Latin-1 keeps one character per byte, so character offsets
    are byte offsets; string values come out mis-decoded, which is why `model` is decoded again after."""
    text = raw.decode("latin-1")
    pos = _WS_TEXT.match(text).end()  # type: ignore[union-attr]
    if pos >= len(text) or text[pos] != "{":
        raise BodyError("the request body must be a JSON object")
    members: list[Member] = []
    pos = _WS_TEXT.match(text, pos + 1).end()  # type: ignore[union-attr]
    try:
        if text.startswith("}", pos):
            pos += 1
        else:
            while True:
                if not text.startswith('"', pos):
                    raise _error("expected a key", pos)
                start = pos
                key, pos = _SCAN_STRING(text, pos + 1)
                pos = _WS_TEXT.match(text, pos).end()  # type: ignore[union-attr]
                if not text.startswith(":", pos):
                    raise _error("expected ':'", pos)
                value_start = _WS_TEXT.match(text, pos + 1).end()  # type: ignore[union-attr]
                try:
                    _, end = _SCAN(text, value_start)
                except StopIteration as err:
                    raise _error("a value is missing or malformed", value_start) from err
                if not key.isascii():
                    key = json.loads(raw[start:pos])
                members.append(Member(key, start, value_start, end))
                pos = _WS_TEXT.match(text, end).end()  # type: ignore[union-attr]
                if text.startswith(",", pos):
                    pos = _WS_TEXT.match(text, pos + 1).end()  # type: ignore[union-attr]
                    continue
                if text.startswith("}", pos):
                    pos += 1
                    break
                raise _error("expected ',' or '}'", pos)
    except RecursionError as err:
        raise BodyError("the request body nests too deeply") from err
    except json.JSONDecodeError as err:
        raise _error(err.msg, err.pos) from err
    if _WS_TEXT.match(text, pos).end() != len(text):  # type: ignore[union-attr]
        raise _error("unexpected data after the object", pos)
    return members


def object_members(raw: Buffer, start: int) -> tuple[list[Member], int]:
    """The members of the JSON object opening at `start` (values skipped over the bytes, nothing of their size
    allocated), and one past its closing brace; raises BodyError."""
    if start >= len(raw) or raw[start] != ord("{"):
        raise BodyError("the request body must be a JSON object")
    members: list[Member] = []
    pos = _skip_ws(raw, start + 1)
    if pos < len(raw) and raw[pos] == ord("}"):
        return members, pos + 1
    while True:
        if pos >= len(raw) or raw[pos] != _QUOTE:
            raise _error("expected a key", pos)
        key_start = pos
        key_end = _skip_string(raw, pos)
        key = json.loads(raw[pos:key_end])
        pos = _skip_ws(raw, key_end)
        if pos >= len(raw) or raw[pos] != ord(":"):
            raise _error("expected ':'", pos)
        value_start = _skip_ws(raw, pos + 1)
        end = _skip_value(raw, value_start)
        members.append(Member(key, key_start, value_start, end))
        pos = _skip_ws(raw, end)
        if pos < len(raw) and raw[pos] == ord(","):
            pos = _skip_ws(raw, pos + 1)
            continue
        if pos < len(raw) and raw[pos] == ord("}"):
            return members, pos + 1
        raise _error("expected ',' or '}'", pos)


def skip_value(raw: Buffer, start: int) -> int:
    """One past the JSON value starting at `start`; raises BodyError."""
    return _skip_value(raw, start)


def _members_large(raw: Buffer) -> list[Member]:
    members, pos = object_members(raw, _skip_ws(raw, 0))
    if _skip_ws(raw, pos) != len(raw):
        raise _error("unexpected data after the object", pos)
    return members


def parse(raw: Buffer) -> JsonBody:
    """Scan a JSON object's top level; raises BodyError (invalid UTF-8 in a key or in `model` included)."""
    try:
        members = _members_small(raw) if len(raw) <= SMALL_BODY else _members_large(raw)
        model: str | None = None
        stream = False
        for key, _, value_start, end in members:
            if key == "model" and raw[value_start] == _QUOTE:
                text = bytes(raw[value_start + 1 : end - 1])
                model = text.decode() if b"\\" not in text else json.loads(raw[value_start:end])
            elif key == "stream":
                stream = raw[value_start:end] == b"true"
    except UnicodeDecodeError as err:
        raise _error("invalid UTF-8", err.start) from err
    return JsonBody(raw, members, model, stream)


def json_string(value: str) -> bytes:
    return json.dumps(value).encode()


def joined(segments: list[Segment]) -> bytes:
    return b"".join(segments)


def size(segments: list[Segment]) -> int:
    return sum(len(s) for s in segments)
