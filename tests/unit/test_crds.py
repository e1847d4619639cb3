"""The CRDs in crds/ are exactly what the pydantic models generate, and are structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from localai_operator.api.crd import crd_files, crds

ROOT = Path(__file__).resolve().parents[2]


def test_crds_directory_matches_the_models() -> None:
    expected = crd_files()
    on_disk = {p.name: p.read_text() for p in (ROOT / "crds").glob("*.yaml")}
    assert on_disk == expected, "crds/ is stale: run `make crds`"


def _walk(node: dict[str, Any], path: str, problems: list[str]) -> None:
    if not (
        node.get("type")
        or node.get("x-kubernetes-int-or-string")
        or node.get("x-kubernetes-preserve-unknown-fields")
    ):
        problems.append(f"{path}: no type")
    has_fields = "properties" in node or "additionalProperties" in node
    if node.get("type") == "object" and not (has_fields or node.get("x-kubernetes-preserve-unknown-fields")):
        problems.append(f"{path}: an object with no properties")
    for name, sub in node.get("properties", {}).items():
        _walk(sub, f"{path}.{name}", problems)
    if isinstance(node.get("items"), dict):
        _walk(node["items"], f"{path}[]", problems)
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{path}{{}}", problems)
    for banned in ("$ref", "anyOf", "title", "$defs"):
        if banned in node:
            problems.append(f"{path}: {banned} is not structural")


def test_every_schema_node_is_structural() -> None:
    problems: list[str] = []
    for crd in crds():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for part in ("spec", "status"):  # metadata is the API server's own
            _walk(schema["properties"][part], f"{crd['spec']['names']['kind']}.{part}", problems)
    assert problems == []


def test_names_short_names_and_category_follow_the_api_contract() -> None:
    names = {c["spec"]["names"]["kind"]: c["spec"]["names"] for c in crds()}
    assert names["LLMModel"]["shortNames"] == ["llmm"]
    assert names["InferencePool"]["shortNames"] == ["ipool"]
    assert names["FallbackRoute"]["shortNames"] == ["fbr"]
    assert all(n["categories"] == ["llm"] for n in names.values())
    assert {c["spec"]["group"] for c in crds()} == {"llm.localai-operator.io"}


def test_every_kind_has_a_status_subresource_and_a_ready_column() -> None:
    for crd in crds():
        version = crd["spec"]["versions"][0]
        assert "status" in version["subresources"]
        assert version["additionalPrinterColumns"][0]["name"] == "Ready"


def test_cross_field_rules_are_cel_validations() -> None:
    text = "".join(crd_files().values())
    assert "has(self.huggingFace) != has(self.url)" in text
    assert "has(self.poolRef) != has(self.url)" in text
    assert "a sensitive route never calls the cloud" in text
    assert "maxFirstTokenTimeoutMs is below firstTokenTimeoutMs" in text


def test_docs_reference_matches_the_models() -> None:
    from localai_operator.api.reference import reference_markdown

    assert (ROOT / "docs" / "reference.md").read_text() == reference_markdown(), (
        "docs/reference.md is stale: make docs"
    )
