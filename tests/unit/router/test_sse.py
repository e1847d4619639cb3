"""Events as LocalAI sends them: what is content, what is an error, and the non-stream answer they assemble."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localai_operator.router import codec, sse
from localai_operator.router.assemble import Assembler
from localai_operator.router.paths import StreamFormat

CHAT = StreamFormat.CHAT
ZERO = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "c1",
        "created": 1,
        "model": "m",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "finish_reason": finish, "delta": delta, **extra}],
        "usage": ZERO,
    }


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (None, sse.Kind.EMPTY),  # a comment or keep-alive
        (b"[DONE]", sse.Kind.DONE),
        (
            json.dumps(chunk({"role": "assistant"})).encode(),
            sse.Kind.EMPTY,
        ),  # LocalAI's first chunk, usage zeros
        (json.dumps(chunk({})).encode(), sse.Kind.EMPTY),
        (json.dumps(chunk({"content": ""})).encode(), sse.Kind.EMPTY),
        (json.dumps(chunk({"content": "Hi"})).encode(), sse.Kind.CONTENT),
        (json.dumps(chunk({"reasoning": "hmm"})).encode(), sse.Kind.CONTENT),
        (json.dumps(chunk({"tool_calls": [{"index": 0}]})).encode(), sse.Kind.CONTENT),
        (json.dumps(chunk({}, "stop")).encode(), sse.Kind.CONTENT),
        (json.dumps({"choices": [], "usage": {"completion_tokens": 3}}).encode(), sse.Kind.CONTENT),
        (json.dumps(chunk({"content": "Internal error: backend died"}, "stop")).encode(), sse.Kind.ERROR),
        (b'{"error":"Internal error"}', sse.Kind.ERROR),
        (b'{"error":{"message":"boom","type":"server_error"}}', sse.Kind.ERROR),
    ],
)
def test_events_are_told_apart_as_localai_sends_them(data: bytes | None, kind: sse.Kind) -> None:
    assert sse.classify(data, CHAT)[0] is kind


def test_completion_text_and_its_error_shape_are_recognised() -> None:
    text = {"choices": [{"index": 0, "text": "Hi", "finish_reason": None}]}
    failed = {"choices": [{"index": 0, "text": "Internal error: x", "finish_reason": "stop"}]}
    assert sse.kind_of(text, StreamFormat.COMPLETION) is sse.Kind.CONTENT
    assert sse.kind_of(failed, StreamFormat.COMPLETION) is sse.Kind.ERROR


def test_responses_events_before_the_first_delta_are_preamble() -> None:
    fmt = StreamFormat.RESPONSES
    assert sse.kind_of({"type": "response.created"}, fmt) is sse.Kind.EMPTY
    assert sse.kind_of({"type": "response.output_text.delta", "delta": "Hi"}, fmt) is sse.Kind.CONTENT
    assert sse.kind_of({"type": "response.failed"}, fmt) is sse.Kind.ERROR


def test_a_byte_stream_is_cut_into_events_wherever_reads_end() -> None:
    wire = (
        event(chunk({"role": "assistant"}))
        + b": keep-alive\n\n"
        + event(chunk({"content": "a"}))
        + b"data: [DONE]\n\n"
    )
    splitter = sse.EventSplitter()
    events = [e for i in range(0, len(wire), 7) for e in splitter.feed(wire[i : i + 7])]
    assert [sse.classify(sse.event_data(e), CHAT)[0] for e in events] == [
        sse.Kind.EMPTY,
        sse.Kind.EMPTY,
        sse.Kind.CONTENT,
        sse.Kind.DONE,
    ]
    assert splitter.pending == b""


def test_crlf_framed_and_multi_line_events_are_read_too() -> None:
    splitter = sse.EventSplitter()
    events = splitter.feed(b'event: x\r\ndata: {"a":\r\ndata: 1}\r\n\r\n')
    assert [sse.event_data(e) for e in events] == [b'{"a":\n1}']


def test_one_decode_reads_a_whole_canonical_read_and_refuses_anything_else() -> None:
    wire = event(chunk({"content": "a"})) + event(chunk({"content": "b"})) + b"data: [DONE]\n\n"
    payloads, done = sse.payloads_of(wire) or ([], False)
    assert done and [p["choices"][0]["delta"]["content"] for p in payloads] == ["a", "b"]
    assert sse.payloads_of(b": comment\n\n" + wire) is None
    assert sse.payloads_of(wire.replace(b"\n\n", b"\r\n\r\n")) is None


def test_the_assembled_answer_keeps_content_reasoning_tool_calls_logprobs_and_usage() -> None:
    assembler = Assembler(CHAT)
    lp = {"content": [{"token": "a", "logprob": -0.1}]}
    for payload in (
        chunk({"role": "assistant"}),
        chunk({"reasoning": "think "}),
        chunk({"content": "a"}, logprobs=lp),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"x"'},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        chunk({}, "tool_calls"),
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}},
    ):
        assembler.add(payload)
    answer = assembler.result()
    choice = answer["choices"][0]
    assert (answer["id"], answer["object"], answer["model"]) == ("c1", "chat.completion", "m")
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": "a",
        "reasoning": "think ",
        "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}],
    }
    assert choice["logprobs"] == lp
    assert answer["usage"]["completion_tokens"] == 4


def test_completions_and_several_choices_assemble_by_index() -> None:
    assembler = Assembler(StreamFormat.COMPLETION)
    for index, text in ((0, "a"), (1, "x"), (0, "b"), (1, "y")):
        assembler.add({"id": "c", "choices": [{"index": index, "text": text, "finish_reason": None}]})
    assembler.add({"id": "c", "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    answer = assembler.result()
    assert [(c["index"], c["text"], c["finish_reason"]) for c in answer["choices"]] == [
        (0, "ab", "stop"),
        (1, "xy", None),
    ]


USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


@pytest.mark.parametrize(
    "payloads",
    [
        # LocalAI v4.9.0: role with the first token, text, finish, usage trailer.
        [
            chunk({"role": "assistant", "content": "a"}),
            chunk({"content": "b"}),
            chunk({}, "stop"),
            {"id": "c1", "choices": [], "usage": USAGE},
        ],
        # v3.12.0: a role-only chunk first, usage of zeros on every chunk, counts on the last.
        [chunk({"role": "assistant"}), chunk({"content": "a"}), {**chunk({}, "length"), "usage": USAGE}],
        [chunk({"role": "tool"}), chunk({"content": None}), chunk({"content": ""}, "stop")],
        [{"id": "x", "choices": []}, chunk({"content": "late head"})],
        # Anything else leaves the one-read path: tool calls, logprobs, other keys, other indexes.
        [chunk({"content": "a"}), chunk({"tool_calls": [{"index": 0, "id": "t"}]}), chunk({}, "tool_calls")],
        [chunk({"content": "a"}, logprobs={"content": []}), chunk({}, "stop")],
        [chunk({"content": "a", "reasoning": "r"}), chunk({}, "stop")],
        [chunk({"content": 7}), chunk({}, "stop")],
        [{**chunk({"content": "a"}), "choices": [{"index": 1, "delta": {"content": "a"}}]}],
    ],
)
def test_one_read_assembles_the_answer_event_by_event_assembly_gives(payloads: list[Any]) -> None:
    at_once, one_by_one = Assembler(CHAT), Assembler(CHAT)
    at_once.add_all(json.loads(json.dumps(payloads)))
    for payload in json.loads(json.dumps(payloads)):
        one_by_one.add(payload)
    assert at_once.result() == one_by_one.result()
    assert at_once.finished == one_by_one.finished


@pytest.mark.parametrize(
    "wire",
    [
        b'[{"a": 1, "a": 2}, NaN, 123456789012345678901234567890, 1e400, "\\u00e9"]',
        b'["\\ud800 a lone surrogate escape"]',  # refused by pydantic-core, read by the stdlib
        '["utf-16, as json.loads detects it"]'.encode("utf-16"),
    ],
)
def test_events_decode_exactly_as_json_loads_decodes_them(wire: bytes) -> None:
    assert repr(codec.loads(wire)) == repr(json.loads(wire))


@pytest.mark.parametrize("wire", [b"", b"[1,]", b"[1] x", b'{"x": "\xff"}'])
def test_what_json_loads_refuses_is_a_value_error(wire: bytes) -> None:
    with pytest.raises(ValueError):
        codec.loads(wire)


@pytest.mark.parametrize(
    "value",
    [{"content": "é ✓", "n": 1.5e-7, "big": 2**70, "none": None}, {"content": "\ud800"}],
)
def test_an_assembled_answer_encodes_to_json_that_reads_back_the_same(value: Any) -> None:
    assert json.loads(codec.dumps(value)) == value
