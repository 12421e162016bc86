"""The executor that runs every job's steps, chosen by the environment when the definitions load.

`MASKFIND_EXECUTOR`: `multiprocess` (default: Dagster's own, a process per step on this machine),
`celery` (each step a task on celery workers, dagster-celery) or `k8s` (each step a Kubernetes Job,
dagster-k8s). `MASKFIND_EXECUTOR_CONFIG`: a run-config YAML whose `execution: config:` configures
that executor for every run (runs may then set none of their own), such as
deploy/celery/executor.yaml, the file the celery workers start with too; without it each run's own
`execution: config:` does. `{env: VAR}` values in it are read when a run starts, so the broker's
password stays in the environment. Neither dagster-celery nor dagster-k8s is imported unless
chosen.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

EXECUTORS = ("multiprocess", "celery", "k8s")


def executor_from_env(env: Mapping[str, str]) -> dg.ExecutorDefinition | None:
    """The executor `env` asks for; None for Dagster's default."""
    kind = env.get("MASKFIND_EXECUTOR") or "multiprocess"
    if kind not in EXECUTORS:
        raise ValueError(f"MASKFIND_EXECUTOR={kind!r} is not one of {', '.join(EXECUTORS)}")
    if kind == "multiprocess":
        return None
    if kind == "celery":
        from dagster_celery import celery_executor as chosen
    else:
        from dagster_k8s import k8s_job_executor as chosen
    path = env.get("MASKFIND_EXECUTOR_CONFIG")
    return chosen.configured(executor_config(Path(path)), config_schema={}) if path else chosen


def executor_config(path: Path) -> dict[str, Any]:
    """The `execution: config:` mapping of the run-config YAML at `path`."""
    document = yaml.safe_load(path.read_text()) or {}
    config = document.get("execution", {}).get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"{path} has no `execution: config:` mapping (MASKFIND_EXECUTOR_CONFIG)")
    return config


@dg.definitions
def executor() -> dg.Definitions:
    return dg.Definitions(executor=executor_from_env(os.environ))
