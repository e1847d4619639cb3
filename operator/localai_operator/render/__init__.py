"""Pure rendering: validated custom resources in, the Kubernetes objects the operator owns out."""

from localai_operator.render.common import RenderSettings
from localai_operator.render.pool import pool_objects
from localai_operator.render.route import route_objects

__all__ = ["RenderSettings", "pool_objects", "route_objects"]
