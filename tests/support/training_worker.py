"""Run as a subprocess: one attempt at a training, SIGKILLed at a chosen point.

    python -m tests.support.training_worker log HOME KEY --die-at POINT
    python -m tests.support.training_worker asset HOME RUN_ID --die-at POINT

Both use the stores of MASKFIND_HOME=HOME (MLflow: SQLite under HOME). `log` registers the tiny
model's record as the mask model's version of training KEY, as `mask_model` does once it has
trained (`ModelRegistry.log_training`). `asset` materializes the real `mask_model` (tiny training
config) as Dagster run RUN_ID; its dataset version must be published already. POINT is where the
process kills itself with SIGKILL:

- `epoch`: after the first training epoch (no MLflow run exists yet);
- `uploading`: in the middle of the model upload: half of the weights are stored in the
  LoggedModel, and its other files, then the process dies;
- `registered`: just after the version was created, before its alias was set.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient

from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.records import PYFUNC_FILES, TRAINING_KEY_TAG, WEIGHTS_FILE

if TYPE_CHECKING:
    import dagster as dg

POINTS = ("epoch", "uploading", "registered")


def mask_registry(home: Path) -> ModelRegistry:
    """The registry `mask_model` writes to under MASKFIND_HOME=`home`."""
    from maskfind_pipeline.defs.resources import build_resources
    from maskfind_pipeline.locations import Locations

    resources = build_resources(Locations.from_env({"MASKFIND_HOME": str(home)}))
    return resources["mlflow"].registry()  # type: ignore[attr-defined]


def log_attempt(home: Path, key: str) -> str:
    """One attempt at training `key`, as `log_training` makes it once trained: its version."""
    from tests.support.models import tiny_record

    record = tiny_record(seed=1)
    record = dataclasses.replace(record, tags={**record.tags, TRAINING_KEY_TAG: key})
    return mask_registry(home).log_training(record).version


def materialize_mask_model(home: Path, run_id: str) -> dg.ExecuteInProcessResult:
    """`mask_model` (tiny training, 1 epoch) as Dagster run `run_id`, in an ephemeral instance."""
    import dagster as dg

    from maskfind_pipeline.defs.resources import build_resources
    from maskfind_pipeline.defs.training.assets import mask_model
    from maskfind_pipeline.locations import Locations
    from tests.support.models import tiny_training

    locations = Locations.from_env({"MASKFIND_HOME": str(home)})
    job = dg.Definitions(
        assets=[mask_model], resources=build_resources(locations)
    ).resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        run_config={"ops": {"mask_model": {"config": tiny_training(epochs=1)}}},
        instance=dg.DagsterInstance.ephemeral(),
        run_id=run_id,
    )


def die_at(point: str) -> None:
    """Make this process SIGKILL itself at `point` (see the module docstring)."""
    from maskfind_pipeline.ml.segmentation.train import EpochReport

    upload, create = MlflowClient.log_model_artifacts, MlflowClient.create_model_version

    def upload_half_then_die(self: MlflowClient, model_id: str, local_dir: str) -> None:
        weights = Path(local_dir, PYFUNC_FILES, WEIGHTS_FILE)
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
        upload(self, model_id, local_dir)
        _die()

    def create_then_die(self: MlflowClient, *args: Any, **kwargs: Any) -> None:
        create(self, *args, **kwargs)
        _die()

    if point == "epoch":
        EpochReport.describe = _die  # type: ignore[method-assign]
    elif point == "uploading":
        MlflowClient.log_model_artifacts = upload_half_then_die  # type: ignore[method-assign]
    elif point == "registered":
        MlflowClient.create_model_version = create_then_die  # type: ignore[method-assign]


def _die(*_: Any) -> Any:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("log", "asset"))
    parser.add_argument("home", type=Path)
    parser.add_argument("name", help="the training key (log) or the Dagster run id (asset)")
    parser.add_argument("--die-at", choices=POINTS, required=True)
    options = parser.parse_args()
    die_at(options.die_at)
    if options.mode == "log":
        log_attempt(options.home, options.name)
    else:
        materialize_mask_model(options.home, options.name)
    print("the attempt was not killed")


if __name__ == "__main__":
    main()
