"""deploy/celery: one file configures both the celery executor of every run and the workers."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._config import process_config
from dagster_celery import celery_executor

from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.executor import executor_config
from tests.support.fswrites import record_writes
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
    stand_in = bin_dir / "celery"  # prints what worker.sh asks of celery, and the config file
    stand_in.write_text('#!/bin/sh\nprintf \'%s\\n\' "$@" "$MASKFIND_EXECUTOR_CONFIG"\n')
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
        *("-A", "maskfind_celery_app", "worker", "--prefetch-multiplier=1", "--loglevel", "INFO"),
        *("-Q", "maskfind", "-n", "gpu-1@%h", "--concurrency", "1", str(EXECUTOR_YAML)),
    ]


def test_the_worker_app_takes_the_broker_from_the_environment_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dagster-celery's own `worker start` writes the broker URL, password included, into
    $DAGSTER_HOME/dagster_celery/config/; the app worker.sh runs holds it in memory only."""
    monkeypatch.setenv("MASKFIND_CELERY_BROKER", BROKER)
    monkeypatch.setenv("MASKFIND_EXECUTOR_CONFIG", str(EXECUTOR_YAML))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.syspath_prepend(str(WORKER_SCRIPT.parent))
    monkeypatch.delitem(sys.modules, "maskfind_celery_app", raising=False)
    with record_writes() as writes:
        app = importlib.import_module("maskfind_celery_app").app
    assert app.conf.broker_url == BROKER
    assert app.conf.result_backend == "rpc://"
    assert app.conf.task_default_queue == "maskfind" and app.conf.worker_prefetch_multiplier == 1
    assert {"execute_plan", "execute_job", "resume_job"} <= set(app.tasks)
    assert writes.writes == [] and list(tmp_path.iterdir()) == []
