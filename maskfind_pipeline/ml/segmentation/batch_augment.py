"""`AugmentConfig`'s transforms drawn per sample and applied to whole batches on their device.

`data.loader.build_augmentation` augments one sample at a time on the CPU; at GPU speeds that
bounds training. `BatchAugment` draws the same transforms from its own seeded generator, one
draw per sample, and applies them to a uint8 batch in a few kernels wherever the batch lives:

- flips and quarter turns, folded into one symmetry of the square per sample (a horizontal
  flip, a vertical flip, a transposition) applied with `torch.where`: exact;
- the affine warp, on the samples that draw it, with one `affine_grid` + `grid_sample` (image
  bilinear and rounded, mask nearest, zero fill) and torchvision's matrix;
- colour jitter: brightness, contrast, saturation and hue in a random order per sample, with
  torchvision's formulas for uint8 images (each step truncated back to integers, as its uint8
  kernels do).

Parameters are drawn on the CPU (so the same seed gives the same augmentation on any device)
and cross to the device in small pinned copies, without waiting for the device.

Differences from the per-sample path: the image's affine interpolation is bilinear, where
`v2.RandomAffine` defaults to nearest; non-square images turn by 0 or 180 degrees only (a
quarter turn would change the batch's shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from maskfind_pipeline.data.augment_config import AugmentConfig

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)
"""The colour jitter steps, as `BatchParams.order` and the columns of `BatchParams.factors`."""
_NEUTRAL = (1.0, 1.0, 1.0, 0.0)
_GRAY = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class BatchParams:
    """One batch's draws, one row per sample (CPU tensors).

    Attributes:
        hflip: bool (B,), flip left-right (applied first).
        vflip: bool (B,), flip top-bottom (second).
        turns: int64 (B,), quarter turns as `torch.rot90`'s `k` over (H, W) (third).
        warp: bool (B,), apply the affine warp (fourth).
        angle: float64 (B,), the warp's rotation in degrees.
        shift: float64 (B, 2), the warp's whole-pixel translation (x, y).
        zoom: float64 (B,), the warp's scale.
        factors: float32 (B, 4), the jitter factors by step (`BRIGHTNESS`, ...); 1, 1, 1 and 0
            change nothing.
        order: int64 (B, S), the jitter steps of each sample in the order applied (last); steps
            the config turns off may be left out.
    """

    hflip: torch.Tensor
    vflip: torch.Tensor
    turns: torch.Tensor
    warp: torch.Tensor
    angle: torch.Tensor
    shift: torch.Tensor
    zoom: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor


class BatchAugment:
    """`config`'s augmentation for batches: `images, masks = augment(images, masks)`.

    Images are uint8 (B, 3, H, W) and come back uint8; masks are 0/1 (B, 1, H, W) of any dtype
    and come back float32. Both stay on their device.

    Args:
        config: the augmentation (`enabled` is not consulted: build one only to augment).
        seed: seeds the draws (the training seed, plus the rank in data-parallel training).
    """

    def __init__(self, config: AugmentConfig, seed: int) -> None:
        self.config = config
        # A stream of its own: the same seed also initialises the weights.
        self.generator = torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + 1) % 2**63)

    def __call__(
        self, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"expected uint8 images (B, 3, H, W), got {images.dtype} {images.shape}"
            )
        height, width = images.shape[-2:]
        params = draw(self.config, len(images), (height, width), self.generator)
        return apply(images, masks, params)


def draw(
    config: AugmentConfig, count: int, size: tuple[int, int], generator: torch.Generator
) -> BatchParams:
    """Per-sample parameters with `build_augmentation`'s distributions, for (H, W) = `size`."""
    height, width = size

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        out = torch.empty(count, *shape, dtype=torch.float64)
        return out.uniform_(low, high, generator=generator)

    def chance(p: float) -> torch.Tensor:
        return torch.rand(count, generator=generator, dtype=torch.float64) < p

    hflip, vflip = chance(config.flip_p), chance(config.vertical_flip_p)
    turns = torch.randint(4, (count,), generator=generator)
    if not config.rotate90:
        turns.zero_()
    elif height != width:
        turns = turns // 2 * 2
    warp = chance(config.affine_p)
    angle = uniform(-config.degrees, config.degrees)
    limit = torch.tensor([config.translate * width, config.translate * height], dtype=torch.float64)
    shift = (uniform(-1.0, 1.0, 2) * limit).round()
    zoom = uniform(1 - config.scale, 1 + config.scale)
    spreads = (config.brightness, config.contrast, config.saturation)
    factors = torch.stack(
        [uniform(max(0.0, 1 - s), 1 + s) if s > 0 else uniform(1, 1) for s in spreads]
        + [uniform(-config.hue, config.hue) if config.hue > 0 else uniform(0, 0)],
        dim=1,
    ).float()
    # A random order of all four steps, less those the config turns off (they change nothing):
    # a random order of the rest.
    order = torch.rand(count, 4, generator=generator).argsort(dim=1)
    active = torch.tensor([s > 0 for s in spreads] + [config.hue > 0])
    order = order[active[order]].view(count, -1)
    return BatchParams(hflip, vflip, turns, warp, angle, shift, zoom, factors, order)


def apply(
    images: torch.Tensor, masks: torch.Tensor, params: BatchParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """`params` applied to a batch: uint8 images and float32 masks, on the batch's device."""
    images, masks = _symmetries(images, masks, params)
    rows = params.warp.nonzero().flatten()
    if len(rows):
        images, masks = _warp(images, masks, params, rows)
    if not torch.all(params.factors == torch.tensor(_NEUTRAL)):
        images = _jitter(images, params)
    return images, masks.float()


def _send(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on `device`, copied without waiting for the device's queue (unlike
    `torch.tensor(..., device="cuda")`, which synchronises the stream)."""
    if device.type == "cuda":
        values = values.pin_memory()
    return values.to(device, non_blocking=True)


def _symmetries(
    images: torch.Tensor, masks: torch.Tensor, params: BatchParams
) -> tuple[torch.Tensor, torch.Tensor]:
    # rot90 by k is a left-right flip then a transposition (k=1), both flips (k=2), or a
    # top-bottom flip then a transposition (k=3); flips commute, so each sample's flips and turn
    # reduce to: flip left-right, flip top-bottom, transpose.
    turns = params.turns
    flags = torch.stack(
        [params.hflip ^ ((turns == 1) | (turns == 2)), params.vflip ^ (turns >= 2), turns % 2 == 1],
        dim=1,
    )
    chosen = _send(flags, images.device).view(-1, 3, 1, 1, 1)
    for step, picked in enumerate(flags.any(dim=0).tolist()):
        if picked:
            images = torch.where(chosen[:, step], _symmetry(step, images), images)
            masks = torch.where(chosen[:, step], _symmetry(step, masks), masks)
    return images, masks


def _symmetry(step: int, x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-2, -1) if step == 2 else x.flip(-1 - step)


def _warp(
    images: torch.Tensor, masks: torch.Tensor, params: BatchParams, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    height, width = images.shape[-2:]
    theta = _theta(params.angle[rows], params.shift[rows], params.zoom[rows], height, width)
    index, theta = _send(rows, images.device), _send(theta, images.device)
    grid = F.affine_grid(theta, [len(rows), 1, height, width], align_corners=False)

    def warped(x: torch.Tensor, mode: str) -> torch.Tensor:
        moved = F.grid_sample(
            x.index_select(0, index).float(), grid, mode, "zeros", align_corners=False
        )
        if mode == "bilinear":
            moved = moved.round_()
        return x.index_copy(0, index, moved.to(x.dtype))

    return warped(images, "bilinear"), warped(masks, "nearest")


def _theta(
    angle: torch.Tensor, shift: torch.Tensor, zoom: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """float32 (n, 2, 3) `affine_grid` matrices of torchvision's `affine` (about the centre).

    torchvision maps each output pixel, in pixels from the centre, through the inverse
    rotation-scale and translation; `affine_grid` works in [-1, 1] per axis, hence the
    rescaling of the off-diagonal and translation terms.
    """
    radians = torch.deg2rad(angle)
    cos, sin = torch.cos(radians) / zoom, torch.sin(radians) / zoom
    tx, ty = shift.unbind(dim=1)
    rows = [
        [cos, sin * height / width, -(cos * tx + sin * ty) * 2 / width],
        [-sin * width / height, cos, (sin * tx - cos * ty) * 2 / height],
    ]
    return torch.stack([torch.stack(row, dim=1) for row in rows], dim=1).float()


def _jitter(images: torch.Tensor, params: BatchParams) -> torch.Tensor:
    """The colour steps of each sample in its order, on float copies of the uint8 values."""
    x = images.float()
    device = x.device
    for step in params.order.T:
        factor = params.factors.gather(1, step[:, None])[:, 0]
        blend = (step != HUE) & (factor != 1)
        if blend.any():
            x = _blend(
                x, torch.where(blend, step, BRIGHTNESS), torch.where(blend, factor, 1.0), device
            )
        hued = ((step == HUE) & (factor != 0)).nonzero().flatten()
        if len(hued):
            index = _send(hued, device)
            shifted = _hue(x.index_select(0, index), _send(factor[hued], device))
            x = x.index_copy(0, index, shifted)
    return x.to(torch.uint8)


def _blend(
    x: torch.Tensor, step: torch.Tensor, ratio: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """Per sample `x * ratio + other * (1 - ratio)`, clamped and truncated: `other` is 0
    (brightness), the grayscale image's mean (contrast) or the grayscale image (saturation)."""
    weights = torch.stack(
        [ratio, (1 - ratio) * (step == CONTRAST), (1 - ratio) * (step == SATURATION)], dim=1
    )
    weights = _send(weights, device).view(-1, 3, 1, 1, 1)
    ratio, to_mean, to_gray = weights.unbind(dim=1)
    if bool((step == CONTRAST).any() or (step == SATURATION).any()):
        gray = _grayscale(x)
        other = torch.addcmul(gray.mean(dim=(-2, -1), keepdim=True) * to_mean, gray, to_gray)
        x = torch.addcmul(other, x, ratio)
    else:
        x = x * ratio
    return x.clamp_(0, 255).floor_()


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    gray = r.mul(_GRAY[0]).add_(g, alpha=_GRAY[1]).add_(b, alpha=_GRAY[2])
    return gray.floor_().unsqueeze(1)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's `adjust_hue` of uint8 values (as floats), a hue shift per sample."""
    rgb = x / 255
    value, _ = rgb.max(dim=1)
    spread = value - rgb.min(dim=1).values
    saturation = spread / torch.where(value > 0, value, 1)
    divisor = torch.where(spread > 0, spread, 1).unsqueeze(1)
    r, g, b = ((value.unsqueeze(1) - rgb) / divisor).unbind(dim=1)
    red, green = value == rgb[:, 0], value == rgb[:, 1]
    hue = torch.where(red, b - g, torch.where(green, 2 + r - b, 4 + g - r))
    hue = torch.where(spread > 0, hue / 6, 0).add_(shift.view(-1, 1, 1)).remainder_(1)
    # Standard HSV to RGB: channel n of (5, 3, 1) is v - v s clamp(min(k, 4 - k), 0, 1),
    # k = (n + 6 h) mod 6.
    offsets = torch.arange(5.0, 0.0, -2.0, device=x.device).view(1, 3, 1, 1)  # 5, 3, 1
    k = (offsets + hue.unsqueeze(1) * 6).remainder_(6)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    out = value.unsqueeze(1) - (value * saturation).unsqueeze(1) * ramp
    return out.mul_(256 - 1e-3).floor_()
