"""The upstream client's response parser (`router/framing.py`) against h11, an independent HTTP/1.1 parser, as
the oracle: generated answers, valid and mutated, fed in arbitrary splits. The parser never loops (its work is
bounded by the bytes fed), never accepts an answer h11 rejects, and agrees with h11 on the status and the body
of every answer it accepts; the known attacks on the old parser are each refused."""

from __future__ import annotations

import random

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localai_operator.router.framing import MAX_HEAD, MalformedResponse, ResponseParser

# Each hypothesis example derives this many answers from its base answer: splits and mutations of it.
VARIANTS_PER_EXAMPLE = 100
EXAMPLES = 1000
GENERATED = {"answers": 0}


class Sink:
    def __init__(self) -> None:
        self.status = 0
        self.pieces: list[bytes] = []
        self.done = False

    def head_parsed(self, parser: ResponseParser) -> None:
        assert not self.status, "one head per answer"
        self.status = parser.status

    def body(self, data: bytes) -> None:
        assert data and self.status and not self.done
        self.pieces.append(data)

    def ended(self) -> None:
        assert not self.done
        self.done = True


def ours(wire: bytes, cuts: list[int], head_request: bool) -> tuple[int, bytes] | None:
    """Status and body when our parser accepts the answer, None when it refuses it."""
    sink = Sink()
    parser = ResponseParser(sink, head_request)
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    try:
        for piece in pieces:
            parser.feed(piece)
            if sink.done:
                break
        if not sink.done:
            parser.closed()
    except MalformedResponse:
        return None
    finally:
        # Linear work: every pass of the parser's loop consumes input or returns.
        assert parser.steps <= len(wire), (parser.steps, len(wire))
    assert sink.done
    return sink.status, b"".join(sink.pieces)


def oracle(wire: bytes, head_request: bool) -> tuple[int, bytes] | None:
    """h11's reading of the first final answer, None when it refuses it."""
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=4 * MAX_HEAD)
    method = "HEAD" if head_request else "POST"
    connection.send(h11.Request(method=method, target="/", headers=[("Host", "x"), ("Content-Length", "0")]))
    connection.send(h11.EndOfMessage())
    connection.receive_data(wire)
    connection.receive_data(b"")
    status = 0
    body: list[bytes] = []
    try:
        while True:
            event = connection.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(body)
            elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return None
    except h11.RemoteProtocolError:
        return None


TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
names = st.text(alphabet=TCHAR, min_size=1, max_size=12).filter(
    lambda n: n.lower() not in ("content-length", "transfer-encoding", "connection")
)
values = st.binary(max_size=24).map(
    lambda b: bytes(c for c in b if c in range(0x21, 0x7F) or c >= 0x80 or c == 0x20).strip(b" ")
)
extra_fields = st.lists(st.tuples(names, values), max_size=4)
bodies = st.binary(max_size=200)


@st.composite
def answers(draw: st.DrawFn) -> tuple[bytes, int, bytes, bool]:
    """A valid answer: (wire bytes, status, body as framed, whether it answers a HEAD request)."""
    framing = draw(st.sampled_from(["length", "chunked", "close", "empty", "head"]))
    status = draw(st.sampled_from([200, 201, 400, 404, 429, 500, 503]))
    if framing == "empty":
        status = draw(st.sampled_from([204, 304]))
    version = b"HTTP/1.0" if framing == "close" and draw(st.booleans()) else b"HTTP/1.1"
    reason = draw(st.sampled_from([b" OK", b" Internal Server Error", b" ", b""]))
    fields = [(n.encode(), v) for n, v in draw(extra_fields)]
    body = draw(bodies)
    tail = b""
    if framing == "length":
        fields.append(
            (draw(st.sampled_from([b"Content-Length", b"content-length"])), str(len(body)).encode())
        )
        tail = body
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", draw(st.sampled_from([b"chunked", b"Chunked"]))))
        sizes = draw(st.lists(st.integers(1, 64), max_size=5))
        at = 0
        for size in sizes:
            piece = body[at : at + size]
            if not piece:
                break
            ext = draw(st.sampled_from([b"", b";a=b", b";x"]))
            tail += (
                f"{len(piece):{draw(st.sampled_from(['x', 'X']))}}".encode() + ext + b"\r\n" + piece + b"\r\n"
            )
            at += len(piece)
        body = body[:at]
        trailers = b"".join(n.encode() + b": " + v + b"\r\n" for n, v in draw(extra_fields))
        tail += b"0\r\n" + trailers + b"\r\n"
    elif framing == "close":
        tail = body
    else:
        body = b""
    if draw(st.booleans()):
        fields.insert(0, (b"Connection", draw(st.sampled_from([b"close", b"keep-alive", b"Upgrade, close"]))))
    interim = draw(
        st.sampled_from(
            [b"", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"]
        )
    )
    head = version + b" " + str(status).encode() + reason + b"\r\n"
    head += b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    return interim + head + b"\r\n" + tail, status, body, framing == "head"


# What the old parser took (Python's int(), "chunked" anywhere) and other classics of response smuggling.
NASTY = [
    b"-6", b"+5", b"0x5", b"0_5", b" 5", b"5 ", b"\n", b"\r", b"\x00", b"\r\n", b"\n\n", b"\r\n\r\n",
    b"Content-Length: -1\r\n", b"Content-Length: 1, 2\r\n", b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: notchunked\r\n", b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"Content-Length: 0\r\n", b" folded\r\n",
    b"X : y\r\n", b"HTTP/1.1 ", b"HTTP/1.1 101 Switching\r\n\r\n", b"ffffffffffffffffff", b";", b":", b"0\r\n\r\n",
]  # fmt: skip


def mutate(wire: bytes, rng: random.Random) -> bytes:
    data = bytearray(wire)
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(data))
        kind = rng.random()
        if kind < 0.35:
            data[at:at] = rng.choice(NASTY)
        elif kind < 0.6 and at < len(data):
            data[at] = rng.randrange(256)
        elif kind < 0.8:
            del data[at : at + rng.randint(1, 4)]
        else:
            data[at : at + rng.randint(0, 3)] = rng.choice(NASTY)
    return bytes(data)


def cuts_of(wire: bytes, rng: random.Random) -> list[int]:
    if not wire:
        return []
    count = rng.choice([0, 1, 2, 5, len(wire) // 3 + 1])
    return sorted({rng.randint(1, len(wire)) for _ in range(count)} - {len(wire)})


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
@given(answer=answers(), seed=st.integers(0, 2**32))
def test_the_parser_agrees_with_h11_never_accepts_what_it_refuses_and_never_loops(
    answer: tuple[bytes, int, bytes, bool], seed: int
) -> None:
    wire, status, body, head_request = answer
    rng = random.Random(seed)
    assert oracle(wire, head_request) == (status, body), "the generator makes valid answers"
    for index in range(VARIANTS_PER_EXAMPLE):
        variant = wire if index < VARIANTS_PER_EXAMPLE // 5 else mutate(wire, rng)
        accepted = ours(variant, cuts_of(variant, rng), head_request)
        GENERATED["answers"] += 1
        if variant is wire:
            assert accepted == (status, body), "a valid answer is read as framed, in any split"
        elif accepted is not None:
            assert accepted == oracle(variant, head_request), f"h11 reads {variant!r} differently"


def test_the_fuzz_run_generated_at_least_100_000_answers() -> None:
    # Runs after the property above in file order: the CI figure the issue asks for.
    assert GENERATED["answers"] >= 100_000, GENERATED


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("negative chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\nabc"),
        (
            "plus-signed chunk size",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
        ),
        ("0x chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"),
        (
            "underscore chunk size",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0_5\r\nhello\r\n0\r\n\r\n",
        ),
        ("negative Content-Length", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
        ("plus-signed Content-Length", b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"),
        (
            "conflicting Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        ("notchunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: notchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("chunked not last", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nhello"),
        (
            "both framings",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        ),
        ("bare LF in a header line", b"HTTP/1.1 200 OK\r\nX-A: b\nX-B: c\r\nContent-Length: 0\r\n\r\n"),
        ("bare LF line ends", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n"),
        ("NUL in a header value", b"HTTP/1.1 200 OK\r\nX-A: b\x00c\r\nContent-Length: 0\r\n\r\n"),
        ("space before the colon", b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello"),
        ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n"),
        ("huge chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 17 + b"\r\n"),
        ("oversized head", b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * (MAX_HEAD + 1)),
    ],
)
def test_each_known_attack_on_the_old_parser_is_refused(name: str, wire: bytes) -> None:
    for cuts in ([], list(range(1, len(wire)))):
        with pytest.raises(MalformedResponse):
            sink = Sink()
            parser = ResponseParser(sink)
            for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
                parser.feed(wire[a:b])
            parser.closed()
