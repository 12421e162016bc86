"""Log training runs to MLflow and keep a registered model's versions and aliases.

Every model version is an MLflow 3 `LoggedModel` (name `model`, output of its training run): a
pyfunc *model from code* (`registry.pyfunc_models`) whose artifacts are `weights.safetensors`,
`config.json` (the model's settings, e.g. a mask model's `ModelConfig`) and any further files,
under the LoggedModel's `artifacts/`. So `mlflow.pyfunc.load_model("models:/<name>@champion")`
and `mlflow models serve` work, and loading never unpickles code: the architecture is rebuilt
from the JSON and the tensors are read with safetensors. Versions logged before that keep the
same files in their run's `model/` folder and have no `model_id`; `download` reads both.

The sha256 of the weights and of each further file are tags of the version, verified on every
download; a version is registered only after its model is completely uploaded. Aliases are used
(`challenger`, `champion`), never stages. The version is a training's commit point: its run is
FINISHED only after it (and its alias) exist, so a run still RUNNING and without a version is an
attempt that died (`registry.attempts` settles those when the training is retried).

A training's run is created when the training starts (`training_run`: MLflow system metrics are
sampled into it meanwhile) or when it is logged. Its params, tags and metrics go in `log_batch`
requests, not one request each (logging a training takes about 29 requests whatever its epochs,
params and image types: `tests/integration/test_mlflow_traffic.py`); the dataset splits it read
are its MLflow dataset inputs (`registry.datasets`), and the metrics name the split they were
measured on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities import LoggedModel, LoggedModelOutput, Metric, Param, Run, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException, RestException
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.registry.credentials import mlflow_uri, redact
from maskfind_pipeline.registry.datasets import DatasetRef, inputs_of

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
MODEL_DIR = "model"
"""The LoggedModel's name; before pyfunc models, the run's folder holding the files."""
PYFUNC_FILES = "artifacts"
"""Where a LoggedModel (a saved pyfunc model) keeps the files."""
FILES_TAG = "files_sha256"
MODEL_ID_TAG = "model_id"
"""The version tag naming its LoggedModel (MLflow's own registry stores keep no model id)."""
TRAINING_KEY_TAG = "training_key"
"""Names one training (e.g. a Dagster run group's `mask_model` step) on the run, LoggedModel and
version of every attempt at it: a retry finds what earlier attempts left by it."""
ATTEMPT_TAG = "training_attempt"
"""`failed` on the run, LoggedModel and version of an attempt that died, was superseded or whose
files do not verify (never aliased, never promoted); `resumed` on a run a retry completed."""
ATTEMPT_NOTE_TAG = "training_attempt_note"
"""Why an attempt was marked: what a retry found."""
FAILED = "failed"
_log = logging.getLogger(__name__)
MAX_DESCRIPTION = 5000
"""The longest model version description MLflow's stores keep."""


class RegistryError(Exception):
    """A registry request that cannot be served: a missing alias or version, bad weights."""


@dataclass(frozen=True)
class TrainingRecord:
    """Everything one training run logs: params, per-epoch history, metrics, plots, weights."""

    config: CoreConfig
    weights: bytes
    dataset_version: str
    params: Mapping[str, Any]
    history: Sequence[Mapping[str, float]]
    metrics: Mapping[str, float]
    plots: Mapping[str, bytes] = field(default_factory=dict)
    tables: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict)
    """More files stored beside the weights (e.g. the novelty model), verified like them."""
    datasets: Sequence[DatasetRef] = ()
    """The dataset version's splits the training read: the run's MLflow dataset inputs."""

    @property
    def metrics_dataset(self) -> DatasetRef:
        """What `metrics` were measured on: the `val` split among `datasets`, else the first of
        them, else the whole dataset version."""
        val = [d for d in self.datasets if d.split == "val"]
        return (val or list(self.datasets) or [DatasetRef(self.dataset_version)])[0]


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model version and the run that produced it."""

    name: str
    version: str
    run_id: str
    tags: Mapping[str, str]
    aliases: tuple[str, ...] = ()
    model_id: str = ""
    """Its MLflow `LoggedModel` (`models:/<model_id>`); empty for a version logged before
    versions were pyfunc models (its files are in its run's `model/` folder)."""

    @property
    def weights_sha256(self) -> str:
        return self.tags.get("weights_sha256", "")

    @property
    def failed_attempt(self) -> str:
        """Why this version is from a failed training attempt; empty when it is not."""
        if self.tags.get(ATTEMPT_TAG) != FAILED:
            return ""
        return self.tags.get(ATTEMPT_NOTE_TAG) or "marked failed"


class Download(NamedTuple):
    """A version's registry entry, its stored config JSON, its verified weights and files."""

    model: RegisteredModel
    config_json: str
    weights: bytes
    files: dict[str, bytes] = {}  # noqa: RUF012 (NamedTuple defaults are not shared state)


class ModelRegistry:
    """One registered model (default `maskfind-unet`) in one MLflow tracking server or store."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        registry_uri: str | None = None,
        model_name: str = "maskfind-unet",
        experiment: str = "maskfind",
        artifact_location: str | None = None,
    ) -> None:
        # No credentials in a URI MLflow prints or quotes: they move to its environment.
        tracking_uri = mlflow_uri(tracking_uri)
        registry_uri = mlflow_uri(registry_uri) if registry_uri else None
        for uri in (tracking_uri, registry_uri or ""):
            if uri.startswith("sqlite:///"):  # the embedded store: its folder may not exist yet
                Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
        self.tracking_uri = tracking_uri
        self.where = redact(tracking_uri)
        """The tracking URI fit to print: without a password."""
        self.model_name = model_name
        self.experiment = experiment
        self.artifact_location = artifact_location

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

    def set_alias(self, alias: str, version: str) -> None:
        self.get(version)
        with self._access(f"move alias {alias!r} to version {version}"):
            self.client.set_registered_model_alias(self.model_name, alias, str(version))

    def get(self, ref: str | int) -> RegisteredModel:
        """A version by number (`"3"`, `3`) or alias (`"champion"`); never falls back to latest."""
        text = str(ref)
        try:
            mv = (
                self.client.get_model_version(self.model_name, text)
                if text.isdigit()
                else self.client.get_model_version_by_alias(self.model_name, text)
            )
        except MlflowException as exc:
            kind = "version" if text.isdigit() else "alias"
            raise _access_error(exc, self, f"read {kind} {text!r}") or RegistryError(
                f"registered model {self.model_name!r} has no {kind} {text!r} "
                f"(deleted, or never set) at {self.where}"
            ) from exc
        return _registered(mv)

    def alias_or_none(self, alias: str) -> RegisteredModel | None:
        try:
            return self.get(alias)
        except RegistryError:
            return None

    def versions(self) -> list[RegisteredModel]:
        """Every version, oldest first, with its aliases."""
        found = self.client.search_model_versions(f"name = '{self.model_name}'")
        by_version: dict[str, list[str]] = {}
        for alias, version in self.aliases().items():
            by_version.setdefault(str(version), []).append(alias)
        models = [_registered(mv) for mv in found]
        models = [replace(m, aliases=tuple(sorted(by_version.get(m.version, ())))) for m in models]
        return sorted(models, key=lambda m: int(m.version))

    def aliases(self) -> dict[str, str]:
        """alias -> version of the registered model (empty when it does not exist yet)."""
        try:
            registered = self.client.get_registered_model(self.model_name)
        except MlflowException:
            return {}
        return {str(k): str(v) for k, v in (registered.aliases or {}).items()}

    def versions_of_runs(self, run_ids: Sequence[str]) -> list[RegisteredModel]:
        """The versions registered from runs `run_ids`, oldest first (aliases not read)."""
        if not run_ids:
            return []
        runs = ", ".join(f"'{r}'" for r in run_ids)
        found = self.client.search_model_versions(
            f"name = '{self.model_name}' AND run_id IN ({runs})"
        )
        return sorted((_registered(mv) for mv in found), key=lambda m: int(m.version))

    def describe_version(self, version: str, description: str) -> None:
        """Set the version's description (Markdown in the MLflow UI), cut to the 5,000
        characters MLflow keeps."""
        with self._access(f"describe version {version}"):
            self.client.update_model_version(
                self.model_name, str(version), description=description[:MAX_DESCRIPTION]
            )

    def tag_version(self, version: str, tags: Mapping[str, str]) -> None:
        with self._access(f"tag version {version}"):
            for key, value in tags.items():
                self.client.set_model_version_tag(self.model_name, str(version), key, value)

    @contextlib.contextmanager
    def _access(self, action: str) -> Iterator[None]:
        """Refusals of an MLflow server with auth as `RegistryError`s that say what to do."""
        try:
            yield
        except MlflowException as exc:
            raise _access_error(exc, self, action) or exc from exc

    def download(self, ref: str | int) -> Download:
        """Config, weights and files of a version (from its LoggedModel or, logged before
        those, its run's `model/` folder), verified against their recorded sha256."""
        model = self.get(ref)
        expected = json.loads(model.tags.get(FILES_TAG, "{}"))
        with tempfile.TemporaryDirectory() as tmp:
            local = self._download_files(model, Path(tmp))
            missing = [
                n for n in (CONFIG_FILE, WEIGHTS_FILE, *expected) if not (local / n).is_file()
            ]
            if missing:
                raise RegistryError(
                    f"{self.model_name} version {model.version} has no {', '.join(missing)}"
                )
            config = (local / CONFIG_FILE).read_text()
            weights = (local / WEIGHTS_FILE).read_bytes()
            files = {name: (local / name).read_bytes() for name in expected}
        found = {WEIGHTS_FILE: _sha(weights)} | {n: _sha(d) for n, d in files.items()}
        recorded = {WEIGHTS_FILE: model.weights_sha256} | expected
        altered = sorted(name for name, sha in recorded.items() if found[name] != sha)
        if altered:
            raise RegistryError(
                f"{self.model_name} version {model.version}: {', '.join(altered)} do not match "
                "their sha256 (incomplete or altered upload)"
            )
        return Download(model, config, weights, files)

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

    def _download_files(self, model: RegisteredModel, into: Path) -> Path:
        if not model.model_id:  # logged before versions were pyfunc models
            return Path(self.client.download_artifacts(model.run_id, MODEL_DIR, str(into)))
        location = self.client.get_logged_model(model.model_id).artifact_location
        uri = f"{location.rstrip('/')}/{PYFUNC_FILES}"
        return Path(download_artifacts(uri, dst_path=str(into), tracking_uri=self.tracking_uri))

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
            self.client.set_tag(run_id, "weights_sha256", _sha(record.weights))
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
            FILES_TAG: json.dumps({n: _sha(d) for n, d in sorted(record.files.items())}),
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


def _access_error(
    exc: MlflowException, registry: ModelRegistry, action: str
) -> RegistryError | None:
    """A clear error for a request the server refused (401/403), None for any other failure."""
    code = exc.error_code if isinstance(exc, RestException) else ""
    status = re.search(r"error code (\d{3})", str(exc))
    refused = {"401": "UNAUTHENTICATED", "403": "PERMISSION_DENIED"}.get(
        status.group(1) if status else "", code
    )
    user = urlsplit(registry.tracking_uri).username or os.environ.get("MLFLOW_TRACKING_USERNAME")
    if refused == "UNAUTHENTICATED":
        return RegistryError(
            f"{registry.where} refused to {action}: not authenticated (set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or credentials in the URI)"
        )
    if refused == "PERMISSION_DENIED":
        return RegistryError(
            f"{registry.where} refused to {action} of {registry.model_name!r}: permission denied "
            f"for user {user!r} (needs EDIT on the registered model); nothing was changed"
        )
    return None


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


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _version_tags(record: TrainingRecord) -> dict[str, str]:
    """The tags of a version and of its LoggedModel: weights' sha256, dataset version, config
    summary and the record's own tags."""
    return {
        "weights_sha256": _sha(record.weights),
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


def _registered(mv: ModelVersion) -> RegisteredModel:
    return RegisteredModel(
        name=mv.name,
        version=str(mv.version),
        run_id=str(mv.run_id),
        tags=dict(mv.tags or {}),
        aliases=tuple(getattr(mv, "aliases", None) or ()),
        model_id=str(mv.model_id or (mv.tags or {}).get(MODEL_ID_TAG, "")),
    )


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]
