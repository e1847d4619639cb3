"""The operator installed from its Helm chart with the images this checkout builds, and the real-node samples
(manifests/real-node/): a CPU pool of LocalAI v4.9.0 (built here) serving Gemma 3 270M, its in-cluster model mirror,
a cloud stand-in and two routes, all on the real node. What `localai-operator dev up` starts and what the e2e tier
drives; everything goes through the real clients (helm, kubectl) and the chart's own values."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from localai_operator.devcluster import images as images_module
from localai_operator.devcluster.realnode import RealNode

NAMESPACE: Final = "llm-real-node"
MODEL: Final = "gemma-3-270m"
POOL: Final = "gemma-cpu"
ROUTE: Final = "gemma-chat"
SENSITIVE_ROUTE: Final = "gemma-private"
MIRROR: Final = "model-mirror"
CLOUD_STANDIN: Final = "cloud-standin"
CLOUD_MODEL: Final = "standin-large"
RELEASE: Final = "localai-operator"
OPERATOR_NAMESPACE: Final = "localai-operator"
# The placeholders the samples carry for the images (envsubst syntax, so a user can fill them in by hand).
OPERATOR_PLACEHOLDER: Final = "${OPERATOR_IMAGE}"
LOCALAI_PLACEHOLDER: Final = "${LOCALAI_IMAGE}"
MIRROR_PLACEHOLDER: Final = "${MIRROR_IMAGE}"
PLACEHOLDERS: Final = (OPERATOR_PLACEHOLDER, LOCALAI_PLACEHOLDER, MIRROR_PLACEHOLDER)
# What `make images` builds for the stack, in the order StackImages names them.
STACK_IMAGES: Final = ("operator", "localai", "model-mirror")


class StackError(RuntimeError):
    """A step of installing the stack failed; the message names the command and what it printed."""


@dataclass(frozen=True)
class StackImages:
    """The images as pods name them (`name:tag`): the operator's (also the routers', fetch-models' and the cloud
    stand-in's), LocalAI's (the pool) and the model mirror's."""

    operator: str
    localai: str
    mirror: str

    @classmethod
    def of(cls, built: Sequence[images_module.Image]) -> StackImages:
        by_name = {image.name: image.ref for image in built}
        return cls(
            by_name[images_module.OPERATOR_IMAGE],
            by_name[images_module.LOCALAI_IMAGE],
            by_name[images_module.MODEL_MIRROR_IMAGE],
        )

    def fill(self, text: str) -> str:
        """`text` with the samples' image placeholders replaced."""
        for placeholder, ref in zip(PLACEHOLDERS, (self.operator, self.localai, self.mirror), strict=True):
            text = text.replace(placeholder, ref)
        return text


def split_image(ref: str) -> tuple[str, str]:
    """`registry:5000/a/b:tag` -> (`registry:5000/a/b`, `tag`); a reference without a tag is refused."""
    repository, _, tag = ref.rpartition(":")
    if not repository or "/" in tag:
        raise StackError(f"image {ref!r} has no tag: name it as repository:tag")
    return repository, tag


def repository_root() -> Path:
    """The checkout this module runs from (the samples and the chart live there)."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (candidate / "manifests" / "real-node").is_dir() and (candidate / "charts").is_dir():
            return candidate
    raise StackError("manifests/real-node and charts/ not found: run from a checkout of the project")


def samples_dir(root: Path | None = None) -> Path:
    return (root or repository_root()) / "manifests" / "real-node"


def chart_dir(root: Path | None = None) -> Path:
    return (root or repository_root()) / "charts" / "localai-operator"


def chart_values(root: Path | None = None) -> Path:
    """The chart values that put the operator on the real node (its nodeSelector, toleration, pull policy)."""
    return samples_dir(root) / "chart" / "values.yaml"


def build_images() -> list[images_module.Image]:
    """The stack's images, built unless cached (the first build, LocalAI's mostly, takes about half an hour on 2
    cores)."""
    return [images_module.build(which) for which in STACK_IMAGES]


def import_images(node: RealNode, built: Sequence[images_module.Image]) -> list[str]:
    """Imports into the real node each image it does not hold yet; returns the names imported."""
    present = set(node.images())
    imported = []
    for image in built:
        if image.containerd_ref not in present:
            imported += node.import_image(image.archive)
    return imported


def sample_manifests(stack_images: StackImages, namespace: str = NAMESPACE, root: Path | None = None) -> str:
    """The real-node samples as one YAML stream, with the images filled in and, when asked, another namespace
    (every mention of the samples' own: object namespaces and the in-cluster URLs alike)."""
    parts = []
    for path in sorted(samples_dir(root).glob("*.yaml")):
        parts.append(stack_images.fill(path.read_text()).replace(NAMESPACE, namespace))
    left = [p for p in PLACEHOLDERS if any(p in part for part in parts)]
    assert not left, f"unfilled placeholders {left}"
    return "".join(f"---\n{part}" for part in parts)


def helm_binary(root: Path | None = None) -> str:
    """helm from the project's own tools script (a pinned version in .tools/bin, installed once)."""
    script = (root or repository_root()) / "hack" / "tools.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"{script} failed: {result.stderr.strip()}")
    return str(Path(result.stdout.strip().splitlines()[-1]) / "helm")


def helm_install_command(
    helm: str,
    kubeconfig: Path,
    stack_images: StackImages,
    *,
    release: str = RELEASE,
    namespace: str = OPERATOR_NAMESPACE,
    watch_namespaces: Sequence[str] = (),
    timeout: str = "3m",
    root: Path | None = None,
) -> list[str]:
    """`helm upgrade --install` of the chart with the built operator image (also the routers' and, pinned as the
    downloader, fetch-models'), on the real node, waiting until the operator Deployment is available."""
    repository, tag = split_image(stack_images.operator)
    argv = [
        helm,
        "--kubeconfig",
        str(kubeconfig),
        "upgrade",
        "--install",
        release,
        str(chart_dir(root)),
        "--namespace",
        namespace,
        "--create-namespace",
        "--values",
        str(chart_values(root)),
        "--set",
        f"image.repository={repository}",
        "--set",
        f"image.tag={tag}",
        "--set",
        f"downloader.image.tag={tag}",
    ]
    if watch_namespaces:
        argv += ["--set", f"watchNamespaces={{{','.join(watch_namespaces)}}}"]
    return [*argv, "--wait", "--timeout", timeout]


def run(argv: Sequence[str], *, input: str | None = None, timeout: float = 300) -> str:
    """Runs a client command; raises StackError with its output when it fails."""
    result = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise StackError(f"`{' '.join(argv[:4])} …` exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout
