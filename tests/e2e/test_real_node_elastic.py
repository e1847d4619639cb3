"""Elastic pools on the real node with the real model: the Gemma pool scaled to zero by its autoscaler, the cloud
stand-in answering at once (pool_cold) while that first request's demand brings the pool back, a sensitive route
holding its request until the pod is Ready, and the route's spend and avoided cost in its status.

Named to run after test_real_node.py: it changes the shared pool and puts it back as it was."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from localai_operator.devcluster.stack import POOL, ROUTE, SENSITIVE_ROUTE
from tests.e2e.realstack import RealStack, pod_ready
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

POOLS = "inferencepools"
AUTOSCALING = {"minReplicas": 0, "maxReplicas": 1, "scaleDownDelaySeconds": 5}
SCALE_TIMEOUT = 120.0
POD_TIMEOUT = 300.0
# A four-token answer from the model takes well under a second: one that took longer waited for a pod.
HELD_SECONDS = 2.0


def autoscaling(real: RealStack) -> dict[str, Any]:
    found: dict[str, Any] = (real.custom(POOLS, POOL).get("status") or {}).get("autoscaling") or {}
    return found


def at_zero(real: RealStack) -> bool:
    """Scaled to zero, and both routers have seen it (they look the pods up every 5 s when they have some)."""
    if autoscaling(real).get("reason") != "ScaledToZero" or real.pool_pods():
        return False
    return not any(real.readyz(route).get("endpoints") for route in (ROUTE, SENSITIVE_ROUTE))


@pytest.fixture
def elastic(real: RealStack) -> Iterator[RealStack]:
    """The sample pool autoscaled from zero, idle until scaled there; afterwards back at its fixed replica."""
    real.patch_pool({"autoscaling": AUTOSCALING})
    try:
        wait_for(
            lambda: at_zero(real),
            SCALE_TIMEOUT,
            f"{POOL} scaled to zero after {AUTOSCALING['scaleDownDelaySeconds']} s idle",
            describe=lambda: (autoscaling(real), [p.metadata.name for p in real.pool_pods()]),
        )
        yield real
    finally:
        real.patch_pool({"autoscaling": None})
        real.ready_pool_pod()
        wait_for(
            lambda: real.router_lists_a_pod(ROUTE) and real.router_lists_a_pod(SENSITIVE_ROUTE),
            POD_TIMEOUT,
            "both routers to list the pool's pod again",
        )


def test_a_pool_at_zero_is_bridged_by_the_cloud_while_the_demand_brings_it_back(elastic: RealStack) -> None:
    real = elastic
    started = time.time()
    with real.traffic([f"chat={real.url(ROUTE, '/v1/chat/completions')}"]) as traffic:
        first_local = wait_for(
            lambda: next((line for line in traffic.of("chat") if line.get("served_by") == "local"), None),
            POD_TIMEOUT,
            "a local answer once the demand scaled the pool up",
            describe=lambda: (autoscaling(real), traffic.lines[-3:]),
        )
    lines = traffic.of("chat")
    bridged = [line for line in lines if line["t"] < first_local["t"]]
    assert bridged, "the first request was answered locally: the pool was not at zero"
    assert [(line.get("status"), line.get("served_by"), line.get("reason")) for line in bridged] == [
        (200, "fallback", "pool_cold")
    ] * len(bridged)
    status = autoscaling(real)
    assert (status["reason"], status["desiredReplicas"]) == ("ScaledUp", 1), status
    print(
        f"\nscale from zero with cloud bridging: first local answer {first_local['t'] - started:.1f} s after the "
        f"first request; {len(bridged)} request(s) bridged by the cloud, the first in "
        f"{bridged[0]['seconds'] * 1000:.0f} ms; bridged answers p50 "
        f"{sorted(line['seconds'] for line in bridged)[len(bridged) // 2] * 1000:.0f} ms"
    )


def test_a_sensitive_route_at_zero_holds_its_request_and_answers_locally(elastic: RealStack) -> None:
    answer = elastic.chat(SENSITIVE_ROUTE)
    assert (answer.get("status"), answer.get("served_by")) == (200, "local"), answer
    assert answer["seconds"] > HELD_SECONDS, answer
    print(f"\nsensitive route at zero: held {answer['seconds']:.1f} s, then answered by the pool")


def ready_pool_pods(real: RealStack) -> int:
    return sum(1 for p in real.pool_pods() if pod_ready(p) and not p.metadata.deletion_timestamp)


def test_sustained_demand_scales_the_pool_up_to_max_replicas_and_back_after_the_delay(
    real: RealStack,
) -> None:
    # One client in a loop keeps about one request in flight: above 2 slots x 0.2, the demand of 2 replicas.
    real.patch_pool(
        {
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 2,
                "targetInFlightPerSlot": 0.2,
                "scaleDownDelaySeconds": 10,
            }
        },
    )
    try:
        seen: list[str] = []

        def scaled_up() -> bool:
            status = autoscaling(real)
            seen.append(str(status.get("reason")))
            return status.get("desiredReplicas") == 2 and ready_pool_pods(real) == 2

        with real.traffic([f"chat={real.url(ROUTE, '/v1/chat/completions')}"]) as traffic:
            wait_for(
                scaled_up,
                POD_TIMEOUT,
                "two Ready pool pods under sustained demand",
                describe=lambda: (autoscaling(real), traffic.lines[-2:]),
            )
        # ScaledUp, then AtMaxReplicas while the demand asks for more, Steady once 2 hold it.
        assert "ScaledUp" in seen and "NoDemandData" not in seen, seen
        assert {line.get("status") for line in traffic.of("chat")} == {200}
        last_answer = max(line["t"] for line in traffic.of("chat"))
        down = wait_for(
            lambda: autoscaling(real).get("desiredReplicas") == 1 and autoscaling(real),
            SCALE_TIMEOUT,
            "back to one replica after the demand stopped",
            describe=lambda: autoscaling(real),
        )
        assert down["reason"] == "ScaledDown", down
        # Not while the demand lasted (the delay itself is the unit tests' to check, not a timing here).
        scaled_down = datetime.fromisoformat(down["lastScaleTime"].replace("Z", "+00:00")).timestamp()
        assert scaled_down > last_answer, (down, last_answer)
        wait_for(lambda: len(real.pool_pods()) == 1, SCALE_TIMEOUT, "one pool pod left")
    finally:
        real.patch_pool({"autoscaling": None})
        real.ready_pool_pod()


def test_the_routes_spend_and_avoided_cost_show_in_its_status(real: RealStack) -> None:
    real.patch_pool({"replicas": 0})
    try:
        wait_for(lambda: not real.pool_pods(), SCALE_TIMEOUT, f"{POOL} at 0 replicas")
        assert real.chat(ROUTE).get("served_by") == "fallback"
    finally:
        real.patch_pool({"replicas": 1})
    real.ready_pool_pod()
    wait_for(lambda: real.chat(ROUTE).get("served_by") == "local", POD_TIMEOUT, "a local answer")

    def costs() -> dict[str, Any] | None:
        cost = (real.custom("fallbackroutes", ROUTE).get("status") or {}).get("cost") or {}
        return cost if cost.get("spend", 0) > 0 and cost.get("avoided", 0) > 0 else None

    cost = wait_for(
        costs,
        120,
        "status.cost with spend and avoided cost",
        describe=lambda: real.custom("fallbackroutes", ROUTE).get("status"),
    )
    assert cost["budgetExhausted"] is False
    assert cost["period"] == time.strftime("%Y-%m", time.gmtime())
