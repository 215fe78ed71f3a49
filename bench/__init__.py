"""Benchmarks (run as scripts); the reference-style implementation they compare
against lives with the tests (tests/reference.py)."""
