"""Batched augmentation on the training device: the per-sample transforms' distribution and
kernels, image and mask moving together, and the loader and loop that use it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from maskfind_pipeline.data.augment_config import AugmentConfig
from maskfind_pipeline.data.decoded import DecodedArrays
from maskfind_pipeline.data.loader import MaskBatches, MaskDataset, build_augmentation, make_loaders
from maskfind_pipeline.ml.device import select_device
from maskfind_pipeline.ml.segmentation import train as train_module
from maskfind_pipeline.ml.segmentation.batch_augment import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    BatchAugment,
    BatchParams,
    apply,
    draw,
)
from maskfind_pipeline.ml.segmentation.config import TrainConfig
from maskfind_pipeline.ml.segmentation.train import make_train_loaders, train
from tests.support.models import TINY_SPEC

OFF = AugmentConfig(
    flip_p=0, rotate90=False, affine_p=0, brightness=0, contrast=0, saturation=0, hue=0
)
GEOMETRY = OFF.model_copy(update={"flip_p": 0.5, "rotate90": True})
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def images_of(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)


def blobs(count: int, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose mask is a function of their pixels: a coloured rectangle (the mask) on a
    dark background, at a random place per sample."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, 1, size, size), np.uint8)
    for m in masks:
        y, x = rng.integers(4, size // 2, size=2)
        m[0, y : y + size // 3, x : x + size // 4] = 1
    colour = torch.tensor([220, 180, 240], dtype=torch.uint8).view(1, 3, 1, 1)
    mask = torch.from_numpy(masks)
    return (mask * colour).to(torch.uint8), mask


def neutral(count: int, **changes: torch.Tensor) -> BatchParams:
    """Parameters that change nothing, with `changes` replacing some of them."""
    values: dict[str, Any] = {
        "hflip": torch.zeros(count, dtype=torch.bool),
        "vflip": torch.zeros(count, dtype=torch.bool),
        "turns": torch.zeros(count, dtype=torch.int64),
        "warp": torch.zeros(count, dtype=torch.bool),
        "angle": torch.zeros(count, dtype=torch.float64),
        "shift": torch.zeros(count, 2, dtype=torch.float64),
        "zoom": torch.ones(count, dtype=torch.float64),
        "factors": torch.tensor([[1.0, 1.0, 1.0, 0.0]]).repeat(count, 1),
        "order": torch.arange(4).repeat(count, 1),
    }
    return BatchParams(**(values | changes))


def test_flips_and_quarter_turns_are_exact_and_move_the_mask_alike() -> None:
    combos = [(h, v, k) for h in (0, 1) for v in (0, 1) for k in range(4)]
    hflip, vflip, turns = (torch.tensor(c) for c in zip(*combos, strict=True))
    images = images_of(len(combos), size=8)
    masks = torch.randint(0, 2, (len(combos), 1, 8, 8), dtype=torch.uint8)
    params = neutral(len(combos), hflip=hflip.bool(), vflip=vflip.bool(), turns=turns)
    out, out_masks = apply(images, masks, params)
    for i, (h, v, k) in enumerate(combos):
        for before, after in ((images[i], out[i]), (masks[i].float(), out_masks[i])):
            expected = before.flip(-1) if h else before
            expected = expected.flip(-2) if v else expected
            assert torch.equal(after, torch.rot90(expected, k, dims=(-2, -1))), (h, v, k)
    assert out.dtype == torch.uint8 and out_masks.dtype == torch.float32


def test_a_disabled_augmentation_changes_nothing() -> None:
    images, masks = blobs(6)
    out, out_masks = BatchAugment(OFF, seed=0)(images, masks)
    assert torch.equal(out, images) and torch.equal(out_masks, masks.float())


def test_masks_stay_binary_and_move_with_the_image() -> None:
    images, masks = blobs(64)
    everything = AugmentConfig(affine_p=1.0, degrees=30, hue=0.1)
    out, out_masks = BatchAugment(everything, seed=1)(images, masks.float())
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    gray = out.float().mean(dim=1, keepdim=True)
    agreement = ((gray > 60) == (out_masks > 0)).float().mean(dim=(1, 2, 3))
    assert agreement.min() > 0.97  # bilinear image vs nearest mask: only edge pixels differ
    assert not torch.equal(out_masks, masks.float()), "the geometry moved something"


def test_colour_jitter_changes_images_only() -> None:
    images, masks = blobs(16)
    colour = OFF.model_copy(update={"brightness": 0.4, "contrast": 0.4, "saturation": 0.4})
    out, out_masks = BatchAugment(colour.model_copy(update={"hue": 0.2}), seed=2)(images, masks)
    assert torch.equal(out_masks, masks.float())
    assert (out != images).any(dim=(1, 2, 3)).all(), "every sample drew its own colours"


def test_each_sample_draws_its_own_parameters() -> None:
    images = images_of(1).repeat(32, 1, 1, 1)
    out, _ = BatchAugment(AugmentConfig(affine_p=0.5), seed=3)(images, torch.zeros(32, 1, 32, 32))
    assert len({bytes(o.numpy()) for o in out}) == 32
    params = draw(AugmentConfig(), 32, (32, 32), torch.Generator().manual_seed(0))
    assert len(set(params.turns.tolist())) == 4 and len(set(params.angle.tolist())) == 32
    assert all(len(set(column.tolist())) == 32 for column in params.factors[:, :3].T)
    assert len({tuple(o) for o in params.order.tolist()}) == 6  # of the 3 steps enabled


def test_the_marginal_rates_match_the_config() -> None:
    config = AugmentConfig(flip_p=0.3, affine_p=0.2, degrees=15, translate=0.1, hue=0.05)
    count = 20_000
    params = draw(config, count, (40, 40), torch.Generator().manual_seed(0))
    assert abs(params.hflip.double().mean() - 0.3) < 0.02
    assert abs(params.vflip.double().mean() - 0.3) < 0.02
    assert abs(params.warp.double().mean() - 0.2) < 0.02
    assert (torch.bincount(params.turns, minlength=4) / count - 0.25).abs().max() < 0.02
    assert params.angle.abs().max() <= 15 and abs(params.angle.mean()) < 0.3
    assert set(params.shift.flatten().tolist()) == set(range(-4, 5))
    assert params.zoom.min() >= 0.9 and params.zoom.max() <= 1.1
    bounds = torch.tensor([[0.8, 0.8, 0.9, -0.05], [1.2, 1.2, 1.1, 0.05]])
    assert ((params.factors >= bounds[0]) & (params.factors <= bounds[1])).all()
    assert (params.order.sort(dim=1).values == torch.arange(4)).all()
    assert (torch.bincount(params.order[:, 0], minlength=4) / count - 0.25).abs().max() < 0.02
    no_hue = draw(config.model_copy(update={"hue": 0}), 10, (40, 40), torch.Generator())
    assert set(no_hue.order.flatten().tolist()) == {BRIGHTNESS, CONTRAST, SATURATION}
    wide = draw(config, 1000, (40, 64), torch.Generator().manual_seed(0))
    assert set(wide.turns.tolist()) == {0, 2}, "non-square images turn by 0 or 180 degrees only"
    assert wide.shift[:, 0].abs().max() == 6 and wide.shift[:, 1].abs().max() == 4


def test_flips_and_turns_have_the_per_sample_distribution() -> None:
    config = GEOMETRY.model_copy(update={"flip_p": 0.2})
    marker = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    marker[..., 0, 1] = 255  # no symmetry of the square maps this pixel onto itself
    count = 4000
    out, _ = BatchAugment(config, seed=4)(
        marker.repeat(count, 1, 1, 1), torch.zeros(count, 1, 4, 4)
    )
    batched = Counter(int(o[0].flatten().argmax()) for o in out)
    transform = build_augmentation(config)
    assert transform is not None
    torch.manual_seed(4)
    per_sample = Counter(
        int(transform(tv_tensors.Image(marker[0]))[0].flatten().argmax()) for _ in range(count)
    )
    assert set(batched) == set(per_sample) and len(batched) == 8
    for place, seen in per_sample.items():
        assert abs(batched[place] - seen) / count < 0.03, place


def test_the_warp_is_torchvisions_affine() -> None:
    images, masks = blobs(6, size=40)
    images = images + images_of(6, size=40) // 4  # texture, for the bilinear comparison
    angle = torch.tensor([0.0, 10.0, -25.0, 5.0, 90.0, 33.0], dtype=torch.float64)
    shift = torch.tensor([[0, 0], [3, -2], [0, 4], [-5, 1], [2, 2], [1, 0]], dtype=torch.float64)
    zoom = torch.tensor([1.0, 0.9, 1.1, 1.05, 1.0, 0.8], dtype=torch.float64)
    params = neutral(6, warp=torch.ones(6, dtype=torch.bool), angle=angle, shift=shift, zoom=zoom)
    out, out_masks = apply(images, masks, params)
    for i in range(6):
        arguments = {
            "angle": float(angle[i]),
            "translate": [float(t) for t in shift[i]],
            "scale": float(zoom[i]),
            "shear": [0.0, 0.0],
        }
        image = TF.affine(images[i], **arguments, interpolation=InterpolationMode.BILINEAR)
        mask = TF.affine(masks[i], **arguments, interpolation=InterpolationMode.NEAREST)
        difference = (out[i].int() - image.int()).abs()
        assert difference.max() <= 1 and (difference == 0).float().mean() > 0.99, i
        assert (out_masks[i] == mask.float()).float().mean() > 0.995, i


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2)])
def test_the_colour_steps_are_torchvisions_uint8_kernels(order: tuple[int, ...]) -> None:
    images = images_of(4, size=24, seed=5)
    factors = torch.tensor(
        [[1.2, 0.8, 1.1, 0.05], [0.7, 1.3, 0.0, -0.2], [1.0, 1.0, 1.0, 0.0], [0.9, 1.5, 2.0, 0.5]]
    )
    params = neutral(4, factors=factors, order=torch.tensor([order] * 4))
    out, _ = apply(images, torch.zeros(4, 1, 24, 24), params)
    kernels = {
        BRIGHTNESS: TF.adjust_brightness,
        CONTRAST: TF.adjust_contrast,
        SATURATION: TF.adjust_saturation,
        HUE: TF.adjust_hue,
    }
    for i in range(4):
        expected = images[i]
        for step in order:
            expected = kernels[step](expected, float(factors[i, step]))
        difference = (out[i].int() - expected.int()).abs()
        # Float rounding differs in rare pixels (hue's conversions); later steps may stretch it.
        assert difference.max() <= 2 and (difference == 0).float().mean() > 0.99, i
    assert torch.equal(out[2], images[2])


def test_the_same_seed_gives_the_same_batches() -> None:
    images, masks = blobs(8)

    def run(seed: int) -> list[torch.Tensor]:
        augment = BatchAugment(AugmentConfig(affine_p=0.5, hue=0.05), seed=seed)
        return [t for _ in range(3) for t in augment(images, masks)]

    first = run(7)
    assert all(torch.equal(a, b) for a, b in zip(first, run(7), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, run(8), strict=True))


@CUDA
def test_cuda_batches_equal_cpu_batches_for_a_seed() -> None:
    images, masks = blobs(16)

    def both(config: AugmentConfig) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        on_cpu = BatchAugment(config, seed=9)(images, masks)
        on_gpu = BatchAugment(config, seed=9)(images.cuda(), masks.cuda())
        return list(on_cpu), [t.cpu() for t in on_gpu]

    cpu, gpu = both(GEOMETRY)
    assert torch.equal(cpu[0], gpu[0]) and torch.equal(cpu[1], gpu[1])
    cpu, gpu = both(AugmentConfig(affine_p=0.5, hue=0.05))
    # Equal but for rounding in rare pixels (warp coordinates, hue's conversions).
    assert (gpu[0].int() - cpu[0].int()).abs().max() <= 1
    assert (gpu[0] != cpu[0]).float().mean() < 1e-3 and (gpu[1] != cpu[1]).float().mean() < 1e-3


@CUDA
def test_cuda_batches_are_augmented_without_waiting_for_the_gpu() -> None:
    images, masks = (t.cuda() for t in blobs(16))
    augment = BatchAugment(AugmentConfig(affine_p=0.5, hue=0.05), seed=0)
    augment(images, masks)  # the pinned host allocator's first blocks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a synchronising call raises
    try:
        for _ in range(3):
            augment(images, masks)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_auto_augments_batches_on_a_gpu_and_samples_on_the_cpu() -> None:
    assert AugmentConfig().on_device("cuda") and not AugmentConfig().on_device("cpu")
    assert AugmentConfig(where="batch").on_device("cpu")
    assert not AugmentConfig(where="sample").on_device("cuda")
    assert not AugmentConfig(enabled=False, where="batch").on_device("cuda")


def decoded_arrays(tmp_path: Path, count: int = 24, size: int = 32) -> tuple[pa.Table, Any]:
    images, masks = blobs(count, size=size)
    ids = tuple(f"s{i}" for i in range(count))
    arrays = DecodedArrays(
        tmp_path,
        images.permute(0, 2, 3, 1).contiguous().numpy(),
        masks[:, 0].numpy(),
        ids,
    )
    manifest = pa.table(
        {
            "sample_id": list(ids),
            "split": ["val" if i % 4 == 0 else "train" for i in range(count)],
            "weight": [1.0 + i for i in range(count)],
            "image_type": ["t"] * count,
            "source": ["labeled"] * count,
        }
    )
    return manifest, arrays


def test_the_batched_train_loader_serves_the_same_batches_unaugmented(tmp_path: Path) -> None:
    manifest, arrays = decoded_arrays(tmp_path)
    config = AugmentConfig()
    per_sample = make_loaders(manifest, arrays, batch_size=5, augment=config, seed=3)
    batched = make_loaders(
        manifest, arrays, batch_size=5, augment=config, seed=3, device_augment=True
    )
    assert isinstance(batched["train"].dataset, MaskBatches)
    assert batched["train"].dataset.device_augment == config
    assert type(batched["val"].dataset) is MaskDataset
    for plain, whole in zip(per_sample["train"], batched["train"], strict=True):
        rows = whole["index"].numpy()
        assert rows.tolist() == sorted(plain["index"].tolist())
        assert whole["image"].dtype == torch.uint8 and whole["mask"].dtype == torch.uint8
        np.testing.assert_array_equal(whole["image"].permute(0, 2, 3, 1), arrays.images[rows])
        np.testing.assert_array_equal(whole["mask"][:, 0], arrays.masks[rows])
        np.testing.assert_array_equal(whole["weight"], 1.0 + rows)


def test_the_batched_train_loader_shards_between_ranks(tmp_path: Path) -> None:
    manifest, arrays = decoded_arrays(tmp_path)
    shards = []
    for rank in (0, 1):
        loader = make_loaders(
            manifest,
            arrays,
            batch_size=3,
            augment=AugmentConfig(),
            seed=5,
            shard=(rank, 2),
            device_augment=True,
            num_workers=1,
        )["train"]
        loader.sampler.set_epoch(2)  # type: ignore[attr-defined]
        shards.append({int(i) for batch in loader for i in batch["index"]})
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 18


def test_training_augments_batches_on_the_device(tmp_path: Path, monkeypatch) -> None:
    manifest, arrays = decoded_arrays(tmp_path, count=20, size=64)
    seen: list[tuple[torch.dtype, torch.dtype]] = []

    class Recording(BatchAugment):
        def __call__(self, images, masks):  # type: ignore[no-untyped-def]
            seen.append((images.dtype, masks.dtype))
            return super().__call__(images, masks)

    monkeypatch.setattr(train_module, "BatchAugment", Recording)
    config = TrainConfig(
        epochs=1,
        batch_size=5,
        augment=AugmentConfig(where="batch"),
        schedule="constant",
        device="cpu",
    )
    placement = select_device("cpu")
    loaders = make_train_loaders(manifest, arrays, config, placement)
    result = train(
        TINY_SPEC,
        config,
        loaders,
        image_types=["t"] * 20,
        sources=["labeled"] * 20,
        placement=placement,
        progress_bar=False,
    )
    assert seen == [(torch.uint8, torch.uint8)] * 3
    assert result.history[0]["train_loss"] > 0
