"""Train the mask model on one dataset version's loaders, tune its threshold, report.

No Dagster here: callers pass callbacks for epoch reports and progress. Batches are the dicts of
`maskfind_pipeline.data.loader` (uint8 images, 0/1 masks, per-sample weights, manifest row
indices); the `image_types` and `sources` given to `train` are indexed by those manifest rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from maskfind_pipeline.data.decoded import DecodedArrays
from maskfind_pipeline.data.loader import MaskBatches, MaskDataset, make_loaders
from maskfind_pipeline.ml import plots
from maskfind_pipeline.ml.device import (
    Placement,
    seed_everything,
    select_device,
    tune_cpu_allocator,
)
from maskfind_pipeline.ml.distributed import Ranks
from maskfind_pipeline.ml.fit import Fit, place
from maskfind_pipeline.ml.fitting import build_pretrained, cpu_state, lr_factor
from maskfind_pipeline.ml.metrics import EvaluationMetrics, evaluate, iou_per_image, pixel_counts
from maskfind_pipeline.ml.segmentation.batch_augment import BatchAugment
from maskfind_pipeline.ml.segmentation.config import ModelConfig, ModelSpec, TrainConfig
from maskfind_pipeline.ml.segmentation.inference import (
    Batch,
    Loader,
    Predictions,
    forward,
    predict_probabilities,
)
from maskfind_pipeline.ml.segmentation.losses import LossFn, make_loss
from maskfind_pipeline.ml.segmentation.model import build_model
from maskfind_pipeline.ml.segmentation.threshold import ThresholdChoice, tune_threshold
from maskfind_pipeline.ml.segmentation.tta import stride

Progress = Callable[[str, int, int], None]
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class EpochReport:
    """What one epoch did (also one entry of `TrainResult.history`, via `as_dict`)."""

    epoch: int
    epochs: int
    train_loss: float
    val_miou: float
    best_val_miou: float
    improved: bool
    learning_rate: float
    seconds: float
    images_per_second: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if k != "epochs"}

    def describe(self) -> str:
        """One log line: `epoch 3/20: loss 0.4120, val mIoU 0.8123 (57 img/s)`."""
        return (
            f"epoch {self.epoch}/{self.epochs}: loss {self.train_loss:.4f}, "
            f"val mIoU {self.val_miou:.4f} ({self.images_per_second:.0f} img/s)"
        )


@dataclass
class TrainResult:
    """A trained model and everything to log about it.

    Attributes:
        model: the best epoch's model, on CPU, in eval mode.
        config: the model spec with the tuned threshold.
        history: one `EpochReport.as_dict()` per epoch run.
        val_metrics: validation metrics of the best model at the tuned threshold.
        threshold: the tuning result, with the full threshold curve.
        plots: PNG bytes: `pr_curve`, `val_gallery`, `training_curves`.
        best_epoch: the epoch whose weights were kept.
        stop_reason: `completed`, `early_stopping` or `time_budget`.
        pretrained: whether pretrained encoder weights were loaded.
        device: a summary of device and precision.
    """

    model: nn.Module
    config: ModelConfig
    history: list[dict[str, float]]
    val_metrics: EvaluationMetrics
    threshold: ThresholdChoice
    plots: dict[str, bytes]
    best_epoch: int
    stop_reason: str
    pretrained: bool
    device: dict[str, str]

    def metrics(self) -> dict[str, float]:
        """Final scalars: `val_miou`, `val_precision`, ..., `val_miou/image_type/<t>`, ..."""
        return {**self.val_metrics.flat("val_"), "best_epoch": float(self.best_epoch)}


def make_train_loaders(
    manifest: pa.Table,
    decoded: DecodedArrays,
    train_config: TrainConfig,
    placement: Placement | None = None,
    ranks: Ranks | None = None,
) -> dict[str, DataLoader[dict[str, Any]]]:
    """`make_loaders` with this config's batch size, workers, augmentation and seed.

    Where the augmentation is to run on the training device (`AugmentConfig.on_device`), the
    train loader serves un-augmented batches and `train` augments them after the copy.

    Args:
        manifest: the dataset version's manifest.
        decoded: its decoded arrays (`build_decoded`).
        train_config: supplies batch size (per process), workers, augmentation and seed.
        placement: pins memory for a GPU and decides where augmentation runs; default
            `select_device(train_config.device)`.
        ranks: with several processes, the train split is sharded among them.
    """
    placement = placement or select_device(train_config.device)
    return make_loaders(
        manifest,
        decoded,
        batch_size=train_config.batch_size,
        num_workers=train_config.num_workers,
        augment=train_config.augment,
        seed=train_config.seed,
        pin_memory=placement.pin_memory,
        shard=(ranks.rank, ranks.world_size) if ranks and ranks.distributed else None,
        device_augment=train_config.augment.on_device(placement.device.type),
    )


def train(
    model_config: ModelSpec,
    train_config: TrainConfig,
    loaders: Mapping[str, Loader],
    *,
    image_types: Sequence[str],
    sources: Sequence[str],
    placement: Placement | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    progress: Progress | None = None,
    progress_bar: bool = True,
    initial_state: Mapping[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train on `loaders["train"]`, validate each epoch, keep the best epoch, tune the threshold.

    Validation mean IoU at 0.5 picks the best epoch and drives early stopping
    (`early_stopping_patience` epochs without an improvement above `min_delta`; 0 disables it).
    `max_minutes` bounds the training epochs (checked after every batch); the final validation,
    threshold tuning and plots come on top.

    Args:
        model_config: the architecture (a `ModelConfig`'s threshold is replaced by the tuned one).
        train_config: the hyper-parameters.
        loaders: at least `train` and `val` (e.g. from `make_train_loaders`).
        image_types: the image type of every manifest row (batches carry row indices).
        sources: the source (`labeled` / `failure`) of every manifest row.
        placement: device and precision; default `select_device(train_config.device, ...)`.
        on_epoch: called after every epoch's validation.
        progress: called with (stage, done, total) about every tenth of an epoch.
        progress_bar: show a tqdm bar per epoch.
        initial_state: start from these weights (a warm start from an earlier model of the
            same architecture) instead of the pretrained encoder.

    Raises:
        ValueError: a `train` or `val` loader is missing, or a loader is empty.
        PretrainedWeightsUnavailable: no local pretrained weights and `allow_scratch` is False.
    """
    placement = placement or select_device(
        train_config.device, mixed_precision=train_config.mixed_precision
    )
    _prepare(train_config, loaders, placement)
    model, pretrained = _initial_model(model_config, train_config, initial_state)
    placement, model = _train_on(placement, model, model_config, train_config)
    run = _MaskModelFit(model, model_config, train_config, placement, image_types, sources)
    run.fit(loaders["train"], loaders["val"], on_epoch, progress, progress_bar)
    return run.finish(loaders["val"], pretrained)


def train_replica(
    model_config: ModelSpec,
    train_config: TrainConfig,
    loaders: Mapping[str, Loader],
    *,
    ranks: Ranks,
    image_types: Sequence[str],
    sources: Sequence[str],
    placement: Placement,
    on_epoch: Callable[[EpochReport], None] | None = None,
    initial_state: Mapping[str, torch.Tensor] | None = None,
) -> tuple[nn.Module, TrainResult | None]:
    """`train` as one of `ranks.world_size` data-parallel processes (`ml.distributed`).

    Each rank steps on its shard of the train split (`make_train_loaders(..., ranks=ranks)`)
    under `DistributedDataParallel`, which starts every rank from rank 0's weights (so only
    rank 0 loads pretrained or `initial_state` weights) and averages gradients. Rank 0 alone
    validates, calls `on_epoch`, tunes the threshold and draws the plots; its decisions (time
    budget, improvement, early stopping) are broadcast, so all ranks run the same epochs and
    keep the same best epoch. Augmentation draws differ per rank (torch seeded with seed + rank).

    Returns:
        The best epoch's model (on CPU, eval mode; the same weights on every rank) and, on rank
        0, the full `TrainResult` (None on the other ranks).
    """
    _prepare(train_config, loaders, placement)
    if ranks.is_main:
        model, pretrained = _initial_model(model_config, train_config, initial_state)
    else:
        model, pretrained = build_model(model_config, pretrained=False), False
    placement, model = _train_on(placement, model, model_config, train_config, ranks)
    torch.manual_seed(train_config.seed + ranks.rank)
    run = _MaskModelFit(model, model_config, train_config, placement, image_types, sources, ranks)
    run.fit(loaders["train"], loaders["val"], on_epoch, None, False)
    if not ranks.is_main:
        return run.replica_model(), None
    result = run.finish(loaders["val"], pretrained)
    return result.model, result


def _prepare(
    train_config: TrainConfig, loaders: Mapping[str, Loader], placement: Placement
) -> None:
    for split in ("train", "val"):
        if split not in loaders:
            raise ValueError(f"training needs a {split!r} loader; got {sorted(loaders)}")
    seed_everything(train_config.seed)
    if placement.device.type == "cpu":
        tune_cpu_allocator()


def _train_on(
    placement: Placement,
    model: nn.Module,
    model_config: ModelSpec,
    train_config: TrainConfig,
    ranks: Ranks | None = None,
) -> tuple[Placement, nn.Module]:
    """`fit.place`: the precision timed on `model` where the CPU claims bfloat16."""
    size = model_config.input_size
    return place(placement, model, (3, size, size), batch_size=train_config.batch_size, ranks=ranks)


def _initial_model(
    model_config: ModelSpec,
    train_config: TrainConfig,
    initial_state: Mapping[str, torch.Tensor] | None,
) -> tuple[nn.Module, bool]:
    if initial_state is None:
        return build_pretrained(
            lambda weights: build_model(model_config, pretrained=weights),
            pretrained=model_config.encoder_weights is not None,
            allow_scratch=train_config.allow_scratch,
        )
    model = build_model(model_config, pretrained=False)
    model.load_state_dict(initial_state)
    return model, False


class _MaskModelFit:
    """The mutable state of one training run (of one rank, with several processes)."""

    def __init__(
        self,
        model: nn.Module,
        model_config: ModelSpec,
        train_config: TrainConfig,
        placement: Placement,
        image_types: Sequence[str],
        sources: Sequence[str],
        ranks: Ranks | None = None,
    ) -> None:
        self.model, self.config, self.tc = model, model_config, train_config
        self.placement = placement
        self.ranks = ranks or Ranks()
        self.image_types = np.asarray(image_types, dtype=object)
        self.sources = np.asarray(sources, dtype=object)
        self.recipe = _Recipe(model, model_config, train_config)
        self.loop = Fit(
            model,
            placement,
            parameters=self.recipe.parameter_groups(),
            learning_rate=train_config.learning_rate,
            weight_decay=train_config.weight_decay,
            max_minutes=train_config.max_minutes,
            patience=train_config.early_stopping_patience,
            ema_decay=train_config.ema_decay,
            ranks=self.ranks,
        )
        self.optimiser = self.loop.optimiser
        self.history: list[dict[str, float]] = []
        self.best: tuple[float, int, StateDict, Predictions] | None = None
        self.kept: StateDict | None = None  # on ranks other than 0: rank 0's best weights
        self.augment: BatchAugment | None = None
        self.done = 0.0
        self.progress: Callable[[], float] = lambda: 0.0

    def fit(
        self,
        train_loader: Loader,
        val_loader: Loader,
        on_epoch: Callable[[EpochReport], None] | None,
        progress: Progress | None,
        progress_bar: bool,
    ) -> None:
        steps = len(train_loader)
        planned = steps * self.tc.epochs
        loop = self.loop
        self.progress = lambda: loop.budget.progress(loop.steps, planned)
        # The schedule reads the progress of the step just taken (one clock reading per step).
        self.optimiser.schedule(self.recipe.lr_factors(lambda _: self.done))
        sampler = getattr(train_loader, "sampler", None)
        self.augment = _device_augmentation(train_loader, self.tc.seed + self.ranks.rank)
        every = max(1, steps // 10)

        def train_epoch(epoch: int) -> tuple[float, int, bool]:
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)

            def after_batch(number: int) -> None:
                if progress is not None and (number % every == 0 or number == steps):
                    progress(f"train epoch {epoch}/{self.tc.epochs}", number, steps)

            return loop.epoch(
                train_loader,
                self._step,
                desc=f"epoch {epoch}/{self.tc.epochs}",
                total=steps,
                progress_bar=progress_bar,
                after_batch=after_batch,
                empty="the train loader yielded no batches",
            )

        def end_epoch(epoch: int, loss: float, images: int, seconds: float) -> bool:
            return self._end_epoch(epoch, val_loader, loss, images, seconds, on_epoch)

        loop.run(self.tc.epochs, train_epoch, end_epoch)

    def _end_epoch(
        self,
        epoch: int,
        val_loader: Loader,
        loss: float,
        images: int,
        seconds: float,
        on_epoch: Callable[[EpochReport], None] | None,
    ) -> bool:
        """Rank 0 validates and reports; every rank learns whether the epoch improved."""
        self.ranks.share_buffers(self.evaluated)
        if not self.ranks.is_main:
            improved = bool(self.ranks.agree(False))
            if improved:
                self.kept = cpu_state(self.evaluated)
            return improved
        report = self._validate(epoch, val_loader, loss, images, seconds)
        self.history.append(report.as_dict())
        if on_epoch is not None:
            on_epoch(report)
        return bool(self.ranks.agree(report.improved))

    def _step(self, batch: Batch) -> tuple[torch.Tensor, int]:
        device = self.placement.device
        images = batch["image"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        if self.augment is not None:
            images, masks = self.augment(images, masks)
        self.done = self.progress()
        images, masks = self.recipe.resize(images, masks, self.done)
        weights = self._weights(batch).to(device, non_blocking=True)
        logits = forward(self.loop.net, self.config, images, self.placement)
        loss = self.recipe.loss(self.done)(logits.float(), masks, weights)
        return self.loop.step(loss), len(batch["image"])

    def _weights(self, batch: Batch) -> torch.Tensor:
        if self.tc.failure_weight is None:
            return batch["weight"].float()
        failure = self.sources[np.asarray(batch["index"])] == "failure"
        return torch.from_numpy(np.where(failure, self.tc.failure_weight, 1.0).astype(np.float32))

    def _validate(
        self, epoch: int, val_loader: Loader, loss: float, images: int, seconds: float
    ) -> EpochReport:
        predictions = predict_probabilities(
            self.evaluated, self.config, val_loader, placement=self.placement
        )
        counts = pixel_counts(predictions.probabilities, predictions.masks, 0.5)
        miou = float(iou_per_image(counts).mean())
        improved = self.best is None or miou > self.best[0] + self.tc.min_delta
        if improved:
            self.best = (miou, epoch, cpu_state(self.evaluated), predictions)
        assert self.best is not None
        return EpochReport(
            epoch=epoch,
            epochs=self.tc.epochs,
            train_loss=loss,
            val_miou=miou,
            best_val_miou=self.best[0],
            improved=improved,
            learning_rate=self.optimiser.learning_rate,
            seconds=seconds,
            images_per_second=images / max(seconds, 1e-9),
        )

    @property
    def evaluated(self) -> nn.Module:
        """What is validated and kept: the weights' moving average where configured."""
        return self.loop.evaluated

    def replica_model(self) -> nn.Module:
        """A rank's best-epoch model, like `finish`'s, on ranks other than 0."""
        assert self.kept is not None
        model = _place(self.model, torch.device("cpu"), torch.contiguous_format)
        model.load_state_dict(self.kept)
        return model.eval()

    def finish(self, val_loader: Loader, pretrained: bool) -> TrainResult:
        assert self.best is not None
        _, best_epoch, state, predictions = self.best
        model = _place(self.model, torch.device("cpu"), torch.contiguous_format)
        model.load_state_dict(state)
        model.eval()
        probs, masks, indices = predictions
        choice = tune_threshold(
            probs, masks, policy=self.tc.threshold_policy, min_recall=self.tc.min_recall
        )
        types, sources = self.image_types[indices].tolist(), self.sources[indices].tolist()
        metrics = evaluate(probs, masks, choice.threshold, image_types=types, sources=sources)
        return TrainResult(
            model=model,
            config=ModelConfig.of(self.config, choice.threshold),
            history=self.history,
            val_metrics=metrics,
            threshold=choice,
            plots=self._plots(val_loader, predictions, choice, types),
            best_epoch=best_epoch,
            stop_reason=self.loop.stopping.reason,
            pretrained=pretrained,
            device=self.placement.describe(),
        )

    def _plots(
        self, loader: Loader, predictions: Predictions, choice: ThresholdChoice, types: list[str]
    ) -> dict[str, bytes]:
        probs, masks, indices = predictions
        ious = iou_per_image(pixel_counts(probs, masks, choice.threshold))
        picked = plots.select_gallery(types, ious)
        gallery = plots.gallery_png(
            _images_of(loader, indices[picked]),
            masks[picked],
            probs[picked],
            choice.threshold,
            labels=[types[i] for i in picked],
            captions=[f"IoU {iou:.3f}" for iou in ious[picked].tolist()],
        )
        return {
            "pr_curve": plots.pr_curve_png(choice),
            "val_gallery": gallery,
            "training_curves": plots.training_curves_png(self.history),
        }


class _Recipe:
    """The fine-tuning schedule of a `TrainConfig`: per-group learning rates (encoder slower,
    frozen at first), progressive resizing and the loss of the final stretch, each decided by
    training progress (a share of the epochs or, further along, of the time budget)."""

    def __init__(self, model: nn.Module, model_config: ModelSpec, train_config: TrainConfig):
        self.model, self.tc = model, train_config
        self.loss_fn = make_loss(train_config.loss)
        self.final_loss_fn = make_loss(train_config.final_loss) if train_config.final_loss else None
        size, step = train_config.low_res_size, stride(model_config)
        if size is not None and size % step:
            raise ValueError(
                f"low_res_size {size} is not a multiple of the encoder's stride {step}"
            )

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The decoder and head (first: the learning rate reported) and the encoder."""
        encoder = {id(p) for p in self.model.get_submodule("encoder").parameters()}
        rest = [p for p in self.model.parameters() if id(p) not in encoder]
        lr = self.tc.learning_rate
        return [
            {"params": rest},
            {
                "params": list(self.model.get_submodule("encoder").parameters()),
                "lr": lr * self.tc.encoder_lr_factor,
            },
        ]

    def lr_factors(self, progress: Callable[[int], float]) -> list[Callable[[int], float]]:
        """The schedule's factor of each parameter group at an optimiser step."""
        schedule, frozen = self.tc.schedule, self.tc.freeze_encoder

        def decoder(step: int) -> float:
            return lr_factor(schedule, progress(step))

        def encoder(step: int) -> float:
            done = progress(step)
            return 0.0 if done < frozen else lr_factor(schedule, done)

        return [decoder, encoder]

    def resize(
        self, images: torch.Tensor, masks: torch.Tensor, progress: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch at `low_res_size` during the first `low_res_share` of progress."""
        size = self.tc.low_res_size
        if size is None or progress >= self.tc.low_res_share or images.shape[-1] <= size:
            return images, masks
        small = TF.resize(images, [size, size], antialias=True)
        return small, (F.interpolate(masks, size=(size, size), mode="area") >= 0.5).float()

    def loss(self, progress: float) -> LossFn:
        """`final_loss` over the last `final_loss_share` of progress, else `loss`."""
        if self.final_loss_fn is not None and progress >= 1.0 - self.tc.final_loss_share:
            return self.final_loss_fn
        return self.loss_fn


def _device_augmentation(loader: Loader, seed: int) -> BatchAugment | None:
    """The augmentation a `MaskBatches` train loader left to the loop, drawn from `seed`."""
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, MaskBatches) and dataset.device_augment is not None:
        return BatchAugment(dataset.device_augment, seed)
    return None


def _place(model: nn.Module, device: torch.device, fmt: torch.memory_format) -> nn.Module:
    return model.to(device, memory_format=fmt)  # pyright: ignore[reportCallIssue]


def _images_of(loader: Loader, indices: np.ndarray) -> np.ndarray:
    """The uint8 (K, H, W, 3) images of these manifest rows, as the loader serves them."""
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, MaskDataset):
        return np.asarray(dataset.decoded.images[indices])
    wanted, found = set(indices.tolist()), {}
    for batch in loader:
        for image, index in zip(batch["image"], batch["index"], strict=True):
            if int(index) in wanted:
                found[int(index)] = image.permute(1, 2, 0).numpy()
    return np.stack([found[int(i)] for i in indices])
