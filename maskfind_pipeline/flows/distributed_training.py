"""Train on one dataset version in several processes (torchrun, DDP); rank 0 registers.

`DistributedOptions.torchrun_command` launches `nproc` copies of an entry module (the Dagster
one is `defs.training.distributed`); each calls `train_and_register_replica` inside
`ml.distributed.process_group`. Every rank trains from the same dataset version (rank 0
resolves "latest" once) and ends with the same weights (checked); only rank 0 touches MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.flows.options import TrainingOptions
from maskfind_pipeline.flows.training import (
    TrainingOutcome,
    latest_version,
    load_version,
    register,
    warm_start,
)
from maskfind_pipeline.ml.device import select_device
from maskfind_pipeline.ml.distributed import Ranks, check_identical
from maskfind_pipeline.ml.segmentation.train import EpochReport, make_train_loaders, train_replica
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.storage.base import ObjectStore

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ReplicaOutcome:
    """What one rank ends with: its final model (the best epoch's weights, the same on every
    rank), their digest and, on rank 0, the registered version."""

    model: nn.Module
    weights_sha256: str
    outcome: TrainingOutcome | None


def train_and_register_replica(
    options: TrainingOptions,
    ranks: Ranks,
    *,
    device: str,
    versions: VersionStore,
    data_store: ObjectStore,
    cache: ContentCache,
    decoded_root: Path,
    open_registry: Callable[[], ModelRegistry],
    tags: Mapping[str, str] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> ReplicaOutcome:
    """This rank's part of training `options` data-parallel; rank 0 registers `challenger`.

    Args:
        options: as for `train_and_register` (`train.batch_size` is per process).
        ranks: this process's place in the process group.
        device: this rank's training device (`ml.distributed.process_group` gives it).
        open_registry: called on rank 0 only (warm start and registration).
        on_epoch: called on rank 0 after each epoch.

    Raises:
        LookupError: no dataset version has been published yet.
        RuntimeError: the ranks ended with different weights.
    """
    vid = ranks.agree_object(
        (options.dataset_version or latest_version(versions)) if ranks.is_main else ""
    )
    data = ranks.local_first(
        lambda: load_version(vid, options, versions, data_store, cache, decoded_root)
    )
    config = options.train
    placed = select_device(device, mixed_precision=config.mixed_precision)
    early = ranks.is_main and options.warm_start  # else MLflow waits until training is done
    registry = open_registry() if early else None
    start = warm_start(registry, options.model) if registry else None
    model, result = train_replica(
        options.model,
        config,
        make_train_loaders(data.manifest, data.decoded, config, placed, ranks),
        ranks=ranks,
        image_types=data.column("image_type"),
        sources=data.column("source"),
        placement=placed,
        on_epoch=on_epoch,
        initial_state=start.model.state_dict() if start else None,
    )
    digest = check_identical(ranks, model)
    if result is None:
        return ReplicaOutcome(model, digest, None)
    registry = registry or open_registry()
    return ReplicaOutcome(model, digest, register(options, data, result, registry, start, tags))
