"""Train the reviewer on graded masks, keep its best epoch, judge it on validation.

No Dagster here: callers pass a callback for epoch reports. Samples are `ReviewerSamples`
(`ml.reviewer.data`); every batch goes through `reviewer_inputs`, the same function production
calls. The best epoch is the one with the highest validation ROC AUC of grade 3 vs the rest
(ties broken by the lower validation loss); early stopping and the time budget follow
`ml.segmentation.train`'s rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from scipy import special
from torch import nn

from maskfind_pipeline.ml import plots
from maskfind_pipeline.ml.device import (
    Placement,
    seed_everything,
    select_device,
    tune_cpu_allocator,
)
from maskfind_pipeline.ml.fit import Fit, place
from maskfind_pipeline.ml.fitting import build_pretrained, cpu_state, lr_factor
from maskfind_pipeline.ml.reviewer.config import (
    GRADES,
    GradeRule,
    ReviewerSpec,
    ReviewerTrainConfig,
)
from maskfind_pipeline.ml.reviewer.data import ReviewerSamples
from maskfind_pipeline.ml.reviewer.metrics import ReviewerEvaluation, evaluate_reviewer, safe_auc
from maskfind_pipeline.ml.reviewer.model import (
    IN_CHANNELS,
    build_reviewer,
    grade_probabilities,
    reviewer_inputs,
)

StateDict = dict[str, torch.Tensor]
_EVAL_BATCH = 64


@dataclass(frozen=True)
class ReviewerEpoch:
    """What one epoch did (also one entry of `ReviewerResult.history`, via `as_dict`)."""

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_auc_grade3: float
    best_val_auc_grade3: float
    improved: bool
    learning_rate: float
    seconds: float
    samples_per_second: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if k != "epochs"}


@dataclass
class ReviewerResult:
    """A trained reviewer and everything to log about it.

    Attributes:
        model: the best epoch's network, on CPU, in eval mode.
        spec: its spec (store `spec.to_json()` beside the weights).
        history: one `ReviewerEpoch.as_dict()` per epoch run.
        best_epoch: the epoch whose weights were kept.
        stop_reason: `completed`, `early_stopping` or `time_budget`.
        val_probabilities: (N, 3) grade probabilities of the validation samples (best epoch).
        val_evaluation: the reviewer and both baselines on the validation samples.
        class_weights: the cross-entropy weight of grades 1, 2, 3.
        plots: PNG bytes: `training_curves`, `val_roc_grade3`, `val_risk_coverage`,
            `val_confusion`.
        pretrained: whether pretrained encoder weights were loaded.
        device: a summary of device and precision.
    """

    model: nn.Module
    spec: ReviewerSpec
    history: list[dict[str, float]]
    best_epoch: int
    stop_reason: str
    val_probabilities: np.ndarray
    val_evaluation: ReviewerEvaluation
    class_weights: list[float]
    plots: dict[str, bytes]
    pretrained: bool
    device: dict[str, str]

    def metrics(self) -> dict[str, float]:
        """Final scalars: `val_auc_grade3/reviewer`, ..., `val_macro_auc`, `best_epoch`."""
        return {**self.val_evaluation.flat("val_"), "best_epoch": float(self.best_epoch)}


def train_reviewer(
    spec: ReviewerSpec,
    config: ReviewerTrainConfig,
    train: ReviewerSamples,
    val: ReviewerSamples,
    *,
    placement: Placement | None = None,
    on_epoch: Callable[[ReviewerEpoch], None] | None = None,
    progress_bar: bool = True,
) -> ReviewerResult:
    """Train a reviewer on `train`, validate every epoch on `val`, keep the best epoch.

    Args:
        spec: the network to build (pretrained 3-channel weights widened to 5 channels).
        config: the hyper-parameters (`degraded_share` is the caller's, for building samples).
        train: graded training samples.
        val: graded validation samples (e.g. other images of the training types).
        placement: device and precision; default `select_device(config.device, ...)`.
        on_epoch: called after every epoch's validation.
        progress_bar: show a tqdm bar per epoch.

    Raises:
        ValueError: empty samples.
        PretrainedWeightsUnavailable: no local pretrained weights and `allow_scratch` is False.
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"need training and validation samples, got {len(train)} and {len(val)}")
    seed_everything(config.seed)
    placement = placement or select_device(config.device, mixed_precision=config.mixed_precision)
    if placement.device.type == "cpu":
        tune_cpu_allocator()
    model, pretrained = build_pretrained(
        lambda weights: build_reviewer(spec, pretrained=weights),
        pretrained=spec.encoder_weights is not None,
        allow_scratch=config.allow_scratch,
    )
    size = spec.input_size
    placement, model = place(
        placement, model, (IN_CHANNELS, size, size), batch_size=config.batch_size
    )
    run = _ReviewerFit(model, spec, config, placement, train, val)
    run.fit(on_epoch, progress_bar)
    return run.finish(pretrained)


def evaluate_on(
    model: nn.Module,
    spec: ReviewerSpec,
    samples: ReviewerSamples,
    *,
    placement: Placement | None = None,
    batch_size: int = _EVAL_BATCH,
) -> tuple[np.ndarray, dict[str, ReviewerEvaluation]]:
    """Grade `samples` and judge the reviewer and both baselines on them.

    Returns:
        The (N, 3) grade probabilities, and evaluations keyed `mix` (all samples), `real`
        (real predictions only) and `degraded` (degraded masks only); a subset without
        samples is left out.
    """
    probs = grade_probabilities(
        model,
        spec,
        samples.sample_images(),
        samples.probabilities,
        samples.thresholds,
        placement=placement,
        batch_size=batch_size,
    )
    grades = samples.grades(spec.grades)
    real = samples.is_prediction
    subsets = {"mix": np.ones(len(samples), bool), "real": real, "degraded": ~real}
    evaluations = {
        name: evaluate_reviewer(
            probs[rows],
            grades[rows],
            entropy=samples.entropy[rows],
            flip_disagreement=samples.flip_disagreement[rows],
        )
        for name, rows in subsets.items()
        if rows.any()
    }
    return probs, evaluations


def grade_targets(ious: np.ndarray, rule: GradeRule, sigma: float) -> np.ndarray:
    """(N, 3) training targets: one-hot grades, or with `sigma` > 0 the chance that the IoU
    plus a normal error of that deviation lands in each grade's band."""
    if sigma <= 0:
        return np.eye(len(GRADES))[rule.grades(ious) - 1]
    below_usable = special.ndtr((rule.usable - ious) / sigma)
    below_good = special.ndtr((rule.good - ious) / sigma)
    return np.stack([1 - below_good, below_good - below_usable, below_usable], axis=1)


def class_weights(grades: np.ndarray, weighting: str) -> np.ndarray:
    """Cross-entropy weight per grade: n / (3 n_grade) for `balanced` (1 for absent grades)."""
    counts = np.array([np.sum(grades == g) for g in GRADES], dtype=np.float64)
    if weighting == "none":
        return np.ones(len(GRADES))
    present = counts > 0
    weights = np.ones(len(GRADES))
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


class _ReviewerFit:
    """The mutable state of one reviewer training run."""

    def __init__(
        self,
        model: nn.Module,
        spec: ReviewerSpec,
        config: ReviewerTrainConfig,
        placement: Placement,
        train: ReviewerSamples,
        val: ReviewerSamples,
    ) -> None:
        self.model, self.spec, self.config, self.placement = model, spec, config, placement
        self.train, self.val = train, val
        targets = grade_targets(train.ious, spec.grades, config.label_iou_sigma)
        self.train_targets = torch.from_numpy(targets.astype(np.float32))
        self.val_grades = val.grades(spec.grades)
        self.weights = class_weights(train.grades(spec.grades), config.class_weighting)
        self.loss_weight = torch.tensor(self.weights, dtype=torch.float32, device=placement.device)
        self.loop = Fit(
            model,
            placement,
            parameters=model.parameters(),
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            max_minutes=config.max_minutes,
            patience=config.early_stopping_patience,
        )
        self.optimiser = self.loop.optimiser
        self.generator = torch.Generator().manual_seed(config.seed)
        self.history: list[dict[str, float]] = []
        self.best: tuple[float, float, int, StateDict, np.ndarray] | None = None

    def fit(self, on_epoch: Callable[[ReviewerEpoch], None] | None, progress_bar: bool) -> None:
        steps = max(1, math.ceil(len(self.train) / self.config.batch_size))
        planned = steps * self.config.epochs
        budget = self.loop.budget
        self.optimiser.schedule(lambda step: lr_factor("onecycle", budget.progress(step, planned)))

        def train_epoch(epoch: int) -> tuple[float, int, bool]:
            return self.loop.epoch(
                self._batches(),
                self._step,
                desc=f"reviewer epoch {epoch}/{self.config.epochs}",
                progress_bar=progress_bar,
            )

        def end_epoch(epoch: int, loss: float, seen: int, seconds: float) -> bool:
            report = self._validate(epoch, loss, seen, seconds)
            self.history.append(report.as_dict())
            if on_epoch is not None:
                on_epoch(report)
            return report.improved

        self.loop.run(self.config.epochs, train_epoch, end_epoch)

    def _batches(self) -> list[np.ndarray]:
        """An epoch's batches of sample rows, shuffled."""
        order = torch.randperm(len(self.train), generator=self.generator).numpy()
        batches = [
            order[i : i + self.config.batch_size]
            for i in range(0, len(order), self.config.batch_size)
        ]
        if len(batches) > 1 and len(batches[-1]) < 2:  # batch norm needs two samples
            batches.pop()
        return batches

    def _step(self, rows: np.ndarray) -> tuple[torch.Tensor, int]:
        device = self.placement.device
        images = torch.from_numpy(self.train.sample_images(rows)).permute(0, 3, 1, 2)
        probs = torch.from_numpy(self.train.probabilities[rows])[:, None]
        inputs = reviewer_inputs(images.to(device), probs, self.train.thresholds[rows], self.spec)
        if self.config.augment:
            inputs = augment(inputs, self.generator)
        inputs = inputs.contiguous(memory_format=self.placement.memory_format)
        targets = self.train_targets[rows].to(device)
        with self.placement.autocast():
            logits = self.model(inputs)
        loss = F.cross_entropy(
            logits.float(),
            targets,
            weight=self.loss_weight,
            label_smoothing=self.config.label_smoothing,
        )
        return self.loop.step(loss), len(rows)

    def _validate(self, epoch: int, loss: float, seen: int, seconds: float) -> ReviewerEpoch:
        probs = self._val_probabilities()
        targets = torch.from_numpy(self.val_grades - 1)
        val_loss = float(
            F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)).float(), targets)
        )
        auc = safe_auc(self.val_grades == 3, probs[:, 2])
        score = -1.0 if math.isnan(auc) else auc
        improved = self.best is None or (score, -val_loss) > (self.best[0], -self.best[1])
        if improved:
            self.best = (score, val_loss, epoch, cpu_state(self.model), probs)
        assert self.best is not None
        return ReviewerEpoch(
            epoch=epoch,
            epochs=self.config.epochs,
            train_loss=loss,
            val_loss=val_loss,
            val_auc_grade3=auc,
            best_val_auc_grade3=self.best[0],
            improved=improved,
            learning_rate=self.optimiser.learning_rate,
            seconds=seconds,
            samples_per_second=seen / max(seconds, 1e-9),
        )

    def _val_probabilities(self) -> np.ndarray:
        return grade_probabilities(
            self.model,
            self.spec,
            self.val.sample_images(),
            self.val.probabilities,
            self.val.thresholds,
            placement=self.placement,
            batch_size=_EVAL_BATCH,
        )

    def finish(self, pretrained: bool) -> ReviewerResult:
        assert self.best is not None
        _, _, best_epoch, state, probs = self.best
        model = self.model.to("cpu", memory_format=torch.contiguous_format)  # pyright: ignore[reportCallIssue]
        model.load_state_dict(state)
        model.eval()
        evaluation = evaluate_reviewer(
            probs,
            self.val_grades,
            entropy=self.val.entropy,
            flip_disagreement=self.val.flip_disagreement,
        )
        figures = {f"val_{k}": v for k, v in evaluation.plots("(validation)").items()}
        return ReviewerResult(
            model=model,
            spec=self.spec,
            history=self.history,
            best_epoch=best_epoch,
            stop_reason=self.loop.stopping.reason,
            val_probabilities=probs,
            val_evaluation=evaluation,
            class_weights=self.weights.tolist(),
            plots={"training_curves": training_curves_png(self.history), **figures},
            pretrained=pretrained,
            device=self.placement.describe(),
        )


def augment(inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per sample: random horizontal and vertical flips and transposition of all channels
    (square inputs), and a random brightness/contrast change of the image channels only."""
    count = inputs.shape[0]

    def chosen() -> torch.Tensor:
        picked = torch.rand(count, generator=generator) < 0.5
        return picked.to(inputs.device).view(-1, 1, 1, 1)

    out = torch.where(chosen(), inputs.flip(-1), inputs)
    out = torch.where(chosen(), out.flip(-2), out)
    if out.shape[-1] == out.shape[-2]:
        out = torch.where(chosen(), out.transpose(-1, -2), out)
    contrast = torch.empty(count, 1, 1, 1).uniform_(0.75, 1.25, generator=generator)
    shift = torch.empty(count, 1, 1, 1).uniform_(-0.25, 0.25, generator=generator)
    image = out[:, :3] * contrast.to(out.device) + shift.to(out.device)
    return torch.cat((image, out[:, 3:]), dim=1)


def training_curves_png(history: list[dict[str, float]]) -> bytes:
    """Train and validation loss, and validation AUC of grade 3 vs rest, per epoch."""
    epochs = [int(h["epoch"]) for h in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss, auc = fig.subplots(1, 2)
    loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    loss.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="reviewer loss")
    loss.legend()
    auc.plot(epochs, [h["val_auc_grade3"] for h in history], marker="o", color="tab:red")
    auc.set(xlabel="epoch", ylabel="ROC AUC", title="validation AUC, grade 3 vs rest")
    return plots._png(fig)
