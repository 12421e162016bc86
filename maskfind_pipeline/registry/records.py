"""What the registry stores and hands back: file names and tags of a version, the record of one
training, a registered version and a verified download. No MLflow import here."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.registry.datasets import DatasetRef

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


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
