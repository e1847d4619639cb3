"""docs/router.md lists exactly what the code does: paths and their budgets, the cloud's default paths, the
fields the cloud never gets, the metrics."""

from __future__ import annotations

import re
from pathlib import Path

from localai_operator.router.body import LOCALAI_ONLY_FIELDS
from localai_operator.router.metrics import RouterMetrics
from localai_operator.router.paths import API_PATHS
from localai_operator.router.policy import FallbackReason
from localai_operator.wire import DEFAULT_CLOUD_PATHS

DOC = (Path(__file__).resolve().parents[3] / "docs" / "router.md").read_text()


def table_rows(first_column_header: str) -> list[list[str]]:
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def test_the_paths_table_is_the_routers_paths_with_their_budgets() -> None:
    rows = table_rows("path (under /v1)")
    documented = {(r[0], r[1], r[2]) for r in rows if len(r) == 3}
    expected = {
        (p.pattern, ", ".join(sorted(p.methods)), p.budget.value.replace("_", " ")) for p in API_PATHS
    }
    assert documented == expected


def test_the_default_cloud_paths_are_listed() -> None:
    lines = DOC.splitlines()
    start = lines.index("| path (under /v1) |")
    rows = [line.strip("| `") for line in lines[start + 2 :] if line.startswith("| `")]
    assert rows[: len(DEFAULT_CLOUD_PATHS)] == list(DEFAULT_CLOUD_PATHS)


def test_every_field_the_cloud_never_gets_is_listed() -> None:
    assert {r[0] for r in table_rows("field")} == set(LOCALAI_ONLY_FIELDS)


def test_every_metric_is_listed_with_its_type_and_labels() -> None:
    rows = {r[0]: (r[1], r[2]) for r in table_rows("series")}
    metrics = RouterMetrics(list, list, list, list).registry._metrics
    assert rows == {m.name: (m.kind, ", ".join(m.label_names)) for m in metrics}


def test_every_fallback_reason_is_listed() -> None:
    paragraph = DOC.split("Fallback reasons:")[1].split("\n\n")[0]
    assert set(re.findall(r"`([a-z_0-9]+)`", paragraph)) == {r.value for r in FallbackReason}


def test_every_genai_metric_is_listed_with_its_unit() -> None:
    from localai_operator.router.telemetry import METRICS

    rows = {r[0]: r[1] for r in table_rows("metric")}
    assert rows == {name: unit for name, (unit, _, _) in METRICS.items()}


def test_every_attribute_of_ours_on_a_span_is_listed() -> None:
    from localai_operator.router import telemetry

    documented = {name.strip("`") for row in table_rows("attribute") for name in row[0].split(", ")}
    ours = {telemetry.SERVED_BY, telemetry.FALLBACK_REASON, telemetry.BREAKER_STATE, telemetry.CLIENT_KEY}
    assert ours | {telemetry.ROUTE, telemetry.UPSTREAM} <= documented
