"""The same invalid resources the API server rejects are rejected offline by `render`, naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from localai_operator.render.offline import render_paths

INVALID = sorted((Path(__file__).resolve().parents[1] / "integration" / "invalid").glob("*.yaml"))


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_render_rejects_what_the_schema_rejects(path: Path) -> None:
    with pytest.raises(ValueError, match="is invalid") as err:
        render_paths([str(path)])
    lines = path.read_text().splitlines()
    expected = lines[0].removeprefix("# expect: ")
    # Schema errors name the field (its last path segment offline); CEL rules carry the same message offline,
    # unless the file says what the offline message holds instead.
    offline = [line.removeprefix("# offline: ") for line in lines if line.startswith("# offline: ")]
    wanted = (
        offline[0] if offline else expected.rsplit(".", 1)[-1] if expected.startswith("spec.") else expected
    )
    assert wanted in str(err.value)
