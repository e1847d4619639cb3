"""FallbackRoute.spec.gateway: the HTTPRoute rendered to the route's Service only where the cluster serves the
Gateway API, its parents' Accepted/ResolvedRefs conditions copied into the route's status, and Ready independent
of both."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from localai_operator.api import FallbackRoute
from localai_operator.api.kinds import HTTP_ROUTE, OWNED
from localai_operator.constants import ROUTER_SERVICE_PORT
from localai_operator.control import plan as pl
from localai_operator.control import status as st
from localai_operator.control.cache import serves
from localai_operator.render import RenderSettings, route_objects
from localai_operator.render.route import http_route, service

GATEWAY = {
    "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
    "hostnames": ["llm.example.com"],
}
NOW = "2026-12-07T19:00:00Z"


def route_body(**spec: Any) -> dict[str, Any]:
    return {
        "kind": "FallbackRoute",
        "metadata": {"name": "chat", "namespace": "ai", "uid": "chat-uid", "generation": 3},
        "spec": {"primary": {"url": "http://localai.example:8080/v1"}, "policy": {"sensitive": True}, **spec},
    }


def parsed(**spec: Any) -> FallbackRoute:
    return FallbackRoute.parse(route_body(**spec))


def observed(
    body: dict[str, Any], gateway_api: bool, owned: dict[Any, Any] | None = None
) -> pl.RouteObserved:
    return pl.RouteObserved(body, {}, {}, owned=owned or {}, gateway_api=gateway_api)


def test_the_httproute_sends_the_prefix_on_the_hostnames_through_the_gateways_to_the_routes_service() -> None:
    route = parsed(gateway=GATEWAY)
    rendered = http_route(route)
    assert rendered is not None
    target = service(route)
    assert rendered["apiVersion"] == "gateway.networking.k8s.io/v1" and rendered["kind"] == "HTTPRoute"
    assert rendered["metadata"]["name"] == "chat" and rendered["metadata"]["namespace"] == "ai"
    [owner] = rendered["metadata"]["ownerReferences"]
    assert owner["uid"] == "chat-uid" and owner["controller"] is True and owner["kind"] == "FallbackRoute"
    assert rendered["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "public",
            "namespace": "gateways",
            "sectionName": "https",
        }
    ]
    assert rendered["spec"]["hostnames"] == ["llm.example.com"]
    [rule] = rendered["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    [backend] = rule["backendRefs"]
    assert (backend["kind"], backend["name"], backend["port"]) == ("Service", target["metadata"]["name"], 80)
    assert backend["port"] in {p["port"] for p in target["spec"]["ports"]} == {ROUTER_SERVICE_PORT}


def test_the_httproute_is_rendered_only_where_the_gateway_api_is_served() -> None:
    kinds = {o["kind"] for o in route_objects(parsed(gateway=GATEWAY), RenderSettings(), gateway_api=True)}
    assert HTTP_ROUTE.kind in kinds
    assert HTTP_ROUTE.kind not in {
        o["kind"] for o in route_objects(parsed(gateway=GATEWAY), RenderSettings())
    }
    assert HTTP_ROUTE.kind not in {
        o["kind"] for o in route_objects(parsed(), RenderSettings(), gateway_api=True)
    }


def test_the_httproute_is_an_owned_kind_so_it_is_watched_and_pruned_like_the_others() -> None:
    assert HTTP_ROUTE in OWNED


@pytest.mark.parametrize(
    "gateway",
    [
        {"parentRefs": []},
        {"parentRefs": [{"name": "Public"}]},
        {"parentRefs": [{"name": "p"}], "hostnames": ["http://llm.example.com"]},
        {"parentRefs": [{"name": "p"}], "pathPrefix": "v1"},
        {"parentRefs": [{"name": "p"}], "pathPrefix": "/v1//chat"},
        {"parentRefs": [{"name": "p"}], "pathPrefix": "/v1/.."},
        {"parentRefs": [{"name": "p", "port": 0}]},
    ],
)
def test_a_gateway_spec_gateway_api_would_refuse_is_refused_here_first(gateway: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parsed(gateway=gateway)


def test_without_the_gateway_api_the_plan_has_no_httproute_and_the_route_is_ready_saying_why() -> None:
    planned = pl.plan_route(observed(route_body(gateway=GATEWAY), False), RenderSettings(), pl.Renders())
    assert planned.objects is not None
    assert HTTP_ROUTE.kind not in {o["kind"] for o in planned.objects}
    status = st.route_status(dataclasses.replace(planned.facts, replicas=0), None, 3, NOW)
    conditions = {c.type: c for c in status.conditions}
    assert conditions["Ready"].status == "True"
    missing = conditions[st.HTTP_ROUTE_ACCEPTED]
    assert (missing.status, missing.reason) == ("False", "GatewayAPINotInstalled")
    assert "no HTTPRoute was made" in missing.message
    assert status.http_route is None


def test_with_the_gateway_api_the_plan_has_the_httproute_and_waits_for_its_gateway() -> None:
    planned = pl.plan_route(observed(route_body(gateway=GATEWAY), True), RenderSettings(), pl.Renders())
    assert planned.objects is not None
    assert HTTP_ROUTE.kind in {o["kind"] for o in planned.objects}
    status = st.route_status(dataclasses.replace(planned.facts, replicas=0), None, 3, NOW)
    conditions = {c.type: c for c in status.conditions}
    assert conditions["Ready"].status == "True"
    assert (conditions[st.HTTP_ROUTE_ACCEPTED].status, conditions[st.HTTP_ROUTE_ACCEPTED].reason) == (
        "Unknown",
        "Pending",
    )


def test_a_change_in_whether_the_gateway_api_is_served_changes_the_fingerprint() -> None:
    body = route_body(gateway=GATEWAY)
    assert pl.fingerprint(observed(body, False)) != pl.fingerprint(observed(body, True))


def live_http_route(*parents: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "HTTPRoute", "metadata": {"name": "chat"}, "status": {"parents": list(parents)}}


def parent(accepted: tuple[str, str, str], resolved: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "port": 443},
        "controllerName": "gateway.envoyproxy.io/gatewayclass-controller",
        "conditions": [
            {"type": "Accepted", "status": accepted[0], "reason": accepted[1], "message": accepted[2]},
            {"type": "ResolvedRefs", "status": resolved[0], "reason": resolved[1], "message": resolved[2]},
            {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "not ours to copy"},
        ],
    }


def route_status_with(live: dict[str, Any]) -> Any:
    facts = st.RouteFacts(
        name="chat",
        namespace="ai",
        primary="x",
        sensitive=True,
        replicas=0,
        gateway=st.GatewayFacts(name="chat", api_served=True, live=live),
    )
    return st.route_status(facts, None, 3, NOW)


def test_the_parents_accepted_and_resolvedrefs_conditions_are_copied_into_the_status() -> None:
    status = route_status_with(
        live_http_route(parent(("True", "Accepted", "ok"), ("True", "ResolvedRefs", "resolved")))
    )
    assert status.http_route is not None and status.http_route.name == "chat"
    [copied] = status.http_route.parents
    assert copied.parent_ref["name"] == "public" and copied.parent_ref["port"] == "443"
    assert copied.controller_name == "gateway.envoyproxy.io/gatewayclass-controller"
    assert [(c.type, c.status, c.reason) for c in copied.conditions] == [
        ("Accepted", "True", "Accepted"),
        ("ResolvedRefs", "True", "ResolvedRefs"),
    ]
    conditions = {c.type: c for c in status.conditions}
    assert (conditions[st.HTTP_ROUTE_ACCEPTED].status, conditions[st.HTTP_ROUTE_ACCEPTED].reason) == (
        "True",
        "Accepted",
    )
    assert 'Gateway "ai/public"' in conditions[st.HTTP_ROUTE_ACCEPTED].message


def test_a_parent_refusing_the_httproute_shows_its_reason_and_message_and_ready_stays_true() -> None:
    status = route_status_with(
        live_http_route(
            parent(
                ("True", "Accepted", "ok"),
                ("False", "BackendNotFound", 'Service "chat" not found'),
            )
        )
    )
    conditions = {c.type: c for c in status.conditions}
    refused = conditions[st.HTTP_ROUTE_ACCEPTED]
    assert (refused.status, refused.reason) == ("False", "BackendNotFound")
    assert "ResolvedRefs is False" in refused.message and 'Service "chat" not found' in refused.message
    assert conditions["Ready"].status == "True"


def test_a_gateway_controllers_hostile_condition_is_bounded_and_cannot_break_the_status() -> None:
    status = route_status_with(
        live_http_route(parent(("False", "not a reason!", "x" * 100_000), ("Maybe", "", "")))
    )
    hostile = live_http_route(parent(("True", "Accepted", ""), ("True", "ResolvedRefs", "")))
    hostile["status"]["parents"][0]["conditions"][0]["observedGeneration"] = "seven"
    hostile["status"]["parents"][0]["conditions"][0]["lastTransitionTime"] = {"not": "a time"}
    route_status_with(hostile)
    [copied] = status.http_route.parents
    accepted, resolved = copied.conditions
    assert accepted.reason == "Unknown" and len(accepted.message) == st.MESSAGE_LIMIT
    assert resolved.status == "Unknown"
    st.patch_of(status)  # dumps as the API server takes it


def test_the_gateway_api_counts_as_served_once_its_crd_is_established_with_v1_served() -> None:
    crd = {
        "spec": {"versions": [{"name": "v1", "served": True}, {"name": "v1beta1", "served": True}]},
        "status": {"conditions": [{"type": "Established", "status": "True"}]},
    }
    assert serves(crd, "v1")
    assert not serves({**crd, "status": {"conditions": [{"type": "Established", "status": "False"}]}}, "v1")
    assert not serves({**crd, "spec": {"versions": [{"name": "v1beta1", "served": True}]}}, "v1")


def test_a_gateway_api_crd_being_deleted_counts_as_not_served_so_no_httproute_is_applied_to_hold_its_deletion() -> (
    None
):
    """Server-side apply creates objects of a terminating CRD (only POST is refused), so the operator must stop
    applying as soon as the CRD is being deleted: the CI run that removed the Gateway API with a route live timed
    out after 120 s while the operator re-made its HTTPRoute behind the API server's clean-up."""
    crd = {
        "spec": {"versions": [{"name": "v1", "served": True}]},
        "status": {"conditions": [{"type": "Established", "status": "True"}]},
    }
    deleting = {**crd, "metadata": {"deletionTimestamp": "2026-12-08T00:00:00Z"}}
    assert serves(crd, "v1") and not serves(deleting, "v1")
    terminating = {"type": "Terminating", "status": "True", "reason": "InstanceDeletionInProgress"}
    assert not serves({**crd, "status": {"conditions": [*crd["status"]["conditions"], terminating]}}, "v1")


def gateway_section_yaml() -> list[list[dict[str, Any]]]:
    """The YAML blocks of docs/router.md's Gateway section, each as its documents."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "router.md").read_text()
    section = doc.split("## Through a Gateway: `spec.gateway`")[1].split("\n## ")[0]
    blocks = re.findall(r"^```yaml\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    return [list(yaml.safe_load_all(block)) for block in blocks]


def test_the_documented_route_renders_the_documented_httproute_to_its_service() -> None:
    [[body], _] = gateway_section_yaml()
    route = FallbackRoute.parse({**body, "metadata": {**body["metadata"], "uid": "u"}})
    rendered = http_route(route)
    assert rendered is not None
    assert rendered["spec"]["hostnames"] == ["llm.example.com"]
    assert rendered["spec"]["parentRefs"][0]["namespace"] == "gateways"


def test_the_envoy_ai_gateway_example_names_the_service_and_port_rendered_for_the_documented_route() -> None:
    [[body], envoy] = gateway_section_yaml()
    route = FallbackRoute.parse(body)
    rendered = service(route)
    by_kind = {o["kind"]: o for o in envoy}
    assert set(by_kind) == {"Backend", "AIServiceBackend", "AIGatewayRoute"}
    backend, ai_backend, ai_route = by_kind["Backend"], by_kind["AIServiceBackend"], by_kind["AIGatewayRoute"]
    [endpoint] = backend["spec"]["endpoints"]
    service_meta = rendered["metadata"]
    assert (
        endpoint["fqdn"]["hostname"]
        == f"{service_meta['name']}.{service_meta['namespace']}.svc.cluster.local"
    )
    assert [endpoint["fqdn"]["port"]] == [p["port"] for p in rendered["spec"]["ports"]]
    assert backend["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
    assert ai_backend["spec"]["schema"] == {"name": "OpenAI"}
    assert ai_backend["spec"]["backendRef"] == {
        "name": backend["metadata"]["name"],
        "kind": "Backend",
        "group": "gateway.envoyproxy.io",
    }
    [rule] = ai_route["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": ai_backend["metadata"]["name"]}]
    assert {o["metadata"]["namespace"] for o in envoy} == {route.namespace}
