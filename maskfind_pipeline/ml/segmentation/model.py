"""The mask model: its architecture from a `ModelSpec` and the one definition of its input."""

from __future__ import annotations

import functools
import logging

import segmentation_models_pytorch as smp
import torch
from torch.utils.flop_counter import FlopCounterMode

from maskfind_pipeline.ml.segmentation.config import ModelSpec
from maskfind_pipeline.ml.weights.pretrained import load_encoder_weights

_log = logging.getLogger(__name__)

LIST_DECODER_ARCHS = ("unet", "unetplusplus", "manet")


def build_model(config: ModelSpec, *, pretrained: bool = True) -> torch.nn.Module:
    """Build the segmentation model described by `config` (3 input channels, 1 logit channel).

    The encoder depth follows `len(config.decoder_channels)`. Nothing is downloaded: with
    `pretrained` and `config.encoder_weights` set, encoder weights come from a local source
    (see `maskfind_pipeline.ml.weights.pretrained`).

    Args:
        config: Architecture and encoder choice.
        pretrained: Load pretrained encoder weights; False gives random weights, e.g. before
            loading a trained state dict.

    Raises:
        ValueError: The architecture does not take a list of decoder channels.
        PretrainedWeightsUnavailable: Pretrained weights were asked for but none exist locally.
    """
    if config.arch.lower() not in LIST_DECODER_ARCHS:
        raise ValueError(f"arch {config.arch!r} is not supported; use one of {LIST_DECODER_ARCHS}")
    model = smp.create_model(
        config.arch,
        encoder_name=config.encoder_name,
        encoder_weights=None,
        encoder_depth=len(config.decoder_channels),
        decoder_channels=list(config.decoder_channels),
        in_channels=3,
        classes=1,
    )
    if pretrained:
        source = load_encoder_weights(model, config)
        if source is not None:
            _log.info("encoder %s weights loaded from %s", config.encoder_name, source)
    return model


def preprocess(images: torch.Tensor, config: ModelSpec) -> torch.Tensor:
    """Model input from uint8 RGB images: scaled to [0, 1], normalised by `config.mean`/`std`.

    Runs on the images' device and keeps their memory format (channels_last stays so).

    Args:
        images: uint8 tensor (B, 3, H, W).
        config: Supplies the normalisation.

    Returns:
        float32 tensor (B, 3, H, W).
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    scale, shift = _normalisation(tuple(config.mean), tuple(config.std), images.device)
    return images.float().mul_(scale).sub_(shift)


@functools.lru_cache(maxsize=16)
def _normalisation(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 / (255 std), mean / std) on `device`, made once: building them from Python lists on a
    GPU every step would make the CPU wait for the GPU's queue (a copy from pageable memory)."""
    with torch.inference_mode(False):  # normal tensors, whichever mode the first call is in
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        return (1.0 / (255.0 * std_t)).to(device), (mean_t / std_t).to(device)


def count_parameters(model: torch.nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements, optionally only those that require gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def forward_flops(config: ModelSpec, input_size: int | tuple[int, int] | None = None) -> float:
    """FLOPs of one forward pass of one image (multiply-add counted as 2), on CPU.

    Args:
        config: The architecture to measure (built with random weights).
        input_size: Square side or (height, width); defaults to `config.input_size`.
    """
    side = input_size if input_size is not None else config.input_size
    height, width = (side, side) if isinstance(side, int) else side
    model = build_model(config, pretrained=False).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, height, width))
    return float(counter.get_total_flops())
