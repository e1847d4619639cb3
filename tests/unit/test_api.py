"""The API models validate what the CRD's CEL rules validate, so offline render rejects the same input."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from localai_operator.api import FallbackRoute, InferencePool, LLMModel

SHA = "a" * 64


def model_body(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"source": {"url": "https://example.org/m.gguf", "sha256": SHA}}
    base.update(spec)
    return {"kind": "LLMModel", "metadata": {"name": "m", "namespace": "ai"}, "spec": base}


def route_body(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"primary": {"poolRef": {"name": "gpu-pool"}}}
    base.update(spec)
    return {"kind": "FallbackRoute", "metadata": {"name": "r", "namespace": "ai"}, "spec": base}


def test_a_model_with_both_sources_is_rejected() -> None:
    body = model_body(source={"url": "https://x/m.gguf", "huggingFace": {"repo": "a/b", "file": "m.gguf"}})
    with pytest.raises(ValidationError, match=r"exactly one of source\.huggingFace or source\.url"):
        LLMModel.parse(body)


def test_a_model_with_no_source_is_rejected() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        LLMModel.parse(model_body(source={"sha256": SHA}))


def test_a_sha256_that_is_not_64_hex_characters_is_rejected() -> None:
    with pytest.raises(ValidationError, match="sha256"):
        LLMModel.parse(model_body(source={"url": "https://x/m.gguf", "sha256": "abc"}))


def test_model_defaults_encode_the_tuning_advice() -> None:
    spec = LLMModel.parse(model_body()).spec
    assert (spec.batch, spec.mmap, spec.numa, spec.mlock, spec.kv_cache_type) == (
        512,
        True,
        False,
        False,
        "f16",
    )
    assert (
        spec.gpu_layers is None and spec.f16 is None
    )  # decided by the pool: all layers and f16 on GPU pools


def test_gpu_layers_accepts_all_auto_or_a_number_only() -> None:
    assert LLMModel.parse(model_body(gpuLayers="all")).spec.gpu_layers == "all"
    assert LLMModel.parse(model_body(gpuLayers="auto")).spec.gpu_layers == "auto"
    assert LLMModel.parse(model_body(gpuLayers=35)).spec.gpu_layers == 35
    with pytest.raises(ValidationError):
        LLMModel.parse(model_body(gpuLayers="most"))


def test_a_quantized_kv_cache_with_flash_attention_off_is_rejected() -> None:
    with pytest.raises(ValidationError, match="flash attention"):
        LLMModel.parse(model_body(kvCacheType="q8_0", flashAttention="off"))


def test_hugging_face_source_yields_the_resolve_url_and_file_name() -> None:
    body = model_body(source={"huggingFace": {"repo": "TheBloke/X-GGUF", "file": "x.Q4_K_M.gguf"}})
    source = LLMModel.parse(body).spec.source
    assert source.download_url() == "https://huggingface.co/TheBloke/X-GGUF/resolve/main/x.Q4_K_M.gguf"
    assert source.file_name() == "x.Q4_K_M.gguf"


def test_a_pool_needs_at_least_one_model() -> None:
    with pytest.raises(ValidationError, match="models"):
        InferencePool.parse({"metadata": {"name": "p"}, "spec": {"models": []}})


def test_a_route_with_both_primaries_is_rejected() -> None:
    body = route_body(primary={"poolRef": {"name": "p"}, "url": "http://h:8080/v1"})
    with pytest.raises(ValidationError, match=r"exactly one of primary\.poolRef or primary\.url"):
        FallbackRoute.parse(body)


def test_a_sensitive_route_with_an_enabled_fallback_is_rejected() -> None:
    body = route_body(
        fallback={"apiKeySecretRef": {"name": "k", "key": "api-key"}}, policy={"sensitive": True}
    )
    with pytest.raises(ValidationError, match="sensitive route never calls the cloud"):
        FallbackRoute.parse(body)


def test_a_sensitive_route_may_keep_a_disabled_fallback() -> None:
    body = route_body(
        fallback={"enabled": False, "apiKeySecretRef": {"name": "k", "key": "api-key"}},
        policy={"sensitive": True},
    )
    assert not FallbackRoute.parse(body).fallback_active


def test_fallback_defaults_to_holysheep_deepseek() -> None:
    route = FallbackRoute.parse(route_body(fallback={"apiKeySecretRef": {"name": "k", "key": "api-key"}}))
    assert route.spec.fallback is not None
    assert route.spec.fallback.base_url == "https://api.holysheep.ai/v1"
    assert route.spec.fallback.default_model == "deepseek-v3.2"


def test_unknown_fields_from_a_newer_crd_are_ignored() -> None:
    assert LLMModel.parse(model_body(someFutureField=1)).spec.batch == 512


def pool_body(**spec: Any) -> dict[str, Any]:
    return {"kind": "InferencePool", "metadata": {"name": "p"}, "spec": {"models": ["m"], **spec}}


def test_a_quantity_that_is_not_one_is_rejected_naming_the_field() -> None:
    body = pool_body(resources={"requests": {"cpu": "lots"}})
    with pytest.raises(ValidationError, match=r"(?s)resources\.requests\.cpu.*not a Kubernetes quantity"):
        InferencePool.parse(body)


@pytest.mark.parametrize("value", ["500m", "2", 2, "1.5", "16Gi", "1e3", "+1k"])
def test_kubernetes_quantities_are_accepted(value: object) -> None:
    body = pool_body(resources={"requests": {"cpu": value}})
    assert InferencePool.parse(body).spec.resources is not None


@pytest.mark.parametrize(
    ("rollout", "message"),
    [
        ({"maxSurge": 0, "maxUnavailable": 0}, "cannot both be 0"),
        ({"maxSurge": "0%", "maxUnavailable": 0}, "cannot both be 0"),
        ({"maxSurge": -1, "maxUnavailable": 1}, "maxSurge is a pod count"),
        ({"maxSurge": 1, "maxUnavailable": "half"}, "maxUnavailable is a pod count"),
        ({"maxSurge": "3", "maxUnavailable": 1}, "maxSurge is a pod count"),
    ],
)
def test_a_pool_rollout_that_could_never_progress_or_is_no_count_is_rejected(
    rollout: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        InferencePool.parse({"metadata": {"name": "p"}, "spec": {"models": ["m"], "rollout": rollout}})


def test_a_pool_rollout_takes_counts_and_percentages() -> None:
    body = {"models": ["m"], "rollout": {"maxSurge": "25%", "maxUnavailable": 0}}
    rollout = InferencePool.parse({"metadata": {"name": "p"}, "spec": body}).spec.rollout
    assert rollout is not None and (rollout.max_surge, rollout.max_unavailable) == ("25%", 0)
