"""Batched inference over a loader: sigmoid probabilities, masks and manifest row indices."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from maskfind_pipeline.ml.device import Placement, select_device
from maskfind_pipeline.ml.metrics import EvaluationMetrics, evaluate
from maskfind_pipeline.ml.segmentation.config import ModelConfig, ModelSpec
from maskfind_pipeline.ml.segmentation.model import preprocess
from maskfind_pipeline.ml.segmentation.tta import averaged_logits

Batch = Mapping[str, Any]


class Loader(Protocol):
    """What training iterates: a sized iterable of batches (a `DataLoader` is one)."""

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...


class Predictions(NamedTuple):
    """Per-image outputs, in loader order: uint8 probabilities round(p*255) (N, H, W), uint8
    0/1 masks (N, H, W) and the manifest row index of each image (N,)."""

    probabilities: np.ndarray
    masks: np.ndarray
    indices: np.ndarray


def forward(
    model: nn.Module, config: ModelSpec, images: torch.Tensor, placement: Placement
) -> torch.Tensor:
    """Logits of a uint8 batch with the model's preprocessing, memory format and autocast."""
    images = images.to(placement.device, non_blocking=True)
    inputs = preprocess(images.contiguous(memory_format=placement.memory_format), config)
    with placement.autocast():
        return model(inputs)


def predict_logits(
    model: nn.Module, config: ModelSpec, images: torch.Tensor, placement: Placement
) -> torch.Tensor:
    """Float32 logits of a uint8 batch as predictions are made: `forward`, averaged over the
    test-time augmentation `config` asks for (`ml.segmentation.tta`; none by default)."""
    images = images.to(placement.device, non_blocking=True)
    inputs = preprocess(images.contiguous(memory_format=placement.memory_format), config)
    with placement.autocast():
        return averaged_logits(model, inputs, config)


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module,
    config: ModelSpec,
    loader: Loader,
    *,
    placement: Placement | None = None,
) -> Predictions:
    """Sigmoid probabilities of every batch of `loader`, batched, without gradients, with the
    config's test-time augmentation (`predict_logits`).

    The model is put in eval mode (and back into its previous mode afterwards); autocast and
    channels_last follow `placement` (default: `select_device()` on the model's device).
    """
    device = next(model.parameters()).device
    placement = placement or select_device(str(device))
    was_training = model.training
    model.eval()
    probs, masks, indices = [], [], []
    for batch in loader:
        logits = predict_logits(model, config, batch["image"], placement)
        quantised = torch.sigmoid(logits.float()).mul_(255).round_().to(torch.uint8)
        probs.append(quantised[:, 0].cpu().numpy())
        masks.append(batch["mask"][:, 0].to(torch.uint8).numpy())
        indices.append(np.asarray(batch["index"], dtype=np.int64))
    model.train(was_training)
    if not probs:
        raise ValueError("the loader yielded no batches")
    return Predictions(np.concatenate(probs), np.concatenate(masks), np.concatenate(indices))


def evaluate_loader(
    model: nn.Module,
    config: ModelConfig,
    loader: Loader,
    *,
    image_types: Sequence[str],
    sources: Sequence[str],
    placement: Placement | None = None,
) -> EvaluationMetrics:
    """Metrics of `model` at `config.threshold` on every batch of `loader` (e.g. a test split).

    `image_types` and `sources` are indexed by manifest row, as batches carry row indices.
    """
    predictions = predict_probabilities(model, config, loader, placement=placement)
    rows = predictions.indices
    return evaluate(
        predictions.probabilities,
        predictions.masks,
        config.threshold,
        image_types=np.asarray(image_types, dtype=object)[rows].tolist(),
        sources=np.asarray(sources, dtype=object)[rows].tolist(),
    )
