"""Float32 or bfloat16 autocast on a CPU, decided by timing the actual model on this machine.

oneDNN answers "bf16 supported" on any CPU with AVX-512, whether it computes bfloat16 natively
(AVX512-BF16, AMX) or emulates it; emulated, a U-Net trains at a third to a half of its float32
speed. So where a CPU claims bfloat16 (`ml.device.cpu_has_native_bf16`), `choose_precision` times
a few steps of the model itself (training: forward and backward; inference: forward) on a copy
of the model (its weights, buffers and the random state are left as they were): first float32
against bfloat16 autocast, both channels_last (what oneDNN's convolutions prefer), then the
faster of the two without channels_last; the fastest of the three is kept.

Steps are timed in this process's CPU time (`time.process_time`, all threads), not wall time:
on a shared machine a neighbour's load stretches wall time by whatever share of the cores it
takes, at random, while the CPU time a step needs stays put (measured here at a load average
of 11 on 2 cores: wall-clock ratios bf16/float32 of 0.91 and 1.70 for the same emulating
run, CPU-time ratios 2.36 and 2.10).

The decision is cached in a small JSON file, keyed by the machine (CPU model and flags, thread
count, torch version, `ONEDNN_MAX_CPU_ISA`) and the model's shape (its class, parameter shapes,
input shape, probe batch and whether it trains), so a run pays for the timing once per machine
and model shape. The file is `MASKFIND_PRECISION_CACHE` where set, else
`$MASKFIND_HOME/cache/precision.json` where MASKFIND_HOME is set, else
`~/.cache/maskfind/precision.json`.

`MASKFIND_PRECISION=float32` or `bfloat16` skips the timing (forced; e.g. for a quick test run);
unset or `auto`, the timing decides.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskfind_pipeline.ml.device import Placement, depthwise_in_float32

_log = logging.getLogger(__name__)

CACHE_FORMAT = "1"
PROBE_BATCH = 2
"""At most this many samples per probe step: the ratio of the two precisions, not the absolute
speed, is what the probe needs."""
PROBE_ROUNDS = 2
"""Timed steps per candidate (after one warm-up step each), in interleaved rounds."""
CACHE_NOTE = "probed on one thread, in CPU time"

Candidate = tuple[str, bool]
"""(precision, channels_last): precision is `float32` or `bfloat16`."""
PRECISIONS: tuple[Candidate, ...] = (("float32", True), ("bfloat16", True))
"""The first stage: the two precisions, channels_last."""


@dataclass(frozen=True)
class PrecisionChoice:
    """What `choose_precision` decided and why.

    Attributes:
        precision: `float32` or `bfloat16`.
        channels_last: whether model and inputs use channels_last.
        source: `measured` (timed now), `cached` (timed by an earlier run), `forced`
            (MASKFIND_PRECISION).
        seconds: seconds per probe step of each candidate timed, keyed `<precision>/<format>`.
        key: the cache key (machine and model shape).
    """

    precision: str
    channels_last: bool
    source: str
    seconds: dict[str, float]
    key: str

    @property
    def dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bfloat16" else None

    def describe(self) -> dict[str, str]:
        """Run parameters: `precision_source`, `precision_key` and one
        `precision_step_s.<candidate>` per timed candidate."""
        timed = {f"precision_step_s.{k}": f"{v:.4f}" for k, v in sorted(self.seconds.items())}
        return {"precision_source": self.source, "precision_key": self.key[:16], **timed}


def settle(
    placement: Placement,
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int,
    training: bool,
    cache_path: Path | None = None,
) -> Placement:
    """`placement` with the precision and memory format decided for `model` where they await a
    measurement (`Placement.needs_measurement`: a CPU that claims bfloat16); else
    `placement` unchanged.

    Args:
        placement: from `select_device`.
        model: the model to time (left untouched: a copy is timed).
        input_shape: one sample's shape, e.g. (3, 256, 256).
        batch_size: the run's batch size (the probe uses at most `PROBE_BATCH`).
        training: time forward and backward (training) or forward alone (inference).
        cache_path: the JSON cache (default `cache_file()`).
    """
    if not placement.needs_measurement:
        return placement
    choice = choose_precision(
        model, input_shape, batch_size=batch_size, training=training, cache_path=cache_path
    )
    return dataclasses.replace(
        placement,
        autocast_dtype=choice.dtype,
        channels_last=choice.channels_last,
        needs_measurement=False,
        precision_note=tuple(choice.describe().items()),
    )


def choose_precision(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int,
    training: bool,
    cache_path: Path | None = None,
    rounds: int = PROBE_ROUNDS,
    layouts: bool = True,
    clock: Callable[[], float] = time.process_time,
) -> PrecisionChoice:
    """The fastest precision and memory format for `model` on this CPU: forced, cached, or
    timed now and cached.

    See the module docstring. Timing runs on deep copies of `model`, under a forked random
    state, on random inputs of `min(batch_size, PROBE_BATCH)` samples of `input_shape`;
    `layouts=False` skips the second stage (channels_last stays on).
    """
    batch = max(1, min(batch_size, PROBE_BATCH))
    inputs = {
        **machine_identity(),
        **model_identity(model, input_shape, batch, training),
        "layouts": str(layouts).lower(),
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    forced = os.environ.get("MASKFIND_PRECISION", "auto").strip().lower()
    if forced in ("float32", "bfloat16"):
        return PrecisionChoice(forced, True, "forced", {}, key)
    path = cache_path or cache_file()
    cached = _read(path).get(key)
    if cached is not None:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            return PrecisionChoice(
                str(cached["precision"]),
                bool(cached["channels_last"]),
                "cached",
                {str(k): float(v) for k, v in cached["seconds"].items()},
                key,
            )
    seconds = time_candidates(
        model, input_shape, batch, training, *PRECISIONS, rounds=rounds, clock=clock
    )
    best = min(seconds, key=seconds.__getitem__)
    if layouts:  # the faster precision again, with and without channels_last, interleaved
        faster = best.split("/")[0]
        layout = time_candidates(
            model,
            input_shape,
            batch,
            training,
            (faster, True),
            (faster, False),
            rounds=rounds,
            clock=clock,
        )
        seconds |= {f"{k}.again" if k in seconds else k: v for k, v in layout.items()}
        best = min(layout, key=layout.__getitem__)
    precision, layout_name = best.split("/")
    choice = PrecisionChoice(precision, layout_name == "channels_last", "measured", seconds, key)
    _log.info("precision %s chosen by timing (seconds per step: %s)", best, seconds)
    _write(path, key, inputs, choice)
    return choice


def time_candidates(
    model: nn.Module,
    input_shape: Sequence[int],
    batch: int,
    training: bool,
    *candidates: Candidate,
    rounds: int = PROBE_ROUNDS,
    clock: Callable[[], float] = time.process_time,
) -> dict[str, float]:
    """Seconds per step of each of `candidates` (keyed `<precision>/<format>`): the best of `rounds`
    timed steps, one per candidate per round after a warm-up step each, so a neighbour's
    burst of load on shared cores slows every candidate alike."""
    with _forked_random(), _one_thread():
        probes = {
            f"{p}/{_fmt(cl)}": _Probe(model, input_shape, batch, training, p, cl)
            for p, cl in candidates
        }
        for probe in probes.values():
            probe.step()
        seconds: dict[str, float] = {name: float("inf") for name in probes}
        for _ in range(rounds):
            for name, probe in probes.items():
                start = clock()
                probe.step()
                seconds[name] = min(seconds[name], clock() - start)
    return seconds


class _Probe:
    """One candidate: a copy of the model in its precision and memory format, and a step."""

    def __init__(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        batch: int,
        training: bool,
        precision: str,
        channels_last: bool,
    ) -> None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = copy.deepcopy(model).to("cpu", memory_format=fmt)  # pyright: ignore[reportCallIssue]
        self.bf16 = precision == "bfloat16"
        if self.bf16:
            depthwise_in_float32(self.model)
        self.model.train(training)
        self.training = training
        shape = (batch, *input_shape)
        images = torch.randn(shape)
        self.inputs = images.contiguous(memory_format=fmt) if len(shape) == 4 else images

    def step(self) -> None:
        with contextlib.ExitStack() as stack:
            if not self.training:
                stack.enter_context(torch.inference_mode())
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16))
            out = self.model(self.inputs)
        if self.training:
            _total(out).backward()
            self.model.zero_grad(set_to_none=True)


def _total(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float().square().mean()
    values = out.values() if isinstance(out, dict) else out
    return sum((_total(v) for v in values if v is not None), torch.zeros(()))


@contextlib.contextmanager
def _forked_random() -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Probe on one thread: with several, a thread waiting for a descheduled sibling spins and
    counts as CPU time, which under a neighbour's load swamps the step's own (a ResNet-18 U-Net
    probe at a load average of 15 measured 3 CPU-seconds a step either way and chose wrong)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def machine_identity() -> dict[str, str]:
    """What makes this machine's timing differ from another's."""
    return {
        "format": CACHE_FORMAT,
        "probe": CACHE_NOTE,
        "cpu": _cpu_model(),
        "cpu_flags": hashlib.sha256(" ".join(sorted(_cpu_flags())).encode()).hexdigest()[:16],
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "dnnl_max_cpu_isa": os.environ.get("DNNL_MAX_CPU_ISA", ""),
    }


def model_identity(
    model: nn.Module, input_shape: Sequence[int], batch: int, training: bool
) -> dict[str, str]:
    """The model's shape: its class, its parameters' names and shapes, the input and batch."""
    shapes = ";".join(f"{n}:{tuple(p.shape)}" for n, p in model.state_dict().items())
    return {
        "architecture": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": hashlib.sha256(shapes.encode()).hexdigest()[:16],
        "input": "x".join(str(int(s)) for s in input_shape),
        "batch": str(batch),
        "mode": "train" if training else "inference",
    }


def cache_file() -> Path:
    """Where decisions are cached (module docstring)."""
    explicit = os.environ.get("MASKFIND_PRECISION_CACHE")
    if explicit:
        return Path(explicit)
    home = os.environ.get("MASKFIND_HOME")
    if home:
        return Path(home) / "cache" / "precision.json"
    return Path.home() / ".cache" / "maskfind" / "precision.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, key: str, inputs: dict[str, str], choice: PrecisionChoice) -> None:
    """Add the decision to the cache file (rewritten atomically; a failure only logs)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read(path)
        data[key] = {
            "precision": choice.precision,
            "channels_last": choice.channels_last,
            "seconds": choice.seconds,
            "inputs": inputs,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        fd, temporary = tempfile.mkstemp(prefix=".precision-", dir=path.parent)
        with os.fdopen(fd, "w") as file:
            json.dump(data, file, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except OSError as exc:
        _log.warning("could not cache the precision decision in %s: %s", path, exc)


def _fmt(channels_last: bool) -> str:
    return "channels_last" if channels_last else "contiguous"


def _cpu_model() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    for line in _cpuinfo():
        if line.startswith(("flags", "Features")):
            return line.split(":", 1)[1].split()
    return []


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
