"""The Gateway API Inference Extension has an InferencePool too (other groups), and where both are installed kubectl
resolves `inferencepool`/`inferencepools` to the Extension's. So the README, docs/, the samples, the chart and every
kubectl command the code prints or runs name ours `ipool` or `inferencepools.llm.localai-operator.io`.
tests/e2e/test_inferencepool_names.py runs the documented commands on a cluster with both."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.documented import (
    OUR_GROUP,
    ROOT,
    SHARED_NAMES,
    ambiguous_words,
    documented_commands,
    names_our_kinds,
)

# `inferencepool(s)` as a word of its own: not ours spelled out (`inferencepools.llm.localai-operator.io`), not
# part of a longer name.
BARE = re.compile(r"(?<![\w./-])inferencepools?(?![\w-]|\.llm\.localai-operator\.io)")
TEXT_FILES = (
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted(p for p in (ROOT / "manifests").rglob("*") if p.is_file()),
    *sorted(p for p in (ROOT / "charts").rglob("*") if p.is_file()),
)
PYTHON_FILES = sorted(
    p
    for d in ("operator", "tests", "benchmarks")
    for p in (ROOT / d).rglob("*.py")
    if p != Path(__file__).resolve()  # its own examples of what the checks catch
)


def test_no_documented_kubectl_command_names_an_inferencepool_ambiguously() -> None:
    ambiguous = [f"{c.where}: {c.text}" for c in documented_commands() if ambiguous_words(c.text)]
    assert not ambiguous, "use `ipool` or `inferencepools.llm.localai-operator.io`:\n" + "\n".join(ambiguous)


def test_the_docs_name_our_pools_every_way_the_e2e_test_checks() -> None:
    """tests/e2e/test_inferencepool_names.py runs these: the short name, the full resource name, the category,
    kubectl explain and kubectl wait."""
    texts = " ".join(c.text for c in documented_commands() if names_our_kinds(c))
    for expected in (
        "get ipool",
        f"get inferencepools.{OUR_GROUP}",
        "get llm",
        "explain ipool.spec",
        "wait ",
    ):
        assert expected in texts, f"no documented command has {expected!r}"


def test_readme_docs_samples_and_chart_never_name_the_resource_bare() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in TEXT_FILES
        for number, line in bare_lines(path)
    ]
    assert not found, "use `ipool` or `inferencepools.llm.localai-operator.io`:\n" + "\n".join(found)


def bare_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Lines naming the resource bare, except where the name cannot be taken for a command: the CRD's own names and
    RBAC rules (their group is beside them), the RBAC table row of our group, and a paragraph that explains the
    clash (it names the Inference Extension)."""
    lines = path.read_text(errors="replace").splitlines()
    paragraph: list[int] = []
    for index, line in enumerate([*lines, ""]):
        if line.strip():
            paragraph.append(index)
            continue
        if not any("Inference Extension" in lines[i] for i in paragraph):
            for i in paragraph:
                rule = re.match(r"\s*(- )?(plural|singular|resources):", lines[i])
                if (
                    BARE.search(lines[i])
                    and not rule
                    and not lines[i].startswith("| `llm.localai-operator.io` |")
                ):
                    yield i + 1, lines[i]
        paragraph = []


def test_no_kubectl_command_in_the_code_names_an_inferencepool_ambiguously() -> None:
    """Strings holding a kubectl command line (printed hints), and the arguments of calls to a kubectl helper."""
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in PYTHON_FILES
        for line, text in kubectl_words(path.read_text())
    ]
    assert not found, "use INFERENCE_POOL.resource, `ipool` or the full resource name:\n" + "\n".join(found)


def kubectl_words(source: str) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "kubectl " in node.value:
            for line in node.value.splitlines():
                if "kubectl " in line and ambiguous_words(line[line.index("kubectl ") :]):
                    yield node.lineno, line
        elif isinstance(node, ast.Call) and "kubectl" in ast.unparse(node.func).lower():
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    words = {w.split("/")[0].split(".")[0].lower() for w in arg.value.split(",")}
                    if words & SHARED_NAMES and ".llm.localai-operator.io" not in arg.value:
                        yield arg.lineno, arg.value


@pytest.mark.parametrize(
    ("text", "bare"),
    [
        ("kubectl explain inferencepool.spec", True),
        ("kubectl get InferencePools -A", True),
        ("kubectl get llmmodels,inferencepools -n ai", True),
        ("kubectl patch inferencepool/gpu-pool --type=merge -p {}", True),
        ("kubectl get ipool -A", False),
        ("kubectl get inferencepools.llm.localai-operator.io -A", False),
        ("kubectl wait --for=condition=Ready llm --all -n inferencepool-demo", False),
    ],
)
def test_the_check_tells_an_ambiguous_command_from_ours(text: str, bare: bool) -> None:
    assert bool(ambiguous_words(text)) is bare


@pytest.mark.parametrize(
    ("source", "bare"),
    [
        ('_kubectl(cluster, "patch", "inferencepool", POOL, "-n", NAMESPACE)', True),
        ('real.kubectl("get", "llmmodels,inferencepools,fallbackroutes")', True),
        ('say(f"try: kubectl get inferencepools -n {namespace}")', True),
        ('_kubectl(cluster, "patch", INFERENCE_POOL.resource, POOL)', False),
        ('real.kubectl("get", "inferencepools.llm.localai-operator.io")', False),
        ('say("CRDs installed (kubectl get llm -A lists all three kinds)")', False),
        ('Kind("InferencePool", API_VERSION, "inferencepools")', False),
    ],
)
def test_the_code_check_finds_kubectl_arguments_and_printed_commands(source: str, bare: bool) -> None:
    assert bool(list(kubectl_words(source))) is bare
