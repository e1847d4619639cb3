"""The local control plane used by the tests and `localai-operator dev`: real Kubernetes components on loopback
with kwok's fake GPU nodes and, where the machine allows it (root, cgroups), a real node running real pods; no
Docker."""

from localai_operator.devcluster.binaries import Binaries, BinariesError, find
from localai_operator.devcluster.cluster import Cluster
from localai_operator.devcluster.errors import ClusterError, RealNodeError, RealNodeUnavailable
from localai_operator.devcluster.images import Image, ImageError
from localai_operator.devcluster.nodes import (
    GPU_TAINT,
    GPU_TOLERATION,
    REAL_NODE_LABEL,
    REAL_NODE_NAME,
    REAL_NODE_TAINT,
    REAL_NODE_TOLERATION,
    FakeNode,
    cpu_node,
    default_nodes,
    gpu_node,
)
from localai_operator.devcluster.realnode import RealNode
from localai_operator.devcluster.realnode import unavailable_reason as real_node_unavailable_reason

__all__ = [
    "GPU_TAINT",
    "GPU_TOLERATION",
    "REAL_NODE_LABEL",
    "REAL_NODE_NAME",
    "REAL_NODE_TAINT",
    "REAL_NODE_TOLERATION",
    "Binaries",
    "BinariesError",
    "Cluster",
    "ClusterError",
    "FakeNode",
    "Image",
    "ImageError",
    "RealNode",
    "RealNodeError",
    "RealNodeUnavailable",
    "cpu_node",
    "default_nodes",
    "find",
    "gpu_node",
    "real_node_unavailable_reason",
]
