"""The pure plan: from what the caches observed to the objects to own and the facts of the status."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from localai_operator.constants import ANNOTATION_APPLIED, LOCAL_API_KEY_ENV
from localai_operator.control import plan as pl
from localai_operator.control import status as st
from localai_operator.control.autoscale import ScaleState
from localai_operator.render import RenderSettings

SETTINGS = RenderSettings()


def model(name: str, generation: int = 1) -> dict[str, Any]:
    return {
        "kind": "LLMModel",
        "metadata": {"name": name, "namespace": "ns", "uid": f"{name}-uid", "generation": generation},
        "spec": {"source": {"url": f"https://models.example/{name}.gguf"}},
    }


def pool(name: str = "p", models: tuple[str, ...] = ("m",), **spec: Any) -> dict[str, Any]:
    return {
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": "ns", "uid": f"{name}-uid", "generation": 1},
        "spec": {"models": list(models), **spec},
    }


def route(name: str = "chat", pool_name: str = "p", **spec: Any) -> dict[str, Any]:
    return {
        "kind": "FallbackRoute",
        "metadata": {"name": name, "namespace": "ns", "uid": f"{name}-uid", "generation": 1},
        "spec": {"primary": {"poolRef": {"name": pool_name}}, **spec},
    }


def pool_observed(body: dict[str, Any], models: dict[str, Any], **extra: Any) -> pl.PoolObserved:
    return pl.PoolObserved(body=body, models=models, owned={}, unschedulable=None, gpu_nodes=(), **extra)


def route_observed(
    body: dict[str, Any], pools: dict[str, Any], secrets: dict[str, Any] | None = None
) -> pl.RouteObserved:
    names = pl.route_pool_names(body)
    return pl.RouteObserved(body, {n: pools.get(n) for n in names}, secrets or {}, owned={})


def test_a_pool_whose_models_all_exist_plans_its_objects_each_carrying_its_own_hash() -> None:
    planned = pl.plan_pool(pool_observed(pool(), {"m": model("m")}), SETTINGS, pl.Renders())
    assert planned.objects is not None
    assert {o["kind"] for o in planned.objects} >= {"ConfigMap", "Deployment", "Service"}
    assert all(ANNOTATION_APPLIED in o["metadata"]["annotations"] for o in planned.objects)


def test_a_pool_with_a_missing_model_plans_nothing_and_names_the_model() -> None:
    observed = pool_observed(pool(models=("m", "gone")), {"m": model("m"), "gone": None})
    planned = pl.plan_pool(observed, SETTINGS, pl.Renders())
    assert planned.objects is None
    assert planned.facts.missing_models == ("gone",)


def test_renders_are_reused_until_a_models_generation_changes() -> None:
    renders, calls = pl.Renders(), []

    def render() -> list[dict[str, object]]:
        calls.append(1)
        return [{"kind": "ConfigMap", "metadata": {"name": "p-models"}, "data": {"n": str(len(calls))}}]

    first = renders.get("p-uid", ("m", 1), render)
    again = renders.get("p-uid", ("m", 1), render)
    assert again == first and len(calls) == 1
    edited = renders.get("p-uid", ("m", 2), render)
    assert edited != first and len(calls) == 2
    planned = pl.plan_pool(pool_observed(pool(), {"m": model("m")}), SETTINGS, renders).objects
    assert planned == pl.plan_pool(pool_observed(pool(), {"m": model("m")}), SETTINGS, renders).objects


def test_every_quantity_the_schema_admits_is_rendered_as_the_api_server_writes_it() -> None:
    body = pool(resources={"requests": {"cpu": "1.5m", "memory": "+1Gi"}, "limits": {"cpu": "1Ki"}})
    planned = pl.plan_pool(pool_observed(body, {"m": model("m")}), SETTINGS, pl.Renders())
    assert planned.objects is not None and planned.facts.invalid is None
    (deployment,) = [o for o in planned.objects if o["kind"] == "Deployment"]
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    # The API server rounds a pod's resources up to a milli-unit: what it stores is what is rendered.
    assert resources == {"requests": {"cpu": "2m", "memory": "1Gi"}, "limits": {"cpu": "1Ki"}}


def test_a_gpu_pool_fits_only_nodes_matching_its_product() -> None:
    nodes = [({"nvidia.com/gpu.product": "A100"}, 4), ({"nvidia.com/gpu.product": "H100"}, 8)]
    body = pool(accelerator={"gpus": 2, "product": "A100"})
    planned = pl.plan_pool(pool_observed(body, {"m": model("m")}), SETTINGS, pl.Renders())
    assert planned.facts.largest_node_gpus == 0  # no node observed
    observed = pl.PoolObserved(body, {"m": model("m")}, {}, None, nodes)
    assert pl.plan_pool(observed, SETTINGS, pl.Renders()).facts.largest_node_gpus == 4


def test_a_route_named_like_a_pool_is_refused_and_owns_nothing() -> None:
    planned = pl.plan_route(route_observed(route("p"), {"p": pool("p")}), SETTINGS, pl.Renders())
    assert planned.objects == ()
    assert "another name" in (planned.facts.name_conflict or "")


def test_a_route_named_like_a_pools_headless_service_is_refused() -> None:
    planned = pl.plan_route(route_observed(route("p-pods"), {"p": pool("p")}), SETTINGS, pl.Renders())
    assert planned.objects == ()
    assert '"p-pods"' in (planned.facts.name_conflict or "")


def test_a_route_whose_deployment_name_a_pool_has_is_refused() -> None:
    observed = route_observed(route("chat"), {"chat-router": pool("chat-router")})
    planned = pl.plan_route(observed, SETTINGS, pl.Renders())
    assert planned.objects == ()


def test_a_route_to_a_missing_pool_still_plans_its_router() -> None:
    planned = pl.plan_route(route_observed(route("chat", "gone"), {}), SETTINGS, pl.Renders())
    assert planned.objects and planned.facts.missing_pool == "gone"


def test_a_route_without_its_fallback_secret_plans_nothing() -> None:
    body = route(fallback={"apiKeySecretRef": {"name": "key", "key": "api-key"}})
    planned = pl.plan_route(route_observed(body, {"p": pool()}), SETTINGS, pl.Renders())
    assert planned.objects is None
    assert '"key"' in (planned.facts.secret_problem or "")


def test_a_rotated_key_changes_the_routers_pod_template() -> None:
    body = route(fallback={"apiKeySecretRef": {"name": "key", "key": "api-key"}})

    def template(version: str) -> Any:
        secrets = {"key": pl.SecretInfo(version, frozenset({"api-key"}))}
        objects = pl.plan_route(route_observed(body, {"p": pool()}, secrets), SETTINGS, pl.Renders()).objects
        assert objects is not None
        [deployment] = [o for o in objects if o["kind"] == "Deployment"]
        return deployment["spec"]["template"]

    assert template("1") != template("2")


def test_a_pool_whose_models_download_different_files_of_one_name_is_refused_naming_both() -> None:
    a, b = model("a"), model("b")
    a["spec"]["source"] = {"url": "https://one.example/weights.gguf"}
    b["spec"]["source"] = {"url": "https://two.example/weights.gguf"}
    planned = pl.plan_pool(pool_observed(pool(models=("a", "b")), {"a": a, "b": b}), SETTINGS, pl.Renders())
    assert planned.objects is None
    conditions = {c.type: c for c in st.pool_checks(planned.facts)}
    spec_valid = conditions["SpecValid"]
    assert (spec_valid.ok, spec_valid.reason) == (False, "InvalidSpec")
    assert (
        '"a"' in spec_valid.message and '"b"' in spec_valid.message and "weights.gguf" in spec_valid.message
    )
    assert [c.type for c in st.pool_checks(planned.facts)].count("SpecValid") == 1


def pool_template(body: dict[str, Any], secrets: dict[str, pl.SecretInfo]) -> Any:
    observed = pool_observed(body, {"m": model("m")}, secrets=secrets)
    objects = pl.plan_pool(observed, SETTINGS, pl.Renders()).objects
    assert objects is not None
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    return deployment["spec"]["template"]


def test_a_rotated_pool_key_changes_the_pools_pod_template() -> None:
    body = pool(apiKeySecretRef={"name": "local-key", "key": "key"})
    one = pool_template(body, {"local-key": pl.SecretInfo("1", frozenset({"key"}))})
    two = pool_template(body, {"local-key": pl.SecretInfo("2", frozenset({"key"}))})
    assert one != two


def test_a_pool_without_its_key_secret_plans_nothing_and_names_the_secret() -> None:
    body = pool(apiKeySecretRef={"name": "local-key", "key": "key"})
    planned = pl.plan_pool(
        pool_observed(body, {"m": model("m")}, secrets={"local-key": None}), SETTINGS, pl.Renders()
    )
    assert planned.objects is None
    [check] = [c for c in st.pool_checks(planned.facts) if c.reason == "SecretMissing"]
    assert check.ok is False and '"local-key"' in check.message and "spec.apiKeySecretRef" in check.message


def router_env(observed: pl.RouteObserved) -> dict[str, Any]:
    objects = pl.plan_route(observed, SETTINGS, pl.Renders()).objects
    assert objects is not None
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0].get("env", [])}


def test_a_route_sends_its_pools_key_to_local_and_rolls_when_it_rotates() -> None:
    keyed = pool(apiKeySecretRef={"name": "local-key", "key": "key"})

    def observed(version: str) -> pl.RouteObserved:
        secrets = {"local-key": pl.SecretInfo(version, frozenset({"key"}))}
        return route_observed(route(), {"p": keyed}, secrets)

    env = router_env(observed("1"))
    assert env[LOCAL_API_KEY_ENV]["valueFrom"]["secretKeyRef"] == {"name": "local-key", "key": "key"}
    templates = [
        next(
            o
            for o in pl.plan_route(observed(v), SETTINGS, pl.Renders()).objects or ()
            if o["kind"] == "Deployment"
        )
        for v in ("1", "2")
    ]
    assert templates[0]["spec"]["template"] != templates[1]["spec"]["template"]


def test_a_route_whose_pools_key_secret_is_missing_still_deploys_its_router_without_it() -> None:
    keyed = pool(apiKeySecretRef={"name": "local-key", "key": "key"})
    env = router_env(route_observed(route(), {"p": keyed}, {"local-key": None}))
    assert LOCAL_API_KEY_ENV not in env


@pytest.mark.parametrize("policy", [{}, {"sensitive": True}], ids=["with-fallback-off", "sensitive"])
def test_a_route_without_a_client_key_secret_plans_nothing_and_is_not_ready_naming_it(policy: Any) -> None:
    body = route(auth={"clientKeySecrets": [{"name": "team-keys"}]}, policy=policy)
    planned = pl.plan_route(route_observed(body, {"p": pool()}), SETTINGS, pl.Renders())
    assert planned.objects is None
    ready = st.conditions(st.route_checks(planned.facts), [], 1, "t")[0]
    assert (ready.status, ready.reason) == ("False", "SecretMissing")
    assert '"team-keys"' in ready.message


def test_a_models_status_names_the_pools_serving_it() -> None:
    planned = pl.plan_model(pl.ModelObserved(model("m"), served_by=("a", "b")))
    assert planned.objects is None
    assert (planned.facts.served_by, planned.facts.file) == (("a", "b"), "m.gguf")


def test_a_pass_over_unchanged_inputs_is_recognised_and_any_new_version_is_not() -> None:
    def observed(model_version: str) -> pl.PoolObserved:
        m = model("m")
        m["metadata"]["resourceVersion"] = model_version
        return pool_observed(pool(), {"m": m})

    assert pl.fingerprint(observed("1")) == pl.fingerprint(observed("1"))
    assert pl.fingerprint(observed("1")) != pl.fingerprint(observed("2"))


# --- elastic pools ------------------------------------------------------------------------------------------------

AUTOSCALING = {"minReplicas": 0, "maxReplicas": 4, "scaleDownDelaySeconds": 60}


def deployment_replicas(planned: pl.Plan[st.PoolFacts]) -> int:
    assert planned.objects is not None
    [deployment] = [o for o in planned.objects if o["kind"] == "Deployment"]
    replicas: int = deployment["spec"]["replicas"]
    return replicas


def test_an_autoscaled_pool_renders_the_autoscalers_replicas_and_ignores_spec_replicas() -> None:
    scale = ScaleState(3, "ScaledUp", "demand")
    body = pool(replicas=1, autoscaling=AUTOSCALING)
    planned = pl.plan_pool(pool_observed(body, {"m": model("m")}, scale=scale), SETTINGS, pl.Renders())
    assert deployment_replicas(planned) == 3
    assert body["spec"]["replicas"] == 1
    status = st.pool_status(planned.facts, None, 1, "now")
    assert status.autoscaling is not None
    assert (status.autoscaling.desired_replicas, status.autoscaling.reason) == (3, "ScaledUp")


def test_a_new_autoscaled_pool_starts_at_min_replicas_before_the_first_look() -> None:
    body = pool(replicas=2, autoscaling={**AUTOSCALING, "minReplicas": 1})
    assert (
        deployment_replicas(pl.plan_pool(pool_observed(body, {"m": model("m")}), SETTINGS, pl.Renders())) == 1
    )


def test_an_autoscaled_pool_keeps_its_deployments_size_until_the_first_look() -> None:
    body = pool(autoscaling=AUTOSCALING)
    live = {("Deployment", "p"): {"kind": "Deployment", "metadata": {"name": "p"}, "spec": {"replicas": 2}}}
    observed = pl.PoolObserved(
        body=body, models={"m": model("m")}, owned=live, unschedulable=None, gpu_nodes=()
    )
    assert deployment_replicas(pl.plan_pool(observed, SETTINGS, pl.Renders())) == 2


def test_a_new_decision_changes_the_pools_fingerprint() -> None:
    body, models = pool(autoscaling=AUTOSCALING), {"m": model("m")}
    first = pl.fingerprint(pool_observed(body, models, scale=ScaleState(1, "ScaledUp", "")))
    assert first != pl.fingerprint(pool_observed(body, models, scale=ScaleState(2, "ScaledUp", "")))


def test_a_pool_route_renders_the_pools_slots_for_its_router() -> None:
    body = route()
    observed = pl.RouteObserved(
        body,
        {n: (pool() if n == "p" else None) for n in pl.route_pool_names(body)},
        {},
        owned={},
        models={"m": {**model("m"), "spec": {**model("m")["spec"], "parallel": 3}}},
    )
    planned = pl.plan_route(observed, SETTINGS, pl.Renders())
    assert planned.objects is not None
    [config_map] = [o for o in planned.objects if o["kind"] == "ConfigMap"]
    local = yaml.safe_load(config_map["data"]["router.yaml"])["local"]
    assert local["slots"] == {"m": 3}
