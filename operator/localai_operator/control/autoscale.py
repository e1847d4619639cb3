"""Pure: the autoscaler's arithmetic. A router's metrics text -> a sample; samples over time -> the average number
of requests in flight for a pool; that and spec.autoscaling -> the replicas the pool should have, with a reason.
No I/O and no clock: every call takes `now` (monotonic seconds); the operator's loop (elastic.py) does the rest.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from localai_operator.api.pool import Autoscaling

DEMAND_SECONDS: Final = "localai_router_demand_seconds_total"
DEMAND_IN_FLIGHT: Final = "localai_router_demand_in_flight"
PERIOD_COST: Final = "localai_router_period_cost"
BUDGET_EXHAUSTED: Final = "localai_router_fallback_budget_exhausted"

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class RouterSample:
    """What the operator reads from one router pod's /metrics."""

    demand_seconds: float
    in_flight: float
    # (kind, period) -> amount: kind spend or avoided, period a UTC day (2026-12-01) or month (2026-12).
    costs: Mapping[tuple[str, str], float] = field(default_factory=dict)
    budget_exhausted: bool = False


def parse_metrics(text: str) -> RouterSample:
    """The demand and cost series of a router's Prometheus text; ValueError when it has no demand series (not
    a router of this version). Samples that are not finite or are negative (no figure read here can be) are
    dropped, as if the line were not there."""
    values: dict[str, float] = {}
    costs: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        found = _LINE.match(line)
        if found is None:
            continue
        name, labels, raw = found.groups()
        try:
            value = float(raw)
        except ValueError:
            continue
        if not math.isfinite(value) or value < 0:
            continue
        if name == PERIOD_COST:
            by = dict(_LABEL.findall(labels or ""))
            costs[(by.get("kind", ""), by.get("period", ""))] = value
        elif labels is None:
            values[name] = value
    if DEMAND_SECONDS not in values or DEMAND_IN_FLIGHT not in values:
        raise ValueError(
            f"no {DEMAND_SECONDS} or {DEMAND_IN_FLIGHT} in the metrics (a router without demand metrics)"
        )
    return RouterSample(
        values[DEMAND_SECONDS], values[DEMAND_IN_FLIGHT], costs, values.get(BUDGET_EXHAUSTED, 0.0) >= 1
    )


class DemandMeter:
    """Average requests in flight per router pod between two looks, from the integral the router exports: a
    burst that began and ended between two looks counts in full."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}  # pod -> (when, demand seconds)

    def observe(self, pod: str, now: float, sample: RouterSample) -> float:
        before = self._last.get(pod)
        self._last[pod] = (now, sample.demand_seconds)
        if before is None or now <= before[0] or sample.demand_seconds < before[1]:
            return sample.in_flight  # first look at this pod, or it restarted: what is in flight now
        return (sample.demand_seconds - before[1]) / (now - before[0])

    def keep(self, pods: Iterable[str]) -> None:
        """Forget pods no longer running."""
        alive = set(pods)
        for pod in [p for p in self._last if p not in alive]:
            del self._last[pod]


def replicas_needed(in_flight: float, slots_per_replica: int, target_per_slot: float) -> int:
    """Replicas whose slots hold `in_flight` at `target_per_slot` each; any demand at all needs one."""
    if in_flight <= 0:
        return 0
    return max(1, math.ceil(in_flight / (max(1, slots_per_replica) * target_per_slot) - 1e-9))


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    message: str
    changed: bool  # desired differs from the previous decision


# Reasons that say what holds now rather than what last changed: the next look may replace them.
_PASSING: Final = ("Steady", "AtMaxReplicas", "AtMinReplicas", "NoDemandData")


class Scaler:
    """One pool's replicas over time. Up at once; down (to zero too) only when the highest need seen over the
    last scaleDownDelaySeconds is lower, so a pause in the traffic shorter than that never costs a cold start."""

    def __init__(self, replicas: int, now: float, reason: str = "Steady") -> None:
        self.desired = replicas
        self.reason = reason
        # Starting at the Deployment's size: no scale-down before a whole delay of looks says so.
        self._needs: deque[tuple[float, int]] = deque([(now, replicas)])

    def decide(
        self,
        spec: Autoscaling,
        in_flight: float,
        slots_per_replica: int,
        now: float,
        *,
        complete: bool = True,
    ) -> Decision:
        """`complete` False: some router could not be read, so the figure may be short: never scale down on it."""
        needed = replicas_needed(in_flight, slots_per_replica, spec.target_in_flight_per_slot)
        if not complete:
            needed = max(needed, self.desired)
        self._needs.append((now, needed))
        while self._needs and self._needs[0][0] < now - spec.scale_down_delay_seconds:
            self._needs.popleft()
        highest = max(n for _, n in self._needs)
        desired = min(max(highest, spec.min_replicas), spec.max_replicas)
        changed = desired != self.desired
        if needed > spec.max_replicas:
            reason = "AtMaxReplicas"
        elif not complete:
            reason = "NoDemandData"
        elif changed:
            reason = (
                "ScaledToZero" if desired == 0 else "ScaledUp" if desired > self.desired else "ScaledDown"
            )
        elif self.reason in _PASSING:
            if desired == 0:
                reason = "ScaledToZero"
            elif desired == spec.min_replicas and needed < desired:
                reason = "AtMinReplicas"
            else:
                reason = "Steady"
        else:
            reason = self.reason
        message = (
            f"{in_flight:.2f} requests in flight on average for {slots_per_replica} slot(s) per replica at "
            f"{spec.target_in_flight_per_slot:g} per slot: {needed} replica(s) needed now, {highest} at most over "
            f"the last {spec.scale_down_delay_seconds}s; desired {desired} (min {spec.min_replicas}, max "
            f"{spec.max_replicas})"
        )
        if not complete:
            message += "; a router's metrics could not be read, so no scale-down"
        self.desired, self.reason = desired, reason
        return Decision(desired, reason, message, changed)


class GpuMeter:
    """GPU-seconds a pool's replicas ran, per UTC period: the GPUs held since the last look, times its length."""

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None  # (when, GPUs held then)
        self.seconds: dict[str, float] = {}

    def observe(self, now: float, replicas: int, gpus: int, periods: Iterable[str]) -> None:
        current = set(periods)
        for period in [p for p in self.seconds if p not in current]:
            del self.seconds[period]
        if self._last is not None and now > self._last[0]:
            for period in current:
                self.seconds[period] = self.seconds.get(period, 0.0) + self._last[1] * (now - self._last[0])
        self._last = (now, replicas * gpus)

    def hours(self, period: str) -> float:
        return self.seconds.get(period, 0.0) / 3600


@dataclass(frozen=True)
class ScaleState:
    """The autoscaler's last decision for a pool, as the pool's pass renders it (Deployment replicas, status)."""

    desired: int
    reason: str
    message: str
    in_flight: float | None = None
    slots_per_replica: int | None = None
    last_scale_time: str | None = None
    # The HorizontalPodAutoscaler that drives the pool through its scale subresource, if one does.
    hpa: str | None = None
