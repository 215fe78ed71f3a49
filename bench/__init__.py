"""Benchmarks (run as scripts) and the reference-style implementation they and
the tests compare against."""
