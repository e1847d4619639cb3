"""The one quantity parser against apimachinery itself (tests/golden/quantities.tsv, written by
hack/quantities/gen.sh from k8s.io/apimachinery v0.34.4), and where pydantic and the renderer use it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from localai_operator.api import InferencePool
from localai_operator.api.quantity import (
    MAX_LENGTH,
    QUANTITY_PATTERN,
    Quantity,
    QuantityError,
    canonical,
    in_resource_list,
)
from localai_operator.render.pool import threads
from localai_operator.render.route import memory_bytes

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "quantities.tsv"


def apimachinery() -> list[tuple[str, str | None, str | None]]:
    """(string, its canonical form, its form in a pod's resources); None where apimachinery refuses it."""
    rows = [line.split("\t") for line in GOLDEN.read_text().splitlines()]
    return [(text, *(None if answer == "!" else answer for answer in answers)) for text, *answers in rows]


def test_every_string_apimachinery_refuses_is_refused_and_every_other_canonicalises_the_same() -> None:
    stricter = []
    for text, expected, in_pod in apimachinery():
        try:
            mine: tuple[str, str] | None = (canonical(text), in_resource_list(text))
        except QuantityError:
            mine = None
        if expected is None:
            assert mine is None, f"{text!r} is no quantity for apimachinery, but was read as {mine}"
        elif mine is None:
            stricter.append(text)
        else:
            assert mine == (expected, in_pod), f"{text!r}: apimachinery writes {expected, in_pod}, we {mine}"
    # Refused on top: numbers without a digit ("+", "+.", "-E3"), which apimachinery reads as 0, and exponents
    # of more than two digits.
    for text in stricter:
        number = re.match(r"^[+-]?[0-9.]*", text)
        assert number is not None
        assert not re.search("[0-9]", number.group()) or re.search(r"[eE][+-]?[0-9]{3,}$", text), text
    assert len(apimachinery()) - len(stricter) > 1500


@pytest.mark.parametrize(
    ("text", "written", "value"),
    [
        ("1.5m", "1500u", 1),
        ("100n", "100n", 1),
        ("2k", "2k", 2000),
        ("+1Gi", "1Gi", 2**30),
        ("1.5Gi", "1536Mi", 3 * 2**29),
        ("0.5", "500m", 1),
        ("1e3", "1e3", 1000),
        (4, "4", 4),
    ],
)
def test_the_issue_examples(text: str | int, written: str, value: int) -> None:
    quantity = Quantity.parse(text)
    assert (str(quantity), quantity.value()) == (written, value)


def test_the_pattern_is_the_parser_s_grammar() -> None:
    assert re.match(QUANTITY_PATTERN, "1e1.5") is None, "apimachinery reads exponents as integers"
    with pytest.raises(QuantityError):
        Quantity.parse("1" * (MAX_LENGTH + 1))
    with pytest.raises(QuantityError):
        Quantity.parse(True)


def pool(**resources: object) -> InferencePool:
    return InferencePool.parse(
        {"metadata": {"name": "p", "namespace": "a"}, "spec": {"models": ["m"], "resources": resources}}
    )


def test_pydantic_keeps_the_canonical_form_and_refuses_negative_or_absurd_values() -> None:
    parsed = pool(requests={"cpu": "1.5m", "memory": "+1Gi"}, limits={"memory": 2 * 2**30})
    assert parsed.spec.resources is not None
    assert parsed.spec.resources.requests == {"cpu": "1500u", "memory": "1Gi"}
    assert parsed.spec.resources.limits == {"memory": "2147483648"}, "a number is a decimal quantity"
    for bad in ("-1", "9Ei0", "1e99", "lots"):
        with pytest.raises(ValidationError, match=r"resources\.requests\.cpu"):
            pool(requests={"cpu": bad})


def test_the_renderer_reads_every_suffix() -> None:
    assert threads(pool(requests={"cpu": "2k"})) == 512, "bounded as spec.threads is"
    assert threads(pool(requests={"cpu": "100n"})) == 1
    assert threads(pool(requests={"cpu": "4500m"})) == 4
    assert memory_bytes("+1Gi") == 2**30
    assert memory_bytes("1.5") == 2
