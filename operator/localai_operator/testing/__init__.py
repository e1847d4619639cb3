"""Test doubles: stand-ins for LocalAI and a cloud provider, for the tests, the benchmarks and `dev up`."""
