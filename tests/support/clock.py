"""A clock that moves only when a fake workload says so, for tests of choices by measurement."""

from __future__ import annotations


class FakeClock:
    """`now` seconds; a fake workload adds its seconds and appends its name to `runs`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.runs: list[str] = []

    def __call__(self) -> float:
        return self.now
