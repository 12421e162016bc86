"""deploy/celery: one file configures both the celery executor of every run and the workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._config import process_config
from dagster_celery import celery_executor
from dagster_celery.cli import get_validated_config

from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.executor import executor_config
from tests.support.models import nightly_config

ROOT = Path(__file__).resolve().parents[2]
EXECUTOR_YAML = ROOT / "deploy" / "celery" / "executor.yaml"
WORKER_SCRIPT = ROOT / "deploy" / "celery" / "worker.sh"
BROKER = "pyamqp://maskfind:secret@rabbitmq.internal:5672/maskfind"


@pytest.fixture
def nightly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dg.JobDefinition:
    """The nightly job as a code location with the celery switch on loads it."""
    monkeypatch.setenv("MASKFIND_HOME", str(tmp_path))
    monkeypatch.setenv("MASKFIND_EXECUTOR", "celery")
    monkeypatch.setenv("MASKFIND_EXECUTOR_CONFIG", str(EXECUTOR_YAML))
    return defs().resolve_job_def("nightly")


def test_the_file_is_celery_executor_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKFIND_CELERY_BROKER", BROKER)
    schema = celery_executor.config_schema.as_field().config_type  # type: ignore[union-attr]
    processed = process_config(schema, executor_config(EXECUTOR_YAML))
    assert processed.success, processed.errors
    assert processed.value is not None
    assert processed.value["broker"] == BROKER
    assert processed.value["config_source"]["task_default_queue"] == "maskfind"


def test_runs_read_the_broker_from_the_environment_when_they_start(
    nightly: dg.JobDefinition, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert nightly.executor_def.name == "celery"
    monkeypatch.delenv("MASKFIND_CELERY_BROKER", raising=False)
    with pytest.raises(dg.DagsterInvalidConfigError, match="MASKFIND_CELERY_BROKER"):
        dg.validate_run_config(nightly, nightly_config())
    monkeypatch.setenv("MASKFIND_CELERY_BROKER", BROKER)
    resolved = dg.validate_run_config(nightly, nightly_config())
    assert resolved["execution"]["celery"]["broker"] == BROKER


def test_runs_cannot_set_executor_config_the_workers_do_not_share(
    nightly: dg.JobDefinition, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MASKFIND_CELERY_BROKER", BROKER)
    other = {**nightly_config(), "execution": {"config": {"broker": "pyamqp://elsewhere//"}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match='unexpected config entry "broker"'):
        dg.validate_run_config(nightly, other)


def test_a_worker_starts_from_the_same_file_on_its_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "dagster-celery"  # prints what worker.sh asks of dagster-celery
    stand_in.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    stand_in.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {k: v for k, v in os.environ.items() if k != "MASKFIND_EXECUTOR_CONFIG"}
    started = subprocess.run(
        [str(WORKER_SCRIPT), "gpu-1", "--concurrency", "1"],
        env={**env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert started == [
        *("worker", "start", "--app", "dagster_celery.app", "--config-yaml", str(EXECUTOR_YAML)),
        *("--queue", "maskfind", "--name", "gpu-1", "--", "--concurrency", "1"),
    ]
    # What dagster-celery then writes into the worker's celery config.
    monkeypatch.setenv("MASKFIND_CELERY_BROKER", BROKER)
    worker = get_validated_config(str(EXECUTOR_YAML))
    assert worker["broker"] == BROKER
    assert worker["config_source"]["task_default_queue"] == "maskfind"
