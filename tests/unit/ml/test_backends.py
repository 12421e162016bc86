"""Inference backends: the exact float32 masks and features, exports cached once, the choice
measured."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, cast

import pytest
import torch
from pydantic import ValidationError

from maskfind_pipeline.ml.backends import exports
from maskfind_pipeline.ml.backends.base import InferenceBackend, Prediction, ProbabilityModel
from maskfind_pipeline.ml.backends.cache import MANIFEST, cache_key, cached_entry
from maskfind_pipeline.ml.backends.choose import (
    NoBackendAvailable,
    choose_backend,
    configured_backend,
)
from maskfind_pipeline.ml.backends.config import BackendConfig, BackendName
from maskfind_pipeline.ml.backends.exports import ModelExports
from maskfind_pipeline.ml.backends.runtimes import (
    OnnxRuntimeBackend,
    OpenVinoBackend,
    create_backend,
    open_backend,
)
from maskfind_pipeline.ml.device import select_device
from maskfind_pipeline.ml.novelty.features import segment_with_features
from maskfind_pipeline.ml.reviewer.config import ReviewerSpec
from maskfind_pipeline.ml.reviewer.model import ReviewerModel, build_reviewer, grade_logits
from maskfind_pipeline.ml.segmentation.config import ModelConfig
from maskfind_pipeline.ml.segmentation.model import build_model, preprocess
from maskfind_pipeline.ml.segmentation.predict import Predictor, weights_to_bytes
from maskfind_pipeline.ml.segmentation.tta import flip_disagreement
from tests.support.clock import FakeClock

TINY = ModelConfig(
    encoder_name="resnet18",
    encoder_weights=None,
    input_size=64,
    decoder_channels=(32, 16, 16, 8, 8),
    threshold=0.4,
)
BACKENDS: tuple[BackendName, ...] = ("torch_fp32", "torch", "onnxruntime", "openvino")
# Probability tolerances against exact float32, as (max, mean) absolute difference. float32
# runtimes only reorder sums (measured max 1.7e-6). bfloat16 keeps 8 significant bits (0.4 %
# relative error per rounding), compounded over ~40 layers: measured max 0.012, mean 0.0012
# for both bf16 backends; the bounds leave 4x room. Where the CPU has no native bf16, these
# backends run float32 and meet the tighter bound anyway.
TOLERANCE = {
    "torch_fp32": (1e-5, 1e-6),
    "onnxruntime": (1e-5, 1e-6),
    "torch": (0.05, 0.005),
    "openvino": (0.05, 0.005),
}
# Feature tolerances against exact float32 `segment_with_features`, as `feature_error`: the
# largest absolute difference in an image's features relative to its largest feature.
# Elementwise relative error means nothing here: a ReLU channel silent over the whole image has
# the feature 0 (140 of these 7 x 768), which bf16 turns into 1e-9. float32 runtimes measured
# 1.0e-6 (torch_fp32: channels_last kernels) and 6e-7 (ONNX Runtime); the bf16 backends
# 6.6e-3 (torch) and 4.9e-3 (OpenVINO): bf16's 0.4 % per rounding, partly averaged out by
# the spatial mean. The bounds leave about 5x room.
FEATURE_TOLERANCE = {"torch_fp32": 1e-5, "onnxruntime": 1e-5, "torch": 0.03, "openvino": 0.03}
FEATURES = 256 + 512
"""D for TINY: the channels of resnet18's two deepest stages (`test_the_feature_size...`)."""


def tiny_predictor(seed: int = 0) -> Predictor:
    torch.manual_seed(seed)
    return Predictor.from_weights(TINY, weights_to_bytes(build_model(TINY, pretrained=False)))


def uint8_images(batch: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, TINY.input_size, TINY.input_size)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return tiny_predictor()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return uint8_images(7)  # not the export's example batch (2): the batch is dynamic


@pytest.fixture(scope="module")
def reference(predictor: Predictor, images: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(predictor.logits(images))


@pytest.fixture(scope="module")
def reference_features(predictor: Predictor, images: torch.Tensor) -> torch.Tensor:
    """The features' one definition, in float32 on contiguous input (not the backends' path)."""
    with torch.no_grad():
        return segment_with_features(predictor.model, preprocess(images, predictor.config))[1]


def test_the_feature_size_is_that_of_the_two_deepest_encoder_stages(
    predictor: Predictor,
) -> None:
    channels = cast(Sequence[int], predictor.model.get_submodule("encoder").out_channels)
    assert sum(channels[-2:]) == FEATURES


def feature_error(features: torch.Tensor, reference: torch.Tensor) -> float:
    """The largest |features - reference| of an image relative to its largest |reference|."""
    scale = reference.abs().amax(dim=1)
    return float(((features - reference).abs().amax(dim=1) / scale).max())


@pytest.fixture(scope="module")
def backends(predictor: Predictor, cache_dir: Path) -> dict[BackendName, InferenceBackend]:
    """Every backend of the tiny model, opened once from the shared cache."""
    return {name: create_backend(name, predictor, cache_dir) for name in BACKENDS}


@pytest.fixture(scope="module")
def predictions(
    backends: dict[BackendName, InferenceBackend], images: torch.Tensor
) -> dict[BackendName, Prediction]:
    return {name: backend.predict(images) for name, backend in backends.items()}


@pytest.fixture(scope="module")
def export_calls(
    predictor: Predictor, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, dict[str, int]]]:
    """A cache with both exports of the tiny model, and how often each was produced."""
    calls = {"onnx": 0, "openvino": 0}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exports, "export_onnx", _counting(exports.export_onnx, calls, "onnx"))
        patch.setattr(
            exports,
            "convert_to_openvino",
            _counting(exports.convert_to_openvino, calls, "openvino"),
        )
        cache = tmp_path_factory.mktemp("cache")
        model_exports = ModelExports(predictor, cache)
        model_exports.onnx()
        model_exports.openvino()
        yield cache, dict(calls)


@pytest.fixture(scope="module")
def cache_dir(export_calls: tuple[Path, dict[str, int]]) -> Path:
    return export_calls[0]


def _counting(fn: Callable[..., None], calls: dict[str, int], key: str) -> Callable[..., None]:
    def counted(*args: object) -> None:
        calls[key] += 1
        fn(*args)

    return counted


# --- every backend gives the exact predictor's masks ---------------------------------------


def test_probability_model_is_the_predictors_preprocessing_sigmoid_and_features(
    predictor: Predictor,
    images: torch.Tensor,
    reference: torch.Tensor,
    reference_features: torch.Tensor,
) -> None:
    with torch.no_grad():
        outputs = ProbabilityModel(predictor.model, predictor.config)(images)
    probabilities, features, disagreement = outputs
    # The predictor feeds channels_last input, which takes other float32 kernels: only the
    # order of sums differs.
    torch.testing.assert_close(probabilities, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(features, reference_features, atol=0, rtol=0)  # the same pass
    plain = predictor.logits(images, tta=False)
    mirrored = predictor.logits(images.flip(-1), tta=False).flip(-1)
    expected = flip_disagreement(plain, mirrored, predictor.config.threshold)
    assert disagreement.shape == (len(images),)
    torch.testing.assert_close(disagreement, expected, atol=0.01, rtol=0)


@pytest.mark.parametrize("name", BACKENDS)
def test_flip_disagreement_agrees_with_the_exact_float32_predictor(
    name: BackendName, predictor: Predictor, predictions: dict[BackendName, Prediction], images
) -> None:
    """The free grading signal comes out of every backend's graph; it counts pixels whose
    mask flips, so a backend's rounding may move it by a few pixels' worth, no more."""
    plain = predictor.logits(images, tta=False)
    mirrored = predictor.logits(images.flip(-1), tta=False).flip(-1)
    expected = flip_disagreement(plain, mirrored, predictor.config.threshold)
    found = predictions[name].flip_disagreement
    assert found.dtype == torch.float32 and found.shape == expected.shape
    assert float((found - expected).abs().max()) <= 0.02
    assert float(expected.std()) > 0  # the images disagree with their mirror by different amounts


@pytest.mark.parametrize("name", BACKENDS)
def test_masks_agree_with_the_exact_float32_predictor(
    name: BackendName,
    predictor: Predictor,
    backends: dict[BackendName, InferenceBackend],
    predictions: dict[BackendName, Prediction],
    reference: torch.Tensor,
) -> None:
    probabilities = predictions[name].probabilities
    assert backends[name].name == name
    assert probabilities.dtype == torch.float32 and probabilities.shape == reference.shape
    difference = (probabilities - reference).abs()
    max_error, mean_error = TOLERANCE[name]
    assert float(difference.max()) <= max_error and float(difference.mean()) <= mean_error
    # At the median probability half the pixels are product: the hardest threshold to agree on
    # (this model's probabilities are not saturated: 0.39-0.99, median 0.77).
    assert 0.45 < float((reference >= reference.median()).float().mean()) < 0.55
    for threshold in (predictor.config.threshold, float(reference.median())):
        agreement = ((probabilities >= threshold) == (reference >= threshold)).float().mean()
        assert float(agreement) >= 0.99, (threshold, float(agreement))


@pytest.mark.parametrize("name", BACKENDS)
def test_features_agree_with_the_exact_float32_features(
    name: BackendName,
    backends: dict[BackendName, InferenceBackend],
    predictions: dict[BackendName, Prediction],
    images: torch.Tensor,
    reference_features: torch.Tensor,
) -> None:
    features = predictions[name].features
    assert features.dtype == torch.float32 and features.device.type == "cpu"
    assert features.shape == (len(images), FEATURES) == reference_features.shape
    assert feature_error(features, reference_features) <= FEATURE_TOLERANCE[name]
    # `probabilities` is `predict`'s first output (the same numbers, another pass)
    again = backends[name].probabilities(images)
    torch.testing.assert_close(again, predictions[name].probabilities, atol=1e-6, rtol=0)


def test_openvino_requests_keep_both_outputs_in_image_order(
    predictor: Predictor, cache_dir: Path, images: torch.Tensor
) -> None:
    """THROUGHPUT mode splits a batch across infer requests: 7 images over 3 requests run as
    chunks of 3, 2 and 2, and each image's probabilities and features come back at its place.
    The images differ in brightness so that each one's features are far from the others'."""
    brightness = torch.linspace(0.1, 1.0, len(images)).view(-1, 1, 1, 1)
    distinct = (images * brightness).to(torch.uint8)
    with torch.no_grad():
        model = ProbabilityModel(predictor.model, predictor.config)
        expected_probabilities, expected_features, _ = model(distinct)
    backend = OpenVinoBackend(ModelExports(predictor, cache_dir).openvino(), TINY.input_size)
    backend.requests = [backend.compiled.create_infer_request() for _ in range(3)]
    probabilities, features, _ = backend.predict(distinct)
    nearest = torch.cdist(features, expected_features).argmin(dim=1)
    assert nearest.tolist() == list(range(len(images)))
    assert feature_error(features, expected_features) <= FEATURE_TOLERANCE["openvino"]
    difference = (probabilities - expected_probabilities).abs().flatten(1).amax(dim=1)
    assert float(difference.max()) <= TOLERANCE["openvino"][0]
    flipped = backend.predict(distinct.flip(0)).features
    assert torch.cdist(flipped, features).argmin(dim=1).tolist() == [6, 5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("name", BACKENDS)
def test_any_batch_size_and_only_model_inputs(
    name: BackendName,
    backends: dict[BackendName, InferenceBackend],
    images: torch.Tensor,
    reference: torch.Tensor,
    reference_features: torch.Tensor,
) -> None:
    backend = backends[name]
    one, features, disagreement = backend.predict(images[:1])
    assert disagreement.shape == (1,)
    assert one.shape == (1, 1, 64, 64) and features.shape == (1, FEATURES)
    assert float((one - reference[:1]).abs().max()) <= TOLERANCE[name][0]
    assert feature_error(features, reference_features[:1]) <= FEATURE_TOLERANCE[name]
    for call in (backend.predict, backend.probabilities):
        with pytest.raises(ValueError, match="uint8"):
            call(images.float())
        for wrong in (uint8_images(1)[:, :, :32, :32], images[:0]):
            with pytest.raises(ValueError, match="uint8"):
                call(wrong)


EXACT = select_device("cpu", mixed_precision=False)


class Grader(Protocol):
    """The reviewer as production uses it (`serving.day.Grader`)."""

    def grade_batch(
        self, images: torch.Tensor, probabilities: torch.Tensor, threshold: float
    ) -> torch.Tensor: ...


@pytest.fixture(scope="module")
def reviewer(images: torch.Tensor, reference: torch.Tensor, predictor: Predictor) -> Grader:
    """The reviewer whose grade of each image must not change with the backend: exact float32,
    random weights, its head's bias centred on these images so that its grades split across
    them by small margins (the hardest case for agreement)."""
    torch.manual_seed(5)
    spec = ReviewerSpec(encoder_name="resnet18", encoder_weights=None, input_size=32)
    net = build_reviewer(spec, pretrained=False).eval()
    logits = grade_logits(net, spec, images, reference, predictor.config.threshold, EXACT)
    head = net.head[-1]
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        head.bias.sub_(logits.mean(dim=0) - logits.mean())
    grader = ReviewerModel(net, spec)
    grades = grader.grade_batch(images, reference, predictor.config.threshold).argmax(1)
    assert len(set(grades.tolist())) > 1, "the grades must differ between images"
    return grader


@pytest.mark.parametrize("name", BACKENDS)
def test_every_image_grade_agrees_with_the_exact_float32_predictor(
    name: BackendName,
    reviewer: Grader,
    predictor: Predictor,
    predictions: dict[BackendName, Prediction],
    images: torch.Tensor,
    reference: torch.Tensor,
) -> None:
    probabilities = predictions[name].probabilities
    threshold = predictor.config.threshold
    expected = reviewer.grade_batch(images, reference, threshold).argmax(1)
    assert torch.equal(reviewer.grade_batch(images, probabilities, threshold).argmax(1), expected)


# --- exports: once per model version, keyed by its bytes -----------------------------------


def test_exports_are_made_once_and_reused(
    export_calls: tuple[Path, dict[str, int]],
    predictor: Predictor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache, first = export_calls
    assert first == {"onnx": 1, "openvino": 1}  # the IR was converted from the cached ONNX
    calls = {"onnx": 0, "openvino": 0}
    monkeypatch.setattr(exports, "export_onnx", _counting(_fake_onnx, calls, "onnx"))
    monkeypatch.setattr(exports, "convert_to_openvino", _counting(_fake_ir, calls, "openvino"))
    again = ModelExports(predictor, cache)  # e.g. a later process
    assert again.onnx().read_bytes()[:4] != b"fake" and again.openvino().exists()
    assert calls == {"onnx": 0, "openvino": 0}


def test_other_weights_or_config_get_other_entries(
    predictor: Predictor, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exports, "export_onnx", _fake_onnx)
    original = ModelExports(predictor, cache_dir)
    retrained = ModelExports(tiny_predictor(seed=1), cache_dir)
    retuned = Predictor(predictor.model, TINY.model_copy(update={"threshold": 0.6}))
    paths = {original.onnx(), retrained.onnx(), ModelExports(retuned, cache_dir).onnx()}
    assert len(paths) == 3
    assert retrained.onnx().read_bytes() == b"fake onnx"
    assert original.onnx_inputs["weights_sha256"] != retrained.onnx_inputs["weights_sha256"]
    assert original.openvino_inputs != retrained.openvino_inputs


def test_an_export_of_the_old_format_is_never_loaded(
    predictor: Predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format 2 (no flip disagreement) has other keys; an old entry found under a format 3 key
    (e.g. copied there by hand) does not verify and is exported again."""
    calls = {"onnx": 0, "openvino": 0}
    monkeypatch.setattr(exports, "export_onnx", _counting(_fake_onnx, calls, "onnx"))
    model_exports = ModelExports(predictor, tmp_path)
    assert model_exports.onnx_inputs["format"] == model_exports.openvino_inputs["format"] == "3"
    old_inputs = {**model_exports.onnx_inputs, "format": "2"}
    old = cached_entry(model_exports.root, "onnx", old_inputs, Producer(b"old onnx"))
    new = model_exports.onnx().parent
    assert new != old and calls["onnx"] == 1
    shutil.rmtree(new)
    old.rename(new)
    assert ModelExports(predictor, tmp_path).onnx().read_bytes() == b"fake onnx"
    assert calls["onnx"] == 2


def test_a_graph_without_the_features_output_is_refused(tmp_path: Path) -> None:
    old = _single_output_onnx(tmp_path / "old.onnx")
    with pytest.raises(ValueError, match="has outputs"):
        OnnxRuntimeBackend(old, TINY.input_size)
    exports.convert_to_openvino(old, tmp_path / "old.xml")
    with pytest.raises(ValueError, match="has outputs"):
        OpenVinoBackend(tmp_path / "old.xml", TINY.input_size)


def _single_output_onnx(path: Path) -> Path:
    """A graph with format 1's interface: uint8 `images` in, float32 `probabilities` out."""
    import onnx
    from onnx import TensorProto, helper

    shape = ["batch", 3, TINY.input_size, TINY.input_size]
    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["probabilities"], to=TensorProto.FLOAT)],
        "format1",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, shape)],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, shape)],
    )
    opset = [helper.make_opsetid("", 18)]
    onnx.save(helper.make_model(graph, opset_imports=opset, ir_version=9), path)
    return path


def _fake_onnx(model: ProbabilityModel, size: int, path: Path) -> None:
    path.write_bytes(b"fake onnx")


def _fake_ir(onnx_path: Path, xml_path: Path) -> None:
    xml_path.write_bytes(b"fake xml")


# --- the cache: atomic, verified ------------------------------------------------------------


class Producer:
    """Writes `model.bin` with `content` and counts its calls."""

    def __init__(self, content: bytes = b"weights") -> None:
        self.content, self.calls = content, 0

    def __call__(self, folder: Path) -> None:
        self.calls += 1
        (folder / "model.bin").write_bytes(self.content)


INPUTS = {"weights_sha256": "a" * 64, "library": "1.0"}


def test_entry_is_produced_once_then_reused(tmp_path: Path) -> None:
    produce = Producer()
    first = cached_entry(tmp_path, "onnx", INPUTS, produce)
    assert cached_entry(tmp_path, "onnx", INPUTS, produce) == first
    assert produce.calls == 1
    other = cached_entry(tmp_path, "onnx", {**INPUTS, "weights_sha256": "b" * 64}, produce)
    assert other != first and produce.calls == 2
    assert first.name == f"onnx-{cache_key(INPUTS)}"
    assert json.loads((first / MANIFEST).read_text())["inputs"] == INPUTS


def test_a_leftover_temporary_folder_is_never_loaded(tmp_path: Path) -> None:
    name = f"onnx-{cache_key(INPUTS)}"
    crashed = tmp_path / f".tmp-{name}-crashed"  # a process killed mid-export
    crashed.mkdir()
    (crashed / "model.bin").write_bytes(b"wei")
    produce = Producer()
    entry = cached_entry(tmp_path, "onnx", INPUTS, produce)
    assert produce.calls == 1 and (entry / "model.bin").read_bytes() == b"weights"
    assert crashed.exists()  # another process may still be writing it; removed after a day


@pytest.mark.parametrize("damage", ["truncated", "no manifest", "other inputs"])
def test_a_damaged_entry_is_produced_again(tmp_path: Path, damage: str) -> None:
    produce = Producer()
    entry = cached_entry(tmp_path, "onnx", INPUTS, produce)
    if damage == "truncated":
        (entry / "model.bin").write_bytes(b"wei")
    elif damage == "no manifest":
        (entry / MANIFEST).unlink()
    else:
        manifest = json.loads((entry / MANIFEST).read_text())
        (entry / MANIFEST).write_text(json.dumps({**manifest, "inputs": {}}))
    assert cached_entry(tmp_path, "onnx", INPUTS, produce) == entry
    assert produce.calls == 2 and (entry / "model.bin").read_bytes() == b"weights"
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]


def test_a_failed_export_leaves_nothing(tmp_path: Path) -> None:
    def fail(folder: Path) -> None:
        (folder / "model.bin").write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError, match="exporter crashed"):
        cached_entry(tmp_path, "onnx", INPUTS, fail)
    assert list(tmp_path.iterdir()) == []


def test_of_two_processes_exporting_at_once_the_first_rename_wins(tmp_path: Path) -> None:
    winner = Producer(b"first")

    def slower(folder: Path) -> None:  # another process publishes while this one exports
        cached_entry(tmp_path, "onnx", INPUTS, winner)
        (folder / "model.bin").write_bytes(b"second")

    entry = cached_entry(tmp_path, "onnx", INPUTS, slower)
    assert (entry / "model.bin").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]


def test_temporary_folders_older_than_a_day_are_removed(tmp_path: Path) -> None:
    old, recent = tmp_path / ".tmp-onnx-old", tmp_path / ".tmp-onnx-recent"
    old.mkdir()
    recent.mkdir()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    cached_entry(tmp_path, "onnx", INPUTS, Producer())
    assert not old.exists() and recent.exists()


# --- choosing by measurement ----------------------------------------------------------------


class FakeBackend:
    """Takes `seconds` of the fake clock per batch; `fail` makes it raise instead."""

    def __init__(self, name: str, seconds: float, clock: FakeClock, fail: bool = False) -> None:
        self.name, self.seconds, self.clock, self.fail = name, seconds, clock, fail

    def predict(self, images: torch.Tensor) -> Prediction:
        if self.fail:
            raise RuntimeError("kernel missing")
        self.clock.now += self.seconds
        self.clock.runs.append(self.name)
        batch = len(images)
        zeros = torch.zeros(batch, 1, *images.shape[2:])
        return Prediction(zeros, torch.zeros(batch, 4), torch.zeros(batch))

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict(images).probabilities


def fake_opener(clock: FakeClock, **seconds: float) -> Callable[..., InferenceBackend]:
    def opener(name: str, model_exports: ModelExports) -> InferenceBackend:
        if name not in seconds:
            raise ImportError(f"No module named {name!r}")
        return FakeBackend(name, abs(seconds[name]), clock, fail=seconds[name] < 0)

    return opener


def test_the_fastest_measured_backend_is_chosen(predictor: Predictor, tmp_path: Path) -> None:
    clock = FakeClock()
    opener = fake_opener(clock, torch=0.5, onnxruntime=0.25, openvino=1.0)
    choice = choose_backend(
        predictor, tmp_path, batch_size=4, batches=3, clock=clock, opener=opener
    )
    assert choice.backend.name == "onnxruntime"
    assert choice.rates == pytest.approx({"torch": 8.0, "onnxruntime": 16.0, "openvino": 4.0})
    assert choice.skipped == {}
    # warm-up each as it opens, then rounds of one timed batch each: a burst of load from
    # another process on shared cores slows all of them alike
    assert clock.runs == ["torch", "onnxruntime", "openvino"] * 4


def test_a_backend_that_fails_is_skipped_with_its_reason(
    predictor: Predictor, tmp_path: Path
) -> None:
    clock = FakeClock()
    opener = fake_opener(clock, torch=0.5, onnxruntime=-0.1)  # openvino is not installed
    choice = choose_backend(predictor, tmp_path, batch_size=4, clock=clock, opener=opener)
    assert choice.backend.name == "torch" and list(choice.rates) == ["torch"]
    assert choice.skipped == {
        "onnxruntime": "RuntimeError: kernel missing",
        "openvino": "ImportError: No module named 'openvino'",
    }


def test_no_working_backend_is_an_error(predictor: Predictor, tmp_path: Path) -> None:
    opener = fake_opener(FakeClock(), torch=-1.0)
    with pytest.raises(NoBackendAvailable, match="kernel missing"):
        choose_backend(predictor, tmp_path, opener=opener)


def test_auto_measures_the_real_candidates(predictor: Predictor, cache_dir: Path) -> None:
    choice = configured_backend(BackendConfig(), predictor, cache_dir, batch_size=4)
    assert choice.skipped == {}
    assert set(choice.rates) == {"torch", "onnxruntime", "openvino"}
    assert choice.rates[choice.backend.name] == max(choice.rates.values())


def test_the_auto_choice_is_measured_once_per_machine_and_version(
    predictor: Predictor, tmp_path: Path
) -> None:
    clock = FakeClock()
    opener = fake_opener(clock, torch=0.5, onnxruntime=0.25)
    first = configured_backend(
        BackendConfig(), predictor, tmp_path, batch_size=4, clock=clock, opener=opener
    )
    assert (first.backend.name, first.cached) == ("onnxruntime", False)
    assert len(clock.runs) == 8  # a warm-up and three timed batches each
    [stored] = (tmp_path / "backends").glob("choice-*.json")
    assert json.loads(stored.read_text())["backend"] == "onnxruntime"

    again = configured_backend(
        BackendConfig(), predictor, tmp_path, batch_size=4, clock=clock, opener=opener
    )
    assert (again.backend.name, again.cached, again.rates) == ("onnxruntime", True, first.rates)
    assert len(clock.runs) == 8, "a cached choice runs no timing"

    # another batch size (or machine, version, library) is measured again
    other = configured_backend(
        BackendConfig(), predictor, tmp_path, batch_size=8, clock=clock, opener=opener
    )
    assert not other.cached and len(list((tmp_path / "backends").glob("choice-*.json"))) == 2


def test_a_cached_backend_that_no_longer_opens_is_measured_again(
    predictor: Predictor, tmp_path: Path
) -> None:
    clock = FakeClock()
    configured_backend(
        BackendConfig(),
        predictor,
        tmp_path,
        batch_size=4,
        clock=clock,
        opener=fake_opener(clock, torch=0.5, onnxruntime=0.25),
    )
    gone = fake_opener(clock, torch=0.5)  # onnxruntime uninstalled since
    choice = configured_backend(
        BackendConfig(), predictor, tmp_path, batch_size=4, clock=clock, opener=gone
    )
    assert (choice.backend.name, choice.cached) == ("torch", False)
    assert "onnxruntime" in choice.skipped


def test_a_named_backend_is_opened_without_measuring(predictor: Predictor, tmp_path: Path) -> None:
    config = BackendConfig(backend="torch_fp32")
    choice = configured_backend(config, predictor, tmp_path)
    assert choice.backend.name == "torch_fp32" and choice.rates == {}
    assert not (tmp_path / "backends").exists()  # torch needs no export


def test_backend_settings_are_validated(predictor: Predictor) -> None:
    assert BackendConfig().backend == "auto"
    for bad in ({"backend": "tensorrt"}, {"candidates": []}, {"measure_batches": 0}):
        with pytest.raises(ValidationError):
            BackendConfig.model_validate(bad)
    with pytest.raises(ValueError, match="unknown"):
        open_backend("tensorrt", ModelExports(predictor, Path()))  # type: ignore[arg-type]
