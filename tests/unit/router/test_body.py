"""Request bodies read once: top-level spans, `model` and `stream`, rewrites from slices, depth limits."""

from __future__ import annotations

import json

import pytest

from localai_operator.router import body as bodies


@pytest.mark.parametrize("size", ["small", "large"])
def test_model_stream_and_member_spans_are_found(size: str) -> None:
    pad = "x" * (300_000 if size == "large" else 10)
    raw = (
        '{ "model" : "m\\u00e9" , "stream":true, "messages": [{"content": "say \\"}\\" ]", "pad": "'
        + pad
        + '"}]}'
    ).encode()
    body = bodies.parse(bytearray(raw))
    assert (body.model, body.stream) == ("mé", True)
    assert [m.key for m in body.members] == ["model", "stream", "messages"]
    messages = body.members[2]
    assert json.loads(raw[messages.value_start : messages.end])[0]["pad"] == pad


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[]", "must be a JSON object"),
        (b'{"a": }', "not valid JSON"),
        (b'{"a": 1,}', "not valid JSON"),
        (b'{"a": 1} trailing', "unexpected data"),
        (b'{"a": "unterminated', "not valid JSON"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused_with_where(size: str, raw: bytes, message: str) -> None:
    if size == "large":
        raw = (
            raw.replace(b"{", b'{"pad": "' + b"x" * 300_000 + b'", ', 1)
            if raw.startswith(b"{")
            else raw + b" " * 300_000
        )
    with pytest.raises(bodies.BodyError, match=message):
        bodies.parse(raw)


@pytest.mark.parametrize("size", ["small", "large"])
def test_deep_nesting_is_refused_without_recursing(size: str) -> None:
    pad = b'"' + b"x" * 300_000 + b'"' if size == "large" else b"1"
    raw = b'{"pad": ' + pad + b', "a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    with pytest.raises(bodies.BodyError, match="nests"):
        bodies.parse(raw)


def test_a_rewrite_replaces_in_place_drops_and_appends_keeping_every_other_byte() -> None:
    raw = b'{"model": "a",  "top_k": 40, "messages": [ {"x": 1} ], "n": 2}'
    body = bodies.parse(raw)
    out = bodies.joined(body.rewritten(drop={"top_k"}, put={"model": b'"b"', "stream": b"true"}))
    # Members kept side by side stay one slice, separators and spacing included.
    assert out == b'{"model": "b","messages": [ {"x": 1} ], "n": 2,"stream":true}'
    assert json.loads(out) == {"model": "b", "messages": [{"x": 1}], "n": 2, "stream": True}


def test_a_rewrite_of_a_large_body_shares_its_bytes() -> None:
    raw = bytearray(b'{"model": "a", "messages": "' + b"x" * 1_000_000 + b'"}')
    segments = bodies.parse(raw).rewritten(put={"model": b'"b"'})
    assert any(isinstance(s, memoryview) and s.obj is raw and len(s) > 1_000_000 for s in segments)
    assert json.loads(bodies.joined(segments))["model"] == "b"


def test_localai_only_fields_include_the_samplers_the_cloud_rejects() -> None:
    assert {"top_k", "mirostat", "grammar", "repeat_penalty", "min_p"} <= bodies.LOCALAI_ONLY_FIELDS
    assert not {"temperature", "top_p", "n", "seed", "stop", "tools", "logprobs"} & bodies.LOCALAI_ONLY_FIELDS


def test_members_are_appended_in_one_copy_to_a_small_body_that_lacks_them() -> None:
    keys = frozenset({"stream", "stream_options"})
    members = b'"stream":true,"stream_options":{"include_usage":true}'
    out = bodies.parse(b' { "model": "a", "n": [1, 2] } ').appended(keys, members)
    assert out is not None
    assert json.loads(out) == {
        "model": "a",
        "n": [1, 2],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    # Present already (even as false), no members, or a large body: a rewrite does it instead.
    assert bodies.parse(b'{"model": "a", "stream": false}').appended(keys, members) is None
    assert bodies.parse(b"{}").appended(keys, members) is None
    large = b'{"pad": "' + b"x" * bodies.APPEND_LIMIT + b'"}'
    assert bodies.parse(large).appended(keys, members) is None
