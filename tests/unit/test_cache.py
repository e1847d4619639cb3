"""The caches over Kopf's indexes (plain dicts of lists stand in for kopf.Index: the same read interface)."""

from __future__ import annotations

from typing import Any

from localai_operator.api.kinds import INFERENCE_POOL
from localai_operator.control import cache as c
from localai_operator.control.cache import Cache

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
    cache = Cache(clock=clock or Clock())
    cache.bind({name: indexes.get(name, {}) for name in c.INDEXES})
    return cache


def test_a_status_write_newer_than_the_watch_copy_is_what_the_next_pass_sees() -> None:
    cache = bound(pools={("pool", "ns", "p"): [obj("InferencePool", "p", "10")]})
    cache.wrote(obj("InferencePool", "p", "11", generation=1))
    assert cache.get(INFERENCE_POOL, "ns", "p")["metadata"]["resourceVersion"] == "11"


def test_the_watch_copy_wins_once_it_is_as_new_as_our_write() -> None:
    pools = {("pool", "ns", "p"): [obj("InferencePool", "p", "10")]}
    cache = bound(pools=pools)
    cache.wrote(obj("InferencePool", "p", "11"))
    pools[("pool", "ns", "p")] = [obj("InferencePool", "p", "12", labels={"new": "yes"})]
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
    assert list(cache.owned("p-uid")) == [("Service", "p")]


def test_our_copy_of_a_write_expires_so_nothing_stale_outlives_a_watch_outage() -> None:
    clock = Clock()
    cache = bound(clock)
    cache.wrote(obj("Service", "p", "5", ownerReferences=[OWNER]))
    clock.now += c.WRITTEN_TTL + 1
    assert cache.owned("p-uid") == {}


def test_an_object_deleted_by_hand_is_no_longer_owned() -> None:
    owned = {"p-uid": [obj("ConfigMap", "p-models", "7", ownerReferences=[OWNER])]}
    cache = bound(owned=owned)
    cache.wrote(obj("ConfigMap", "p-models", "8", ownerReferences=[OWNER]))
    owned["p-uid"] = []
    cache.deleted("ConfigMap", "ns", "p-models")
    assert cache.owned("p-uid") == {}


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


def test_a_secret_is_kept_as_its_version_and_key_names_only() -> None:
    secret = {"metadata": {"resourceVersion": "3"}, "data": {"api-key": "c2stc2VjcmV0"}}
    info = c.secret_info(secret)
    assert (info.resource_version, info.keys) == ("3", frozenset({"api-key"}))
    assert "c2stc2VjcmV0" not in repr(info)


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
    slice_ = {
        "endpoints": [
            {
                "addresses": ["10.0.0.7"],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "name": "chat-router-a"},
            },
            {
                "addresses": ["10.0.0.8"],
                "conditions": {"ready": False},
                "targetRef": {"kind": "Pod", "name": "chat-router-b"},
            },
        ]
    }
    assert c.router_endpoints(slice_) == (("chat-router-a", "10.0.0.7"),)


def test_an_hpa_is_matched_to_the_pool_it_scales_and_to_nothing_else() -> None:
    def hpa(kind: str, api_version: str) -> dict[str, Any]:
        return {"spec": {"scaleTargetRef": {"kind": kind, "apiVersion": api_version, "name": "gpu-pool"}}}

    assert c.hpa_target_pool(hpa("InferencePool", "llm.localai-operator.io/v1alpha1")) == "gpu-pool"
    assert c.hpa_target_pool(hpa("Deployment", "apps/v1")) is None
