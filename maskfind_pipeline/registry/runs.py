"""Logging a training to MLflow: its run (system metrics sampled while it trains), params,
metrics per epoch, plots, dataset inputs, then its model (a pyfunc LoggedModel) and, once that is
completely uploaded, the registered version."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import LoggedModel, LoggedModelOutput, Metric, Param, Run, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.registry.datasets import DatasetRef, inputs_of
from maskfind_pipeline.registry.records import (
    ATTEMPT_NOTE_TAG,
    ATTEMPT_TAG,
    FAILED,
    FILES_TAG,
    MODEL_DIR,
    MODEL_ID_TAG,
    WEIGHTS_FILE,
    RegisteredModel,
    RegistryError,
    TrainingRecord,
    sha256,
)
from maskfind_pipeline.registry.versions import RegisteredVersions

_log = logging.getLogger(__name__)


class TrainingRuns(RegisteredVersions):
    """Trainings logged and registered as versions of the registered model."""

    def experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(
                self.experiment, artifact_location=self.artifact_location
            )
        except MlflowException:  # created concurrently
            found = self.client.get_experiment_by_name(self.experiment)
            assert found is not None
            return found.experiment_id

    @contextlib.contextmanager
    def training_run(
        self, dataset_version: str, tags: Mapping[str, str], *, sampling_interval: int = 10
    ) -> Iterator[str]:
        """A training's run from its start: yields its id (hand it to `log_training`, which
        finishes it), samples the machine into it as MLflow system metrics (`system/cpu_...`,
        memory, disk, network, GPU: what `mlflow.start_run(log_system_metrics=True)` logs)
        while the block runs, and marks it FAILED if the block raises before it was finished."""
        run_id = self._create_run(dataset_version, tags).info.run_id
        try:
            with _system_metrics(run_id, self.tracking_uri, sampling_interval):
                yield run_id
        except BaseException:
            with contextlib.suppress(MlflowException):  # the block's error is the one to see
                if self.client.get_run(run_id).info.status == "RUNNING":
                    self.client.set_terminated(run_id, status="FAILED")
            raise

    def log_training(
        self,
        record: TrainingRecord,
        *,
        alias: str | None = "challenger",
        run_id: str | None = None,
    ) -> RegisteredModel:
        """Log a run (`run_id`, from `training_run`, or a new one) and its model, then register
        the model: no version exists before its model (weights, config, files) is completely
        uploaded, and the run is FINISHED only once the version exists (after `alias` was set,
        or failed to be).

        Raises:
            RegistryError: among others, the run was marked failed meanwhile (a retry of the
                same training took over): nothing is registered.
        """
        run = (
            self.client.get_run(run_id)
            if run_id
            else self._create_run(record.dataset_version, record.tags)
        )
        run_id = run.info.run_id
        try:
            self._log_run(run_id, record)
            logged = self._log_model(run.info.experiment_id, run_id, record)
            version = self._register(run_id, record, logged)
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        try:
            if alias:
                self.set_alias(alias, version.version)
        finally:
            self.client.set_terminated(run_id, status="FINISHED")
        return self.get(version.version)

    def _create_run(self, dataset_version: str, tags: Mapping[str, str]) -> Run:
        return self.client.create_run(
            self.experiment_id(),
            run_name=f"train-{dataset_version}",
            tags={"dataset_version": dataset_version, **tags},
        )

    def log_model_metrics(
        self,
        run_id: str,
        version: str | int,
        metrics: Mapping[str, float],
        *,
        dataset: DatasetRef | None = None,
    ) -> None:
        """Log `metrics` (non-finite ones are left out) to run `run_id` and, where `version` is
        a LoggedModel, to that model too (its page in the MLflow UI lists them), as measured on
        `dataset` (also logged as the run's input when it names a source)."""
        if dataset is not None and dataset.source:
            self.client.log_inputs(run_id, datasets=inputs_of([dataset]))
        self._log_metrics(run_id, metrics, self.get(version).model_id, dataset)

    def _log_metrics(
        self,
        run_id: str,
        metrics: Mapping[str, float],
        model_id: str,
        dataset: DatasetRef | None,
    ) -> None:
        now = _now_ms()
        self.client.log_batch(
            run_id,
            metrics=[
                Metric(
                    key,
                    float(value),
                    now,
                    0,
                    model_id=model_id or None,
                    dataset_name=dataset.name if dataset else None,
                    dataset_digest=dataset.digest if dataset else None,
                    run_id=run_id,
                )
                for key, value in metrics.items()
                if math.isfinite(value)
            ],
        )

    def _log_run(self, run_id: str, record: TrainingRecord) -> None:
        # One `log_batch` (MLflow splits it at its limits: 100 params, 1000 metrics a request)
        # rather than a request per param and per metric of every epoch.
        now = _now_ms()
        self.client.log_batch(
            run_id,
            params=[Param(k, _param(v)) for k, v in record.params.items()],
            tags=[RunTag(k, v) for k, v in record.tags.items()],  # known only at the end
            metrics=[
                Metric(key, float(value), now, step)
                for step, epoch in enumerate(record.history)
                for key, value in epoch.items()
                if isinstance(value, int | float) and math.isfinite(value)
            ],
        )
        if inputs := inputs_of(record.datasets):
            self.client.log_inputs(run_id, datasets=inputs)
        with tempfile.TemporaryDirectory() as tmp:
            for name, png in record.plots.items():
                path = Path(tmp, f"{name}.png")
                path.write_bytes(png)
                self.client.log_artifact(run_id, str(path), "plots")
            for name, table in record.tables.items():
                path = Path(tmp, f"{name}.json")
                path.write_text(json.dumps(table, indent=2, default=str))
                self.client.log_artifact(run_id, str(path), "tables")

    def _log_model(self, experiment_id: str, run_id: str, record: TrainingRecord) -> LoggedModel:
        """The run's pyfunc LoggedModel, uploaded and READY; the final metrics are its too."""
        from mlflow.models import Model

        from maskfind_pipeline.registry.pyfunc_models import save_pyfunc  # torch: only here

        logged = self.client.create_logged_model(
            experiment_id,
            name=MODEL_DIR,
            source_run_id=run_id,
            tags=_version_tags(record),
            params={k: _param(v) for k, v in record.params.items()},
            model_type=self.model_name,
        )
        model_id = logged.model_id
        try:
            self.client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
            self._log_metrics(run_id, record.metrics, model_id, record.metrics_dataset)
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp, MODEL_DIR)
                mlmodel = Model(
                    artifact_path=logged.artifact_location,
                    model_uuid=model_id,
                    run_id=run_id,
                    model_id=model_id,
                )
                files = {WEIGHTS_FILE: record.weights, **record.files}
                save_pyfunc(folder, config=record.config, files=files, model=mlmodel)
                self.client.log_model_artifacts(model_id, str(folder))
            self.client.set_tag(run_id, "weights_sha256", sha256(record.weights))
            self._check_not_taken_over(run_id)
        except BaseException:
            self.client.finalize_logged_model(model_id, "FAILED")
            raise
        return self.client.finalize_logged_model(model_id, "READY")

    def _check_not_taken_over(self, run_id: str) -> None:
        """A retry of the same training marks the runs of earlier attempts failed: one that is
        still alive (an orphaned step process) must then neither finish its model nor register."""
        run = self.client.get_run(run_id)
        if run.info.status != "RUNNING" or run.data.tags.get(ATTEMPT_TAG) == FAILED:
            raise RegistryError(
                f"run {run_id} was marked {run.info.status} "
                f"({run.data.tags.get(ATTEMPT_NOTE_TAG, 'not by this process')}): a retry of the "
                "same training took over, so its model is not registered"
            )

    def _register(self, run_id: str, record: TrainingRecord, logged: LoggedModel) -> ModelVersion:
        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            with contextlib.suppress(MlflowException):  # created concurrently
                self.client.create_registered_model(
                    self.model_name, description="maskfind U-Net: product mask for every image type"
                )
        tags = {
            FILES_TAG: json.dumps({n: sha256(d) for n, d in sorted(record.files.items())}),
            **_version_tags(record),
            MODEL_ID_TAG: logged.model_id,
        }
        # The source is the LoggedModel's artifact location, not models:/<model_id>: MLflow's SQL
        # registry resolves that URI with the process-global tracking URI, not this client's.
        version = self.client.create_model_version(
            self.model_name,
            logged.artifact_location,
            run_id=run_id,
            tags=tags,
            model_id=logged.model_id,
        )
        self._link_version(logged.model_id, version)
        return version

    def _link_version(self, model_id: str, version: ModelVersion) -> None:
        """Name the version on its LoggedModel, as `mlflow.register_model` does (a tracking
        server does it by itself: the entry is added once)."""
        tags = self.client.get_logged_model(model_id).tags
        entries = json.loads(tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
        if any(
            (e["name"], str(e["version"])) == (version.name, str(version.version)) for e in entries
        ):
            return
        entries.append({"name": version.name, "version": version.version})
        self.client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(entries)})


@contextlib.contextmanager
def _system_metrics(run_id: str, tracking_uri: str, sampling_interval: int) -> Iterator[None]:
    """MLflow's system metrics monitor on `run_id` while the block runs (every
    `sampling_interval` s, or `MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`); none without psutil."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as exc:  # psutil is not installed
        _log.warning("no system metrics on MLflow run %s: %s", run_id, exc)
        monitor = None
    else:
        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=sampling_interval, tracking_uri=tracking_uri
        )
        monitor.start()
    try:
        yield
    finally:
        if monitor is not None:
            monitor.finish()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _version_tags(record: TrainingRecord) -> dict[str, str]:
    """The tags of a version and of its LoggedModel: weights' sha256, dataset version, config
    summary and the record's own tags."""
    return {
        "weights_sha256": sha256(record.weights),
        "dataset_version": record.dataset_version,
        **_summary_tags(record.config),
        **record.tags,
    }


def _summary_tags(config: CoreConfig) -> dict[str, str]:
    """What a version's config says at a glance: its encoder and, where it has one, threshold."""
    fields = config.model_dump()
    tags = {"encoder": str(fields["encoder_name"])} if "encoder_name" in fields else {}
    if isinstance(fields.get("threshold"), float):
        tags["threshold"] = f"{fields['threshold']:.4f}"
    return tags


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]
