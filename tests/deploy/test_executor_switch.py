"""MASKFIND_EXECUTOR picks every job's executor when the definitions load; the default is
Dagster's own, and neither dagster-celery nor dagster-k8s is imported unless chosen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskfind_pipeline.defs.executor import executor_config, executor_from_env

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, os, sys
from maskfind_pipeline.definitions import defs
report = {}
for kind in ("", "celery"):
    os.environ["MASKFIND_EXECUTOR"] = kind
    executor = defs().resolve_job_def("nightly").executor_def.name
    loaded = [m for m in ("dagster_celery", "dagster_k8s") if m in sys.modules]
    report[kind or "default"] = {"executor": executor, "loaded": loaded}
print(json.dumps(report))
"""


def test_only_the_chosen_executor_is_imported(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKFIND_EXECUTOR")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**env, "MASKFIND_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["default"] == {"executor": "multi_or_in_process_executor", "loaded": []}
    assert report["celery"] == {"executor": "celery", "loaded": ["dagster_celery"]}


def test_default_is_dagsters_own_executor() -> None:
    assert executor_from_env({}) is None
    assert executor_from_env({"MASKFIND_EXECUTOR": "multiprocess"}) is None


def test_an_unknown_executor_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="MASKFIND_EXECUTOR='kubernetes' is not one of"):
        executor_from_env({"MASKFIND_EXECUTOR": "kubernetes"})


def test_a_config_file_without_an_execution_block_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "executor.yaml"
    path.write_text("ops: {}\n")
    with pytest.raises(ValueError, match="has no `execution: config:` mapping"):
        executor_config(path)
