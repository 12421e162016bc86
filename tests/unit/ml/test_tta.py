"""Test-time augmentation: the averaged views against hand computations, and every path that
predicts (`predict_logits`, the `Predictor`, `ProbabilityModel`, the reviewer's flip baseline,
the ONNX export) applying it the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from maskfind_pipeline.ml.backends.base import ProbabilityModel
from maskfind_pipeline.ml.backends.runtimes import create_backend
from maskfind_pipeline.ml.device import select_device
from maskfind_pipeline.ml.novelty.features import segment_with_features
from maskfind_pipeline.ml.reviewer.data import build_review_samples
from maskfind_pipeline.ml.segmentation.config import ModelConfig, ModelSpec
from maskfind_pipeline.ml.segmentation.inference import predict_logits
from maskfind_pipeline.ml.segmentation.model import build_model, preprocess
from maskfind_pipeline.ml.segmentation.predict import Predictor, weights_to_bytes
from maskfind_pipeline.ml.segmentation.tta import averaged_logits, scaled_side, stride
from tests.unit.ml.test_reviewer_data import SIZE as REVIEW_SIZE
from tests.unit.ml.test_reviewer_data import squares

EXACT = select_device("cpu", mixed_precision=False)
TINY = ModelConfig(
    encoder_name="resnet18",
    encoder_weights=None,
    input_size=64,
    decoder_channels=(32, 16, 16, 8, 8),
)
TINY_TTA = TINY.model_copy(update={"tta_flip": True, "tta_scales": (1.0, 1.5)})
STRIDE_8 = ModelSpec(encoder_weights=None, decoder_channels=(16, 16, 16), input_size=64)


class Toy(nn.Module):
    """Neither mirror- nor scale-equivariant: an asymmetric 3x3 convolution plus a left-to-right
    ramp. Records the spatial size of every input it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            weights = torch.arange(27, dtype=torch.float32).view(1, 3, 3, 3)
            self.conv.weight.copy_(weights / 27 - 0.3)
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append((x.shape[-2], x.shape[-1]))
        return self.conv(x) + torch.linspace(-2.0, 2.0, x.shape[-1])


def inputs(height: int = 64, width: int = 64, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))


def resized(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def view_at(model: nn.Module, x: torch.Tensor, size: tuple[int, int], flip: bool) -> torch.Tensor:
    """The logits of one view by hand, mapped back onto the input's pixels."""
    view = resized(x, size)
    if flip:
        return resized(model(view.flip(-1)).flip(-1), tuple(x.shape[-2:]))
    return resized(model(view), tuple(x.shape[-2:]))


# --- the averaged views, by hand -------------------------------------------------------------


def test_stride_and_scaled_side_round_to_the_encoders_stride() -> None:
    assert stride(TINY) == 32 and stride(STRIDE_8) == 8
    assert scaled_side(256, 0.75, TINY) == 192
    assert scaled_side(256, 1.1, TINY) == 288  # 281.6 -> 9 strides
    assert scaled_side(64, 1.3, STRIDE_8) == 80  # 83.2 -> 10 strides
    assert scaled_side(48, 1.3, STRIDE_8) == 64  # 62.4 -> 8 strides
    assert scaled_side(64, 0.25, TINY) == 32, "at least one stride"
    assert scaled_side(64, 1.0, TINY) == 64


def test_without_tta_the_plain_logits_come_back_unchanged() -> None:
    model, x = Toy(), inputs()
    config = ModelSpec(encoder_weights=None)
    assert config.tta_passes == 1
    with torch.no_grad():
        expected = model(x)
        model.sizes.clear()
        torch.testing.assert_close(averaged_logits(model, x, config), expected, atol=0, rtol=0)
        assert len(model.sizes) == 1
        given = averaged_logits(model, x, config, plain=expected)
    assert given is expected and len(model.sizes) == 1, "the given pass is not run again"


def test_flip_tta_averages_with_the_mirrored_view_mirrored_back() -> None:
    model, x = Toy(), inputs()
    config = ModelSpec(encoder_weights=None, tta_flip=True)
    assert config.tta_passes == 2
    with torch.no_grad():
        plain = model(x)
        expected = (plain + model(x.flip(-1)).flip(-1)) / 2
        model.sizes.clear()
        got = averaged_logits(model, x, config)
    assert len(model.sizes) == 2
    assert float((expected - plain).abs().max()) > 0.1, "the toy model is not mirror-symmetric"
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_scale_tta_runs_at_stride_rounded_sides_and_returns_the_input_size() -> None:
    model, x = Toy(), inputs(64, 48)
    config = STRIDE_8.model_copy(update={"tta_scales": (1.0, 0.5, 1.3)})
    assert config.tta_passes == 3
    with torch.no_grad():
        expected = (
            model(x) + view_at(model, x, (32, 24), False) + view_at(model, x, (80, 64), False)
        ) / 3
        model.sizes.clear()
        got = averaged_logits(model, x, config)
    assert model.sizes == [(64, 48), (32, 24), (80, 64)]
    assert got.shape == (2, 1, 64, 48) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_flip_and_scales_together_make_every_pass_once() -> None:
    model, x = Toy(), inputs()
    config = STRIDE_8.model_copy(update={"tta_flip": True, "tta_scales": (0.5, 1.0, 0.5, 1.5)})
    assert config.tta_passes == 6, "a repeated scale counts once"
    with torch.no_grad():
        views = [view_at(model, x, (s, s), flip) for s in (32, 64, 96) for flip in (False, True)]
        expected = sum(views, torch.zeros_like(views[0])) / 6
        plain = model(x)
        model.sizes.clear()
        got = averaged_logits(model, x, config)
        assert len(model.sizes) == 6
        model.sizes.clear()
        with_plain = averaged_logits(model, x, config, plain=plain)
    assert len(model.sizes) == 5, "the given plain pass is reused"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(with_plain, got, atol=0, rtol=0)


@pytest.mark.parametrize("scales", [(0.5, 2.0), (1.0, 5.0), (1.0, 0.2), ()])
def test_scales_without_1_or_out_of_range_are_refused(scales: tuple[float, ...]) -> None:
    with pytest.raises(ValidationError, match="tta_scales"):
        ModelSpec(encoder_weights=None, tta_scales=scales)


def test_tta_settings_survive_the_stored_config() -> None:
    spec = ModelSpec(encoder_weights=None, tta_flip=True, tta_scales=(1.0, 0.25, 4.0))
    stored = ModelConfig.of(spec, 0.4)
    again = ModelConfig.model_validate_json(stored.to_json())
    assert (again.tta_flip, again.tta_scales, again.tta_passes) == (True, (1.0, 0.25, 4.0), 6)


# --- every path that predicts ----------------------------------------------------------------


@pytest.fixture(scope="module")
def weights() -> bytes:
    torch.manual_seed(0)
    return weights_to_bytes(build_model(TINY, pretrained=False))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=generator)


def test_the_predictor_averages_its_views_and_predicts_mirror_equivariantly(
    weights: bytes, images: torch.Tensor
) -> None:
    tta = Predictor.from_weights(TINY_TTA, weights)
    plain = Predictor.from_weights(TINY, weights)
    averaged, single = tta.logits(images), tta.logits(images, tta=False)
    torch.testing.assert_close(single, plain.logits(images), atol=0, rtol=0)
    assert float((averaged - single).abs().max()) > 1e-3
    with torch.no_grad():
        inputs = preprocess(images, TINY)
        expected = averaged_logits(tta.model, inputs, TINY_TTA)
    torch.testing.assert_close(averaged, expected, atol=1e-5, rtol=0)
    # The plain pass of this random network is not mirror-equivariant; its TTA average is.
    mirrored = images.flip(-1)
    unequal = (plain.logits(mirrored) - plain.logits(images).flip(-1)).abs().max()
    assert float(unequal) > 1e-3
    torch.testing.assert_close(tta.logits(mirrored), averaged.flip(-1), atol=1e-5, rtol=0)


def test_probability_model_gives_the_sigmoid_of_predict_logits_and_plain_features(
    weights: bytes, images: torch.Tensor
) -> None:
    model = Predictor.from_weights(TINY, weights).model
    with torch.no_grad():
        probabilities, features, _ = ProbabilityModel(model, TINY_TTA)(images)
        expected = torch.sigmoid(predict_logits(model, TINY_TTA, images, EXACT))
        plain, plain_features = segment_with_features(model, preprocess(images, TINY))
    torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=0)
    assert float((probabilities - torch.sigmoid(plain)).abs().max()) > 1e-3
    torch.testing.assert_close(features, plain_features, atol=0, rtol=0)


class BrightRamp(nn.Module):
    """Product where the image is bright, shifted by a left-to-right ramp: the plain pass is
    lopsided, the flip-averaged one finds the bright square exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4 * x.mean(dim=1, keepdim=True) + torch.linspace(-8.0, 8.0, x.shape[-1])


def test_the_flip_baseline_compares_plain_passes_under_tta() -> None:
    images, truth, types = squares(6)
    config = ModelConfig(encoder_weights=None, input_size=REVIEW_SIZE)
    tta_config = config.model_copy(update={"tta_flip": True})
    samples = [
        build_review_samples(
            images, truth, types, [Predictor(BrightRamp(), c)], degraded_share=0.0, seed=0
        )
        for c in (config, tta_config)
    ]
    plain, tta = samples
    assert (tta.flip_disagreement > 0.1).all(), "not mirror-agreement by construction"
    np.testing.assert_allclose(tta.flip_disagreement, plain.flip_disagreement)
    # The masks under review are the TTA ones: the ramp cancels and the square is found.
    np.testing.assert_allclose(tta.ious, 1.0)
    assert (plain.ious < 0.9).all()


@pytest.mark.slow  # the ONNX export alone takes about 8 s on two busy cores
def test_the_onnx_export_applies_the_same_tta(
    weights: bytes, images: torch.Tensor, tmp_path: Path
) -> None:
    config = TINY.model_copy(update={"tta_flip": True})
    predictor = Predictor.from_weights(config, weights)
    onnx = create_backend("onnxruntime", predictor, tmp_path).predict(images)
    exact = create_backend("torch_fp32", predictor, tmp_path).predict(images)
    torch.testing.assert_close(onnx.probabilities, exact.probabilities, atol=1e-5, rtol=0)
    torch.testing.assert_close(onnx.features, exact.features, atol=1e-4, rtol=1e-4)
    reference = torch.sigmoid(predictor.logits(images))
    torch.testing.assert_close(onnx.probabilities, reference, atol=1e-5, rtol=0)
    plain = torch.sigmoid(predictor.logits(images, tta=False))
    assert float((onnx.probabilities - plain).abs().max()) > 1e-3


class CountingRamp(BrightRamp):
    """`BrightRamp` with a stand-in encoder/decoder/head and a count of its passes."""

    def __init__(self) -> None:
        super().__init__()
        self.passes = 0
        self.encoder = _Stages(self)
        self.decoder = nn.Identity()
        self.segmentation_head = _Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        return super().forward(x)


class _Stages(nn.Module):
    def __init__(self, owner: CountingRamp) -> None:
        super().__init__()
        self.owner = [owner]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.owner[0].passes += 1
        return [x, x.mean(dim=1, keepdim=True), x]


class _Head(nn.Module):
    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        x = stages[-1]
        return 4 * x.mean(dim=1, keepdim=True) + torch.linspace(-8.0, 8.0, x.shape[-1])


@pytest.mark.parametrize("tta_flip", [True, False])
def test_the_flip_disagreement_costs_no_pass_under_tta_and_one_without(tta_flip: bool) -> None:
    """The graph's flip disagreement reuses the mirrored pass test-time flipping makes; without
    flipping it adds that one pass (plain + mirrored: two either way)."""
    images, _, _ = squares(4)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    config = ModelConfig(encoder_weights=None, input_size=REVIEW_SIZE, tta_flip=tta_flip)
    model = CountingRamp()
    with torch.no_grad():
        probabilities, _, disagreement = ProbabilityModel(model, config)(batch)
    assert model.passes == 2
    assert (disagreement > 0.1).all()  # the ramp is lopsided: its mirror disagrees
    assert probabilities.shape == (4, 1, REVIEW_SIZE, REVIEW_SIZE)
