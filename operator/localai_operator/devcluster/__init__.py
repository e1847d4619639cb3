"""The local control plane used by the tests and `localai-operator dev`: real Kubernetes components on loopback
with kwok's fake GPU nodes, no Docker."""

from localai_operator.devcluster.binaries import Binaries, BinariesError, find
from localai_operator.devcluster.cluster import Cluster, ClusterError
from localai_operator.devcluster.images import Image, ImageError
from localai_operator.devcluster.nodes import (
    GPU_TAINT,
    GPU_TOLERATION,
    FakeNode,
    cpu_node,
    default_nodes,
    gpu_node,
)

__all__ = [
    "GPU_TAINT",
    "GPU_TOLERATION",
    "Binaries",
    "BinariesError",
    "Cluster",
    "ClusterError",
    "FakeNode",
    "Image",
    "ImageError",
    "cpu_node",
    "default_nodes",
    "find",
    "gpu_node",
]
