"""Log training runs to MLflow and keep a registered model's versions and aliases.

Every model version's artifacts are `model/weights.safetensors` and `model/config.json` (the
model's settings, e.g. a mask model's `ModelConfig`): loading rebuilds the architecture from the
JSON and reads tensors with safetensors, so no code is ever unpickled. The weights' sha256 is a
tag of the version and is verified on every download. Aliases are used (`challenger`,
`champion`), never stages.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from maskfind_pipeline.core_config import CoreConfig

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
MODEL_DIR = "model"
FILES_TAG = "files_sha256"


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


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model version and the run that produced it."""

    name: str
    version: str
    run_id: str
    tags: Mapping[str, str]
    aliases: tuple[str, ...] = ()

    @property
    def weights_sha256(self) -> str:
        return self.tags.get("weights_sha256", "")


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
        for uri in (tracking_uri, registry_uri or ""):
            if uri.startswith("sqlite:///"):  # the embedded store: its folder may not exist yet
                Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
        self.tracking_uri = tracking_uri
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

    def log_training(
        self, record: TrainingRecord, *, alias: str | None = "challenger"
    ) -> RegisteredModel:
        """Log a run, upload the model, then register it: no version exists without its weights."""
        run = self.client.create_run(
            self.experiment_id(),
            run_name=f"train-{record.dataset_version}",
            tags={"dataset_version": record.dataset_version, **record.tags},
        )
        run_id = run.info.run_id
        try:
            self._log_run(run_id, record)
            sha = hashlib.sha256(record.weights).hexdigest()
            self._upload_model(run_id, record, sha)
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")
        version = self._register(run_id, record, sha)
        if alias:
            self.set_alias(alias, version.version)
        return self.get(version.version)

    def set_alias(self, alias: str, version: str) -> None:
        self.get(version)
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
            raise RegistryError(
                f"registered model {self.model_name!r} has no {kind} {text!r} "
                f"(deleted, or never set) at {self.tracking_uri}"
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
        models = [
            RegisteredModel(
                m.name, m.version, m.run_id, m.tags, tuple(sorted(by_version.get(m.version, ())))
            )
            for m in models
        ]
        return sorted(models, key=lambda m: int(m.version))

    def aliases(self) -> dict[str, str]:
        """alias -> version of the registered model (empty when it does not exist yet)."""
        try:
            registered = self.client.get_registered_model(self.model_name)
        except MlflowException:
            return {}
        return {str(k): str(v) for k, v in (registered.aliases or {}).items()}

    def tag_version(self, version: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, str(version), key, value)

    def download(self, ref: str | int) -> Download:
        """Config and weights of a version, the weights verified against their recorded sha256."""
        model = self.get(ref)
        expected = json.loads(model.tags.get(FILES_TAG, "{}"))
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(self.client.download_artifacts(model.run_id, MODEL_DIR, tmp))
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

    def _log_run(self, run_id: str, record: TrainingRecord) -> None:
        params = {k: _param(v) for k, v in record.params.items()}
        for key, value in params.items():
            self.client.log_param(run_id, key, value)
        for step, epoch in enumerate(record.history):
            for key, value in epoch.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self.client.log_metric(run_id, key, float(value), step=step)
        for key, value in record.metrics.items():
            if math.isfinite(value):
                self.client.log_metric(run_id, key, float(value))
        with tempfile.TemporaryDirectory() as tmp:
            for name, png in record.plots.items():
                path = Path(tmp, f"{name}.png")
                path.write_bytes(png)
                self.client.log_artifact(run_id, str(path), "plots")
            for name, table in record.tables.items():
                path = Path(tmp, f"{name}.json")
                path.write_text(json.dumps(table, indent=2, default=str))
                self.client.log_artifact(run_id, str(path), "tables")

    def _upload_model(self, run_id: str, record: TrainingRecord, sha: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp, MODEL_DIR)
            folder.mkdir()
            (folder / WEIGHTS_FILE).write_bytes(record.weights)
            (folder / CONFIG_FILE).write_text(record.config.to_json())
            for name, data in record.files.items():
                (folder / name).write_bytes(data)
            self.client.log_artifacts(run_id, str(folder), MODEL_DIR)
        self.client.set_tag(run_id, "weights_sha256", sha)

    def _register(self, run_id: str, record: TrainingRecord, sha: str) -> ModelVersion:
        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            with contextlib.suppress(MlflowException):  # created concurrently
                self.client.create_registered_model(
                    self.model_name, description="maskfind U-Net: product mask for every image type"
                )
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{MODEL_DIR}"
        tags = {
            "weights_sha256": sha,
            FILES_TAG: json.dumps({n: _sha(d) for n, d in sorted(record.files.items())}),
            "dataset_version": record.dataset_version,
            **_summary_tags(record.config),
            **record.tags,
        }
        return self.client.create_model_version(self.model_name, source, run_id=run_id, tags=tags)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    )


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]
