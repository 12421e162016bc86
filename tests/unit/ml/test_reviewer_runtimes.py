"""The reviewer CNN in the fastest runtime: the same grades in every runtime, the choice
measured once per machine and version, failures skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maskfind_pipeline.ml.reviewer.config import ReviewerSpec
from maskfind_pipeline.ml.reviewer.grader import Grader
from maskfind_pipeline.ml.reviewer.model import ReviewerModel, build_reviewer
from maskfind_pipeline.ml.reviewer.runtimes import choose_runtime
from tests.support.clock import FakeClock

SIZE = 32
TINY = ReviewerSpec(encoder_name="tu-resnet10t", encoder_weights=None, input_size=SIZE)


@pytest.fixture(scope="module")
def reviewer() -> ReviewerModel:
    torch.manual_seed(0)
    return ReviewerModel(build_reviewer(TINY, pretrained=False).eval(), TINY, version="7")


def batch(count: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    return images, torch.rand(count, 1, SIZE, SIZE, generator=generator)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "torch"])
def test_every_runtime_grades_as_the_float32_network(
    reviewer: ReviewerModel, runtime: str, tmp_path: Path
) -> None:
    images, probabilities = batch()
    exact = reviewer.grade_batch(images, probabilities, 0.5)
    placed, choice = reviewer.on_fastest_runtime(tmp_path, batch_size=4, candidates=(runtime,))
    assert placed.runtime is not None and placed.runtime.name == runtime
    assert set(choice.rates) == {runtime} and choice.skipped == {}
    graded = placed.grade_batch(images, probabilities, 0.5)
    assert graded.shape == (5, 3) and graded.dtype == torch.float32
    # ONNX Runtime runs float32; torch may have chosen bf16 and OpenVINO's CPU plugin picks
    # its own inference precision (bf16 where native): looser there
    tolerance = 1e-4 if runtime == "onnxruntime" else 2e-2
    torch.testing.assert_close(graded, exact, atol=tolerance, rtol=0)
    assert reviewer.runtime is None, "the loaded reviewer is left alone"


class FakeRuntime:
    def __init__(self, name: str, seconds: float, clock: FakeClock) -> None:
        self.name, self.seconds, self.clock = name, seconds, clock

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.seconds < 0:
            raise RuntimeError("kernel missing")
        self.clock.now += self.seconds
        self.clock.runs.append(self.name)
        return torch.zeros(len(inputs), 3)


def opener(clock: FakeClock, **seconds: float):  # type: ignore[no-untyped-def]
    def open_runtime(name: str) -> FakeRuntime:
        if name not in seconds:
            raise ImportError(f"No module named {name!r}")
        return FakeRuntime(name, seconds[name], clock)

    return open_runtime


KEY = {"machine": "test", "weights_sha256": "abc"}


def test_the_fastest_runtime_is_chosen_and_kept(tmp_path: Path) -> None:
    clock = FakeClock()
    open_runtime = opener(clock, torch=0.5, onnxruntime=0.25, openvino=-1)
    first = choose_runtime(
        open_runtime, KEY, tmp_path, input_size=SIZE, batch_size=4, batches=3, clock=clock
    )
    assert (first.runtime.name, first.cached) == ("onnxruntime", False)
    assert first.rates == pytest.approx({"torch": 8.0, "onnxruntime": 16.0})
    assert first.skipped == {"openvino": "RuntimeError: kernel missing"}
    assert clock.runs == ["torch", "onnxruntime"] * 4  # a warm-up, then rounds of one batch
    [stored] = tmp_path.glob("reviewer-choice-*.json")
    assert json.loads(stored.read_text())["runtime"] == "onnxruntime"

    again = choose_runtime(
        open_runtime, KEY, tmp_path, input_size=SIZE, batch_size=4, batches=3, clock=clock
    )
    assert (again.runtime.name, again.cached, again.rates) == ("onnxruntime", True, first.rates)
    assert len(clock.runs) == 8, "a cached choice runs no timing"

    other = choose_runtime(
        open_runtime, {**KEY, "weights_sha256": "def"}, tmp_path, input_size=SIZE, clock=clock
    )
    assert not other.cached, "another version (or machine, library) is measured again"


def test_a_cached_runtime_that_no_longer_opens_is_measured_again(tmp_path: Path) -> None:
    clock = FakeClock()
    choose_runtime(opener(clock, torch=0.5, onnxruntime=0.25), KEY, tmp_path, input_size=SIZE)
    gone = opener(clock, torch=0.5)  # onnxruntime uninstalled since
    choice = choose_runtime(gone, KEY, tmp_path, input_size=SIZE, clock=clock)
    assert (choice.runtime.name, choice.cached) == ("torch", False)
    assert "onnxruntime" in choice.skipped


def test_no_working_runtime_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="kernel missing"):
        choose_runtime(opener(FakeClock(), torch=-1), KEY, tmp_path, input_size=SIZE)


def test_a_grader_without_a_cnn_measures_nothing(tmp_path: Path) -> None:
    grader = Grader("3", None, None)
    assert grader.ready(tmp_path) is grader and grader.runtime is None
    assert not list(tmp_path.iterdir())


def test_a_grader_with_a_cnn_runs_it_in_the_chosen_runtime(
    reviewer: ReviewerModel, tmp_path: Path
) -> None:
    ready = Grader("3", None, reviewer).ready(tmp_path, batch_size=4)
    assert ready.runtime in {"torch", "onnxruntime", "openvino"}
    assert set(ready.runtime_rates) == {"torch", "onnxruntime", "openvino"}
    assert ready.runtime_rates[ready.runtime] == max(ready.runtime_rates.values())
    images, probabilities = batch()
    torch.testing.assert_close(
        torch.from_numpy(ready.grade_batch(images, probabilities, 0.5)).float(),
        reviewer.grade_batch(images, probabilities, 0.5),
        atol=2e-2,
        rtol=0,
    )
    again = Grader("3", None, reviewer).ready(tmp_path, batch_size=4)
    assert again.runtime == ready.runtime, "the second day reads the kept choice"
