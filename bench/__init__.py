"""Benchmarks: each prints a ratio against a baseline measured in the same run.

Run them as modules from the repository root (`python -m bench.train`), so that the test
helpers they share with the suite (`tests/support`) import without being shipped.
"""
