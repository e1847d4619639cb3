"""Fake nodes kwok keeps Ready: by default two A100 nodes with 4 GPUs each (labelled like NVIDIA's GPU feature
discovery, tainted like GKE's GPU pools) and one CPU-only node; and the names the real node (realnode.py) carries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from localai_operator.constants import GPU_PRESENT_LABEL, GPU_PRODUCT_LABEL, GPU_RESOURCE

KWOK_NODE_ANNOTATION: Final = "kwok.x-k8s.io/node"
KWOK_NODE_VALUE: Final = "fake"
A100_80GB: Final = "NVIDIA-A100-SXM4-80GB"
GPU_COUNT_LABEL: Final = "nvidia.com/gpu.count"

# Real GPU pools are usually tainted so that CPU-only pods stay off them (GKE adds exactly this taint); tainting the
# fake nodes keeps the operator honest about adding the toleration.
GPU_TAINT: Final[Mapping[str, str]] = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION: Final[Mapping[str, str]] = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

# The real node runs only images the harness imported into it: only pods tolerating its taint land there.
REAL_NODE_NAME: Final = "real-node"
REAL_NODE_LABEL: Final[Mapping[str, str]] = {"localai-operator.io/node-type": "real"}
REAL_NODE_TAINT: Final[Mapping[str, str]] = {
    "key": "localai-operator.io/local-images",
    "value": "true",
    "effect": "NoSchedule",
}
REAL_NODE_TOLERATION: Final[Mapping[str, str]] = {
    "key": "localai-operator.io/local-images",
    "operator": "Equal",
    "value": "true",
    "effect": "NoSchedule",
}


@dataclass(frozen=True)
class FakeNode:
    """One node; `gpus > 0` makes it a GPU node (capacity, GPU labels and, unless `gpu_taint` is off, the taint)."""

    name: str
    cpu: str = "32"
    memory: str = "256Gi"
    pods: int = 110
    gpus: int = 0
    gpu_product: str = A100_80GB
    gpu_taint: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)

    def manifest(self, index: int = 0) -> dict[str, Any]:
        """The Node object to create; `index` picks a distinct pod CIDR, from which kwok assigns pod IPs."""
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
        }
        capacity = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "500Gi",
        }
        taints: list[Mapping[str, str]] = []
        if self.gpus > 0:
            labels |= {
                GPU_PRESENT_LABEL: "true",
                GPU_PRODUCT_LABEL: self.gpu_product,
                GPU_COUNT_LABEL: str(self.gpus),
            }
            capacity[GPU_RESOURCE] = str(self.gpus)
            if self.gpu_taint:
                taints.append(GPU_TAINT)
        labels |= self.labels
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {KWOK_NODE_ANNOTATION: KWOK_NODE_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {
                "podCIDR": f"10.244.{index}.0/24",
                "podCIDRs": [f"10.244.{index}.0/24"],
                "taints": [dict(taint) for taint in taints],
            },
            "status": {
                "capacity": capacity,
                "allocatable": dict(capacity),
                "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake"},
            },
        }


def gpu_node(name: str, gpus: int = 4, product: str = A100_80GB) -> FakeNode:
    return FakeNode(name=name, gpus=gpus, gpu_product=product)


def cpu_node(name: str) -> FakeNode:
    return FakeNode(name=name)


def default_nodes() -> tuple[FakeNode, ...]:
    return (gpu_node("gpu-node-0"), gpu_node("gpu-node-1"), cpu_node("cpu-node-0"))
