"""The route follows the pool's ready pods on the real node, with the real LocalAI: a pod of a pool scaled up answers
through the route within a second of its Ready transition, and a deleted pod gets no new request a second after its
deletion, while the requests in flight on it are still answered (the router's EndpointSlice watch; with DNS alone
it took seconds). Requests go through `kubectl port-forward` to the route's Service with the openai SDK, one after
another from two threads; every time is this process's clock, a pod's Ready transition as its watch of the pods sees
it (never later than its lastTransitionTime's second allows).

Named to run after test_real_node_elastic.py: it scales the shared pool and puts it back as it was."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pytest
import urllib3
from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from openai import OpenAI, OpenAIError

from localai_operator.devcluster.stack import MODEL, POOL, ROUTE
from tests.e2e.realstack import POOL_SELECTOR, RealStack
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

# What the route promises (docs/router.md): a pod that turns Ready gets traffic within a second, one that goes
# gets none after a second.
WITHIN = 1.0
SCALE_TIMEOUT = 120.0
POD_TIMEOUT = 300.0
WORKERS = 2


@dataclass(frozen=True)
class Answer:
    started: float
    ended: float
    served_by: str | None
    reason: str | None
    error: str | None = None


class Load:
    """`workers` threads, each sending one short chat request after another through the route (openai SDK)."""

    def __init__(self, base_url: str, workers: int = WORKERS) -> None:
        self.sdk = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.time()
            try:
                raw = self.sdk.chat.completions.with_raw_response.create(
                    model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "Say one word."}]
                )
                raw.parse()
                answer = Answer(
                    started, time.time(), raw.headers.get("x-served-by"), raw.headers.get("x-fallback-reason")
                )
            except OpenAIError as err:
                answer = Answer(started, time.time(), None, None, f"{type(err).__name__}: {err}")
            self.answers.append(answer)

    def local_since(self, since: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.served_by == "local" and a.started >= since]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)


class PodWatch:
    """The pool's pods as a watch of them sees them: when each was first seen Ready (bounded by its Ready
    condition's lastTransitionTime, which has whole seconds) and its address."""

    def __init__(self, real: RealStack) -> None:
        self.real = real
        self.ready_at: dict[str, float] = {}
        self.address: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(
                    self.real.core.list_namespaced_pod,
                    self.real.namespace,
                    label_selector=POOL_SELECTOR,
                    timeout_seconds=2,
                    _request_timeout=10,
                ):
                    self._see(event["object"], time.time())
            except (ApiException, urllib3.exceptions.HTTPError, OSError):
                # Watched again: the pods are relisted, their Ready times still bounded by the condition's.
                self._stop.wait(0.1)

    def _see(self, pod: Any, seen: float) -> None:
        name = pod.metadata.name
        if pod.status.pod_ip:
            self.address[name] = pod.status.pod_ip
        if name in self.ready_at or pod.metadata.deletion_timestamp:
            return
        for condition in pod.status.conditions or []:
            if condition.type == "Ready" and condition.status == "True":
                transition = condition.last_transition_time
                latest = transition.timestamp() + 1.0 if transition is not None else seen
                self.ready_at[name] = min(seen, latest)

    def ready(self, other_than: str | None = None) -> tuple[str, float] | None:
        found = [(at, name) for name, at in dict(self.ready_at).items() if name != other_than]
        return (min(found)[1], min(found)[0]) if found else None

    def __enter__(self) -> PodWatch:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def at_address(url: str, address: str) -> bool:
    return urllib.parse.urlsplit(url).hostname == address


def listed(base: str) -> list[str]:
    """The local endpoints (pod URLs) the route's router lists in its /readyz."""
    with urllib.request.urlopen(f"{base}/readyz", timeout=10) as answer:
        body = json.loads(answer.read())
    return [str(e["url"]) for e in body.get("endpoints") or []]


class Listing:
    """/readyz of the route's router every 50 ms: when it stopped listing an address."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.samples: list[tuple[float, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                urls = listed(self.base)
            except (OSError, ValueError):
                continue  # the port-forward's hiccup, not the router's answer
            self.samples.append((time.time(), urls))

    def dropped(self, address: str, since: float) -> float | None:
        """The first time from `since` on that the router did not list `address`."""
        return next(
            (
                at
                for at, urls in list(self.samples)
                if at >= since and not any(at_address(u, address) for u in urls)
            ),
            None,
        )

    def __enter__(self) -> Listing:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def route(real: RealStack) -> Iterator[str]:
    """The route's Service on a loopback port (its router's /readyz there too); the pool back at one Ready pod
    that the router lists afterwards."""
    with real.forward(ROUTE) as base:
        try:
            yield base
        finally:
            real.patch_pool({"replicas": 1})
            real.ready_pool_pod()
            wait_for(lambda: listed(base), POD_TIMEOUT, f"the router of {ROUTE} to list the pool's pod again")


def describe(answers: list[Answer], origin: float) -> list[tuple[float, float, Any, Any]]:
    return [
        (round(a.started - origin, 2), round(a.ended - origin, 2), a.served_by or a.error, a.reason)
        for a in answers
    ]


def test_a_pod_of_a_pool_scaled_up_answers_through_the_route_within_a_second_of_turning_ready(
    real: RealStack, route: str
) -> None:
    real.patch_pool({"replicas": 0})
    wait_for(
        lambda: not real.pool_pods() and not listed(route),
        SCALE_TIMEOUT,
        f"{POOL} at 0 replicas and its router listing no pod",
    )
    with PodWatch(real) as pods, Load(f"{route}/v1") as load:
        wait_for(lambda: load.answers, 60, "a first answer from the cloud stand-in")
        real.patch_pool({"replicas": 1})
        name, ready = wait_for(
            pods.ready, POD_TIMEOUT, f"a pod of {POOL} to turn Ready", describe=lambda: load.answers[-2:]
        )
        wait_for(
            lambda: len([a for a in load.answers if a.started >= ready + WITHIN]) >= 2 * WORKERS,
            60,
            f"requests sent over {WITHIN:g} s after pod {name} turned Ready",
            describe=lambda: describe(load.answers[-4:], ready),
        )
    answers = list(load.answers)

    assert [a.error for a in answers if a.error] == []
    local = [a for a in answers if a.served_by == "local"]
    assert local, describe(answers, ready)
    # The pool's only pod: a local answer is this pod's.
    first = min(local, key=lambda a: a.ended)
    print(
        f"\npod {name} turned Ready; its first answer through {ROUTE}: sent {first.started - ready:+.3f} s, "
        f"answered {first.ended - ready:+.3f} s after; {len([a for a in answers if a.ended < ready])} answers from "
        "the cloud before"
    )
    assert first.ended - ready < WITHIN, describe(answers, ready)
    late = [a for a in answers if a.started >= ready + WITHIN]
    assert {(a.served_by, a.reason) for a in late} == {("local", None)}, describe(answers, ready)


def test_a_deleted_pool_pod_gets_no_new_request_a_second_after_its_deletion(
    real: RealStack, route: str
) -> None:
    pod = real.ready_pool_pod()
    name, address = pod.metadata.name, pod.status.pod_ip
    wait_for(
        lambda: any(at_address(url, address) for url in listed(route)),
        60,
        f"the router to list pod {name} ({address})",
    )
    with PodWatch(real) as pods, Listing(route) as listing, Load(f"{route}/v1") as load:
        wait_for(lambda: load.local_since(0), 60, f"a local answer from pod {name}")
        deleted = time.time()
        real.core.delete_namespaced_pod(name, real.namespace)
        _, replaced = wait_for(
            lambda: pods.ready(other_than=name),
            POD_TIMEOUT,
            f"a pod of {POOL} replacing {name} to turn Ready",
            describe=lambda: describe(load.answers[-2:], deleted),
        )
        wait_for(
            lambda: load.local_since(replaced),
            60,
            "a local answer from the replacing pod",
            describe=lambda: describe(load.answers[-2:], deleted),
        )
    answers = list(load.answers)
    dropped = listing.dropped(address, deleted)

    # Every request was answered, those in flight on the pod when it went included.
    assert [a.error for a in answers if a.error] == []
    assert dropped is not None
    print(
        f"\npod {name} deleted: the router stopped listing it {dropped - deleted:.3f} s later; the replacing pod "
        f"turned Ready {replaced - deleted:.1f} s after the deletion"
    )
    assert dropped - deleted < WITHIN
    # Sent after that second and answered before the replacement was Ready: no pod of the pool may answer them,
    # and the router knew it (pool_cold), not found out from the stopping pod (a reset or LocalAI's Unavailable).
    between = [a for a in answers if a.started >= deleted + WITHIN and a.ended < replaced]
    assert between, describe(answers, deleted)
    assert {(a.served_by, a.reason) for a in between} == {("fallback", "pool_cold")}, describe(
        answers, deleted
    )
