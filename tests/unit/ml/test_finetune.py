"""The fine-tuning recipe of a `TrainConfig`: encoder learning rate and freezing, progressive
resizing, the final loss, the weights' moving average, and vertical flips that can be off."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import tv_tensors

from maskfind_pipeline.data.augment_config import AugmentConfig
from maskfind_pipeline.data.loader import build_augmentation
from maskfind_pipeline.ml import fit as fit_module
from maskfind_pipeline.ml.device import select_device
from maskfind_pipeline.ml.fitting import WeightAverage, lr_factor
from maskfind_pipeline.ml.segmentation import train as train_module
from maskfind_pipeline.ml.segmentation.batch_augment import BatchAugment, draw
from maskfind_pipeline.ml.segmentation.inference import Predictions
from maskfind_pipeline.ml.segmentation.losses import make_loss
from maskfind_pipeline.ml.segmentation.model import build_model
from maskfind_pipeline.ml.segmentation.train import TrainResult, _MaskModelFit, _Recipe, train
from tests.unit.ml import test_train as base
from tests.unit.ml.test_train import FAST, SIZE, TINY, Data

data = base.data
"""test_train's tiny generated dataset (16 train, 8 val images of 64²), made once per module."""

StateDict = dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def initial() -> StateDict:
    torch.manual_seed(0)
    model = build_model(TINY, pretrained=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit(data: Data, initial: StateDict, **changes: Any) -> TrainResult:
    """A short run from `initial` (4 steps an epoch) with `changes` to `FAST`."""
    config = FAST.model_copy(update={"epochs": 1, **changes})
    return train(
        TINY,
        config,
        data.loaders(config),
        **data.columns(),
        placement=select_device("cpu", mixed_precision=False),
        progress_bar=False,
        initial_state=initial,
    )


@pytest.fixture(scope="module")
def plain(data: Data, initial: StateDict) -> TrainResult:
    """The short run without any of the recipe's options."""
    return fit(data, initial)


def is_encoder(name: str) -> bool:
    return name.startswith("encoder.")


def distance(model: nn.Module, state: StateDict) -> float:
    """The L2 distance of all parameters from `state`."""
    squares = [((p.detach() - state[n]) ** 2).sum() for n, p in model.named_parameters()]
    return math.sqrt(float(sum(squares)))


# --- learning rates per parameter group ------------------------------------------------------


def test_the_encoder_is_a_group_of_its_own_at_its_learning_rate_factor() -> None:
    config = FAST.model_copy(update={"learning_rate": 2e-3, "encoder_lr_factor": 0.1})
    model = build_model(TINY, pretrained=False)
    run = _MaskModelFit(model, TINY, config, select_device("cpu", mixed_precision=False), [], [])
    groups = run.optimiser.optimizer.param_groups
    assert len(groups) == 2
    assert groups[0]["lr"] == pytest.approx(2e-3) and groups[1]["lr"] == pytest.approx(2e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    decoder = [names[id(p)] for p in groups[0]["params"]]
    encoder = [names[id(p)] for p in groups[1]["params"]]
    assert decoder and encoder and not any(map(is_encoder, decoder))
    assert all(map(is_encoder, encoder))
    assert any(n.startswith("segmentation_head.") for n in decoder)
    every = decoder + encoder
    assert len(every) == len(set(every)) == len(names), "each parameter exactly once"


def test_the_encoder_factor_is_0_until_the_freeze_share_then_the_schedules() -> None:
    config = FAST.model_copy(update={"schedule": "cosine", "freeze_encoder": 0.3})
    recipe = _Recipe(build_model(TINY, pretrained=False), TINY, config)
    decoder, encoder = recipe.lr_factors(lambda step: step / 100)
    for step in (0, 10, 29):
        assert encoder(step) == 0.0
        assert decoder(step) == pytest.approx(lr_factor("cosine", step / 100))
        assert decoder(step) > 0.5
    for step in (30, 31, 60, 99):
        assert encoder(step) == decoder(step) == pytest.approx(lr_factor("cosine", step / 100))
    assert encoder(30) > 0.5


def test_a_frozen_encoder_keeps_its_weights_while_the_decoder_learns(
    data: Data, initial: StateDict, plain: TrainResult
) -> None:
    result = fit(data, initial, freeze_encoder=1.0)
    moved = {n for n, p in result.model.named_parameters() if not torch.equal(p, initial[n])}
    assert moved and not any(map(is_encoder, moved))
    decoder = {n for n, _ in result.model.named_parameters() if not is_encoder(n)}
    assert len(moved) > 0.9 * len(decoder)
    unfrozen = {n for n, p in plain.model.named_parameters() if not torch.equal(p, initial[n])}
    assert any(map(is_encoder, unfrozen)), "without freezing the same run moves the encoder"
    # Batch-norm statistics still adapt to the data.
    state = result.model.state_dict()
    assert not torch.equal(state["encoder.bn1.running_mean"], initial["encoder.bn1.running_mean"])


# --- progressive resizing --------------------------------------------------------------------


def test_resize_shrinks_batches_before_the_share_and_leaves_them_after() -> None:
    config = FAST.model_copy(update={"low_res_size": 32, "low_res_share": 0.5})
    recipe = _Recipe(build_model(TINY, pretrained=False), TINY, config)
    images = torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8)
    images[..., :, : SIZE // 2] = 200
    masks = torch.zeros(2, 1, SIZE, SIZE)
    masks[..., 9:40, 16:48] = 1.0  # row 9 alone: half of a low-res row, which is kept
    small_images, small_masks = recipe.resize(images, masks, 0.49)
    assert small_images.shape == (2, 3, 32, 32) and small_images.dtype == torch.uint8
    assert small_masks.shape == (2, 1, 32, 32) and small_masks.dtype == torch.float32
    assert set(small_masks.unique().tolist()) == {0.0, 1.0}
    expected = torch.zeros(2, 1, 32, 32)
    expected[..., 4:20, 8:24] = 1.0
    assert torch.equal(small_masks, expected)
    assert (small_images[..., :15] == 200).all() and (small_images[..., 17:] == 0).all()
    for progress in (0.5, 0.9):
        same_images, same_masks = recipe.resize(images, masks, progress)
        assert same_images is images and same_masks is masks
    never = _Recipe(build_model(TINY, pretrained=False), TINY, FAST)
    assert never.resize(images, masks, 0.0)[0] is images


def test_a_low_res_size_off_the_encoders_stride_is_refused(data: Data) -> None:
    config = FAST.model_copy(update={"low_res_size": 48, "low_res_share": 0.5})
    with pytest.raises(ValueError, match="stride 32"):
        train(TINY, config, data.loaders(config), **data.columns(), progress_bar=False)


def test_a_run_trains_at_low_res_then_full_size_and_switches_loss_at_the_end(
    data: Data, initial: StateDict, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[tuple[int, str]] = []
    validated: list[tuple[int, ...]] = []
    real_forward, real_predict = train_module.forward, train_module.predict_probabilities
    losses = {"bce": make_loss("bce"), "lovasz": make_loss("lovasz")}

    def forward(model: nn.Module, config: Any, images: torch.Tensor, placement: Any) -> Any:
        steps.append((images.shape[-1], ""))
        return real_forward(model, config, images, placement)

    def predict(*args: Any, **kwargs: Any) -> Predictions:
        predictions = real_predict(*args, **kwargs)
        validated.append(predictions.probabilities.shape)
        return predictions

    def named_loss(name: str) -> Any:
        def loss(*args: torch.Tensor) -> torch.Tensor:
            steps[-1] = (steps[-1][0], name)
            return losses[name](*args)

        return loss

    monkeypatch.setattr(train_module, "forward", forward)
    monkeypatch.setattr(train_module, "predict_probabilities", predict)
    monkeypatch.setattr(train_module, "make_loss", named_loss)
    result = fit(
        data,
        initial,
        epochs=2,
        loss="bce",
        low_res_size=32,
        low_res_share=0.5,
        final_loss="lovasz",
        final_loss_share=0.25,
    )
    # 8 steps at progress 0, 1/8, ..., 7/8: below 0.5 at 32², from 0.75 on the final loss.
    assert [size for size, _ in steps] == [32] * 4 + [SIZE] * 4
    assert [name for _, name in steps] == ["bce"] * 6 + ["lovasz"] * 2
    assert validated == [(8, SIZE, SIZE)] * 2
    assert len(result.history) == 2 and all(np.isfinite(h["train_loss"]) for h in result.history)


# --- the final loss and the Lovász losses ----------------------------------------------------


def test_the_loss_switches_to_the_final_loss_exactly_at_1_minus_its_share() -> None:
    logits = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    masks = (logits + 0.5 > 0).float()
    weights = torch.ones(2)
    bce = make_loss("bce")(logits, masks, weights)
    lovasz = make_loss("lovasz")(logits, masks, weights)
    assert abs(float(bce - lovasz)) > 1e-3
    config = FAST.model_copy(
        update={"loss": "bce", "final_loss": "lovasz", "final_loss_share": 0.25}
    )
    recipe = _Recipe(build_model(TINY, pretrained=False), TINY, config)
    for progress, expected in [(0.0, bce), (0.7499, bce), (0.75, lovasz), (1.0, lovasz)]:
        torch.testing.assert_close(recipe.loss(progress)(logits, masks, weights), expected)
    plain = _Recipe(
        build_model(TINY, pretrained=False), TINY, config.model_copy(update={"final_loss": None})
    )
    torch.testing.assert_close(plain.loss(1.0)(logits, masks, weights), bce)


@pytest.mark.parametrize("name", ["lovasz", "bce_lovasz"])
def test_lovasz_losses_reward_confident_right_logits_and_have_finite_gradients(
    name: str,
) -> None:
    loss = make_loss(name)
    masks = torch.zeros(3, 1, 16, 16)
    masks[0, :, 4:12, 4:12] = 1.0
    masks[1] = 1.0  # the whole image; masks[2] is empty
    right = (masks * 2 - 1) * 10
    weights = torch.ones(3)
    assert float(loss(right, masks, weights)) < 1e-3
    for logits in (-right, torch.zeros_like(right), torch.randn(3, 1, 16, 16)):
        logits = logits.clone().requires_grad_(True)
        value = loss(logits, masks, weights)
        assert float(value.detach()) > 0.3
        value.backward()
        assert logits.grad is not None
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert float(loss(-right, masks, weights)) > 5


def test_bce_lovasz_weights_only_its_bce_part() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 8, 8, generator=generator)
    masks = (torch.rand(2, 1, 8, 8, generator=generator) > 0.5).float()
    only_first = torch.tensor([1.0, 0.0])
    both = make_loss("bce_lovasz")(logits, masks, only_first)
    expected = make_loss("lovasz")(logits, masks, only_first) + make_loss("bce")(
        logits, masks, only_first
    )
    torch.testing.assert_close(both, expected)
    lovasz = make_loss("lovasz")
    torch.testing.assert_close(
        lovasz(logits, masks, only_first), lovasz(logits, masks, 1 - only_first)
    )


# --- the weights' moving average -------------------------------------------------------------


def test_the_moving_average_is_validated_kept_and_nearer_the_start(
    data: Data, initial: StateDict, plain: TrainResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    averages: list[WeightAverage] = []
    live: list[StateDict] = []  # the trained weights and buffers after every step

    class Recorded(WeightAverage):
        def __init__(self, model: nn.Module, decay: float) -> None:
            super().__init__(model, decay)
            averages.append(self)

        def update(self, model: nn.Module) -> None:
            live.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            super().update(model)

    monkeypatch.setattr(fit_module, "WeightAverage", Recorded)  # the one fit loop's
    averaged = fit(data, initial, ema_decay=0.3)
    assert len(averages) == 1 and len(live) == 4, "one update per step"
    # The moving average does not change what is trained.
    for name, value in plain.model.named_parameters():
        torch.testing.assert_close(live[-1][name], value.detach(), atol=1e-5, rtol=1e-4)
    # What is kept is the average: the first step's weights, then each later step's folded in
    # at 1 - min(decay, (1 + n) / (10 + n)) for the n-th update (0.25, then the decay 0.3), for
    # the parameters and batch-norm statistics alike; batch norm's counts are the current ones.
    kept = averaged.model.state_dict()
    for key, value in averages[0].module.state_dict().items():
        torch.testing.assert_close(kept[key], value, atol=0, rtol=0)
    for key, first in live[0].items():
        if not first.is_floating_point():
            assert torch.equal(kept[key], live[-1][key]), key
            continue
        expected = first
        for n, later in enumerate(live[1:], start=2):
            decay = min(0.3, (1 + n) / (10 + n))
            expected = decay * expected + (1 - decay) * later[key]
        torch.testing.assert_close(kept[key], expected, atol=1e-6, rtol=1e-5)
    weight = "decoder.blocks.0.conv1.0.weight"
    assert float((kept[weight] - live[-1][weight]).abs().max()) > 1e-5
    assert distance(averaged.model, initial) < 0.98 * distance(plain.model, initial)


# --- vertical flips --------------------------------------------------------------------------

ONLY_FLIPS = AugmentConfig(
    flip_p=0.5, rotate90=False, affine_p=0.0, brightness=0.0, contrast=0.0, saturation=0.0
)


def corner_image(size: int = 8) -> torch.Tensor:
    """uint8 (3, S, S), asymmetric top/bottom and left/right: every flip is told apart."""
    return (
        torch.arange(3 * size * size, dtype=torch.int64)
        .remainder(251)
        .to(torch.uint8)
        .view(3, size, size)
    )


def flips_seen(outputs: list[torch.Tensor], image: torch.Tensor) -> set[str]:
    names = {"none": image, "h": image.flip(-1), "v": image.flip(-2), "hv": image.flip(-1, -2)}
    seen = set()
    for out in outputs:
        matches = [n for n, x in names.items() if torch.equal(out, x)]
        assert len(matches) == 1, "only flips may change the image"
        seen.add(matches[0])
    return seen


@pytest.mark.parametrize(
    ("flip_p", "vflip_p", "expected"),
    [
        (0.5, 0.0, {"none", "h"}),
        (0.5, None, {"none", "h", "v", "hv"}),
        (0.0, 1.0, {"v"}),
    ],
)
def test_per_sample_augmentation_flips_vertically_only_if_allowed(
    flip_p: float, vflip_p: float | None, expected: set[str]
) -> None:
    config = ONLY_FLIPS.model_copy(update={"flip_p": flip_p, "vflip_p": vflip_p})
    transform = build_augmentation(config)
    assert transform is not None
    torch.manual_seed(0)
    image = corner_image()
    outputs = []
    for _ in range(200):
        out, mask = transform(tv_tensors.Image(image), tv_tensors.Mask(image[:1]))
        assert torch.equal(mask.as_subclass(torch.Tensor), out.as_subclass(torch.Tensor)[:1])
        outputs.append(out.as_subclass(torch.Tensor))
    assert flips_seen(outputs, image) == expected


def test_batch_augmentation_draws_no_vertical_flip_with_vflip_p_0() -> None:
    config = ONLY_FLIPS.model_copy(update={"vflip_p": 0.0})
    assert config.vertical_flip_p == 0.0 and ONLY_FLIPS.vertical_flip_p == 0.5
    params = draw(config, 2000, (8, 8), torch.Generator().manual_seed(0))
    assert not params.vflip.any()
    assert 0.45 < float(params.hflip.double().mean()) < 0.55
    allowed = draw(ONLY_FLIPS, 2000, (8, 8), torch.Generator().manual_seed(0))
    assert 0.45 < float(allowed.vflip.double().mean()) < 0.55
    only_vertical = ONLY_FLIPS.model_copy(update={"flip_p": 0.0, "vflip_p": 1.0})
    params = draw(only_vertical, 100, (8, 8), torch.Generator().manual_seed(0))
    assert params.vflip.all() and not params.hflip.any()
    image = corner_image()
    images = image.expand(64, -1, -1, -1).contiguous()
    out, masks = BatchAugment(config, seed=0)(images, images[:, :1])
    assert torch.equal(masks, out[:, :1].float())
    assert flips_seen(list(out), image) == {"none", "h"}
