"""The pure parts: breaker, token bucket, endpoint choice, usage extraction, metrics text."""

from __future__ import annotations

from dataclasses import dataclass, field

from localai_operator.router.metrics import Counter, Histogram, Registry
from localai_operator.router.policy import (
    NO_CHOICE,
    Breaker,
    BreakerState,
    TokenBucket,
    choose,
    falls_back_on_status,
    retry_after_header,
)
from localai_operator.router.usage import Usage, usage_of


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    breaker = Breaker(failure_threshold=3, open_seconds=10)
    for _ in range(2):
        breaker.failure(now=0, probe=False)
    assert breaker.state(0) is BreakerState.CLOSED
    breaker.failure(now=1, probe=False)
    assert breaker.state(1) is BreakerState.OPEN
    assert not breaker.available(10.9)
    assert breaker.reopens_in(5) == 6


def test_breaker_success_resets_the_failure_count() -> None:
    breaker = Breaker(failure_threshold=2, open_seconds=10)
    breaker.failure(0, probe=False)
    breaker.success(probe=False)
    breaker.failure(0, probe=False)
    assert breaker.state(0) is BreakerState.CLOSED


def test_breaker_half_open_admits_exactly_one_probe() -> None:
    breaker = Breaker(failure_threshold=1, open_seconds=10)
    breaker.failure(0, probe=False)
    assert breaker.state(10) is BreakerState.HALF_OPEN
    assert breaker.begin(10) is True
    assert not breaker.available(10)
    breaker.success(probe=True)
    assert breaker.state(10) is BreakerState.CLOSED
    assert breaker.begin(10) is False


def test_breaker_failed_probe_reopens_for_open_seconds() -> None:
    breaker = Breaker(failure_threshold=1, open_seconds=10)
    breaker.failure(0, probe=False)
    breaker.begin(12)
    breaker.failure(13, probe=True)
    assert breaker.state(22.9) is BreakerState.OPEN
    assert breaker.state(23) is BreakerState.HALF_OPEN


def test_breaker_ignores_a_late_success_while_open() -> None:
    breaker = Breaker(failure_threshold=1, open_seconds=10)
    breaker.failure(0, probe=False)
    breaker.success(probe=False)
    assert breaker.state(1) is BreakerState.OPEN


def test_breaker_abandoned_probe_lets_the_next_request_probe() -> None:
    breaker = Breaker(failure_threshold=1, open_seconds=10)
    breaker.failure(0, probe=False)
    assert breaker.begin(10)
    breaker.abandon(probe=True)
    assert breaker.available(10)


def test_token_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0)
    assert [bucket.take(0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(0) == 0.5
    assert bucket.take(0.5) == 0
    assert bucket.take(0.5) == 0.5


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    assert [retry_after_header(w) for w in (0.01, 1.0, 1.2)] == ["1", "1", "2"]


def test_fallback_statuses_are_5xx_and_429_only() -> None:
    assert [s for s in (200, 400, 401, 404, 422, 429, 500, 503) if falls_back_on_status(s)] == [429, 500, 503]


@dataclass
class FakeEndpoint:
    outstanding: int = 0
    breaker: Breaker = field(default_factory=lambda: Breaker(1, 10))


def test_choose_prefers_the_fewest_outstanding_requests() -> None:
    endpoints = [FakeEndpoint(3), FakeEndpoint(1), FakeEndpoint(2)]
    assert choose(endpoints, now=0, start=0) == 1


def test_choose_skips_endpoints_whose_breaker_is_open() -> None:
    endpoints = [FakeEndpoint(0), FakeEndpoint(5)]
    endpoints[0].breaker.failure(0, probe=False)
    assert choose(endpoints, now=1, start=0) == 1
    endpoints[1].breaker.failure(0, probe=False)
    assert choose(endpoints, now=1, start=0) == NO_CHOICE


def test_choose_breaks_ties_from_the_rotating_start() -> None:
    endpoints = [FakeEndpoint(), FakeEndpoint(), FakeEndpoint()]
    assert [choose(endpoints, 0, start) for start in range(3)] == [0, 1, 2]


def test_usage_of_a_json_body() -> None:
    body = b'{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}'
    assert usage_of(body) == Usage(12, 30)


def test_usage_of_a_stream_tail_reads_the_last_usage_object() -> None:
    tail = (
        b'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9}}\n\ndata: [DONE]\n\n'
    )
    assert usage_of(tail) == Usage(5, 9)


def test_usage_of_a_body_without_usage_is_none() -> None:
    assert usage_of(b'{"data":[]}') is None
    assert usage_of(b'{"usage":null}') is None


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    registry = Registry()
    histogram = registry.add(Histogram("h_seconds", "help", ("upstream",), (0.1, 1.0)))
    for value in (0.05, 0.5, 5.0):
        histogram.observe(("local",), value)
    lines = registry.render().decode().splitlines()
    assert lines[2:] == [
        'h_seconds_bucket{upstream="local",le="0.1"} 1',
        'h_seconds_bucket{upstream="local",le="1"} 2',
        'h_seconds_bucket{upstream="local",le="+Inf"} 3',
        'h_seconds_sum{upstream="local"} 5.55',
        'h_seconds_count{upstream="local"} 3',
    ]


def test_metric_label_values_are_escaped() -> None:
    registry = Registry()
    registry.add(Counter("c_total", "help", ("endpoint",))).inc(('a"b\\c\n',))
    assert 'c_total{endpoint="a\\"b\\\\c\\n"} 1' in registry.render().decode()
