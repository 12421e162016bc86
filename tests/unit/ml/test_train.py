"""Training end to end on a few dozen tiny generated images, and the loop's controls."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pyarrow as pa
import pytest
import torch

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.augment_config import AugmentConfig
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.ml import fitting as fitting_module
from maskfind_pipeline.ml.device import select_device
from maskfind_pipeline.ml.segmentation import train as train_module
from maskfind_pipeline.ml.segmentation.config import ModelConfig, TrainConfig
from maskfind_pipeline.ml.segmentation.inference import Predictions, predict_probabilities
from maskfind_pipeline.ml.segmentation.losses import make_loss
from maskfind_pipeline.ml.segmentation.model import build_model, preprocess
from maskfind_pipeline.ml.segmentation.predict import Predictor, weights_to_bytes
from maskfind_pipeline.ml.segmentation.train import EpochReport, make_train_loaders, train
from maskfind_pipeline.ml.weights.pretrained import WEIGHTS_ENV_VAR, PretrainedWeightsUnavailable
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.manifests import manifest_of

SIZE = 64
TINY = ModelConfig(
    encoder_name="resnet18",
    encoder_weights=None,
    input_size=SIZE,
    decoder_channels=(32, 16, 16, 8, 8),
)
NO_AUGMENT = AugmentConfig(enabled=False)
FAST = TrainConfig(
    epochs=2, batch_size=4, learning_rate=3e-3, augment=NO_AUGMENT, schedule="constant"
)
PNG = b"\x89PNG\r\n\x1a\n"


class Columns(TypedDict):
    image_types: list[str]
    sources: list[str]


@dataclass(frozen=True)
class Data:
    manifest: pa.Table
    decoded: Any

    def loaders(self, config: TrainConfig = FAST) -> dict[str, Any]:
        return make_train_loaders(self.manifest, self.decoded, config, select_device("cpu"))

    def columns(self) -> Columns:
        return {
            "image_types": self.manifest.column("image_type").to_pylist(),
            "sources": self.manifest.column("source").to_pylist(),
        }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    root = tmp_path_factory.mktemp("train")
    store = LocalObjectStore(root / "store")
    keys = synthetic.generate(store, synthetic.DEFAULT_TYPES[:4], 6, size=SIZE)
    manifest = manifest_of(
        store,
        keys,
        size=SIZE,
        split=lambda i: "val" if i % 3 == 0 else "train",
        failure=lambda i: i % 4 == 1,
    )
    decoded = build_decoded(
        manifest, store, ContentCache(root / "cache"), root / "decoded", version_id="v", size=SIZE
    )
    return Data(manifest, decoded)


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(WEIGHTS_ENV_VAR, raising=False)


def test_training_end_to_end_learns_and_reports(data: Data) -> None:
    reports: list[EpochReport] = []
    progress: list[tuple[str, int, int]] = []
    result = train(
        TINY,
        FAST,
        data.loaders(),
        **data.columns(),
        on_epoch=reports.append,
        progress=lambda *args: progress.append(args),
        progress_bar=False,
    )
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert [r.epoch for r in reports] == [1, 2] and progress[-1] == ("train epoch 2/2", 4, 4)
    losses = [h["train_loss"] for h in result.history]
    assert losses[1] < 0.97 * losses[0]
    best_at_half = max(h["val_miou"] for h in result.history)
    assert result.val_metrics.overall.miou >= best_at_half - 1e-9, "0.5 is on the tuning grid"
    assert 0 < result.config.threshold < 1
    assert result.config.threshold == result.threshold.threshold
    assert result.stop_reason == "completed" and not result.pretrained
    assert set(result.plots) == {"pr_curve", "val_gallery", "training_curves"}
    assert all(png.startswith(PNG) for png in result.plots.values())
    metrics = result.val_metrics
    assert metrics.overall.n_images == 8 and set(metrics.by_source) == {"labeled", "failure"}
    assert len(metrics.by_image_type) == 4
    assert result.metrics()["val_miou"] == metrics.overall.miou
    parameter = next(result.model.parameters())
    assert parameter.device.type == "cpu" and not result.model.training


def test_the_best_epoch_is_restored_and_early_stopping_stops(data: Data, monkeypatch) -> None:
    scores = iter([0.6, 0.8, 0.7, 0.9, 0.95])
    snapshots: list[dict[str, torch.Tensor]] = []
    real = predict_probabilities

    def scripted(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Predictions:
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return _with_iou(real(model, *args, **kwargs), next(scores))

    monkeypatch.setattr(train_module, "predict_probabilities", scripted)
    config = TrainConfig(epochs=5, batch_size=4, early_stopping_patience=1, augment=NO_AUGMENT)
    result = train(TINY, config, data.loaders(config), **data.columns(), progress_bar=False)
    assert len(result.history) == 3 and result.stop_reason == "early_stopping"
    assert result.best_epoch == 2
    for key, value in result.model.state_dict().items():
        torch.testing.assert_close(value, snapshots[1][key].to(value.dtype))


def _with_iou(predictions: Predictions, score: float) -> Predictions:
    """Predictions whose mean IoU at 0.5 is about `score`: each mask's first rows are missed."""
    probs = np.where(predictions.masks > 0, 255, 0).astype(np.uint8)
    for prob, mask in zip(probs, predictions.masks, strict=True):
        rows = np.flatnonzero(mask.any(axis=1))
        missed = rows[: round(len(rows) * (1 - score))]
        prob[missed] = 0
    return predictions._replace(probabilities=probs)


def test_the_time_budget_stops_after_a_batch(data: Data) -> None:
    config = TrainConfig(epochs=5, batch_size=4, max_minutes=1e-6, augment=NO_AUGMENT)
    result = train(TINY, config, data.loaders(config), **data.columns(), progress_bar=False)
    assert result.stop_reason == "time_budget" and len(result.history) == 1


class _Clock:
    """`time` for the fitting module whose monotonic clock advances 1 s per reading."""

    perf_counter = staticmethod(time.perf_counter)

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now


def test_a_run_cut_by_its_time_budget_still_anneals_the_learning_rate(
    data: Data, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fitting_module, "time", _Clock())
    config = TrainConfig(
        epochs=10_000, batch_size=4, learning_rate=1e-2, max_minutes=2, early_stopping_patience=0
    )
    result = train(TINY, config, data.loaders(config), **data.columns(), progress_bar=False)
    rates = [h["learning_rate"] for h in result.history]
    assert result.stop_reason == "time_budget" and 10 < len(rates) < 10_000
    assert max(rates) > 0.9 * config.learning_rate, "the warm-up reached the peak"
    assert rates[-1] < 0.01 * config.learning_rate, "annealed by the end of the budget"


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_lr_factor_shapes(schedule: str) -> None:
    factors = [fitting_module.lr_factor(schedule, p / 100) for p in range(101)]
    peak = int(np.argmax(factors))
    assert factors[peak] == pytest.approx(1.0)
    assert peak == (30 if schedule == "onecycle" else 0)
    assert all(a <= b for a, b in itertools.pairwise(factors[: peak + 1]))
    assert all(a >= b for a, b in itertools.pairwise(factors[peak:]))
    assert factors[-1] < 1e-4
    assert fitting_module.lr_factor(schedule, 2.0) == factors[-1], "progress is clamped"


def test_missing_pretrained_weights_fail_unless_scratch_is_allowed(data: Data) -> None:
    wanted = ModelConfig(**{**TINY.__dict__, "encoder_weights": "imagenet"})
    config = TrainConfig(epochs=1, batch_size=8, max_minutes=1e-6, augment=NO_AUGMENT)
    with pytest.raises(PretrainedWeightsUnavailable):
        train(wanted, config, data.loaders(config), **data.columns(), progress_bar=False)
    scratch = TrainConfig(**{**config.__dict__, "allow_scratch": True})
    result = train(wanted, scratch, data.loaders(config), **data.columns(), progress_bar=False)
    assert not result.pretrained


def test_a_val_loader_is_required(data: Data) -> None:
    loaders = data.loaders()
    del loaders["val"]
    with pytest.raises(ValueError, match="'val'"):
        train(TINY, FAST, loaders, **data.columns(), progress_bar=False)


def test_predictions_are_quantised_sigmoids_in_loader_order(data: Data) -> None:
    torch.manual_seed(0)
    model = build_model(TINY, pretrained=False)
    loader = data.loaders()["val"]
    probs, masks, indices = predict_probabilities(model, TINY, loader)
    assert probs.dtype == np.uint8 and probs.shape == (8, SIZE, SIZE)
    assert model.training, "the model's mode is restored"
    expected = [int(i) for batch in loader for i in batch["index"]]
    assert indices.tolist() == expected
    np.testing.assert_array_equal(masks, data.decoded.masks[indices])
    full = predict_probabilities(
        model, TINY, loader, placement=select_device("cpu", mixed_precision=False)
    )
    model.eval()
    with torch.no_grad():
        batch = next(iter(loader))
        reference = torch.sigmoid(model(preprocess(batch["image"], TINY)))[:, 0]
    np.testing.assert_allclose(
        full.probabilities[:4] / 255, reference.numpy(), atol=0.5 / 255 + 1e-6
    )
    assert np.abs(probs.astype(int) - full.probabilities).max() <= 8, "bf16 stays close"


def test_sample_weights_scale_the_bce_part() -> None:
    logits = torch.randn(2, 1, 8, 8)
    masks = (torch.rand(2, 1, 8, 8) > 0.5).float()
    bce = make_loss("bce")
    only_first = bce(logits, masks, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(only_first, bce(logits[:1], masks[:1], torch.ones(1)))
    uniform = bce(logits, masks, torch.ones(2))
    torch.testing.assert_close(bce(logits, masks, torch.full((2,), 3.0)), uniform)
    dice = make_loss("dice")
    torch.testing.assert_close(
        dice(logits, masks, torch.tensor([1.0, 0.0])), dice(logits, masks, torch.ones(2))
    )
    assert make_loss("focal")(logits, masks, torch.ones(2)).ndim == 0
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("hinge")


needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the CUDA path needs a GPU (bench/cuda_check.sh)"
)


@needs_cuda
def test_cuda_training_uses_bf16_autocast_and_channels_last(data: Data) -> None:
    placement = select_device("cuda")
    assert placement.autocast_dtype is torch.bfloat16, "every GPU we train on has bf16"
    assert placement.channels_last and placement.pin_memory and not placement.grad_scaler
    config = FAST.model_copy(update={"epochs": 3, "device": "cuda"})
    loaders = make_train_loaders(data.manifest, data.decoded, config, placement)
    result = train(TINY, config, loaders, **data.columns(), placement=placement, progress_bar=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.97 * losses[0]
    assert result.device["device"].startswith("cuda") and result.device["precision"] == "bfloat16"
    assert next(result.model.parameters()).device.type == "cpu", "the result is ready to save"


@needs_cuda
def test_a_predictor_on_cuda_agrees_with_the_exact_cpu_predictor() -> None:
    torch.manual_seed(0)
    weights = weights_to_bytes(build_model(TINY, pretrained=False))
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    expected = Predictor.from_weights(TINY, weights).logits(images)
    exact = Predictor.from_weights(TINY, weights).to("cuda", mixed_precision=False)
    torch.testing.assert_close(exact.logits(images).cpu(), expected, atol=1e-2, rtol=1e-2)
    fast = Predictor.from_weights(TINY, weights).to("cuda")
    assert fast.placement.autocast_dtype is torch.bfloat16
    logits = fast.logits(images)
    assert logits.device.type == "cuda" and logits.dtype == torch.float32
    assert ((logits.cpu() > 0) == (expected > 0)).float().mean() > 0.95
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    assert fast.predict_mask(image).shape == (50, 70)
