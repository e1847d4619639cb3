"""The three custom resources as pydantic models: the single source of truth for the CRDs."""

from localai_operator.api.base import Condition, ObjectMeta
from localai_operator.api.llmmodel import LLMModel
from localai_operator.api.pool import InferencePool
from localai_operator.api.route import FallbackRoute

__all__ = ["Condition", "FallbackRoute", "InferencePool", "LLMModel", "ObjectMeta"]
