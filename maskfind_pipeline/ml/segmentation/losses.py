"""Training losses of (logits, 0/1 masks, per-sample weights), computed in float32."""

from __future__ import annotations

from collections.abc import Callable

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(name: str) -> LossFn:
    """Loss of (logits, 0/1 masks, per-sample weights), computed in float32.

    `dice_bce` = soft Dice (smp, over the batch) + weighted BCE; `bce` and `focal` weight each
    sample's mean pixel loss; `dice` ignores the weights. `lovasz` is the Lovász hinge (smp, per
    image), a convex surrogate of each image's IoU, which ignores the weights; `bce_lovasz` adds
    weighted BCE to it.
    """
    dice = smp.losses.DiceLoss("binary", from_logits=True)
    focal = smp.losses.FocalLoss("binary", reduction="none")
    lovasz = smp.losses.LovaszLoss("binary", per_image=True, from_logits=True)

    def weighted(per_pixel: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        per_sample = per_pixel.flatten(1).mean(dim=1)
        return (per_sample * weights).sum() / weights.sum().clamp_min(1e-8)

    def bce(logits: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        per_pixel = F.binary_cross_entropy_with_logits(logits, masks, reduction="none")
        return weighted(per_pixel, weights)

    losses: dict[str, LossFn] = {
        "bce": bce,
        "dice": lambda logits, masks, _: dice(logits, masks),
        "dice_bce": lambda logits, masks, w: dice(logits, masks) + bce(logits, masks, w),
        "focal": lambda logits, masks, w: weighted(focal(logits, masks).view_as(masks), w),
        "lovasz": lambda logits, masks, _: lovasz(logits, masks),
        "bce_lovasz": lambda logits, masks, w: lovasz(logits, masks) + bce(logits, masks, w),
    }
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}; use one of {sorted(losses)}")
    return losses[name]
