"""A code location with one job, `hung`, whose op never ends: for run-monitoring tests.

The op writes its process id to `pid_file` (so a test can check that the step process is gone
once the run is stopped) and then sleeps far longer than any test waits.
"""

import os
import time
from pathlib import Path

import dagster as dg


class HangConfig(dg.Config):
    pid_file: str
    seconds: float = 600.0


@dg.op
def hang(config: HangConfig) -> None:
    Path(config.pid_file).write_text(str(os.getpid()))
    time.sleep(config.seconds)


@dg.job
def hung() -> None:
    hang()


defs = dg.Definitions(jobs=[hung])
