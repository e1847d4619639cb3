"""The caches over Kopf's indexes (plain dicts of lists stand in for kopf.Index: the same read interface)."""

from __future__ import annotations

from typing import Any

import pydantic_core

from localai_operator.api.kinds import INFERENCE_POOL, LLM_MODEL
from localai_operator.control import cache as c
from localai_operator.control import plan as pl
from localai_operator.control import reconcile
from localai_operator.control.cache import Cache
from localai_operator.control.plan import Renders
from localai_operator.control.queue import Key, WorkQueue
from localai_operator.render import RenderSettings

OWNER = {
    "apiVersion": "llm.localai-operator.io/v1alpha1",
    "kind": "InferencePool",
    "name": "p",
    "uid": "p-uid",
    "controller": True,
}


def obj(kind: str, name: str, version: str, **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "uid": f"{name}-uid", "resourceVersion": version}
    return {"kind": kind, "metadata": {**meta, **extra}}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def bound(clock: Clock | None = None, **indexes: dict[Any, list[Any]]) -> Cache:
    """A cache over these indexes, objects packed as the index functions pack them. A test that changes an index
    later writes packed objects itself."""
    cache = Cache(clock=clock or Clock())
    cache.bind({name: packed(indexes.get(name, {})) for name in c.INDEXES})
    return cache


def packed(index: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
    return {
        key: [c.pack(v) if isinstance(v, dict) and "metadata" in v else v for v in values]
        for key, values in index.items()
    }


def test_a_status_write_newer_than_the_watch_copy_is_what_the_next_pass_sees() -> None:
    cache = bound(pools={("pool", "ns", "p"): [obj("InferencePool", "p", "10")]})
    cache.wrote(obj("InferencePool", "p", "11", generation=1))
    assert cache.get(INFERENCE_POOL, "ns", "p")["metadata"]["resourceVersion"] == "11"


def test_the_watch_copy_wins_once_it_is_as_new_as_our_write() -> None:
    pools = {("pool", "ns", "p"): [obj("InferencePool", "p", "10")]}
    cache = bound(pools=pools)
    cache.wrote(obj("InferencePool", "p", "11"))
    cache.indexes[c.POOLS] = packed(
        {("pool", "ns", "p"): [obj("InferencePool", "p", "12", labels={"new": "yes"})]}
    )
    assert cache.get(INFERENCE_POOL, "ns", "p")["metadata"]["labels"] == {"new": "yes"}


def test_a_deleted_custom_resource_stays_gone_whatever_we_wrote_before() -> None:
    cache = bound(pools={})
    cache.wrote(obj("InferencePool", "p", "11"))
    assert cache.get(INFERENCE_POOL, "ns", "p") is None


def test_the_watch_event_of_our_own_write_is_recognised_as_an_echo() -> None:
    cache = bound()
    cache.wrote(obj("InferencePool", "p", "11"))
    assert cache.is_echo(obj("InferencePool", "p", "11"))
    assert not cache.is_echo(obj("InferencePool", "p", "11"))  # the copy is dropped once echoed


def test_someone_elses_later_change_is_not_an_echo() -> None:
    cache = bound()
    cache.wrote(obj("InferencePool", "p", "11"))
    assert not cache.is_echo(obj("InferencePool", "p", "12"))


def test_an_object_we_just_created_is_owned_before_the_watch_delivers_it() -> None:
    cache = bound()
    cache.wrote(obj("Service", "p", "5", ownerReferences=[OWNER]))
    assert list(cache.owned("ns", "p-uid")) == [("Service", "p")]


def test_our_copy_of_a_write_expires_so_nothing_stale_outlives_a_watch_outage() -> None:
    clock = Clock()
    cache = bound(clock)
    cache.wrote(obj("Service", "p", "5", ownerReferences=[OWNER]))
    clock.now += c.WRITTEN_TTL + 1
    assert cache.owned("ns", "p-uid") == {}


def test_an_object_deleted_by_hand_is_no_longer_owned() -> None:
    owned = {("ns", "p-uid"): [obj("ConfigMap", "p-models", "7", ownerReferences=[OWNER])]}
    cache = bound(owned=owned)
    cache.wrote(obj("ConfigMap", "p-models", "8", ownerReferences=[OWNER]))
    cache.indexes[c.OWNED] = {("ns", "p-uid"): []}
    cache.deleted("ConfigMap", "ns", "p-models")
    assert cache.owned("ns", "p-uid") == {}


def test_an_object_in_another_namespace_naming_a_pools_uid_is_not_the_pools() -> None:
    # team-b's ConfigMap claims team-a's pool (same name, its uid) as controller: the index files it under team-b,
    # so team-a's pass neither counts nor prunes it.
    planted = obj("ConfigMap", "p-models", "7", ownerReferences=[OWNER])
    planted["metadata"]["namespace"] = "team-b"
    key = c.owned_key(planted)
    assert key == ("team-b", "p-uid")
    cache = bound(owned={key: [planted]})
    assert cache.owned("team-a", "p-uid") == {}
    cache.wrote(planted)
    assert cache.owned("team-a", "p-uid") == {}


def test_a_change_to_an_object_is_its_owners_concern_only_if_that_owner_exists_with_that_uid() -> None:
    pool = obj("InferencePool", "p", "1")
    pool["metadata"]["uid"] = "p-uid"
    cache = bound(pools={("pool", "ns", "p"): [pool]})
    assert cache.owner(obj("Service", "p", "3", ownerReferences=[OWNER])) == ("InferencePool", "p")
    forged = {**OWNER, "uid": "another-uid"}
    assert cache.owner(obj("Service", "p", "3", ownerReferences=[forged])) is None
    elsewhere = obj("Service", "p", "3", ownerReferences=[OWNER])
    elsewhere["metadata"]["namespace"] = "team-b"
    assert cache.owner(elsewhere) is None
    not_ours = {**OWNER, "kind": "Deployment", "apiVersion": "llm.localai-operator.io/v1alpha1"}
    assert cache.owner(obj("Service", "p", "3", ownerReferences=[not_ours])) is None


def test_a_pool_event_names_the_models_whose_served_by_it_changes() -> None:
    cache = bound()
    assert cache.pool_models_changed("ns", "p", ["a", "b"], gone=False) == {"a", "b"}  # it appeared
    assert cache.pool_models_changed("ns", "p", ["a", "b"], gone=False) == set()  # a status write
    assert cache.pool_models_changed("ns", "p", ["b", "c"], gone=False) == {"a", "c"}
    assert cache.pool_models_changed("ns", "p", ["b", "c"], gone=True) == {"b", "c"}


def test_dependents_are_due_at_a_first_event_a_new_generation_and_a_deletion_only() -> None:
    cache = bound()
    assert cache.spec_changed(INFERENCE_POOL, "ns", "p", 1, gone=False)
    assert not cache.spec_changed(INFERENCE_POOL, "ns", "p", 1, gone=False)
    assert cache.spec_changed(INFERENCE_POOL, "ns", "p", 2, gone=False)
    assert cache.spec_changed(INFERENCE_POOL, "ns", "p", 2, gone=True)


def test_the_echo_of_a_write_in_flight_is_held_back_and_dropped_when_the_response_comes() -> None:
    cache = bound()
    cache.writing("InferencePool", "ns", "p")
    assert cache.is_echo(obj("InferencePool", "p", "11"))  # held: the response will say
    assert not cache.wrote(obj("InferencePool", "p", "11"))  # it was our own: no pass needed


def test_someone_elses_change_during_our_write_asks_for_another_pass() -> None:
    cache = bound()
    cache.writing("InferencePool", "ns", "p")
    assert cache.is_echo(obj("InferencePool", "p", "11"))
    assert cache.wrote(obj("InferencePool", "p", "12"))


def test_a_refused_write_with_events_meanwhile_asks_for_another_pass() -> None:
    cache = bound()
    cache.writing("ConfigMap", "ns", "p-models")
    assert not cache.write_failed("ConfigMap", "ns", "p-models")
    cache.writing("ConfigMap", "ns", "p-models")
    cache.is_echo(obj("ConfigMap", "p-models", "3"))
    assert cache.write_failed("ConfigMap", "ns", "p-models")


def test_gpu_capacity_is_read_per_node_label_set() -> None:
    labels = frozenset({"nvidia.com/gpu.product": "A100"}.items())
    cache = bound(gpu_nodes={labels: [4, 8]})
    assert cache.gpu_nodes() == [({"nvidia.com/gpu.product": "A100"}, 8)]


def test_a_cordoned_node_offers_no_gpu() -> None:
    node = {"spec": {"unschedulable": True}, "status": {"allocatable": {"nvidia.com/gpu": "4"}}}
    assert c.schedulable_gpus(node) == 0
    assert c.schedulable_gpus({"status": {"allocatable": {"nvidia.com/gpu": "4"}}}) == 4


def test_router_pods_are_not_pool_pods() -> None:
    labels = {"app.kubernetes.io/instance": "chat", "app.kubernetes.io/component": "router"}
    assert c.pool_of_pod({"metadata": {"labels": labels}}) is None
    labels["app.kubernetes.io/component"] = "inference-server"
    assert c.pool_of_pod({"metadata": {"labels": labels}}) == "chat"


def test_the_cache_keeps_neither_managed_fields_nor_kubectls_copy_of_the_object() -> None:
    annotations = {c.LAST_APPLIED: "{...}", "team": "search"}
    body = obj("LLMModel", "m", "1", managedFields=[{"manager": "kubectl"}], annotations=annotations)
    kept = c.slim(body)["metadata"]
    assert "managedFields" not in kept and kept["annotations"] == {"team": "search"}


def test_a_router_services_slice_gives_its_ready_pods_and_addresses() -> None:
    def endpoint(address: str, ready: bool, target: dict[str, str] | None) -> dict[str, Any]:
        return {"addresses": [address], "conditions": {"ready": ready}, "targetRef": target}

    slice_ = {
        "endpoints": [
            endpoint("10.0.0.7", True, {"kind": "Pod", "name": "chat-router-a", "uid": "a-uid"}),
            endpoint("10.0.0.8", False, {"kind": "Pod", "name": "chat-router-b", "uid": "b-uid"}),
            endpoint("10.0.0.9", True, None),  # no pod named: nothing to check it against
            *[endpoint("10.0.1.1", True, {"kind": "Pod", "name": f"x{i}"}) for i in range(1000)],
        ]
    }
    found = c.router_endpoints(slice_)
    assert found[0] == c.Endpoint("chat-router-a", "a-uid", "10.0.0.7")
    assert len(found) == c.MAX_SLICE_ENDPOINTS - 2, "at most that many are looked at"


def test_an_hpa_is_matched_to_the_pool_it_scales_and_to_nothing_else() -> None:
    def hpa(kind: str, api_version: str) -> dict[str, Any]:
        return {"spec": {"scaleTargetRef": {"kind": kind, "apiVersion": api_version, "name": "gpu-pool"}}}

    assert c.hpa_target_pool(hpa("InferencePool", "llm.localai-operator.io/v1alpha1")) == "gpu-pool"
    assert c.hpa_target_pool(hpa("Deployment", "apps/v1")) is None


def test_the_identity_of_a_resource_is_read_without_unpacking_and_follows_our_newer_write() -> None:
    cache = bound(models={("model", "ns", "m"): [obj("LLMModel", "m", "10")]})
    assert cache.identity(LLM_MODEL, "ns", "m") == ("m-uid", "10", False)
    cache.wrote(obj("LLMModel", "m", "11"))
    assert cache.identity(LLM_MODEL, "ns", "m") == ("m-uid", "11", False)
    assert cache.identity(LLM_MODEL, "ns", "gone") is None


def test_a_large_object_is_kept_compressed_and_read_back_whole() -> None:
    config_map = {
        "kind": "ConfigMap",
        "metadata": {"name": "p-models", "namespace": "ns", "uid": "u", "resourceVersion": "7"},
        "data": {f"m{i}.yaml": f"name: m{i}\nparameters:\n  model: m{i}.gguf\n" * 8 for i in range(10)},
    }
    small = {
        "kind": "LLMModel",
        "metadata": {"name": "m", "namespace": "ns", "uid": "v", "resourceVersion": "8"},
    }
    packed, unpacked = c.pack(config_map), c.pack(small)
    assert len(packed.raw) < len(pydantic_core.to_json(config_map)) // 3
    assert packed.body() == config_map and unpacked.body() == small
    assert (packed.uid, packed.resource_version, unpacked.raw[:1]) == ("u", "7", b"{")


def test_a_pools_fingerprint_from_the_caches_versions_is_the_one_its_pass_computes() -> None:
    pool = obj("InferencePool", "p", "3", generation=1)
    pool["metadata"]["uid"] = "p-uid"
    pool["spec"] = {"models": ["m1", "m2", "m1"], "accelerator": {"gpus": 0}}
    cache = bound(
        pools={("pool", "ns", "p"): [pool]},
        models={("model", "ns", "m1"): [obj("LLMModel", "m1", "4")]},
        owned={("ns", "p-uid"): [obj("ConfigMap", "p-models", "7", ownerReferences=[OWNER])]},
    )
    cache.wrote(obj("Service", "p", "9", ownerReferences=[OWNER]))  # not delivered by the watch yet
    key = Key("InferencePool", "ns", "p")
    observed = reconcile._gather(cache, INFERENCE_POOL, key, cache.get(INFERENCE_POOL, "ns", "p") or {}, {})
    none: Any = None
    ctx = reconcile.Context(none, cache, Renders(), RenderSettings(), WorkQueue(), none)
    ctx.last_inputs[key] = hash(pl.fingerprint(observed))
    assert reconcile._pool_unchanged(ctx, key)
    cache.wrote(obj("LLMModel", "m1", "10"))  # a model it serves changed (its status, say)
    assert not reconcile._pool_unchanged(ctx, key)
    observed = reconcile._gather(cache, INFERENCE_POOL, key, cache.get(INFERENCE_POOL, "ns", "p") or {}, {})
    ctx.last_inputs[key] = hash(pl.fingerprint(observed))
    assert reconcile._pool_unchanged(ctx, key)
