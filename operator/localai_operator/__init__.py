"""localai-operator: LocalAI inference pools on Kubernetes with a cloud fallback router."""

__version__ = "0.1.0"
