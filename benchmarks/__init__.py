"""Benchmarks, run from the repository root as ``python -m benchmarks.NAME`` (they import ``tests`` helpers)."""
