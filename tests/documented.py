"""The kubectl commands our docs give users (README.md, docs/, the chart's NOTES.txt), and which of them name our
kinds: what the unit test checks for ambiguous names and the e2e test runs beside the Gateway API Inference
Extension's InferencePool."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "charts" / "localai-operator" / "templates" / "NOTES.txt",
)
OUR_GROUP = "llm.localai-operator.io"
# The names kubectl resolves to one of ours: plural, singular, kind, short names, category, plural.group.
OUR_NAMES = frozenset(
    name.lower()
    for path in (ROOT / "crds").glob("*.yaml")
    for names in [yaml.safe_load(path.read_text())["spec"]["names"]]
    for name in (
        names["plural"],
        names["singular"],
        names["kind"],
        *names.get("shortNames", []),
        *names.get("categories", []),
        f"{names['plural']}.{OUR_GROUP}",
    )
)
# The Gateway API Inference Extension's InferencePool has this kind and these names too.
SHARED_NAMES = frozenset({"inferencepool", "inferencepools"})


@dataclass(frozen=True)
class Command:
    where: str  # path:line
    text: str

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text, comments=True)


def commands_in(path: Path, program: str = "kubectl") -> list[Command]:
    """Every `kubectl ...` (or other `program`) of a file: lines of fenced code blocks (a `$ ` prompt dropped,
    `\\` continuations joined), inline code spans, and in NOTES.txt the lines with no template action."""
    text = path.read_text()
    where = path.relative_to(ROOT)
    found: list[Command] = []
    if path.suffix == ".md":
        for fence in re.finditer(r"^```[^\n]*\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
            number = text.count("\n", 0, fence.start(1)) + 1
            pending: list[str] = []
            for offset, line in enumerate(fence.group(1).split("\n")):
                pending.append(line.strip().removesuffix("\\"))
                if line.rstrip().endswith("\\"):
                    continue
                joined = " ".join(" ".join(pending).split()).removeprefix("$ ")
                if joined.startswith(f"{program} "):
                    found.append(Command(f"{where}:{number + offset - len(pending) + 1}", joined))
                pending = []
        for span in re.finditer(rf"(?<!`)`({re.escape(program)} [^`]+)`", text):
            found.append(Command(f"{where}:{text.count(chr(10), 0, span.start()) + 1}", span.group(1)))
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip().startswith(f"{program} ") and "{{" not in line:
                found.append(Command(f"{where}:{number}", line.strip()))
    return found


def documented_commands() -> list[Command]:
    return [command for path in SOURCES for command in commands_in(path)]


def resource_words(argv: list[str]) -> list[str]:
    """Every word of a command that could name a resource type, lower-cased: each item of a comma list, and the
    type of a `type/name` (`explain type.field` keeps its field path: callers compare what precedes the dot)."""
    return [
        item.split("/")[0].lower() for arg in argv[1:] if not arg.startswith("-") for item in arg.split(",")
    ]


def names_our_kinds(command: Command) -> bool:
    return any(word in OUR_NAMES or word.split(".")[0] in OUR_NAMES for word in resource_words(command.argv))


def ambiguous_words(command_text: str) -> list[str]:
    """The words of a command that name an InferencePool without saying whose: `inferencepool(s)` in any case,
    alone or with a field path (`explain inferencepool.spec`), rather than `ipool` or
    `inferencepools.llm.localai-operator.io`."""
    try:
        argv = shlex.split(command_text, comments=True)
    except ValueError:
        argv = command_text.split()
    return [
        word
        for word in resource_words(argv)
        if word.split(".")[0] in SHARED_NAMES and not word.startswith(f"inferencepools.{OUR_GROUP}")
    ]
