"""The autoscaler's arithmetic: router metrics -> demand -> desired replicas and why."""

from __future__ import annotations

import pytest

from localai_operator.api.pool import Autoscaling
from localai_operator.control.autoscale import (
    DemandMeter,
    GpuMeter,
    RouterSample,
    Scaler,
    parse_metrics,
    replicas_needed,
)
from localai_operator.router.metrics import RouterMetrics

SPEC = Autoscaling(min_replicas=0, max_replicas=3, target_in_flight_per_slot=1.0, scale_down_delay_seconds=60)


def test_the_routers_own_metrics_text_parses_into_a_sample() -> None:
    metrics = RouterMetrics(
        list,
        list,
        list,
        list,
        demand_seconds=lambda: [((), 12.5)],
        demand_in_flight=lambda: [((), 3.0)],
        period_cost=lambda: [(("spend", "2026-12"), 1.25), (("avoided", "2026-12-01"), 0.5)],
        budget_exhausted=lambda: [((), 1.0)],
    )
    sample = parse_metrics(metrics.registry.render().decode())
    assert sample == RouterSample(
        12.5, 3.0, {("spend", "2026-12"): 1.25, ("avoided", "2026-12-01"): 0.5}, True
    )


def test_metrics_without_demand_series_are_refused() -> None:
    with pytest.raises(ValueError, match="demand"):
        parse_metrics("localai_router_requests_total 3\n")


def test_demand_is_the_average_in_flight_between_two_looks() -> None:
    meter = DemandMeter()
    assert meter.observe("a", 0.0, RouterSample(100.0, 2.0)) == 2.0
    assert meter.observe("a", 10.0, RouterSample(130.0, 0.0)) == pytest.approx(3.0)


def test_a_restarted_router_counts_what_it_has_in_flight_now() -> None:
    meter = DemandMeter()
    meter.observe("a", 0.0, RouterSample(100.0, 2.0))
    assert meter.observe("a", 5.0, RouterSample(1.0, 4.0)) == 4.0


def test_any_demand_needs_one_replica_and_none_needs_zero() -> None:
    assert (replicas_needed(0.0, 4, 0.7), replicas_needed(0.01, 4, 0.7)) == (0, 1)
    assert replicas_needed(5.7, 4, 0.7) == 3  # 5.7 / 2.8 = 2.04


def test_demand_scales_up_at_once() -> None:
    scaler = Scaler(1, 0.0)
    decision = scaler.decide(SPEC, 5.0, 2, 1.0)
    assert (decision.desired, decision.reason, decision.changed) == (3, "ScaledUp", True)


def test_demand_beyond_max_replicas_says_at_max() -> None:
    scaler = Scaler(1, 0.0)
    assert (scaler.decide(SPEC, 40.0, 2, 1.0).desired, scaler.reason) == (3, "AtMaxReplicas")


def test_scaling_down_waits_for_the_delay() -> None:
    scaler = Scaler(1, 0.0)
    scaler.decide(SPEC, 5.0, 2, 0.0)
    assert scaler.decide(SPEC, 1.0, 2, 59.0).desired == 3
    decision = scaler.decide(SPEC, 1.0, 2, 61.0)
    assert (decision.desired, decision.reason) == (1, "ScaledDown")


def test_idle_for_the_delay_scales_to_zero_and_the_next_request_scales_up() -> None:
    scaler = Scaler(1, 0.0)
    assert scaler.decide(SPEC, 0.0, 2, 30.0).desired == 1
    assert (scaler.decide(SPEC, 0.0, 2, 61.0).desired, scaler.reason) == (0, "ScaledToZero")
    assert (scaler.decide(SPEC, 0.02, 2, 62.0).desired, scaler.reason) == (1, "ScaledUp")


def test_min_replicas_holds_without_demand() -> None:
    spec = SPEC.model_copy(update={"min_replicas": 1})
    scaler = Scaler(2, 0.0)
    assert scaler.decide(spec, 0.0, 2, 100.0).desired == 1


def test_an_unreadable_router_never_scales_down() -> None:
    scaler = Scaler(2, 0.0)
    decision = scaler.decide(SPEC, 0.0, 2, 100.0, complete=False)
    assert (decision.desired, decision.reason) == (2, "NoDemandData")


def test_a_reason_stays_until_the_replicas_change_again() -> None:
    scaler = Scaler(0, 0.0)
    scaler.decide(SPEC, 1.0, 2, 1.0)
    assert (scaler.decide(SPEC, 1.0, 2, 2.0).changed, scaler.reason) == (False, "ScaledUp")


def test_min_above_max_is_refused() -> None:
    with pytest.raises(ValueError, match="minReplicas must not exceed maxReplicas"):
        Autoscaling(min_replicas=4, max_replicas=2)


def test_gpu_hours_integrate_the_gpus_held_between_looks() -> None:
    meter = GpuMeter()
    meter.observe(0.0, 2, 1, ["2026-12"])
    meter.observe(1800.0, 0, 1, ["2026-12"])
    meter.observe(3600.0, 0, 1, ["2026-12"])
    assert meter.hours("2026-12") == pytest.approx(1.0)


def test_a_pool_held_at_min_replicas_says_so() -> None:
    spec = SPEC.model_copy(update={"min_replicas": 2})
    scaler = Scaler(2, 0.0)
    assert (scaler.decide(spec, 0.0, 2, 1.0).desired, scaler.reason) == (2, "AtMinReplicas")


def test_samples_that_are_not_finite_or_are_negative_are_dropped() -> None:
    text = (
        "localai_router_demand_seconds_total 12\nlocalai_router_demand_in_flight 2\n"
        'localai_router_period_cost{kind="spend",period="2026-12"} +Inf\n'
        'localai_router_period_cost{kind="avoided",period="2026-12"} -3\n'
        "localai_router_demand_in_flight NaN\n"
    )
    sample = parse_metrics(text)
    assert (sample.demand_seconds, sample.in_flight, dict(sample.costs)) == (12, 2, {})
    with pytest.raises(ValueError, match="no localai_router_demand"):
        parse_metrics("localai_router_demand_seconds_total 1\nlocalai_router_demand_in_flight +Inf\n")
