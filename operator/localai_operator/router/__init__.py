"""The data plane: an OpenAI-compatible proxy, local LocalAI first and a cloud provider on failure."""
