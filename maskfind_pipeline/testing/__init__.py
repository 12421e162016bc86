"""Helpers that start servers and inject faults for tests and benchmarks."""
