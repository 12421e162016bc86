"""Precision by measurement: the timing decides, the decision is cached, the model is untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from maskfind_pipeline.ml.device import Placement, select_device
from maskfind_pipeline.ml.precision import choose_precision, settle

SHAPE = (3, 16, 16)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Conv2d(8, 1, 1),
    )


class _Clock:
    """A fake clock: each (start, end) pair of readings lasts what `seconds` says for the
    candidate being timed; candidates are timed in a known order (`order`), round by round."""

    def __init__(self, seconds: dict[str, float], order: list[str]) -> None:
        self.seconds, self.order = seconds, order
        self.readings: Iterator[float] = self._readings()
        self.calls = 0

    def _readings(self) -> Iterator[float]:
        now = 0.0
        while True:
            for name in self.order:
                yield now
                now += self.seconds[name]
                yield now

    def __call__(self) -> float:
        self.calls += 1
        return next(self.readings)


@pytest.fixture(autouse=True)
def _auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASKFIND_PRECISION", raising=False)


@pytest.mark.parametrize(
    ("float32", "bfloat16", "expected"),
    [(1.0, 3.0, "float32"), (3.0, 1.0, "bfloat16")],
    ids=["emulated-bf16", "native-bf16"],
)
def test_the_faster_precision_is_chosen_and_cached(
    tmp_path: Path, float32: float, bfloat16: float, expected: str
) -> None:
    cache = tmp_path / "precision.json"
    seconds = {"float32/channels_last": float32, "bfloat16/channels_last": bfloat16}
    clock = _Clock(seconds, list(seconds))
    choice = choose_precision(
        _net(), SHAPE, batch_size=8, training=True, cache_path=cache, layouts=False, clock=clock
    )
    assert (choice.precision, choice.channels_last, choice.source) == (expected, True, "measured")
    assert choice.seconds == seconds
    assert choice.dtype == (torch.bfloat16 if expected == "bfloat16" else None)
    stored = json.loads(cache.read_text())
    assert stored[choice.key]["precision"] == expected
    assert stored[choice.key]["inputs"]["batch"] == "2", "the probe's batch is small"

    again = _Clock(seconds, list(seconds))
    cached = choose_precision(
        _net(), SHAPE, batch_size=8, training=True, cache_path=cache, layouts=False, clock=again
    )
    assert (cached.precision, cached.source, cached.key) == (expected, "cached", choice.key)
    assert again.calls == 0, "a cached decision is not timed again"


def test_another_model_shape_is_timed_again(tmp_path: Path) -> None:
    cache = tmp_path / "precision.json"
    seconds = {"float32/channels_last": 1.0, "bfloat16/channels_last": 2.0}
    first = choose_precision(
        _net(),
        SHAPE,
        batch_size=2,
        training=True,
        cache_path=cache,
        layouts=False,
        clock=_Clock(seconds, list(seconds)),
    )
    clock = _Clock(seconds, list(seconds))
    other = choose_precision(
        _net(),
        (3, 32, 32),
        batch_size=2,
        training=True,
        cache_path=cache,
        layouts=False,
        clock=clock,
    )
    inference = choose_precision(
        _net(),
        SHAPE,
        batch_size=2,
        training=False,
        cache_path=cache,
        layouts=False,
        clock=clock,
    )
    assert len({first.key, other.key, inference.key}) == 3
    assert (other.source, inference.source) == ("measured", "measured")
    assert len(json.loads(cache.read_text())) == 3


def test_the_layout_stage_can_drop_channels_last(tmp_path: Path) -> None:
    seconds = {
        "float32/channels_last": 1.0,
        "bfloat16/channels_last": 2.0,
        "float32/contiguous": 0.5,
    }
    order = ["float32/channels_last", "bfloat16/channels_last"]
    stage1 = _Clock(seconds, order)
    stage2 = _Clock(seconds, ["float32/channels_last", "float32/contiguous"])
    clocks = iter([stage1] * (2 * 2 * 2) + [stage2] * (2 * 2 * 2))
    choice = choose_precision(
        _net(),
        SHAPE,
        batch_size=2,
        training=True,
        cache_path=tmp_path / "p.json",
        clock=lambda: next(clocks)(),
    )
    assert (choice.precision, choice.channels_last) == ("float32", False)
    assert choice.seconds["float32/contiguous"] == 0.5


def test_the_probe_leaves_model_and_random_state_alone(tmp_path: Path) -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    choose_precision(net, SHAPE, batch_size=4, training=True, cache_path=tmp_path / "p.json")
    assert torch.equal(torch.rand(3), expected)
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(type(m) in (nn.Conv2d, nn.BatchNorm2d, nn.ReLU) for m in net)
    first = net[0]
    assert isinstance(first, nn.Conv2d)
    assert first.weight.is_contiguous(), "the memory format is the caller's to set"


def test_forced_precision_skips_the_timing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKFIND_PRECISION", "float32")
    clock = _Clock({}, [])
    choice = choose_precision(
        _net(), SHAPE, batch_size=2, training=True, cache_path=tmp_path / "p.json", clock=clock
    )
    assert (choice.precision, choice.source, clock.calls) == ("float32", "forced", 0)
    assert not (tmp_path / "p.json").exists()


def test_settle_times_only_settings_that_await_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MASKFIND_PRECISION_CACHE", str(tmp_path / "p.json"))
    exact = select_device("cpu", mixed_precision=False)
    assert settle(exact, _net(), SHAPE, batch_size=2, training=True) is exact
    pending = Placement(
        torch.device("cpu"), torch.bfloat16, False, True, False, needs_measurement=True
    )
    settled = settle(pending, _net(), SHAPE, batch_size=2, training=True)
    assert not settled.needs_measurement
    described = settled.describe()
    assert described["precision_source"] == "measured"
    assert described["precision"] in ("float32", "bfloat16")
    step = {
        k.removeprefix("precision_step_s."): float(v)
        for k, v in described.items()
        if k.startswith("precision_step_s.")
    }
    # first float32 against bfloat16 (channels_last), then the faster with and without it
    first = min(["float32/channels_last", "bfloat16/channels_last"], key=step.__getitem__)
    precision = first.split("/")[0]
    assert described["precision"] == precision
    layouts = {True: f"{precision}/channels_last.again", False: f"{precision}/contiguous"}
    assert settled.channels_last == (step[layouts[True]] <= step[layouts[False]])
    assert (
        settle(pending, _net(), SHAPE, batch_size=2, training=True).describe()["precision_source"]
        == "cached"
    )


_EMULATION_CHECK = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import torch
    from torch import nn
    from maskfind_pipeline.ml.device import cpu_has_native_bf16, select_device
    from maskfind_pipeline.ml.precision import settle, time_candidates

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 1, 1),
    )
    shape = (3, 48, 48)
    claimed = cpu_has_native_bf16()
    settings = select_device("cpu")
    settled = settle(settings, net, shape, batch_size=2, training=True,
                     cache_path=Path(sys.argv[1]))
    # An independent, longer timing of the same two precisions.
    check = time_candidates(
        net, shape, 2, True, ("float32", True), ("bfloat16", True), rounds=5,
        clock=time.process_time,
    )
    print(json.dumps({
        "claimed": claimed,
        "chosen": settled.describe()["precision"],
        "float32": check["float32/channels_last"],
        "bfloat16": check["bfloat16/channels_last"],
    }))
    """
)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


@pytest.mark.skipif("avx512f" not in _cpu_flags(), reason="needs an AVX-512 CPU")
@pytest.mark.parametrize(
    "isa", ["AVX512_CORE", pytest.param(None, marks=pytest.mark.slow)], ids=["emulated", "native"]
)
def test_a_cpu_that_emulates_bf16_trains_in_float32(tmp_path: Path, isa: str | None) -> None:
    """`ONEDNN_MAX_CPU_ISA=AVX512_CORE` hides AVX512-BF16 and AMX from oneDNN, which then
    emulates bfloat16 while torch still reports it supported: what a CPU with AVX-512 but
    without native bfloat16 does. The precision chosen must be the faster one measured."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASKFIND_PRECISION",)}
    env |= {"OMP_NUM_THREADS": "2", "PYTHONPATH": str(Path(__file__).parents[3])}
    if isa is not None:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    else:
        env.pop("ONEDNN_MAX_CPU_ISA", None)
    done = subprocess.run(
        [sys.executable, "-c", _EMULATION_CHECK, str(tmp_path / "p.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["claimed"]:
        pytest.skip("oneDNN reports no bfloat16 here: float32 without timing")
    ratio = result["bfloat16"] / result["float32"]
    if 2 / 3 < ratio < 3 / 2:
        pytest.skip(f"bf16/float32 step time {ratio:.2f}: too close to call on this machine")
    faster = "float32" if ratio > 1 else "bfloat16"
    assert result["chosen"] == faster, result
