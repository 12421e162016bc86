from __future__ import annotations

import pytest
import torch

from maskfind_pipeline.ml.segmentation.config import ModelConfig, demo_model_spec
from maskfind_pipeline.ml.segmentation.model import (
    build_model,
    count_parameters,
    forward_flops,
    preprocess,
)
from maskfind_pipeline.ml.weights.pretrained import WEIGHTS_ENV_VAR

SCRATCH = ModelConfig(encoder_name="resnet34", encoder_weights=None)


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(WEIGHTS_ENV_VAR, raising=False)


def uint8_images(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)


@pytest.mark.parametrize("config", [SCRATCH, demo_model_spec()], ids=["resnet34", "lite0"])
def test_output_is_one_logit_per_pixel(config: ModelConfig) -> None:
    model = build_model(config).eval()
    with torch.no_grad():
        logits = model(preprocess(uint8_images(), config))
    assert logits.shape == (2, 1, 64, 64)


def test_encoder_depth_follows_the_decoder_channels() -> None:
    config = ModelConfig(encoder_weights=None, decoder_channels=(64, 32, 16))
    model = build_model(config).eval()
    assert len(list(model.get_submodule("decoder.blocks").children())) == 3
    with torch.no_grad():
        assert model(preprocess(uint8_images(1), config)).shape == (1, 1, 64, 64)


def test_unsupported_arch_is_refused() -> None:
    with pytest.raises(ValueError, match="FPN"):
        build_model(ModelConfig(arch="FPN", encoder_weights=None))


def test_preprocess_is_the_manual_normalisation() -> None:
    config = ModelConfig(mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    images = uint8_images()
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    out = preprocess(images, config)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (images.float() / 255 - mean) / std)


def test_preprocess_keeps_channels_last_and_the_input_untouched() -> None:
    images = uint8_images().contiguous(memory_format=torch.channels_last)
    before = images.clone()
    out = preprocess(images, demo_model_spec())
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(images, before)


@pytest.mark.parametrize("bad", [torch.zeros(1, 3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.uint8)])
def test_preprocess_refuses_anything_but_uint8_batches(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="uint8"):
        preprocess(bad, SCRATCH)


def test_count_parameters_counts_only_trainable_on_request() -> None:
    model = build_model(SCRATCH)
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == total
    encoder = model.get_submodule("encoder").requires_grad_(False)
    frozen = sum(p.numel() for p in encoder.parameters())
    assert count_parameters(model, trainable_only=True) == total - frozen


def test_forward_flops_grow_with_the_pixel_count() -> None:
    small = forward_flops(demo_model_spec(), 64)
    assert small > 1e8
    assert forward_flops(demo_model_spec(), (128, 64)) == pytest.approx(2 * small, rel=0.01)


def test_demo_config_is_the_offline_lite0_unet() -> None:
    config = demo_model_spec()
    assert config.encoder_name == "tu-tf_efficientnet_lite0"
    assert config.encoder_weights == "imagenet"
    assert config.mean == config.std == (0.5, 0.5, 0.5)
    stored = ModelConfig.of(config, 0.42)
    assert ModelConfig.from_json(stored.to_json()) == stored and stored.threshold == 0.42
