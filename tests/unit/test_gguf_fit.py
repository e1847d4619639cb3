"""What status.gguf says of a header, and the GPU-memory fit computed from it, against numbers worked out by hand
(and, for the Gemma 3 270M header, against the buffer sizes llama.cpp logged for it: benchmarks/gguf_fit.py)."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest

from localai_operator.api.llmmodel import GGUFStatus, LLMModelSpec, LLMModelStatus
from localai_operator.gguf import fit
from localai_operator.gguf.facts import gguf_status
from localai_operator.gguf.header import GGUFError, GGUFHeader, Value, read_header
from tests.unit.gguf_samples import LLAMA_3_8B, MISTRAL_7B, Shape, gemma_header, write_header

MiB, GiB = 1024 * 1024, 1024 * 1024 * 1024

# Llama 3 8B in Q4_K (Q6_K output), worked out by hand:
# one layer: q and o 4096x4096, k and v 1024x4096, gate, up and down 14336x4096 = 218,103,808 elements of Q4_K
# (144 bytes per 256) = 122,683,392 bytes, plus two 4096-float norms (32,768 bytes).
LLAMA_LAYER = 218_103_808 * 144 // 256 + 2 * 4096 * 4
# output: 128256x4096 in Q6_K (210 bytes per 256) plus the output norm.
LLAMA_OUTPUT = 128256 * 4096 * 210 // 256 + 4096 * 4
# K and V of one token in one layer: 8 KV heads x 128 x 2 (K and V) x 2 bytes (f16); q8_0 34 and q4_0 18 bytes
# per 32 elements.
LLAMA_KV_F16, LLAMA_KV_Q8, LLAMA_KV_Q4 = 4096, 2048 // 32 * 34, 2048 // 32 * 18
# The compute buffer for 512 tokens, flash attention: the residual stream (4 x 4096 floats per token) and the
# feed-forward step (3 x 14336 floats per token), then the f16 mask of 8192 cells x 512 tokens. llama.cpp logged
# 124.00 MiB for this on the CPU.
LLAMA_COMPUTE_8K = 4 * (4 * 4096 + 3 * 14336) * 512 + 2 * 8192 * 512


@pytest.fixture(scope="module")
def gemma() -> GGUFStatus:
    return gguf_status(read_header(io.BytesIO(gemma_header())), file_size=253_113_024)


def status_of(shape: Shape, tmp_path: Path) -> GGUFStatus:
    with write_header(shape, tmp_path / "model.gguf").open("rb") as f:
        return gguf_status(read_header(f))


@pytest.fixture(scope="module")
def llama_header(tmp_path_factory: pytest.TempPathFactory) -> GGUFHeader:
    with write_header(LLAMA_3_8B, tmp_path_factory.mktemp("llama") / "llama.gguf").open("rb") as f:
        return read_header(f)


@pytest.fixture(scope="module")
def llama(llama_header: GGUFHeader) -> GGUFStatus:
    return gguf_status(llama_header)


def model(status: GGUFStatus, **settings: object) -> fit.Model:
    defaults: dict[str, object] = {"context_size": 8192, "gpu_layers": 999}
    return fit.Model("m", status, fit.Settings(**(defaults | settings)))  # type: ignore[arg-type]


def test_the_gemma_header_gives_its_shape_and_sizes(gemma: GGUFStatus) -> None:
    assert (gemma.architecture, gemma.name, gemma.quantization) == ("gemma3", "Gemma 3 270m", "Q4_K_M")
    assert (gemma.layers, gemma.trained_context, gemma.parameter_count) == (18, 32768, 268_098_176)
    assert (gemma.embedding_length, gemma.head_count, gemma.head_count_kv) == (640, 4, 1)
    assert (gemma.key_length, gemma.value_length, gemma.vocabulary_size) == (256, 256, 262144)
    assert gemma.file_size == 253_113_024
    # one KV head of 256 for K and 256 for V: 512 elements, 1,024 bytes in f16
    assert gemma.kv_bytes_per_token_per_layer.model_dump(by_alias=True) == {
        "f16": 1024,
        "q8_0": 544,
        "q4_0": 288,
    }
    # Gemma 3: every sixth layer has full attention, the others a 512-token window
    assert gemma.sliding_window == 512
    assert gemma.sliding_window_layers == [i for i in range(18) if i % 6 != 5]
    # the output layer is the token embeddings again (tied): llama.cpp copies them where the output layer goes
    assert gemma.output_bytes == 178_257_920 + 640 * 4
    assert gemma.input_bytes + sum(gemma.layer_bytes) + 640 * 4 == 253_113_024 - 6_525_120


def test_the_status_round_trips_through_the_crd_field_names(gemma: GGUFStatus) -> None:
    body = {"gguf": gemma.model_dump(by_alias=True, mode="json")}

    assert "headCountKV" in body["gguf"] and "layerKVElements" in body["gguf"]
    assert LLMModelStatus.model_validate(body).gguf == gemma


def test_gqa_kv_bytes_count_kv_heads_not_attention_heads(llama: GGUFStatus) -> None:
    assert llama.kv_bytes_per_token_per_layer.model_dump(by_alias=True) == {
        "f16": LLAMA_KV_F16,
        "q8_0": LLAMA_KV_Q8,
        "q4_0": LLAMA_KV_Q4,
    }
    assert llama.layer_bytes == [LLAMA_LAYER] * 32
    assert llama.output_bytes == LLAMA_OUTPUT
    assert llama.parameter_count == 8_030_261_248  # Llama 3 8B's published count
    assert llama.sliding_window_layers == []


def test_per_layer_kv_heads_and_a_sliding_window_pattern_are_read_per_layer(tmp_path: Path) -> None:
    shape = replace(
        MISTRAL_7B,
        arch="gemma2",
        layers=4,
        vocabulary=256,
        sliding_window=1024,
        extra=[("gemma2.attention.head_count_kv", [8, 0, 8, 4])],
    )

    status = status_of(shape, tmp_path)

    # a layer without KV heads (a recurrent layer of a hybrid model) has no KV cache
    assert status.layer_kv_elements == [8 * 256, 0, 8 * 256, 4 * 256]
    # gemma2 alternates: even layers slide, odd ones see everything
    assert (status.sliding_window, status.sliding_window_layers) == (1024, [0, 2])


def test_multi_head_latent_attention_caches_k_only(tmp_path: Path) -> None:
    shape = replace(
        MISTRAL_7B,
        arch="deepseek2",
        layers=2,
        vocabulary=256,
        kv_heads=1,
        extra=[
            ("deepseek2.attention.key_length", 576),
            ("deepseek2.attention.value_length", 512),
            ("deepseek2.attention.key_length_mla", 192),
        ],
    )

    assert status_of(shape, tmp_path).layer_kv_elements == [576, 576]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"llama.embedding_length": 2**40}, "llama.embedding_length is 1099511627776, more than a uint32"),
        ({"llama.attention.head_count_kv": (8,) * 31 + (2**33,)}, "holds a value larger than a uint32"),
        ({"llama.block_count": 5000}, "5000 layers"),
        ({"general.architecture": "llama-x"}, "no llama-x.block_count"),
    ],
)
def test_headers_the_fit_cannot_use_fail_with_a_gguf_error(
    llama_header: GGUFHeader, changes: dict[str, Value], message: str
) -> None:
    header = replace(llama_header, metadata={**llama_header.metadata, **changes})

    with pytest.raises(GGUFError, match=message):
        gguf_status(header)


def test_a_gguf_without_an_architecture_is_not_a_model() -> None:
    header = read_header(io.BytesIO(b"GGUF" + (3).to_bytes(4, "little") + bytes(16)))

    with pytest.raises(GGUFError, match=r"no general\.architecture"):
        gguf_status(header)


def test_llama_3_8b_on_one_gpu_adds_up_by_hand(llama: GGUFStatus) -> None:
    (usage,) = fit.gpu_memory(model(llama), gpus=1)

    assert usage.weights == 32 * LLAMA_LAYER + LLAMA_OUTPUT
    assert usage.kv_cache == 32 * 8192 * LLAMA_KV_F16 == 1 * GiB
    assert usage.compute == LLAMA_COMPUTE_8K == 124 * MiB


def test_gpu_layers_count_the_output_layer_first(llama: GGUFStatus) -> None:
    def on_gpu(layers: int) -> fit.Usage:
        return fit.gpu_memory(model(llama, gpu_layers=layers), gpus=1)[0]

    # With layers left on the CPU the prompt's products still run on the GPU, a layer's weights copied there.
    assert on_gpu(0) == fit.Usage(0, 0, LLAMA_COMPUTE_8K + LLAMA_LAYER)
    assert on_gpu(1) == fit.Usage(LLAMA_OUTPUT, 0, LLAMA_COMPUTE_8K + LLAMA_LAYER)  # the output layer only
    assert on_gpu(2).weights == LLAMA_OUTPUT + LLAMA_LAYER  # and the last repeating layer
    assert on_gpu(32).weights == LLAMA_OUTPUT + 31 * LLAMA_LAYER  # all but the first
    assert on_gpu(33) == on_gpu(999) == fit.Usage(LLAMA_OUTPUT + 32 * LLAMA_LAYER, 1 * GiB, LLAMA_COMPUTE_8K)


def test_llama_3_8b_on_a_5_gib_gpu_does_not_fit_and_says_what_would(llama: GGUFStatus) -> None:
    result = fit.check([model(llama)], gpu_memory_bytes=5 * GiB, gpus=1)

    usable = 5 * GiB - 512 * MiB
    # gpuLayers n puts the output layer and n - 1 layers (weights and 8192 x 4096 bytes of KV cache each) there,
    # next to the compute buffer and the copy of a CPU layer's weights: 26 layers, so 27.
    assert (usable - LLAMA_OUTPUT - LLAMA_COMPUTE_8K - LLAMA_LAYER) // (
        LLAMA_LAYER + 8192 * LLAMA_KV_F16
    ) == 26
    # all layers: weights + compute at context c = 4,479,508,480 + (32 x 4096 + 2 x 512) c bytes <= usable for
    # c <= 2667, so 2560 in steps of 256.
    # kvCacheType q8_0: 5,058,322,432 bytes (too many); q4_0: 4,789,886,976 (fits in 4,831,838,208).
    assert not result.fits
    assert result.suggestions == {"m": fit.Suggestion(gpu_layers=27, context_size=2560, kv_cache_type="q4_0")}
    assert fit.auto_gpu_layers(model(llama), gpu_memory_bytes=5 * GiB, gpus=1) == 27
    assert result.message() == (
        "needs 5.2 GiB on the GPU (weights 4.1 GiB, KV cache 1.0 GiB, compute buffers 124 MiB), more than the "
        "4.5 GiB usable of its 5.0 GiB (512 MiB go to the CUDA context): the largest that fit: gpuLayers 27, "
        "or contextSize 2560, or kvCacheType q4_0"
    )


def test_the_suggestions_do_fit_and_one_more_does_not(llama: GGUFStatus) -> None:
    suggestion = fit.check([model(llama)], gpu_memory_bytes=5 * GiB, gpus=1).suggestions["m"]

    def fits(**settings: object) -> bool:
        return fit.check([model(llama, **settings)], gpu_memory_bytes=5 * GiB, gpus=1).fits

    assert fits(gpu_layers=suggestion.gpu_layers) and not fits(gpu_layers=28)
    assert fits(context_size=suggestion.context_size) and not fits(context_size=2560 + 256)
    assert fits(kv_cache_type="q4_0") and not fits(kv_cache_type="q8_0")


def test_llama_3_8b_fits_a_6_gib_gpu(llama: GGUFStatus) -> None:
    result = fit.check([model(llama)], gpu_memory_bytes=6 * GiB, gpus=1)

    # 4,357,873,664 weights + 1 GiB KV + 124 MiB compute = 5,561,638,912 <= 6 GiB - 512 MiB
    assert result.fits and result.usage[0].total == 5_561_638_912
    assert result.message().startswith("needs 5.2 GiB on the GPU")
    assert "fits in the 5.5 GiB usable" in result.message()


def test_layers_split_over_two_gpus_the_output_layer_on_the_last(tmp_path: Path) -> None:
    mistral = status_of(MISTRAL_7B, tmp_path)
    output = 32000 * 4096 * 210 // 256 + 4096 * 4
    kv = 32768 * LLAMA_KV_F16
    compute = 4 * (4 * 4096 + 3 * 14336) * 512 + 2 * 32768 * 512

    first, second = fit.gpu_memory(model(mistral, context_size=32768), gpus=2)

    # 33 offloaded layers over [0.5, 1.0]: layer i goes to the first GPU while i / 33 < 0.5, i.e. layers 0-16
    assert first == fit.Usage(17 * LLAMA_LAYER, 17 * kv, compute)
    assert second == fit.Usage(15 * LLAMA_LAYER + output, 15 * kv, compute)
    uneven = fit.gpu_memory(model(mistral, context_size=32768, tensor_split=(3.0, 1.0)), gpus=2)
    assert uneven[0].weights == 25 * LLAMA_LAYER  # i / 33 < 0.75: layers 0-24
    assert not fit.check([model(mistral, context_size=32768)], gpu_memory_bytes=4 * GiB, gpus=2).fits
    assert fit.check([model(mistral, context_size=32768)], gpu_memory_bytes=5 * GiB, gpus=2).fits


def test_the_models_of_a_replica_share_its_gpu_and_each_gets_a_suggestion(llama: GGUFStatus) -> None:
    small = replace(model(llama, context_size=2048), name="small")
    big = replace(model(llama), name="big")

    alone = fit.check([big], gpu_memory_bytes=8 * GiB, gpus=1)
    together = fit.check([small, big], gpu_memory_bytes=8 * GiB, gpus=1)

    assert alone.fits and not together.fits
    assert together.usage[0] == fit.gpu_memory(small, 1)[0] + fit.gpu_memory(big, 1)[0]
    assert set(together.suggestions) == {"small", "big"}
    assert 'for model "big" the largest that fit: gpuLayers' in together.message()


def test_gemma_kv_cache_and_compute_buffer_match_what_llama_cpp_logged(gemma: GGUFStatus) -> None:
    # llama.cpp (LocalAI v4.9.0's, on the CPU) for this file, batch 512, flash attention auto:
    #   context 4096, 1 slot:  KV 12.00 + 15.00 MiB (4096 cells x 3 layers, 1024 cells x 15), compute 22.77 MiB
    #   context 8192, 4 slots: KV 32.00 + 29.50 MiB (8192 x 3, 2560 x 15), compute 28.27 MiB
    for context, slots, kv, compute in ((4096, 1, 27.0, 22.77), (8192, 4, 61.5, 28.27)):
        (usage,) = fit.gpu_memory(model(gemma, context_size=context, slots=slots), gpus=1)

        assert usage.kv_cache == kv * MiB
        assert usage.compute == pytest.approx(compute * MiB, rel=0.10)


def test_with_swa_full_the_sliding_window_layers_hold_the_whole_context_as_local_ai_logged(
    gemma: GGUFStatus,
) -> None:
    # The real local-ai v4.9.0 with a CPU pool's rendered YAML (options parallel:N, swa_full:true), this file,
    # batch 512, flash attention auto (benchmarks/gguf_fit.py --localai):
    #   context 4096, 1 slot:  KV 72.00 MiB (4096 cells x 18 layers), compute 25.77 MiB
    #   context 8192, 4 slots: KV 144.00 MiB (8192 x 18), compute 33.77 MiB
    for context, slots, kv, compute in ((4096, 1, 72.0, 25.77), (8192, 4, 144.0, 33.77)):
        (usage,) = fit.gpu_memory(model(gemma, context_size=context, slots=slots, swa_full=True), gpus=1)

        assert usage.kv_cache == kv * MiB
        assert usage.compute == pytest.approx(compute * MiB, rel=0.10)


@pytest.mark.parametrize(
    ("options", "full"),
    [
        ([], False),
        (["swa_full:true"], True),
        (["swa_full:on", "context_shift"], True),
        (["swa_full:true", "swa_full:0"], False),  # the backend reads them in order: the last wins
        (["swa_full:maybe"], False),  # a value it does not parse leaves its default
        (["swa_fullness:true"], False),
    ],
)
def test_swa_full_is_read_from_the_options_as_the_backend_reads_them(options: list[str], full: bool) -> None:
    assert fit.swa_full_of(options) is full


def test_without_flash_attention_the_scores_matrix_dominates(llama: GGUFStatus) -> None:
    (usage,) = fit.gpu_memory(model(llama, flash_attention=False), gpus=1)

    # 32 heads x 8192 cells x 512 tokens of float32 scores, with Q, K, V and the output, 4 residual rows and the
    # float32 mask: llama.cpp logged 572 MiB
    scores = 32 * 8192 * 512
    qkv = (32 * 128 + 8 * 256 + 32 * 128) * 512
    assert usage.compute == 4 * (4 * 4096 * 512 + scores + qkv) + 4 * 8192 * 512
    assert usage.compute == pytest.approx(572 * MiB, rel=0.10)


def test_settings_come_from_the_spec_as_the_pool_renders_it() -> None:
    spec = LLMModelSpec.model_validate(
        {
            "source": {"url": "https://models.example/m.gguf"},
            "contextSize": 16384,
            "kvCacheType": "q8_0",
            "batch": 1024,
            "tensorSplit": "3/1",
        }
    )

    assert fit.settings_of(spec, gpu_layers=999, slots=4) == fit.Settings(
        context_size=16384,
        gpu_layers=999,
        kv_cache_type="q8_0",
        slots=4,
        batch=1024,
        flash_attention=True,
        tensor_split=(3.0, 1.0),
    )
    off = spec.model_copy(update={"flash_attention": "off", "kv_cache_type": "f16", "tensor_split": None})
    assert not fit.settings_of(off, gpu_layers=0, slots=1).flash_attention
    assert fit.settings_of(spec, gpu_layers=0, slots=1, options=["parallel:1", "swa_full:true"]).swa_full
    with_option = spec.model_copy(update={"options": ["swa_full:true"]})
    assert fit.settings_of(with_option, gpu_layers=0, slots=1).swa_full
