"""The grammar of an HTTP/1.1 response as the router's upstream client reads it (RFC 9112), without I/O:
status line, header fields, and the body's framing (Content-Length, chunked, or until close).

Strict where leniency has bitten proxies: CRLF only (a bare CR or LF anywhere in the head or a chunk line is
an error, not a line end), field names are tokens with no space before the colon, field values are visible
characters, tabs and spaces; Content-Length is 1*DIGIT of bounded length (several values must agree);
Transfer-Encoding is exactly `chunked` (the router asks for identity: any other coding it could not decode),
never together with Content-Length; a chunk size is 1*HEXDIG of bounded length; the head, a chunk line and the
trailers are bounded. A malformed answer raises `MalformedResponse` at the first byte that breaks the grammar.

Every pass of `feed`'s loop consumes input or returns, so the work is linear in the bytes fed (`steps` counts
the passes; the property tests hold it to that bound against h11 as an independent parser).
"""

from __future__ import annotations

import re
from typing import Final, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

MAX_HEAD: Final = 64 * 1024  # status line and header fields, and the trailer section
MAX_FIELDS: Final = 256
MAX_CHUNK_LINE: Final = 4096  # a chunk-size line with its extensions
_MAX_LENGTH_DIGITS: Final = 18  # below 2**63
_NO_BODY_STATUS: Final = frozenset({204, 304})
_FRAMING_FIELDS: Final = frozenset({"content-length", "transfer-encoding"})

_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?")
_FIELD_LINE: Final = (
    rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+:[ \t]*(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?[ \t]*\r\n"
)
# A block of field lines, each ending in CRLF: checked in one pass, then split.
_FIELD_BLOCK: Final = re.compile(b"(?:" + _FIELD_LINE + b")*")
_ONE_FIELD: Final = re.compile(_FIELD_LINE)
_CHUNK_LINE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[\t\x20-\x7e\x80-\xff]*)?")
_DIGITS: Final = re.compile(f"[0-9]{{1,{_MAX_LENGTH_DIGITS}}}")

HEAD, LENGTH, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILERS, UNTIL_CLOSE, DONE = range(8)
_LINE_STATES: Final = frozenset({HEAD, CHUNK_SIZE, TRAILERS})


class MalformedResponse(ValueError):
    """The bytes break HTTP/1.1's response grammar or the router's bounds; the message says where."""


class Sink(Protocol):
    """Where a parsed answer goes."""

    def head_parsed(self, parser: ResponseParser) -> None: ...

    def body(self, data: bytes) -> None: ...

    def ended(self) -> None: ...


def _fields(data: bytes, start: int, end: int, what: str) -> list[tuple[str, str]]:
    """The field lines in `data[start:end]`, each ending in CRLF, as (name, value) with the value's surrounding
    whitespace removed."""
    if _FIELD_BLOCK.fullmatch(data, start, end) is None:
        at = start
        while (match := _ONE_FIELD.match(data, at, end)) is not None:
            at = match.end()
        bad = data[at : data.find(b"\r\n", at, end) if b"\r\n" in data[at:end] else end]
        raise MalformedResponse(f"malformed {what} field line {bad[:60]!r}")
    if end <= start:
        return []
    # Checked above: names are tokens (ASCII), so one latin-1 decode of the block serves names and values.
    lines = data[start : end - 2].decode("latin-1").split("\r\n")
    if len(lines) > MAX_FIELDS:
        raise MalformedResponse(f"more than {MAX_FIELDS} {what} fields")
    fields: list[tuple[str, str]] = []
    for line in lines:
        name, _, value = line.partition(":")
        fields.append((name, value.strip(" \t")))
    return fields


def _bare_line_end(data: bytes, start: int) -> bool:
    """A CR or LF from `start` on that is not part of a CRLF (a trailing lone CR may still get its LF)."""
    crlf = data.count(b"\r\n", start)
    cr = data.count(b"\r", start) - (1 if data.endswith(b"\r") else 0)
    return data.count(b"\n", start) != crlf or cr != crlf


class ResponseParser:
    """One answer: `feed` it the bytes as they arrive, `closed` when the connection ends. Calls the sink's
    `head_parsed` once (interim 1xx answers are skipped), `body` with each piece of the body, `ended` at
    its end; `extra` says whether bytes followed the end (the connection must not be reused)."""

    __slots__ = (
        "_buffer",
        "_left",
        "_sink",
        "_state",
        "_trailer_bytes",
        "content_length",
        "extra",
        "head_request",
        "headers",
        "keep_alive",
        "status",
        "steps",
    )

    def __init__(self, sink: Sink, head_request: bool = False) -> None:
        self._sink = sink
        self.head_request = head_request
        self._state = HEAD
        self._buffer = bytearray()
        self._left = 0
        self._trailer_bytes = 0
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.keep_alive = True
        self.content_length: int | None = None
        self.extra = False
        self.steps = 0

    @property
    def done(self) -> bool:
        return self._state == DONE

    @property
    def until_close(self) -> bool:
        return self._state == UNTIL_CLOSE

    @property
    def started(self) -> bool:
        """Some byte of the answer arrived."""
        return self._state != HEAD or bool(self._buffer) or self.status != 0

    def feed(self, data: bytes) -> None:
        if self._buffer:
            if b"\n" not in data and self._state in _LINE_STATES:
                self._partial(data)  # no line can end in it: kept without re-reading what came before
                return
            data = bytes(self._buffer) + data
            self._buffer = bytearray()
        if self._state == DONE:
            self.extra = self.extra or bool(data)
            return
        pos = 0
        size = len(data)
        sink = self._sink
        while pos < size:
            self.steps += 1
            state = self._state
            if state in (CHUNK_DATA, LENGTH):
                take = self._left if self._left < size - pos else size - pos
                sink.body(data[pos : pos + take] if pos or take < size else data)
                pos += take
                self._left -= take
                if not self._left:
                    if state == LENGTH:
                        self._end(pos < size)
                        return
                    self._state = CHUNK_END
            elif state == CHUNK_END:
                if size - pos < 2:
                    if data[pos] != 13:  # the CR of the CRLF after a chunk's data
                        raise MalformedResponse("a chunk's data is not followed by CRLF")
                    break
                if data[pos] != 13 or data[pos + 1] != 10:
                    raise MalformedResponse("a chunk's data is not followed by CRLF")
                pos += 2
                self._state = CHUNK_SIZE
            elif state == CHUNK_SIZE:
                end = data.find(b"\n", pos, pos + MAX_CHUNK_LINE + 2)
                if end < 0:
                    if size - pos > MAX_CHUNK_LINE:
                        raise MalformedResponse(f"a chunk-size line longer than {MAX_CHUNK_LINE} bytes")
                    break
                match = _CHUNK_LINE.fullmatch(data, pos, end - 1)
                if match is None or data[end - 1] != 13 or end == pos:
                    raise MalformedResponse(f"malformed chunk-size line {data[pos : end + 1][:40]!r}")
                pos = end + 1
                self._left = int(match.group(1), 16)
                self._state = CHUNK_DATA if self._left else TRAILERS
            elif state == TRAILERS:
                end = data.find(b"\n", pos)
                if end < 0:
                    if self._trailer_bytes + size - pos > MAX_HEAD:
                        raise MalformedResponse(f"trailers larger than {MAX_HEAD} bytes")
                    break
                if end == pos or data[end - 1] != 13:
                    raise MalformedResponse("a bare LF in the trailers")
                line = data[pos : end - 1]
                self._trailer_bytes += end + 1 - pos
                pos = end + 1
                if not line:
                    self._end(pos < size)
                    return
                if self._trailer_bytes > MAX_HEAD:
                    raise MalformedResponse(f"trailers larger than {MAX_HEAD} bytes")
                ((name, _),) = _fields(data, pos - len(line) - 2, pos, "trailer")
                if name.lower() in _FRAMING_FIELDS:
                    raise MalformedResponse(f"a {name} trailer: framing fields are not allowed in trailers")
            elif state == HEAD:
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    if size - pos > MAX_HEAD:
                        raise MalformedResponse(f"a response head larger than {MAX_HEAD} bytes")
                    if _bare_line_end(data, pos):
                        raise MalformedResponse("a bare CR or LF in the response head")
                    break
                if end - pos > MAX_HEAD:
                    raise MalformedResponse(f"a response head larger than {MAX_HEAD} bytes")
                self._head(data, pos, end)
                pos = end + 4
                if self._state == DONE:
                    self._end(pos < size)
                    return
            elif state == UNTIL_CLOSE:
                sink.body(data[pos:] if pos else data)
                pos = size
            else:
                raise AssertionError(f"parser state {state}")
        if pos < size:
            self._buffer = bytearray(data[pos:] if pos else data)

    def _partial(self, data: bytes) -> None:
        """More of a line (head, chunk size, trailer) that `data` does not end; its bounds checked."""
        buffer = self._buffer
        if (buffer[-1] == 13 and data) or b"\r" in data[:-1]:
            raise MalformedResponse("a bare CR in the response's framing")
        buffer += data
        state = self._state
        if state == HEAD and len(buffer) > MAX_HEAD:
            raise MalformedResponse(f"a response head larger than {MAX_HEAD} bytes")
        if state == CHUNK_SIZE and len(buffer) > MAX_CHUNK_LINE:
            raise MalformedResponse(f"a chunk-size line longer than {MAX_CHUNK_LINE} bytes")
        if state == TRAILERS and self._trailer_bytes + len(buffer) > MAX_HEAD:
            raise MalformedResponse(f"trailers larger than {MAX_HEAD} bytes")

    def closed(self) -> None:
        """The connection ended: the end of an answer read until close, an error anywhere else."""
        if self._state == UNTIL_CLOSE:
            self._end(False)
        elif self._state != DONE:
            where = "mid-answer" if self.started else "before answering"
            raise MalformedResponse(f"the upstream closed the connection {where}")

    def _end(self, extra: bool) -> None:
        self._state = DONE
        self.extra = extra
        self._buffer = bytearray()
        self._sink.ended()

    def _head(self, data: bytes, start: int, end: int) -> None:
        """The head in `data[start:end]` (its blank line follows)."""
        first = data.find(b"\r\n", start, end)
        line_end = end if first < 0 else first
        status_line = _STATUS_LINE.fullmatch(data, start, line_end)
        if status_line is None:
            raise MalformedResponse(f"malformed status line {data[start:line_end][:60]!r}")
        status = int(status_line.group(2))
        fields = _fields(data, line_end + 2, end + 2, "header") if first >= 0 else []
        headers: CIMultiDict[str] = CIMultiDict(fields)
        encodings = headers.getall("Transfer-Encoding", [])
        lengths = headers.getall("Content-Length", [])
        if encodings:
            if len(encodings) > 1 or encodings[0].lower() != "chunked":
                raise MalformedResponse(
                    f"Transfer-Encoding {', '.join(encodings)[:60]!r}: only a single `chunked` is accepted"
                )
            if lengths:
                raise MalformedResponse("both Transfer-Encoding and Content-Length")
        length = None
        if lengths:
            values = {v.strip(" \t") for line in lengths for v in line.split(",")}
            if len(values) != 1:
                raise MalformedResponse(f"conflicting Content-Length values {sorted(values)[:4]}")
            value = values.pop()
            if _DIGITS.fullmatch(value) is None:
                raise MalformedResponse(f"malformed Content-Length {value[:24]!r}")
            length = int(value)
        if status < 200:
            if status == 101:
                raise MalformedResponse("101 Switching Protocols to a request that asked for no upgrade")
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        tokens = {
            t.strip(" \t").lower() for line in headers.getall("Connection", []) for t in line.split(",")
        }
        http10 = status_line.group(1) == b"0"
        self.keep_alive = ("keep-alive" in tokens) if http10 else ("close" not in tokens)
        self.status = status
        self.headers = CIMultiDictProxy(headers)
        self.content_length = length
        if self.head_request or status in _NO_BODY_STATUS:
            self._state = DONE
        elif encodings:
            self._state = CHUNK_SIZE
        elif length is not None:
            self._left = length
            self._state = LENGTH if length else DONE
        else:
            self._state = UNTIL_CLOSE
            self.keep_alive = False
        self._sink.head_parsed(self)
