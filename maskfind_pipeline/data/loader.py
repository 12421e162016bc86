"""Torch datasets and loaders over decoded arrays: the one module of `data` that imports torch.

Keep it out of anything the Dagster definitions import; training code imports it lazily.

Samples are uint8 images and 0/1 masks at the cached size. Normalisation (mean/std) is not done
here: the model's preprocessing does it on the device, so batches cross to the GPU as bytes.
Augmentation happens here per sample, or, where training augments on the device
(`AugmentConfig.where`), not at all: the train loader then reads whole batches (`MaskBatches`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from maskfind_pipeline.data.augment_config import AugmentConfig
from maskfind_pipeline.data.decoded import DecodedArrays
from maskfind_pipeline.data.manifest import SPLITS

Sample = dict[str, Any]


class RandomRot90(v2.Transform):
    """Rotate every input of a call by the same random multiple of 90 degrees (exact, lossless)."""

    _transformed_types = (torch.Tensor,)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(4, ()).item())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["k"] == 0:
            return inpt
        out = torch.rot90(inpt.as_subclass(torch.Tensor), params["k"], dims=(-2, -1))
        return out.as_subclass(type(inpt))


def build_augmentation(config: AugmentConfig) -> v2.Transform | None:
    """The joint image/mask transform of `config`, or None when augmentation is disabled."""
    if not config.enabled:
        return None
    steps: list[v2.Transform] = []
    if config.flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(config.flip_p))
    if config.vertical_flip_p > 0:
        steps.append(v2.RandomVerticalFlip(config.vertical_flip_p))
    if config.rotate90:
        steps.append(RandomRot90())
    if config.affine_p > 0:
        affine = v2.RandomAffine(
            degrees=(-config.degrees, config.degrees),
            translate=(config.translate, config.translate),
            scale=(1 - config.scale, 1 + config.scale),
        )
        steps.append(v2.RandomApply([affine], p=config.affine_p))
    steps.append(v2.ColorJitter(config.brightness, config.contrast, config.saturation, config.hue))
    return v2.Compose(steps)


class MaskDataset(Dataset[Sample]):
    """Selected rows of decoded arrays as training samples.

    An item is `{"image": uint8 (3, H, W), "mask": float32 (1, H, W) of 0/1, "weight": float32
    scalar, "index": the row in the decoded arrays}`. Images are not normalised (see the module
    docstring). Augmentation draws from torch's RNG: DataLoader workers are seeded from the
    loader's generator; with `num_workers=0` seed torch (`torch.manual_seed`) to reproduce it.

    Args:
        decoded: the decoded dataset version.
        selection: the rows to serve, as a boolean mask over all rows or as row indices.
        weights: one training weight per row of `decoded` (default 1.0).
        augment: augmentation settings; None or disabled serves the cached pixels unchanged.
    """

    def __init__(
        self,
        decoded: DecodedArrays,
        selection: np.ndarray | Sequence[int] | Sequence[bool],
        weights: np.ndarray | Sequence[float] | None = None,
        *,
        augment: AugmentConfig | None = None,
    ) -> None:
        count = len(decoded)
        self.decoded = decoded
        self.indices = _row_indices(selection, count)
        self.weights = np.ones(count, np.float32) if weights is None else _weights(weights, count)
        self.transform = build_augmentation(augment) if augment is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, positions: Sequence[int]) -> Sample:
        """The samples at `positions`, un-augmented, as one batch read with one gather per array.

        Rows come in ascending order (a forward pass over the memory map). Images are uint8
        (B, 3, H, W) in channels_last memory (the cache's layout), masks uint8 (B, 1, H, W) 0/1,
        weights float32 (B,), indices int64 (B,).
        """
        rows = np.sort(self.indices[np.asarray(positions, dtype=np.int64)])
        images = torch.from_numpy(np.take(self.decoded.images, rows, axis=0))
        return {
            "image": images.permute(0, 3, 1, 2),
            "mask": torch.from_numpy(np.take(self.decoded.masks, rows, axis=0)).unsqueeze(1),
            "weight": torch.from_numpy(self.weights[rows]),
            "index": torch.from_numpy(rows),
        }

    def __getitem__(self, position: int) -> Sample:
        index = int(self.indices[position])
        image = torch.from_numpy(np.array(self.decoded.images[index].transpose(2, 0, 1)))
        mask = torch.from_numpy(np.array(self.decoded.masks[index][None]))
        if self.transform is not None:
            image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return {
            "image": image.as_subclass(torch.Tensor),
            "mask": mask.as_subclass(torch.Tensor).to(torch.float32),
            "weight": torch.tensor(self.weights[index], dtype=torch.float32),
            "index": index,
        }


class MaskBatches(MaskDataset):
    """A `MaskDataset` that a DataLoader reads a batch at a time (`MaskDataset.batch`), with
    `augment` left to the training loop, which applies it to each batch on the training device
    (`ml.segmentation.batch_augment.BatchAugment`). Its DataLoader needs `collate_fn=collated`.

    Args:
        decoded: the decoded dataset version.
        selection: the rows to serve, as a boolean mask over all rows or as row indices.
        weights: one training weight per row of `decoded` (default 1.0).
        augment: the augmentation the training loop is to apply (None: none).
    """

    def __init__(
        self,
        decoded: DecodedArrays,
        selection: np.ndarray | Sequence[int] | Sequence[bool],
        weights: np.ndarray | Sequence[float] | None = None,
        *,
        augment: AugmentConfig | None = None,
    ) -> None:
        super().__init__(decoded, selection, weights)
        self.device_augment = augment

    def __getitems__(self, positions: list[int]) -> Sample:
        return self.batch(positions)


def collated(batch: Any) -> Sample:
    """The `collate_fn` of a `MaskBatches` loader: its batches come collated."""
    return batch


def make_loaders(
    manifest: pa.Table,
    decoded: DecodedArrays,
    *,
    batch_size: int,
    num_workers: int = 0,
    augment: AugmentConfig | None,
    seed: int,
    pin_memory: bool = False,
    shard: tuple[int, int] | None = None,
    device_augment: bool = False,
) -> dict[str, DataLoader[Sample]]:
    """One loader per split present in `manifest`: train shuffled and augmented, val/test neither.

    With `device_augment` (and an enabled `augment`) the train loader serves `MaskBatches`:
    whole un-augmented batches (uint8 masks, rows sorted within each batch, the same rows per
    batch as without it), and the training loop augments them on its device.

    The train order is a pure function of `seed` (and of how many epochs were drawn); worker
    seeds come from per-split generators seeded from `seed`, so runs repeat exactly.

    With `shard=(rank, world_size)` (data-parallel training) the train loader serves only this
    rank's share of a permutation all ranks agree on (`DistributedSampler` seeded from `seed`;
    call its `set_epoch` before each epoch), padded so that every rank has as many batches; its
    workers are seeded per rank. Val and test are never sharded.

    Args:
        manifest: the manifest `decoded` was built from (same rows, same order).
        decoded: its decoded arrays.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (kept alive across epochs when > 0).
        augment: training augmentation; never applied to val or test.
        seed: seeds the shuffling and the workers.
        pin_memory: pin batches for faster copies to a GPU.
        shard: this process's rank and the number of processes training together.
        device_augment: leave the train split's augmentation to the training loop.

    Raises:
        ValueError: `decoded` was built from another manifest.
    """
    if tuple(manifest.column("sample_id").to_pylist()) != decoded.sample_ids:
        raise ValueError(f"{decoded.path} was decoded from another manifest")
    splits = np.asarray(manifest.column("split").to_pylist(), dtype=object)
    weights = manifest.column("weight").to_numpy()
    rank, world_size = shard or (0, 1)
    loaders: dict[str, DataLoader[Sample]] = {}
    for offset, split in enumerate(SPLITS):
        selection = splits == split
        if not selection.any():
            continue
        train = split == "train"
        batched = train and device_augment and augment is not None and augment.enabled
        kind = MaskBatches if batched else MaskDataset
        dataset = kind(decoded, selection, weights, augment=augment if train else None)
        sampler = (
            DistributedSampler(dataset, num_replicas=world_size, rank=rank, seed=seed)
            if train and shard is not None
            else None
        )
        per_rank = -(-int(selection.sum()) // world_size)
        loaders[split] = DataLoader(
            dataset,
            batch_size=batch_size,
            # A last batch of one sample gives batch norm nothing to normalise over (an error
            # once the deepest feature map is 1x1): drop it, when there is more than one batch.
            drop_last=train and per_rank > batch_size and per_rank % batch_size == 1,
            shuffle=train and sampler is None,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=collated if batched else None,
            pin_memory=pin_memory,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(seed + offset + len(SPLITS) * rank),
            persistent_workers=num_workers > 0,
        )
    return loaders


def seed_worker(worker_id: int) -> None:
    """Seed numpy and `random` in a DataLoader worker from the seed torch gave it."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def _row_indices(selection: np.ndarray | Sequence[int] | Sequence[bool], count: int) -> np.ndarray:
    chosen = np.asarray(selection)
    if chosen.dtype == bool:
        if chosen.shape != (count,):
            raise ValueError(f"boolean selection has shape {chosen.shape}, expected ({count},)")
        return np.flatnonzero(chosen)
    indices = chosen.astype(np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= count):
        raise ValueError(f"selection has rows outside 0..{count - 1}")
    return indices


def _weights(weights: np.ndarray | Sequence[float], count: int) -> np.ndarray:
    values = np.asarray(weights, dtype=np.float32)
    if values.shape != (count,):
        raise ValueError(f"weights have shape {values.shape}, expected ({count},)")
    return values
