"""The mask model's image features: what the novelty (new image type) score is computed from.

One definition, used when the novelty model is fitted after training and in production, where
the features come out of the same forward pass as the mask: the encoder's two deepest stages,
each averaged over its spatial positions, concatenated (float32). For ResNet-34 that is
256 + 512 = 768 numbers per image, for EfficientNet-Lite0 112 + 320 = 432.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

FEATURE_STAGES = 2


def pooled_features(stages: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, D) float32: the deepest `FEATURE_STAGES` encoder outputs, spatially averaged."""
    deepest = stages[-FEATURE_STAGES:]
    return torch.cat([s.float().mean(dim=(2, 3)) for s in deepest], dim=1)


def segment_with_features(
    model: nn.Module, inputs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, 1, H, W) and `pooled_features` (B, D) of preprocessed inputs in one pass
    through an smp segmentation model (encoder, decoder, segmentation head)."""
    encoder, decoder, head = (
        model.get_submodule(n) for n in ("encoder", "decoder", "segmentation_head")
    )
    stages = encoder(inputs)
    return head(decoder(stages)), pooled_features(stages)
