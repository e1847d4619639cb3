"""Status from facts: the conditions users act on, and the one merge patch written per pass."""

from __future__ import annotations

from dataclasses import replace

from localai_operator.api.pool import InferencePoolStatus
from localai_operator.control import status as st

NOW, LATER = "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z"
POOL = st.PoolFacts(name="p", namespace="ns", replicas=1, models=("m",), endpoint="http://p.ns.svc:8080/v1")
READY_DEPLOYMENT = {"status": {"replicas": 1, "readyReplicas": 1}}


def ready(
    facts: st.PoolFacts, previous: dict[str, object] | None = None, now: str = NOW
) -> dict[str, object]:
    patch = st.patch_of(st.pool_status(facts, previous, 1, now))
    [condition] = [c for c in patch["conditions"] if c["type"] == "Ready"]
    return condition


def test_a_refused_apply_makes_the_pool_not_ready_with_the_servers_message() -> None:
    refused = st.Applied("exceeded quota: q, used: count/configmaps=1", refused=True)
    condition = ready(replace(POOL, applied=refused))
    assert (condition["status"], condition["reason"]) == ("False", "ApplyRefused")
    assert "exceeded quota: q" in str(condition["message"])
    assert "up to 5 minutes" in str(condition["message"])


def test_a_transient_failure_is_not_a_refusal() -> None:
    condition = ready(replace(POOL, applied=st.Applied("the API server answered 503")))
    assert (condition["status"], condition["reason"]) == ("False", "ApplyFailed")
    assert "within seconds" in str(condition["message"])


def test_a_name_held_by_another_object_is_a_conflict_naming_it() -> None:
    taken = 'Service "p" already exists in namespace "ns" and was not created for this InferencePool.'
    condition = ready(replace(POOL, applied=st.Applied(conflicts=(taken,))))
    assert (condition["status"], condition["reason"]) == ("False", "Conflict")
    assert str(condition["message"]).startswith(taken)


def test_pods_refused_by_admission_make_the_pool_not_ready_with_the_servers_message() -> None:
    failure = {
        "type": "ReplicaFailure",
        "status": "True",
        "reason": "FailedCreate",
        "message": 'violates PodSecurity "restricted:latest"',
    }
    refused = {"status": {"conditions": [failure]}}
    condition = ready(replace(POOL, deployment=refused))
    assert (condition["status"], condition["reason"]) == ("False", "PodsForbidden")
    assert 'violates PodSecurity "restricted:latest"' in str(condition["message"])


def test_a_pool_whose_replicas_are_ready_is_ready() -> None:
    assert ready(replace(POOL, deployment=READY_DEPLOYMENT))["status"] == "True"


def test_the_transition_time_moves_only_when_the_status_flips() -> None:
    facts = replace(POOL, deployment=READY_DEPLOYMENT)
    first = st.patch_of(st.pool_status(facts, None, 1, NOW))
    again = ready(facts, first, LATER)
    assert again["lastTransitionTime"] == NOW
    flipped = ready(replace(POOL, applied=st.Applied("refused")), first, LATER)
    assert flipped["lastTransitionTime"] == LATER


def test_the_patch_clears_fields_an_earlier_pass_wrote() -> None:
    patch = st.patch_of(InferencePoolStatus(endpoint=None))
    assert "endpoint" in patch and patch["endpoint"] is None


def test_conditions_in_the_patch_carry_no_nulls() -> None:
    patch = st.patch_of(st.pool_status(POOL, None, None, NOW))
    assert all(None not in c.values() for c in patch["conditions"])


def test_a_status_differing_only_in_transition_times_is_not_written_again() -> None:
    stored = st.patch_of(st.pool_status(POOL, None, 1, NOW))
    stored = {k: v for k, v in stored.items() if v is not None}  # the API server drops nulls
    assert st.unchanged(stored, st.patch_of(st.pool_status(POOL, None, 1, LATER)))
    assert not st.unchanged(stored, st.patch_of(st.pool_status(POOL, None, 2, LATER)))


def test_a_route_open_to_the_cluster_says_so_in_a_warning_condition_without_failing_ready() -> None:
    from localai_operator.control.status import RouteFacts, route_checks

    facts = RouteFacts(name="chat", namespace="ai", primary="x", fallback=True, open_to_cluster=True)
    checks = {c.type: c for c in route_checks(facts)}
    warning = checks["OpenToCluster"]
    assert (warning.ok, warning.reason) == (True, "NoAuthNoNetworkPolicy")
    assert "spec.auth" in warning.message and "spec.networkPolicy" in warning.message
    assert "OpenToCluster" not in {
        c.type for c in route_checks(RouteFacts(name="c", namespace="ai", fallback=True))
    }
