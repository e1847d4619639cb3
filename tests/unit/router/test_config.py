"""The router config file: strict about unknown keys, and one policy definition shared with the CRD."""

from __future__ import annotations

import pytest
import yaml

from localai_operator import wire as rc
from localai_operator.api.route import FallbackRoute, FallbackRouteSpec


def load(data: dict[str, object]) -> rc.RouterConfig:
    return rc.RouterConfig.from_yaml(yaml.safe_dump(data))


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (
            {"local": {"endpoints": ["http://a/v1"]}, "fallback": {"baseUrl": "http://b/v1"}},
            "fallback.baseUrl",
        ),
        (
            {"local": {"endpoints": ["http://a/v1"]}, "policy": {"circuitBreaker": {"failureTreshold": 1}}},
            "policy.circuitBreaker.failureTreshold",
        ),
        ({"local": {"endpoints": ["http://a/v1"], "endpoint": "http://c/v1"}}, "local.endpoint"),
        ({"local": {"endpoints": ["http://a/v1"]}, "polcy": {}}, "polcy"),
    ],
)
def test_an_unknown_key_in_the_config_file_is_an_error_naming_it(data: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown key\(s\) in the router config: {named}"):
        load(data)


def test_a_config_without_endpoints_or_discovery_is_refused() -> None:
    with pytest.raises(ValueError, match="set endpoints"):
        load({"local": {}})


def test_the_crd_policy_is_the_router_policy() -> None:
    assert FallbackRouteSpec.model_fields["policy"].annotation is rc.Policy
    route = FallbackRoute.parse({"metadata": {"name": "r"}, "spec": {"primary": {"url": "http://x/v1"}}})
    assert route.spec.policy == rc.Policy()


def test_policy_defaults_are_the_documented_ones() -> None:
    policy = rc.Policy()
    assert (policy.first_token_timeout_ms, policy.connect_timeout_ms, policy.request_timeout_seconds) == (
        3000,
        2000,
        300,
    )
    assert (policy.circuit_breaker.failure_threshold, policy.circuit_breaker.open_seconds) == (5, 30)
    assert policy.max_request_bytes == 16 * 1024 * 1024
    assert (policy.affinity.enabled, policy.affinity.prefix_bytes) == (True, 4096)
    assert (policy.max_first_token_timeout_ms, policy.first_token_cap_ms) == (None, 60_000)


def test_an_unset_first_token_cap_is_never_below_the_base_budget() -> None:
    assert rc.Policy(first_token_timeout_ms=90_000).first_token_cap_ms == 90_000


def test_a_first_token_cap_below_the_base_budget_is_refused_naming_both() -> None:
    with pytest.raises(
        ValueError, match=r"maxFirstTokenTimeoutMs \(1000\) is below policy.firstTokenTimeoutMs \(3000\)"
    ):
        load({"local": {"endpoints": ["http://a/v1"]}, "policy": {"maxFirstTokenTimeoutMs": 1000}})


def test_a_rendered_config_round_trips() -> None:
    config = load(
        {
            "local": {"discovery": {"url": "http://p-pods.ns.svc:8080/v1"}},
            "fallback": {"baseURL": "https://c.example/v1", "paths": ["/chat/completions"]},
        }
    )
    assert rc.RouterConfig.from_yaml(config.to_yaml()) == config


def test_a_model_the_cloud_lists_is_sent_as_asked_and_others_mapped_or_defaulted() -> None:
    fallback = rc.Fallback(model_map={"local-a": "cloud-a"}, default_model="cloud-default")
    assert fallback.cloud_model("local-a", cloud_lists=False) == "cloud-a"
    assert fallback.cloud_model("gpt-4o", cloud_lists=True) == "gpt-4o"
    assert fallback.cloud_model("unlisted", cloud_lists=False) == "cloud-default"
