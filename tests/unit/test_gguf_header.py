"""The GGUF header reader: the real Gemma 3 270M header against llama.cpp's own Python reader (gguf), and hostile
input (not GGUF, truncated, oversized, malformed, fuzzed) that must end in one GGUFError, bounded in bytes read."""

from __future__ import annotations

import contextlib
import io
import struct
import tracemalloc
from pathlib import Path

import gguf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localai_operator.gguf.header import (
    GGUFError,
    GGUFHeader,
    GGUFHeaderTooLarge,
    GGUFMalformed,
    GGUFTruncated,
    GGUFUnsupportedVersion,
    NotGGUF,
    SkippedArray,
    read_header,
)
from tests.unit.gguf_samples import (
    GEMMA_FILE_SIZE,
    GEMMA_HEADER_BYTES,
    gemma_first_chunk,
    gemma_header,
    sparse_gemma,
)


class CountingStream(io.RawIOBase):
    """A stream that counts the bytes it handed out: what a range read would have had to fetch."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.handed = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        chunk = self._data.read(n)
        self.handed += len(chunk)
        return chunk


def parse(data: bytes, **kwargs: int) -> GGUFHeader:
    return read_header(io.BytesIO(data), **kwargs)


def test_the_gemma_header_matches_llama_cpps_own_reader(tmp_path: Path) -> None:
    with gemma_first_chunk().open("rb") as chunk:
        header = read_header(chunk, file_size=GEMMA_FILE_SIZE)
    oracle = gguf.GGUFReader(sparse_gemma(tmp_path))

    assert header.data_offset == oracle.data_offset == GEMMA_HEADER_BYTES
    assert header.file_size == GEMMA_FILE_SIZE
    assert [(t.name, t.type_name, t.shape, t.offset, t.n_elements, t.n_bytes) for t in header.tensors] == [
        (
            t.name,
            t.tensor_type.name,
            tuple(int(d) for d in t.shape),
            t.data_offset - oracle.data_offset,
            int(t.n_elements),
            int(t.n_bytes),
        )
        for t in oracle.tensors
    ]
    fields = {k: f for k, f in oracle.fields.items() if not k.startswith("GGUF.")}
    assert list(header.metadata) == list(fields)
    for key, field in fields.items():
        value = header.metadata[key]
        if isinstance(value, SkippedArray):
            assert (value.length, value.element_type) == (len(field.data), field.types[1].name.lower())
        elif isinstance(value, float):
            assert value == pytest.approx(field.contents())
        else:
            assert value == field.contents(), key


def test_the_gemma_header_reads_from_a_prefix_of_exactly_its_size() -> None:
    header = parse(gemma_header())

    assert header.metadata["general.architecture"] == "gemma3"
    assert header.metadata["tokenizer.ggml.tokens"] == SkippedArray("string", 262144)
    assert len(header.tensors) == 236


def test_a_prefix_short_of_the_tensor_table_is_truncated_and_says_how_much_it_needs() -> None:
    # The tensor table ends fewer than 32 bytes (the alignment) before the data: cut 40 bytes short of the data.
    with pytest.raises(GGUFTruncated) as raised:
        parse(gemma_header()[:-40])

    assert raised.value.available == GEMMA_HEADER_BYTES - 40
    assert raised.value.needed > raised.value.available
    assert "truncated" in str(raised.value)


def test_a_file_shorter_than_its_tensor_table_says_is_truncated() -> None:
    with pytest.raises(GGUFTruncated, match=f"the file has {GEMMA_FILE_SIZE - 1}"):
        parse(gemma_header(), file_size=GEMMA_FILE_SIZE - 1)


@pytest.mark.parametrize("cut", [5, 24, 1000, 200_000, 3_000_000, 6_000_000])
def test_a_header_cut_anywhere_is_truncated(cut: int) -> None:
    with pytest.raises(GGUFTruncated):
        parse(gemma_header()[:cut])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GGU",
        b'{"error": "not found"}',
        b"<!DOCTYPE html><html><body>Sign in to continue</body></html>",
        # a safetensors file: an 8-byte header length, then JSON
        struct.pack("<Q", 2) + b"{}",
        b"\x00" * 4096,
    ],
)
def test_what_is_not_gguf_is_said_to_be_not_gguf(data: bytes) -> None:
    with pytest.raises(NotGGUF, match=r"^not a GGUF file"):
        parse(data)


@pytest.mark.parametrize(
    ("version", "message"),
    [(1, "version 1 is not supported"), (4, "version 4"), (0x03000000, "big-endian")],
)
def test_unsupported_versions_are_named(version: int, message: str) -> None:
    with pytest.raises(GGUFUnsupportedVersion, match=message):
        parse(b"GGUF" + struct.pack("<I", version) + gemma_header()[8:])


def test_a_header_larger_than_the_cap_is_refused_without_reading_past_the_cap() -> None:
    stream = CountingStream(gemma_header())

    with pytest.raises(GGUFHeaderTooLarge, match="1048576 byte cap"):
        read_header(stream, max_header_bytes=1024 * 1024)

    assert stream.handed <= 1024 * 1024


def kv_header(n_kv: int, body: bytes, n_tensors: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + body


def key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        # counts no real model comes near, refused before any loop
        (kv_header(2**64 - 1, b""), GGUFMalformed, "metadata keys"),
        (b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0), GGUFMalformed, "tensors"),
        # a key or a string claiming exabytes
        (kv_header(1, struct.pack("<Q", 2**62)), GGUFMalformed, "key is"),
        (kv_header(1, key("k") + struct.pack("<IQ", 8, 2**62)), GGUFHeaderTooLarge, "cap"),
        # arrays longer than the cap could hold, of numbers and of strings
        (kv_header(1, key("k") + struct.pack("<IIQ", 9, 4, 2**60)), GGUFHeaderTooLarge, "uint32 values"),
        (kv_header(1, key("k") + struct.pack("<IIQ", 9, 8, 2**60)), GGUFHeaderTooLarge, "strings"),
        (kv_header(1, key("k") + struct.pack("<IIQ", 9, 9, 1)), GGUFMalformed, "nested arrays"),
        (kv_header(1, key("k") + struct.pack("<I", 13)), GGUFMalformed, "unknown value type 13"),
        (kv_header(2, key("k") + struct.pack("<IB", 0, 1) + key("k")), GGUFMalformed, "appears twice"),
        (kv_header(1, key("") + struct.pack("<IB", 0, 1)), GGUFMalformed, "empty"),
        (
            kv_header(1, key("general.alignment") + struct.pack("<II", 4, 48)),
            GGUFMalformed,
            "not a power of 2",
        ),
        (
            kv_header(1, key("general.alignment") + struct.pack("<IQ", 10, 32)),
            GGUFMalformed,
            "must be a uint32",
        ),
        # tensor infos: too many dimensions, a type ggml does not have, a row not made of whole blocks
        (kv_header(0, key("t") + struct.pack("<I", 5), n_tensors=1), GGUFMalformed, "5 dimensions"),
        (
            kv_header(0, key("t") + struct.pack("<IQIQ", 1, 32, 4, 0), n_tensors=1),
            GGUFMalformed,
            "unknown ggml type 4",
        ),
        (
            kv_header(0, key("t") + struct.pack("<IQIQ", 1, 33, 2, 0), n_tensors=1),
            GGUFMalformed,
            "not a multiple",
        ),
        (
            kv_header(0, key("t") + struct.pack("<IQQIQ", 2, 2**40, 2**40, 0, 0), n_tensors=1),
            GGUFMalformed,
            "int64",
        ),
        (
            kv_header(0, key("t") + struct.pack("<IQIQ", 1, 32, 0, 64), n_tensors=1),
            GGUFMalformed,
            "back to back",
        ),
    ],
)
def test_hostile_headers_fail_with_one_line_in_bounded_memory(
    data: bytes, error: type[GGUFError], message: str
) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(error, match=message) as raised:
            parse(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert "\n" not in str(raised.value)
    assert peak < 2 * 1024 * 1024


def test_big_arrays_are_skipped_and_small_per_layer_arrays_kept() -> None:
    body = (
        key("a.small")
        + struct.pack("<IIQ", 9, 4, 3)
        + struct.pack("<3I", 8, 8, 4)
        + key("a.flags")
        + struct.pack("<IIQ", 9, 7, 2)
        + bytes([1, 0])
        + key("a.big")
        + struct.pack("<IIQ", 9, 6, 5000)
        + bytes(4 * 5000)
    )

    metadata = parse(kv_header(3, body)).metadata

    assert metadata == {
        "a.small": (8, 8, 4),
        "a.flags": (True, False),
        "a.big": SkippedArray("float32", 5000),
    }


def mutate(header: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    data = bytearray(header[:cut])
    for position, value in edits:
        if position < len(data):
            data[position] = value
    return bytes(data)


# Mutations land mostly where the grammar lives, the metadata before the vocabulary and the tensor table at the
# end, and anywhere else (a vocabulary string's length).
_GRAMMAR = st.one_of(
    st.integers(0, 1500),
    st.integers(GEMMA_HEADER_BYTES - 12_000, GEMMA_HEADER_BYTES - 1),
    st.integers(0, GEMMA_HEADER_BYTES - 1),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(st.tuples(_GRAMMAR, st.integers(0, 255)), max_size=4),
    cut=st.one_of(st.just(GEMMA_HEADER_BYTES), st.integers(0, GEMMA_HEADER_BYTES)),
)
def test_mutations_of_the_real_header_parse_or_fail_with_a_gguf_error(
    edits: list[tuple[int, int]], cut: int
) -> None:
    data = mutate(gemma_header(), edits, cut)
    stream = CountingStream(data)

    try:
        header = read_header(stream, max_header_bytes=8 * 1024 * 1024)
    except GGUFError as err:
        assert "\n" not in str(err)
    else:
        assert header.data_offset <= 8 * 1024 * 1024

    assert stream.handed <= 8 * 1024 * 1024


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=512),
    prefix=st.sampled_from([b"", b"GGUF\x03\x00\x00\x00", b"GGUF\x02\x00\x00\x00"]),
)
def test_arbitrary_bytes_parse_or_fail_with_a_gguf_error(data: bytes, prefix: bytes) -> None:
    stream = CountingStream(prefix + data)

    with contextlib.suppress(GGUFError):
        read_header(stream)

    assert stream.handed <= len(prefix) + len(data)
