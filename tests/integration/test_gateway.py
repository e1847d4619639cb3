"""FallbackRoute.spec.gateway on the real control plane, with the Gateway API's standard-channel CRDs from its Go
module (gomodules.GATEWAY_API_VERSION) installed by the test that needs them and removed after it: the HTTPRoute
passes the API server's validation, is owned by the route and garbage-collected with it, its parents' conditions
(written here as a Gateway controller would) reach the route's status; without the CRDs the route is Ready and
says that no HTTPRoute was made."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from localai_operator.api.kinds import HTTP_ROUTE
from localai_operator.devcluster.gomodules import gateway_api_crds
from tests.helpers import ClusterAccess, kubectl, wait_for
from tests.operator_process import CustomResources, OperatorProcess

pytestmark = pytest.mark.cluster
T = 60
GATEWAY = {"parentRefs": [{"name": "public", "sectionName": "http"}], "hostnames": ["llm.example.com"]}
NOW = "2026-12-07T19:00:00Z"
GROUP = HTTP_ROUTE.group


def route(**spec: Any) -> dict[str, Any]:
    return {
        "kind": "FallbackRoute",
        "metadata": {"name": "chat"},
        "spec": {"primary": {"url": "http://localai.example:8080/v1"}, "policy": {"sensitive": True}, **spec},
    }


def condition(crs: CustomResources, type_: str) -> dict[str, Any] | None:
    return crs.condition("FallbackRoute", "chat", type_)


@pytest.fixture
def install_gateway_api(cluster: ClusterAccess) -> Iterator[Callable[[], None]]:
    """Installs the Gateway API CRDs when called (server-side apply, then Established); removes them after."""
    files = gateway_api_crds()
    assert any(p.name.endswith("_httproutes.yaml") for p in files), files
    extensions = client.ApiextensionsV1Api(cluster.api)
    installed: list[str] = []

    def install() -> None:
        result = kubectl(cluster, "apply", "--server-side", *(a for p in files for a in ("-f", str(p))))
        assert result.returncode == 0, result.stderr
        installed.extend(
            c.metadata.name
            for c in extensions.list_custom_resource_definition().items
            if c.spec.group == "gateway.networking.k8s.io"
        )
        kubectl(
            cluster, "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in installed)
        )
        # Established comes before the API server's cache of the new resource is filled, and a CRD deleted
        # meanwhile waits on that: its clean-up's first list gets 429 "storage is (re)initializing" and is retried
        # with a backoff that doubles (a grpcroutes CRD, never used, took over 150 s to go in one run). Each
        # resource listed once is served from a filled cache.
        crds = [c for c in extensions.list_custom_resource_definition().items if c.metadata.name in installed]
        for crd in crds:
            wait_for(lambda crd=crd: listable(cluster, crd), T, f"{crd.metadata.name} to be listed")

    yield install
    if installed:
        remove_gateway_api(cluster, installed)


def listable(cluster: ClusterAccess, crd: Any) -> bool:
    served = next(v.name for v in crd.spec.versions if v.served)
    try:
        # No limit: a limited list is served from etcd while the cache fills, this one only by the cache.
        client.CustomObjectsApi(cluster.api).list_cluster_custom_object(
            crd.spec.group, served, crd.spec.names.plural
        )
    except client.ApiException as err:
        if err.status in (404, 429, 503):
            return False
        raise
    return True


def remove_gateway_api(cluster: ClusterAccess, names: list[str]) -> None:
    """Deletes the CRDs and waits until they are gone; if they are not within 150 s, fails with what holds them:
    the HTTPRoutes left (their finalizers, times and managers) and the CRDs' conditions."""
    result = kubectl(cluster, "delete", "crd", *names, "--ignore-not-found", "--wait=false")
    assert result.returncode == 0, result.stderr
    extensions = client.ApiextensionsV1Api(cluster.api)

    def left() -> list[Any]:
        return [c for c in extensions.list_custom_resource_definition().items if c.metadata.name in names]

    try:
        wait_for(lambda: not left(), 150, "the Gateway API CRDs to be deleted")
    except AssertionError as err:
        routes = kubectl(cluster, "get", "httproutes", "-A", "-o", "yaml", "--show-managed-fields")
        held = [
            {
                "name": c.metadata.name,
                "conditions": [(x.type, x.status, x.reason, x.message) for x in c.status.conditions or []],
            }
            for c in left()
        ]
        raise AssertionError(
            f"{err}\nCRDs left: {held}\nHTTPRoutes:\n{routes.stdout}{routes.stderr}"
        ) from None


def http_route(cluster: ClusterAccess, namespace: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
            HTTP_ROUTE.group, HTTP_ROUTE.version, namespace, HTTP_ROUTE.plural, "chat"
        )
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise
    return found


def test_without_the_gateway_api_the_route_is_ready_and_says_no_httproute_was_made_until_it_is_installed(
    cluster: ClusterAccess, namespace: str, crs: CustomResources, install_gateway_api: Callable[[], None]
) -> None:
    served = kubectl(cluster, "get", "crd", HTTP_ROUTE.resource, "--ignore-not-found", "-o", "name")
    assert not served.stdout.strip(), (
        "the Gateway API is installed already: this test needs a cluster without"
    )
    crs.create(route(gateway=GATEWAY))

    wait_for(lambda: crs.is_ready("FallbackRoute", "chat"), T, "the route Ready without the Gateway API")
    missing = wait_for(
        lambda: (c := condition(crs, "HTTPRouteAccepted")) and c["reason"] == "GatewayAPINotInstalled" and c,
        T,
        "HTTPRouteAccepted to say the Gateway API is missing",
    )
    assert missing["status"] == "False" and "no HTTPRoute was made" in missing["message"]

    install_gateway_api()
    wait_for(lambda: http_route(cluster, namespace), T, "the HTTPRoute once the Gateway API is installed")
    wait_for(
        lambda: (c := condition(crs, "HTTPRouteAccepted")) and c["reason"] == "Pending",
        T,
        "HTTPRouteAccepted to wait for a Gateway controller",
    )
    assert crs.is_ready("FallbackRoute", "chat")


def test_the_httproute_passes_validation_carries_its_parents_conditions_and_goes_with_the_route(
    cluster: ClusterAccess, namespace: str, crs: CustomResources, install_gateway_api: Callable[[], None]
) -> None:
    install_gateway_api()
    created = crs.create(route(gateway=GATEWAY))
    live = wait_for(lambda: http_route(cluster, namespace), T, "the HTTPRoute")

    # The API server took it through the CRD's schema and CEL rules, and filled its defaults in.
    [owner] = live["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "FallbackRoute",
        "chat",
        created["metadata"]["uid"],
    )
    assert owner["controller"] is True
    [rule] = live["spec"]["rules"]
    [backend] = rule["backendRefs"]
    service = cluster.core.read_namespaced_service("chat", namespace)
    assert (backend["name"], backend["port"]) == (service.metadata.name, service.spec.ports[0].port)
    assert live["spec"]["hostnames"] == ["llm.example.com"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    invalid = kubectl(
        cluster,
        "patch",
        "httproute",
        "chat",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"rules":[{"matches":[{"path":{"type":"PathPrefix","value":"no-slash"}}]}]}}',
        "--dry-run=server",
    )
    assert invalid.returncode != 0, "the HTTPRoute CRD validates what is written to it"

    # What a Gateway controller reports on its parents reaches the route's status; Ready does not depend on it.
    parent = {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "name": "public",
        "sectionName": "http",
    }
    conditions = [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "Route is accepted"},
        {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound", "message": "no endpoints"},
    ]
    status = {
        "parents": [
            {
                "parentRef": parent,
                "controllerName": "example.com/gateway-controller",
                "conditions": [{**c, "lastTransitionTime": NOW, "observedGeneration": 1} for c in conditions],
            }
        ]
    }
    client.CustomObjectsApi(cluster.api).patch_namespaced_custom_object_status(
        HTTP_ROUTE.group, HTTP_ROUTE.version, namespace, HTTP_ROUTE.plural, "chat", {"status": status}
    )
    refused = wait_for(
        lambda: (c := condition(crs, "HTTPRouteAccepted")) and c["reason"] == "BackendNotFound" and c,
        T,
        "the parent's ResolvedRefs in the route's conditions",
        describe=lambda: crs.get("FallbackRoute", "chat").get("status"),
    )
    assert refused["status"] == "False" and "no endpoints" in refused["message"]
    [copied] = crs.get("FallbackRoute", "chat")["status"]["httpRoute"]["parents"]
    assert copied["parentRef"]["name"] == "public"
    assert [(c["type"], c["status"], c["reason"]) for c in copied["conditions"]] == [
        ("Accepted", "True", "Accepted"),
        ("ResolvedRefs", "False", "BackendNotFound"),
    ]
    assert crs.is_ready("FallbackRoute", "chat")

    crs.delete("FallbackRoute", "chat")
    wait_for(
        lambda: http_route(cluster, namespace) is None, T, "the garbage collector to delete the HTTPRoute"
    )


def test_removing_spec_gateway_deletes_the_httproute(
    cluster: ClusterAccess, namespace: str, crs: CustomResources, install_gateway_api: Callable[[], None]
) -> None:
    install_gateway_api()
    crs.create(route(gateway=GATEWAY))
    wait_for(lambda: http_route(cluster, namespace), T, "the HTTPRoute")
    crs.patch("FallbackRoute", "chat", {"spec": {"gateway": None}})
    wait_for(lambda: http_route(cluster, namespace) is None, T, "the HTTPRoute pruned")
    wait_for(lambda: condition(crs, "HTTPRouteAccepted") is None, T, "the condition gone")


def test_removing_the_gateway_api_while_httproutes_are_watched_leaves_the_operator_running(
    cluster: ClusterAccess,
    namespace: str,
    crs: CustomResources,
    operator: OperatorProcess,
    install_gateway_api: Callable[[], None],
) -> None:
    """The API server ends a removed CRD's watches, Kopf opens them again at once, and a 404 there used to end the
    whole operator (control/kopfwatch.py): one CI run in four lost its operator after this file's clean-up. Removed
    and installed again five times with an HTTPRoute live, the operator keeps running and keeps the route's status."""
    extensions = client.ApiextensionsV1Api(cluster.api)
    crs.create(route(gateway=GATEWAY))
    for round_ in range(5):
        install_gateway_api()
        wait_for(lambda: http_route(cluster, namespace), T, f"the HTTPRoute (round {round_})")
        names = [
            c.metadata.name
            for c in extensions.list_custom_resource_definition().items
            if c.spec.group == GROUP
        ]
        remove_gateway_api(cluster, names)
        wait_for(
            lambda: (c := condition(crs, "HTTPRouteAccepted")) and c["reason"] == "GatewayAPINotInstalled",
            T,
            f"HTTPRouteAccepted to say the Gateway API is gone (round {round_})",
            describe=operator.log_tail,
        )
        assert operator.alive(), operator.log_tail()
    assert crs.is_ready("FallbackRoute", "chat")
    assert "has failed" not in operator.log_tail(400)


def test_while_the_gateway_api_is_being_removed_the_operator_does_not_make_its_httproute_again(
    cluster: ClusterAccess,
    namespace: str,
    crs: CustomResources,
    operator: OperatorProcess,
    install_gateway_api: Callable[[], None],
) -> None:
    """A CRD being deleted stays Established while its clean-up deletes its objects, and the API server lets a
    server-side apply create one then (only POST is refused). Held in that state by someone else's HTTPRoute with a
    finalizer, the CRD's clean-up deletes the operator's HTTPRoute: the operator must not make it again (it would
    keep the CRD from going, a minute per round of the clean-up) and says the Gateway API is not installed."""
    custom = client.CustomObjectsApi(cluster.api)
    crs.create(route(gateway=GATEWAY))
    install_gateway_api()
    wait_for(lambda: http_route(cluster, namespace), T, "the HTTPRoute")
    held = {
        "apiVersion": HTTP_ROUTE.api_version,
        "kind": HTTP_ROUTE.kind,
        "metadata": {"name": "held", "finalizers": ["example.com/hold"]},
        "spec": {"parentRefs": [{"name": "public"}]},
    }
    custom.create_namespaced_custom_object(GROUP, HTTP_ROUTE.version, namespace, HTTP_ROUTE.plural, held)
    try:
        client.ApiextensionsV1Api(cluster.api).delete_custom_resource_definition(HTTP_ROUTE.resource)
        wait_for(
            lambda: http_route(cluster, namespace) is None, T, "the CRD's clean-up to delete the HTTPRoute"
        )
        wait_for(
            lambda: (c := condition(crs, "HTTPRouteAccepted")) and c["reason"] == "GatewayAPINotInstalled",
            T,
            "HTTPRouteAccepted to say the Gateway API is gone",
            describe=operator.log_tail,
        )
        before = operator.reconciles()
        wait_for(lambda: operator.reconciles() > before + 5, T, "a few resyncs")
        assert http_route(cluster, namespace) is None
    finally:
        custom.patch_namespaced_custom_object(
            GROUP,
            HTTP_ROUTE.version,
            namespace,
            HTTP_ROUTE.plural,
            "held",
            {"metadata": {"finalizers": None}},
        )
