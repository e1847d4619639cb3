"""The GGUF header reader: metadata and tensor table from the start of a GGUF file, which is hostile input.

It reads a binary stream (a file, or the bytes of an HTTP range read of the file's first MiBs) and never anything
else: no seek, no memory map, so a prefix of the file is enough. Every length is bounded before it is used, and the
whole header must end within `max_header_bytes` (64 MiB by default; real headers are 1-20 MiB, most of it the
tokenizer's vocabulary). Large arrays (the vocabulary, its scores and merges) are skipped without being
materialised: their type and length are kept. The work is linear in the bytes read, so a header costs at most one
pass over 64 MiB (a few seconds of CPU at worst, for a header of millions of empty strings): run it off the event loop.

The grammar and its checks follow ggml's own reader (ggml/src/gguf.cpp): versions 2 and 3, little-endian, no nested
arrays, known tensor types, rows a multiple of the type's block, tensors laid out back to back at the alignment.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

MiB: Final = 1024 * 1024
MAX_HEADER_BYTES: Final = 64 * MiB
MAX_KEYS: Final = 65_536
MAX_TENSORS: Final = 65_536
MAX_KEY_BYTES: Final = 1024
# ggml's GGML_MAX_NAME: a tensor name is at most 63 bytes, and at most 4 dimensions (GGML_MAX_DIMS).
MAX_TENSOR_NAME_BYTES: Final = 63
MAX_DIMS: Final = 4
# What is kept of a value: strings up to 1 KiB and numeric arrays up to 1,024 elements (per-layer hyperparameters),
# within a budget for the whole header; anything longer is summarised by its length.
MAX_KEPT_STRING_BYTES: Final = 1024
MAX_KEPT_ARRAY: Final = 1024
KEPT_BUDGET_BYTES: Final = 1 * MiB
DEFAULT_ALIGNMENT: Final = 32
INT64_MAX: Final = 2**63 - 1
MAGIC: Final = b"GGUF"
VERSIONS: Final = (2, 3)
_CHUNK = 1 * MiB

# ggml type id -> (name, elements per block, bytes per block): ggml.c's type_traits at llama.cpp 4df29be (the ids
# that GGUF files may hold; 4, 5 and 31-33, 36-38 were removed from the format).
GGML_TYPES: Final[Mapping[int, tuple[str, int, int]]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
    42: ("Q2_0", 64, 18),
}

# GGUF value types: id -> (name, struct format of one element). 8 is a string, 9 an array.
_SCALARS: Final[Mapping[int, tuple[str, struct.Struct]]] = {
    0: ("uint8", struct.Struct("<B")),
    1: ("int8", struct.Struct("<b")),
    2: ("uint16", struct.Struct("<H")),
    3: ("int16", struct.Struct("<h")),
    4: ("uint32", struct.Struct("<I")),
    5: ("int32", struct.Struct("<i")),
    6: ("float32", struct.Struct("<f")),
    7: ("bool", struct.Struct("<B")),
    10: ("uint64", struct.Struct("<Q")),
    11: ("int64", struct.Struct("<q")),
    12: ("float64", struct.Struct("<d")),
}
_UINT32, _BOOL, _STRING, _ARRAY = 4, 7, 8, 9
_U32, _U64 = _SCALARS[4][1], _SCALARS[10][1]
ALIGNMENT_KEY: Final = "general.alignment"


class ByteStream(Protocol):
    """What the reader reads from: a file opened for binary reading, io.BytesIO, an HTTP body's sync reader."""

    def read(self, size: int, /) -> bytes | None: ...


class GGUFError(ValueError):
    """The file is not a GGUF header this reader accepts; the message is one line that says why."""


class NotGGUF(GGUFError):
    pass


class GGUFTruncated(GGUFError):
    """The data ends before the header (or, with the file size given, the tensor data) does."""

    def __init__(self, message: str, *, needed: int, available: int) -> None:
        super().__init__(message)
        self.needed = needed  # a lower bound: the byte offset the reader had to reach
        self.available = available


class GGUFHeaderTooLarge(GGUFError):
    pass


class GGUFUnsupportedVersion(GGUFError):
    pass


class GGUFMalformed(GGUFError):
    pass


@dataclass(frozen=True)
class SkippedArray:
    """An array that was not materialised: its element type and length."""

    element_type: str
    length: int


@dataclass(frozen=True)
class SkippedString:
    length: int


Scalar = int | float | bool | str
Value = Scalar | tuple[int | float | bool, ...] | SkippedArray | SkippedString


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    shape: tuple[int, ...]
    offset: int  # from the start of the data section
    n_elements: int
    n_bytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.ggml_type][0]


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    alignment: int
    metadata: Mapping[str, Value]
    tensors: tuple[TensorInfo, ...]
    data_offset: int  # where the tensor data starts: the header's size, padded to the alignment
    data_size: int  # the tensor data, each tensor padded to the alignment

    @property
    def file_size(self) -> int:
        """The size the file must have (at least) for its tensor table."""
        return self.data_offset + self.data_size


class _Reader:
    """Consumes a stream through a small buffer, counting the absolute offset and refusing to pass the cap."""

    def __init__(self, stream: ByteStream, cap: int) -> None:
        self._stream = stream
        self.cap = cap
        self._buf = b""
        self._pos = 0  # into _buf
        self._base = 0  # absolute offset of _buf[0]

    @property
    def offset(self) -> int:
        return self._base + self._pos

    @property
    def room(self) -> int:
        """Bytes left before the cap."""
        return self.cap - self.offset

    def _check_cap(self, end: int) -> None:
        if end > self.cap:
            raise GGUFHeaderTooLarge(
                f"GGUF header is larger than the {self.cap} byte cap (it reaches past byte {end})"
            )

    def _truncated(self, end: int, available: int) -> GGUFTruncated:
        return GGUFTruncated(
            f"GGUF header truncated: it needs at least {end} bytes, the data ends at {available}",
            needed=end,
            available=available,
        )

    def _need(self, n: int) -> None:
        """Make n bytes available at _pos (n is small: a number, a kept string or array), or raise."""
        end = self.offset + n
        self._check_cap(end)
        if self._pos + n <= len(self._buf):
            return
        parts = [self._buf[self._pos :]]
        self._base += self._pos
        have = len(parts[0])
        while have < n:
            chunk = self._stream.read(min(max(n - have, _CHUNK), self.cap - self._base - have))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        self._buf = b"".join(parts)
        self._pos = 0
        if have < n:
            raise self._truncated(end, self._base + have)

    def take(self, n: int) -> bytes:
        self._need(n)
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def unpack(self, fmt: struct.Struct) -> int:
        self._need(fmt.size)
        (value,) = fmt.unpack_from(self._buf, self._pos)
        self._pos += fmt.size
        return int(value)

    def skip(self, n: int) -> None:
        """Consume n bytes without keeping them: what is buffered, then the stream in chunks."""
        end = self.offset + n
        self._check_cap(end)
        buffered = min(n, len(self._buf) - self._pos)
        self._pos += buffered
        if buffered == n:
            return
        self._base += len(self._buf)
        self._buf, self._pos = b"", 0
        while self._base < end:
            chunk = self._stream.read(min(end - self._base, _CHUNK))
            if not chunk:
                raise self._truncated(end, self._base)
            self._base += len(chunk)

    def skip_strings(self, count: int) -> None:
        """Skip `count` length-prefixed strings: the vocabulary's hot loop, on the buffer directly."""
        unpack_from = _U64.unpack_from
        while count:
            buf, pos, end = self._buf, self._pos, len(self._buf)
            while count and pos + 8 <= end:
                (n,) = unpack_from(buf, pos)
                if pos + 8 + n > end:
                    break
                pos += 8 + n
                count -= 1
            self._pos = pos
            if count:
                self.skip(self.unpack(_U64))
                count -= 1


def read_header(
    stream: ByteStream, *, max_header_bytes: int = MAX_HEADER_BYTES, file_size: int | None = None
) -> GGUFHeader:
    """Read the header of the GGUF file whose first bytes `stream` yields.

    With `file_size` (a Content-Range total, a stat), a file too short for its own tensor table is GGUFTruncated.
    Raises a GGUFError subclass, with a one-line message, for anything else than a GGUF header it accepts.
    """
    reader = _Reader(stream, max_header_bytes)
    try:
        magic = reader.take(4)
    except GGUFTruncated as err:
        raise NotGGUF(f"not a GGUF file: {err.available} bytes, shorter than the magic") from None
    if magic != MAGIC:
        raise NotGGUF(f"not a GGUF file: it starts with {magic!r}, not {MAGIC!r}")
    version = reader.unpack(_U32)
    if version not in VERSIONS:
        if version & 0xFFFF == 0 and version >> 16:
            raise GGUFUnsupportedVersion("big-endian GGUF files are not supported")
        raise GGUFUnsupportedVersion(f"GGUF version {version} is not supported (only 2 and 3)")
    n_tensors = reader.unpack(_U64)
    n_kv = reader.unpack(_U64)
    if n_tensors > MAX_TENSORS:
        raise GGUFMalformed(f"GGUF header declares {n_tensors} tensors, more than the {MAX_TENSORS} allowed")
    if n_kv > MAX_KEYS:
        raise GGUFMalformed(f"GGUF header declares {n_kv} metadata keys, more than the {MAX_KEYS} allowed")

    metadata: dict[str, Value] = {}
    alignment = DEFAULT_ALIGNMENT
    budget = KEPT_BUDGET_BYTES
    for _ in range(n_kv):
        key = _read_text(reader, MAX_KEY_BYTES, "metadata key")
        if not key:
            raise GGUFMalformed("GGUF metadata key is empty")
        if key in metadata:
            raise GGUFMalformed(f"GGUF metadata key {key!r} appears twice")
        value_type = reader.unpack(_U32)
        value, cost = _read_value(reader, key, value_type, budget)
        budget -= cost
        metadata[key] = value
        if key == ALIGNMENT_KEY:
            if value_type != _UINT32 or not isinstance(value, int):
                raise GGUFMalformed(f"GGUF {ALIGNMENT_KEY} must be a uint32")
            if value <= 0 or value & (value - 1):
                raise GGUFMalformed(f"GGUF {ALIGNMENT_KEY} {value} is not a power of 2")
            alignment = value

    tensors: list[TensorInfo] = []
    names: set[str] = set()
    for _ in range(n_tensors):
        tensor = _read_tensor_info(reader)
        if tensor.name in names:
            raise GGUFMalformed(f"GGUF tensor {tensor.name!r} appears twice")
        names.add(tensor.name)
        tensors.append(tensor)

    data_offset = _pad(reader.offset, alignment) if n_tensors else reader.offset
    if data_offset > max_header_bytes:
        raise GGUFHeaderTooLarge(f"GGUF header is larger than the {max_header_bytes} byte cap")
    data_size = 0
    for tensor in tensors:
        if tensor.offset != data_size:
            raise GGUFMalformed(
                f"GGUF tensor {tensor.name!r} is at offset {tensor.offset}, expected {data_size} (tensors are "
                "laid out back to back)"
            )
        data_size += _pad(tensor.n_bytes, alignment)
    header = GGUFHeader(
        version=version,
        alignment=alignment,
        metadata=metadata,
        tensors=tuple(tensors),
        data_offset=data_offset,
        data_size=data_size,
    )
    if file_size is not None and header.file_size > file_size:
        raise GGUFTruncated(
            f"GGUF file truncated: its tensors end at byte {header.file_size}, the file has {file_size}",
            needed=header.file_size,
            available=file_size,
        )
    return header


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _read_text(reader: _Reader, limit: int, what: str) -> str:
    n = reader.unpack(_U64)
    if n > limit:
        raise GGUFMalformed(f"GGUF {what} is {n} bytes long, more than the {limit} allowed")
    return reader.take(n).decode("utf-8", errors="replace")


def _read_value(reader: _Reader, key: str, value_type: int, budget: int) -> tuple[Value, int]:
    """One metadata value of `value_type`, and what keeping it cost of the budget."""
    if value_type == _STRING:
        n = reader.unpack(_U64)
        if n > MAX_KEPT_STRING_BYTES or n > budget:
            reader.skip(n)
            return SkippedString(n), 0
        return reader.take(n).decode("utf-8", errors="replace"), n
    if value_type in _SCALARS:
        _, fmt = _SCALARS[value_type]
        (value,) = struct.unpack(fmt.format, reader.take(fmt.size))
        return (bool(value) if value_type == _BOOL else value), 0
    if value_type != _ARRAY:
        raise GGUFMalformed(f"GGUF key {key!r} has unknown value type {value_type}")
    element_type = reader.unpack(_U32)
    length = reader.unpack(_U64)
    if element_type == _STRING:
        # Each string takes at least its 8-byte length: more than fit before the cap cannot be a header.
        if length > reader.room // 8:
            raise GGUFHeaderTooLarge(
                f"GGUF key {key!r} holds {length} strings, more than fit in the {reader.cap} byte cap"
            )
        reader.skip_strings(length)
        return SkippedArray("string", length), 0
    if element_type not in _SCALARS:
        kind = "nested arrays" if element_type == _ARRAY else f"unknown element type {element_type}"
        raise GGUFMalformed(f"GGUF key {key!r} is an array of {kind}")
    name, fmt = _SCALARS[element_type]
    if length > reader.room // fmt.size:
        raise GGUFHeaderTooLarge(
            f"GGUF key {key!r} holds {length} {name} values, more than fit in the {reader.cap} byte cap"
        )
    cost = length * fmt.size
    if length > MAX_KEPT_ARRAY or cost > budget:
        reader.skip(cost)
        return SkippedArray(name, length), 0
    items = struct.unpack(f"<{length}{fmt.format[1:]}", reader.take(cost))
    if element_type == _BOOL:
        return tuple(bool(b) for b in items), cost
    return tuple(items), cost


def _read_tensor_info(reader: _Reader) -> TensorInfo:
    name = _read_text(reader, MAX_TENSOR_NAME_BYTES, "tensor name")
    n_dims = reader.unpack(_U32)
    if n_dims > MAX_DIMS:
        raise GGUFMalformed(f"GGUF tensor {name!r} has {n_dims} dimensions, more than {MAX_DIMS}")
    shape = tuple(reader.unpack(_U64) for _ in range(n_dims))
    n_elements = 1
    for dim in shape:
        n_elements *= dim
    if any(dim > INT64_MAX for dim in shape) or n_elements > INT64_MAX:
        raise GGUFMalformed(f"GGUF tensor {name!r} has more elements than an int64 holds")
    ggml_type = reader.unpack(_U32)
    if ggml_type not in GGML_TYPES:
        raise GGUFMalformed(f"GGUF tensor {name!r} has unknown ggml type {ggml_type}")
    _, block, block_bytes = GGML_TYPES[ggml_type]
    row = shape[0] if shape else 1
    if row % block:
        raise GGUFMalformed(
            f"GGUF tensor {name!r} has rows of {row} elements, not a multiple of its type's block of {block}"
        )
    offset = reader.unpack(_U64)
    return TensorInfo(
        name=name,
        ggml_type=ggml_type,
        shape=shape,
        offset=offset,
        n_elements=n_elements,
        n_bytes=n_elements // block * block_bytes,
    )
