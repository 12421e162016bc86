"""Test-time augmentation: the logits of a model config's views of the input, averaged.

`ModelSpec.tta_flip` and `tta_scales` say which views: the input itself, its left-right mirror,
and the input resized to other scales (each side rounded to the encoder's stride, so every
stage's feature map stays whole). Each view's logits are mapped back onto the input's pixels
(mirrored back, resized back bilinearly) and the logits are averaged. One function serves every
path that predicts: validation and evaluation (`ml.segmentation.inference`), the `Predictor`, and
the graph every backend runs (`backends.base.ProbabilityModel`, exported to ONNX with it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from maskfind_pipeline.ml.segmentation.config import ModelSpec

Logits = Callable[[torch.Tensor], torch.Tensor]


def stride(config: ModelSpec) -> int:
    """The encoder's total downsampling: a side divisible by it keeps every stage whole."""
    return 2 ** len(config.decoder_channels)


def scaled_side(side: int, scale: float, config: ModelSpec) -> int:
    """`side * scale` rounded to the nearest multiple of the encoder's stride (at least one)."""
    step = stride(config)
    return max(step, round(side * scale / step) * step)


def mirrored_logits(run: Logits, inputs: torch.Tensor) -> torch.Tensor:
    """The logits (B,1,H,W) of the left-right mirrored inputs, mirrored back onto the inputs'
    pixels (float32): the view `tta_flip` adds, and the second pass of `flip_disagreement`."""
    return run(inputs.flip(-1)).float().flip(-1)


def flip_disagreement(
    plain: torch.Tensor, mirrored: torch.Tensor, threshold: float
) -> torch.Tensor:
    """1 - IoU (B,) float32 of the masks `sigmoid(logits) >= threshold` of the plain and the
    mirrored pass (logits (B,1,H,W)); two empty masks agree (0).

    A free signal of an untrustworthy mask: where the model is sure, mirroring the image does
    not move the mask. Written with exportable operations only: every backend computes it in
    its graph (`backends.base.ProbabilityModel`).
    """
    first = (torch.sigmoid(plain.float()) >= threshold).float()
    second = (torch.sigmoid(mirrored.float()) >= threshold).float()
    inter = (first * second).sum(dim=(1, 2, 3))
    union = (first + second - first * second).sum(dim=(1, 2, 3))
    return 1.0 - torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


def averaged_logits(
    run: Logits,
    inputs: torch.Tensor,
    config: ModelSpec,
    plain: torch.Tensor | None = None,
    mirrored: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mean logits (B,1,H,W) of `run` over the views `config` asks for (float32).

    Args:
        run: preprocessed inputs (B,3,h,w) -> logits (B,1,h,w).
        inputs: the preprocessed batch (B,3,H,W).
        config: supplies `tta_flip`, `tta_scales` and the encoder's stride.
        plain: `run(inputs)` where the caller has it already (e.g. from a pass that also gave
            features); computed otherwise.
        mirrored: `mirrored_logits(run, inputs)` where the caller has it already.
    """
    if plain is None:
        plain = run(inputs)
    if config.tta_passes == 1:
        return plain.float()
    height, width = inputs.shape[-2:]
    # Scales that round to the same side are one view (1.0 among them: the plain pass).
    sides = {(height, width)} | {
        (scaled_side(height, s, config), scaled_side(width, s, config)) for s in config.tta_scales
    }
    total, views = plain.float(), 1
    for size in sorted(sides):
        view = inputs if size == (height, width) else _resize(inputs, size)
        if view is not inputs:
            total = total + _resize(run(view).float(), (height, width))
            views += 1
        if config.tta_flip:
            if view is inputs and mirrored is not None:
                total = total + mirrored.float()
            else:
                total = total + _resize(mirrored_logits(run, view), (height, width))
            views += 1
    return total / views


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
