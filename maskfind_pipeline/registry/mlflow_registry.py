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

from maskfind_pipeline.registry.downloads import VerifiedDownloads
from maskfind_pipeline.registry.runs import TrainingRuns


class ModelRegistry(TrainingRuns, VerifiedDownloads):
    """One registered model (default `maskfind-unet`) in one MLflow tracking server or store:
    trainings logged and registered (`registry.runs`), versions and aliases found and moved
    (`registry.versions`), files downloaded and verified (`registry.downloads`); what they
    store and return is in `registry.records`."""
