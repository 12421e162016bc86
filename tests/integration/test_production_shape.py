"""The production shape, by configuration alone: the nightly job on a Dagster instance in
PostgreSQL (deploy/dagster.yaml), data on S3 (moto's server), an MLflow tracking server with a
PostgreSQL backend, S3 artifacts and basic auth, a RabbitMQ broker for celery workers and a Slack
webhook. Every secret comes from the environment, and none of them shows up, for a succeeding
run (the nightly job, in this process) nor for a failing one (a rollback on a celery worker while
MLflow is down, and its Slack alert), in this process's or the worker's stdout and stderr, run
config, the event log, compute logs, asset metadata, MLflow params and tags, any file under
DAGSTER_HOME, the Slack message, or the webserver's GraphQL answers."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository

from maskfind_pipeline import synthetic
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.monitoring.sensors import run_failure_sensor
from maskfind_pipeline.defs.resources import MlflowResource
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHAMPION, promote
from maskfind_pipeline.registry.records import RegistryError
from maskfind_pipeline.storage import open_store
from tests.conftest import new_bucket
from tests.support.celery_workers import broker_with_password, celery_workers
from tests.support.daemon import LOCATION_OVERRIDES
from tests.support.mlflow_server import AuthMlflowServer, mlflow_auth_server
from tests.support.models import nightly_config, tiny_record
from tests.support.postgres import Database, temporary_database
from tests.support.s3server import S3Server
from tests.support.webhook import Webhook, webhook_server
from tests.support.webserver import dagster_webserver

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PIPELINE_USER = "pipeline"
EXECUTOR_YAML = ROOT / "deploy" / "celery" / "executor.yaml"


def with_credentials(uri: str, user: str, password: str) -> str:
    """`uri` with `user:password@`: how an operator may well configure MLFLOW_TRACKING_URI."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.netloc}"))


@contextmanager
def captured_output(path: Path) -> Iterator[Path]:
    """This process's stdout and stderr (file descriptors 1 and 2, so whatever any library or
    child process prints) into `path` for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("wb") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@dataclass(frozen=True)
class Night:
    """One nightly run on the production shape, and the secrets it was given."""

    run_id: str
    instance_home: Path
    database: Database
    server: AuthMlflowServer
    bucket: str
    s3: S3Server
    env: dict[str, str]
    secrets: dict[str, str]
    output: Path
    """What this process printed while the night ran."""
    hook: Webhook

    def admin_registry(self) -> ModelRegistry:
        user, password = self.server.admin
        return ModelRegistry(with_credentials(self.server.tracking_uri, user, password))

    def instance(self) -> dg.DagsterInstance:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in self.env.items():
                patch.setenv(key, value)
            return dg.DagsterInstance.from_config(str(self.instance_home))


@pytest.fixture(scope="module")
def night(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Night]:
    tmp = tmp_path_factory.mktemp("production")
    bucket = new_bucket(s3)
    values = {
        "AWS_ACCESS_KEY_ID": f"AKIA{secrets.token_hex(8).upper()}",
        "AWS_SECRET_ACCESS_KEY": f"s3-secret-{secrets.token_hex(12)}",
        "MLFLOW_TRACKING_PASSWORD": f"mlflow-secret-{secrets.token_hex(12)}",
        "DAGSTER_PG_PASSWORD": f"pg-secret-{secrets.token_hex(12)}",  # trust auth: unchecked
        "RABBITMQ_PASSWORD": f"amqp-secret-{secrets.token_hex(12)}",
        "SLACK_WEBHOOK_TOKEN": f"slack-secret-{secrets.token_hex(12)}",
    }
    s3_env = {
        "AWS_ACCESS_KEY_ID": values["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": values["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with (
        temporary_database("maskfind_dagster") as dagster_db,
        temporary_database("maskfind_mlflow") as mlflow_db,
        temporary_database("maskfind_mlflow_auth") as auth_db,
        mlflow_auth_server(
            backend_store_uri=mlflow_db.url(),
            auth_database_uri=auth_db.url(),
            artifacts_destination=f"s3://{bucket}/mlflow",
            admin_password=f"admin-{secrets.token_hex(12)}",
            env={**s3_env, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url},
            log_dir=tmp,
        ) as server,
        broker_with_password(values["RABBITMQ_PASSWORD"]) as broker,
        webhook_server(token=values["SLACK_WEBHOOK_TOKEN"]) as hook,
    ):
        server_auth = server.auth_client()
        with pytest.MonkeyPatch.context() as patch:  # the auth API reads the admin from env
            patch.setenv("MLFLOW_TRACKING_USERNAME", server.admin[0])
            patch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin[1])
            server_auth.create_user(PIPELINE_USER, values["MLFLOW_TRACKING_PASSWORD"])
        home = tmp / "dagster"
        home.mkdir()
        shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
        env = {
            **s3_env,
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": "5432",
            "DAGSTER_PG_DB": dagster_db.name,
            "DAGSTER_PG_USERNAME": "postgres",
            "DAGSTER_PG_PASSWORD": values["DAGSTER_PG_PASSWORD"],
            "MASKFIND_HOME": str(tmp / "home"),
            "MASKFIND_DATA_URI": f"s3://{bucket}/data",
            "MASKFIND_WORK_URI": f"s3://{bucket}/work",
            "MASKFIND_S3_ENDPOINT_URL": s3.endpoint_url,
            # Both ways of giving MLflow credentials at once: a URI that carries them, and the
            # variables MLflow itself reads.
            "MLFLOW_TRACKING_URI": with_credentials(
                server.tracking_uri, PIPELINE_USER, values["MLFLOW_TRACKING_PASSWORD"]
            ),
            "MLFLOW_TRACKING_USERNAME": PIPELINE_USER,
            "MLFLOW_TRACKING_PASSWORD": values["MLFLOW_TRACKING_PASSWORD"],
            "MASKFIND_CELERY_BROKER": broker,
            "MASKFIND_SLACK_WEBHOOK": hook.url,
        }
        data = open_store(env["MASKFIND_DATA_URI"], endpoint_url=s3.endpoint_url, **_keys(s3_env))
        synthetic.generate(data, synthetic.DEFAULT_TYPES[:2], 20, size=64)
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            instance = dg.DagsterInstance.from_config(str(home))
            with captured_output(tmp / "night-output.log") as output:
                result = (
                    defs()
                    .resolve_job_def("nightly")
                    .execute_in_process(run_config=nightly_config(), instance=instance)
                )
            instance.dispose()
        assert result.success
        yield Night(result.run_id, home, dagster_db, server, bucket, s3, env, values, output, hook)


@dataclass(frozen=True)
class FailedRun:
    """A run that failed on a celery worker with every secret configured, and its alert."""

    run_id: str
    output: Path
    """What this process printed while it ran."""
    worker_log: Path
    """What the celery worker printed, its steps' processes included."""


@pytest.fixture(scope="module")
def failed(night: Night, tmp_path_factory: pytest.TempPathFactory) -> FailedRun:
    """`rollback_model` on a celery worker (the broker's password in MASKFIND_CELERY_BROKER)
    while the MLflow server is down (its URI, as configured, carrying the pipeline user's
    password); then the failure alert, as `run_failure_sensor` sends it to Slack."""
    tmp = tmp_path_factory.mktemp("failed")
    with socket.socket() as probe:  # MLflow "down": a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{probe.getsockname()[1]}"
    executor = yaml.safe_load(EXECUTOR_YAML.read_text())
    executor["execution"]["config"]["config_source"]["task_default_queue"] = (
        f"maskfind-secrets-{uuid.uuid4().hex[:8]}"
    )
    (tmp / "executor.yaml").write_text(yaml.safe_dump(executor))
    env = {
        **night.env,
        "MLFLOW_TRACKING_URI": with_credentials(
            down, PIPELINE_USER, night.secrets["MLFLOW_TRACKING_PASSWORD"]
        ),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MASKFIND_EXECUTOR": "celery",
        "MASKFIND_EXECUTOR_CONFIG": str(tmp / "executor.yaml"),
    }
    config = {"ops": {"rollback_champion": {"config": {"reason": "r", "requested_by": "t"}}}}
    with pytest.MonkeyPatch.context() as patch:
        for key in LOCATION_OVERRIDES:
            patch.delenv(key, raising=False)
        for key, value in env.items():
            patch.setenv(key, value)
        with (
            celery_workers(["secrets"], env, tmp) as (worker,),
            captured_output(tmp / "output.log") as output,
            dg.DagsterInstance.from_config(str(night.instance_home)) as instance,
        ):
            ReconstructableJob.get_definition.cache_clear()  # loaded afresh: this env
            ReconstructableJob.get_repository_definition.cache_clear()
            repository = ReconstructableRepository.for_module(
                "maskfind_pipeline.definitions", "defs", working_directory=str(ROOT)
            )
            job = repository.get_reconstructable_job("rollback_model")
            result = dg.execute_job(job, instance, run_config=config)
            run = instance.get_run_by_id(result.run_id)
            (failure,) = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            assert run is not None and failure.dagster_event is not None
            context = dg.build_run_status_sensor_context(
                sensor_name="run_failure_sensor",
                dagster_instance=instance,
                dagster_run=run,
                dagster_event=failure.dagster_event,
            ).for_run_failure()
            run_failure_sensor(context)  # pyright: ignore[reportCallIssue]
    assert not result.success
    return FailedRun(result.run_id, output, worker.log_path)


def test_nightly_runs_on_postgres_s3_and_an_mlflow_server_with_auth(night: Night) -> None:
    assert night.database.query(f"SELECT status FROM runs WHERE run_id = '{night.run_id}'") == [
        ("SUCCESS",)
    ]
    materialized = night.database.query(
        "SELECT DISTINCT asset_key FROM event_logs "
        f"WHERE run_id = '{night.run_id}' AND dagster_event_type = 'ASSET_MATERIALIZATION'"
    )
    assert '["mask_model"]' in {key for (key,) in materialized}
    registry = night.admin_registry()
    champion = registry.get(CHAMPION)
    assert champion.version == "1"
    assert registry.download(CHAMPION).weights  # over HTTP, through the server, sha256-checked
    stored = [o["Key"] for o in night.s3.client().list_objects_v2(Bucket=night.bucket)["Contents"]]
    assert any(k.startswith("mlflow/") and k.endswith(".safetensors") for k in stored)
    assert any(k.startswith("work/catalog/samples/") for k in stored)
    home = Path(night.env["MASKFIND_HOME"])
    assert not any(home.glob("mlflow/*"))  # nothing fell back to the embedded SQLite store
    assert not any(night.instance_home.glob("*.db")) and not any(
        night.instance_home.glob("storage/*.db")
    )  # nor to an embedded Dagster instance


def test_a_read_only_user_cannot_move_champion(
    night: Night, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    admin = night.admin_registry()
    before = admin.get(CHAMPION)
    candidate = admin.log_training(tiny_record(seed=1), alias=None)  # a version to promote
    reader_password = f"reader-{secrets.token_hex(8)}"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", night.server.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", night.server.admin[1])
    night.server.auth_client().create_user("reader", reader_password)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    reader = MlflowResource(
        tracking_uri=night.server.tracking_uri, username="reader", password=reader_password
    ).registry()
    assert reader.get(CHAMPION).version == before.version  # READ is enough to look

    with pytest.raises(RegistryError, match="permission") as refused:
        promote(reader, candidate.version, actor="reader", reason="try", forced=True)
    with pytest.raises(RegistryError, match="permission"):
        reader.set_alias(CHAMPION, before.version)
    assert reader_password not in str(refused.value)
    after, untouched = admin.get(CHAMPION), admin.get(candidate.version)
    assert (after.version, after.tags) == (before.version, before.tags)  # nothing changed
    assert untouched.tags == candidate.tags


def test_an_unauthenticated_request_is_refused(
    night: Night, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RegistryError, match="not authenticated"):
        ModelRegistry(night.server.tracking_uri).get(CHAMPION)
    request = urllib.request.Request(
        f"{night.server.tracking_uri}/api/2.0/mlflow/registered-models/alias",
        data=json.dumps({"name": "maskfind-unet", "alias": CHAMPION, "version": "1"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(request, timeout=10)
    assert refused.value.code == 401


def test_no_secret_in_run_config_logs_metadata_mlflow_or_graphql(
    night: Night, failed: FailedRun
) -> None:
    instance = night.instance()
    runs = [instance.get_run_by_id(run_id) for run_id in (night.run_id, failed.run_id)]
    assert all(run is not None for run in runs)
    event_log = "\n".join(
        dg.serialize_value(record)
        for run_id in (night.run_id, failed.run_id)
        for record in instance.all_logs(run_id)
    )
    assert "ASSET_MATERIALIZATION" in event_log and "model_version" in event_log  # it looked
    assert "STEP_FAILURE" in event_log and "rollback_champion" in event_log
    assert "127.0.0.1" in event_log  # the failure does name the MLflow server it could not reach
    compute_logs = _compute_logs(instance, (night.run_id, failed.run_id))
    instance.dispose()

    registry = night.admin_registry()
    client = registry.client
    mlflow_text = []
    for version in registry.versions():
        mlflow_text.append(json.dumps(dict(version.tags)))
        mlflow_run = client.get_run(version.run_id)
        mlflow_text.append(json.dumps(mlflow_run.data.params) + json.dumps(mlflow_run.data.tags))
    assert "dataset_version" in "".join(mlflow_text)

    output = night.output.read_text(errors="replace")
    # MLflow printed where each run is (into the step's compute log; without the password)
    assert "View run" in output + compute_logs
    alerts = json.dumps(night.hook.bodies)
    assert f"run {failed.run_id}" in alerts and "rollback_champion" in alerts  # it was sent
    places = {
        "run config": json.dumps([run.run_config for run in runs if run], default=str),
        "run tags": json.dumps([run.tags for run in runs if run]),
        "event log and metadata": event_log,
        "compute logs": compute_logs,
        "MLflow params and tags": "\n".join(mlflow_text),
        "stdout and stderr of the succeeding run": output,
        "stdout and stderr of the failing run": failed.output.read_text(errors="replace"),
        "the celery worker's output": failed.worker_log.read_text(errors="replace"),
        "the Slack alert": alerts,
        "files under DAGSTER_HOME": _files_under(night.instance_home),
        "GraphQL answers": _graphql_answers(night, failed.run_id),
    }
    for where, text in places.items():
        for name, value in night.secrets.items():
            assert value not in text, f"{name} leaked into the {where}"


def _compute_logs(instance: dg.DagsterInstance, run_ids: tuple[str, ...]) -> str:
    """The captured stdout and stderr of every step of the runs, as the UI shows them."""
    manager = instance.compute_log_manager
    texts = []
    for run_id in run_ids:
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.LOGS_CAPTURED):
            event = record.dagster_event
            assert event is not None
            file_key = event.logs_captured_data.file_key
            data = manager.get_log_data(manager.build_log_key_for_run(run_id, file_key))
            texts += [(data.stdout or b"").decode(errors="replace")]
            texts += [(data.stderr or b"").decode(errors="replace")]
    assert any(texts), "no step's output was captured: nothing would have been searched"
    return "\n".join(texts)


def _files_under(root: Path) -> str:
    """Every file below `root` (compute logs, schedules, dagster-celery's config...), as text."""
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "dagster.yaml" for p in files)
    return "\n".join(p.read_bytes().decode(errors="replace") for p in files)


def _graphql_answers(night: Night, *more_runs: str) -> str:
    """The webserver's answers about the runs, their logs and the resources' configured values."""
    log_dir = night.instance_home.parent
    with dagster_webserver(ROOT / "workspace.yaml", night.env, log_dir) as web:
        answers = [
            *(_graphql(web.url, RUN_QUERY, {"runId": r}) for r in (night.run_id, *more_runs)),
            *(
                _graphql(web.url, RESOURCE_QUERY, {"name": name})
                for name in ("data_store", "mlflow")
            ),
        ]
    text = "\n".join(answers)
    assert night.run_id in text
    assert "mask_model" in text  # the run's events were answered
    assert all(run_id in text for run_id in more_runs)
    assert "MLFLOW_TRACKING_PASSWORD" in text and "AWS_SECRET_ACCESS_KEY" in text  # as EnvVars
    return text


def _graphql(url: str, query: str, variables: dict[str, str]) -> str:
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=60) as response:
        answer = response.read().decode()
    assert '"errors"' not in answer, answer[:2000]
    return answer


RUN_QUERY = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run { runId status runConfigYaml tags { key value } }
  }
  logsForRun(runId: $runId, limit: 5000) {
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message stepKey }
        ... on ExecutionStepFailureEvent { error { message stack cause { message stack } } }
        ... on RunFailureEvent { pipelineFailureError: error { message } }
        ... on MaterializationEvent {
          assetKey { path }
          metadataEntries {
            label
            ... on TextMetadataEntry { text }
            ... on UrlMetadataEntry { url }
            ... on PathMetadataEntry { path }
            ... on JsonMetadataEntry { jsonString }
            ... on MarkdownMetadataEntry { mdStr }
          }
        }
      }
    }
  }
}
"""

RESOURCE_QUERY = """
query Resource($name: String!) {
  topLevelResourceDetailsOrError(resourceSelector: {
    repositoryLocationName: "maskfind_pipeline", repositoryName: "__repository__",
    resourceName: $name
  }) {
    ... on ResourceDetails { name configuredValues { key value type } }
  }
}
"""


def test_the_production_instance_keeps_the_embedded_limits() -> None:
    """deploy/dagster.yaml differs from dagster.yaml only in storage (and states the queue)."""
    embedded = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    production = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    for block in ("concurrency", "run_monitoring", "run_retries", "telemetry"):
        assert production[block] == embedded[block], block
    database = production["storage"]["postgres"]["postgres_db"]
    assert all(set(value) == {"env"} for key, value in database.items() if key != "scheme")


def _keys(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
    }
