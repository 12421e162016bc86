"""One torchrun process of the data-parallel training tests and benchmark (no Dagster).

    python -m torch.distributed.run --standalone --nproc_per_node=N -m tests.support.ddp_worker JOB

JOB is a JSON file: `options` (`TrainingOptions`), `home` (a MASKFIND_HOME with a published
dataset version), `out` (a directory). Each rank writes `out/rank<r>.json`: its own sha256 of
its final weights (computed here, not by the flow), the registered version on rank 0, and the
epoch reports rank 0 saw.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from torch import nn

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.flows.distributed_training import train_and_register_replica
from maskfind_pipeline.flows.options import TrainingOptions
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.ml.distributed import process_group
from maskfind_pipeline.ml.segmentation.train import EpochReport
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.storage import LocalObjectStore


def weights_sha256(model: nn.Module) -> str:
    """sha256 over a model's state dict: names in order, C-order bytes of each tensor."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    options = TrainingOptions.model_validate(job["options"])
    home = Locations.from_env({"MASKFIND_HOME": job["home"]})
    reports: list[dict[str, Any]] = []

    def on_epoch(report: EpochReport) -> None:
        reports.append({**report.as_dict(), "line": report.describe()})

    with process_group(options.train.device) as (ranks, device):
        replica = train_and_register_replica(
            options,
            ranks,
            device=device,
            versions=VersionStore(LocalObjectStore(home.work_uri)),
            data_store=LocalObjectStore(home.data_uri),
            cache=ContentCache(home.cache_dir),
            decoded_root=home.cache_dir / "decoded",
            open_registry=lambda: ModelRegistry(
                home.tracking_uri, artifact_location=home.artifact_location
            ),
            tags={"code_version": "test"},
            on_epoch=on_epoch,
        )
        outcome = replica.outcome
        record = {
            "rank": ranks.rank,
            "world_size": ranks.world_size,
            "sha256": weights_sha256(replica.model),
            "flow_sha256": replica.weights_sha256,
            "version": outcome.registered.version if outcome else None,
            "stop_reason": outcome.result.stop_reason if outcome else None,
            "epochs": reports,
        }
        out = Path(job["out"]) / f"rank{ranks.rank}.json"
        out.write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
