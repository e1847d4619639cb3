"""Property-based: any spec the models accept renders without error, deterministically and schema-valid."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from localai_operator.api import FallbackRoute, InferencePool, LLMModel
from localai_operator.render import pool_objects, route_objects

names = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}[a-z0-9]\Z")
hexes = st.text("0123456789abcdef", min_size=64, max_size=64)
files = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9._+-]{0,30}\.gguf\Z")

sources = st.one_of(
    st.builds(lambda f, sha: {"url": f"https://models.example/{f}", "sha256": sha}, files, st.none() | hexes),
    st.builds(
        lambda r, f, rev: {"huggingFace": {"repo": f"owner/{r}", "file": f, "revision": rev}},
        names,
        files,
        st.sampled_from(["main", "v1", "0123abc"]),
    ),
)
model_specs = st.fixed_dictionaries(
    {"source": sources},
    optional={
        "contextSize": st.integers(128, 1 << 20),
        "gpuLayers": st.one_of(st.integers(0, 200), st.just("all")),
        "f16": st.booleans(),
        "mmap": st.booleans(),
        "mlock": st.booleans(),
        "lowVRAM": st.booleans(),
        "batch": st.integers(1, 4096),
        "kvCacheType": st.sampled_from(["f16", "q8_0", "q4_0"]),
        "flashAttention": st.sampled_from(["auto", "on", "off"]),
        "parameters": st.fixed_dictionaries(
            {},
            optional={
                "temperature": st.floats(0, 2),
                "topP": st.floats(0, 1),
                "topK": st.integers(0, 100),
                "maxTokens": st.integers(1, 8192),
                "seed": st.integers(-(2**31), 2**31),
            },
        ),
        "stopwords": st.lists(st.text(min_size=1, max_size=8), max_size=3),
        "parallel": st.integers(1, 64),
        "embeddings": st.booleans(),
        "options": st.lists(
            st.sampled_from(["context_shift", "use_jinja", "cache_ram:4096", "n_ubatch:256"]), max_size=3
        ),
        "tensorSplit": st.sampled_from(["1", "3,1", "1/1/2"]),
        "mainGPU": st.integers(0, 7),
        "mmproj": st.builds(
            lambda sha: {"url": "https://models.example/mmproj-f16.gguf", "sha256": sha}, hexes
        ),
    },
)
pool_specs = st.fixed_dictionaries(
    {},
    optional={
        "replicas": st.integers(0, 5),
        "accelerator": st.fixed_dictionaries(
            {"gpus": st.integers(0, 8)},
            optional={"product": st.sampled_from(["NVIDIA-A100-SXM4-80GB", "NVIDIA-L4"])},
        ),
        "threads": st.integers(1, 64),
        "resources": st.fixed_dictionaries(
            {
                "requests": st.fixed_dictionaries(
                    {
                        "cpu": st.sampled_from(["500m", "2", "7500m", 16]),
                        "memory": st.sampled_from(["4Gi", "64Gi"]),
                    }
                )
            }
        ),
        "storage": st.fixed_dictionaries(
            {"size": st.sampled_from(["20Gi", "1Ti"])}, optional={"storageClassName": names}
        ),
        "nodeSelector": st.dictionaries(st.sampled_from(["zone", "team"]), names, max_size=2),
        "maxActiveBackends": st.integers(1, 4),
        "preinstallBackends": st.sampled_from([[], ["llama-cpp"]]),
        "parallelRequests": st.booleans(),
        "apiKeySecretRef": st.just({"name": "pool-key", "key": "token"}),
        "networkPolicy": st.fixed_dictionaries(
            {}, optional={"enabled": st.booleans(), "allowedNamespaces": st.lists(names, max_size=3)}
        ),
        "runAsUser": st.integers(1, 2**31 - 1),
        "extraEnv": st.lists(
            st.builds(lambda n: {"name": f"LOCALAI_{n.upper().replace('-', '_')}", "value": "1"}, names),
            max_size=3,
            unique_by=lambda e: e["name"],
        ),
    },
)
route_specs = st.fixed_dictionaries(
    {
        "primary": st.one_of(
            st.builds(lambda n: {"poolRef": {"name": n}}, names),
            st.just({"url": "http://workstation.lan:8080/v1"}),
        )
    },
    optional={
        "fallback": st.fixed_dictionaries(
            {"apiKeySecretRef": st.just({"name": "k", "key": "api-key"})},
            optional={"modelMap": st.dictionaries(names, names, max_size=3), "enabled": st.booleans()},
        ),
        "policy": st.fixed_dictionaries(
            {}, optional={"firstTokenTimeoutMs": st.integers(1, 600000), "sensitive": st.booleans()}
        ),
    },
)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse(cls: Any, name: str, spec: dict[str, Any]) -> Any:
    try:
        return cls.parse({"metadata": {"name": name, "namespace": "ns", "uid": "u"}, "spec": spec})
    except ValidationError:
        assume(False)


def _dump(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)


@PROPERTY
@given(model_spec=model_specs, pool_spec=pool_specs, model_name=names)
def test_every_accepted_pool_renders_deterministically_and_schema_valid(
    model_spec: dict[str, Any], pool_spec: dict[str, Any], model_name: str
) -> None:
    model = _parse(LLMModel, model_name, model_spec)
    pool = _parse(InferencePool, "pool", {**pool_spec, "models": [model_name]})
    first = pool_objects(pool, {model_name: model})
    assert _dump(first) == _dump(pool_objects(pool, {model_name: model}))
    for obj in first:
        kubernetes_validate.validate(obj, "1.34.0", strict=True)


@PROPERTY
@given(route_spec=route_specs)
def test_every_accepted_route_renders_deterministically_and_schema_valid(route_spec: dict[str, Any]) -> None:
    route = _parse(FallbackRoute, "route", route_spec)
    first = route_objects(route)
    assert _dump(first) == _dump(route_objects(route))
    for obj in first:
        kubernetes_validate.validate(obj, "1.34.0", strict=True)
