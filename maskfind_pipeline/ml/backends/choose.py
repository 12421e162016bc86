"""Choose the backend by measurement: the fastest candidate on this machine, for this model.

`configured_backend` with `auto` measures once per machine, model version and library versions:
the choice is kept in `<cache_dir>/backends/choice-<key>.json` (the key: the CPU model and flags,
threads, `ONEDNN_MAX_CPU_ISA`, the version's weights and config, the candidates, the batch size
and the versions of torch, onnx, onnxscript, onnxruntime and openvino), so a production day
after the first opens the chosen backend alone instead of exporting and timing every candidate.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch

from maskfind_pipeline.ml.backends.base import InferenceBackend
from maskfind_pipeline.ml.backends.cache import (
    cache_key,
    library_version,
    read_choice,
    write_choice,
)
from maskfind_pipeline.ml.backends.config import DEFAULT_CANDIDATES, BackendConfig, BackendName
from maskfind_pipeline.ml.backends.exports import ModelExports
from maskfind_pipeline.ml.backends.runtimes import open_backend
from maskfind_pipeline.ml.segmentation.predict import Predictor

_log = logging.getLogger(__name__)

Clock = Callable[[], float]
T = TypeVar("T")
N = TypeVar("N", bound=str)
Opener = Callable[[BackendName, ModelExports], InferenceBackend]


class NoBackendAvailable(RuntimeError):
    """Every candidate failed to load or run."""


class BackendChoice(NamedTuple):
    """The chosen backend, the images/s measured for each candidate (empty where a backend was
    named, not measured), why each skipped candidate was skipped, and whether the measurement
    is an earlier run's (`configured_backend`'s cache)."""

    backend: InferenceBackend
    rates: dict[str, float]
    skipped: dict[str, str]
    cached: bool = False


def measure_rates(
    backends: Mapping[str, InferenceBackend],
    images: torch.Tensor,
    batches: int,
    clock: Clock = time.perf_counter,
) -> dict[str, float]:
    """Images per second of each (warmed-up) backend's `predict` (probabilities and features,
    what production runs) on `images` (`rates_in_rounds`)."""
    return rates_in_rounds(backends, lambda b: b.predict(images), len(images), batches, clock)


def rates_in_rounds(
    candidates: Mapping[str, T],
    run: Callable[[T], object],
    count: int,
    batches: int,
    clock: Clock = time.perf_counter,
) -> dict[str, float]:
    """Items per second of each (warmed-up) candidate, `count` items a `run`: the median of
    `batches` timed runs, timed in rounds of one run per candidate, so that a neighbour's burst
    of load on shared cores slows every candidate alike instead of one."""
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(batches):
        for name, candidate in candidates.items():
            start = clock()
            run(candidate)
            seconds[name].append(clock() - start)
    return {name: count / max(statistics.median(s), 1e-9) for name, s in seconds.items()}


def open_candidates(
    open_one: Callable[[N], T], warm_up: Callable[[T], object], names: Sequence[N], what: str
) -> tuple[dict[str, T], dict[str, str]]:
    """Each of `names` opened and run once (a warm-up: kernels, memory plans); one that fails to
    import, export or run is skipped with its reason (logged), as an optional runtime's failure
    only removes it. Returns the opened ones in order and the skipped ones' reasons."""
    opened: dict[str, T] = {}
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(names):
        try:
            candidate = open_one(name)
            warm_up(candidate)
            opened[name] = candidate
        except Exception as exc:  # any failure of an optional runtime only removes it
            skipped[name] = f"{type(exc).__name__}: {exc}"
            _log.warning("%s %s skipped: %s", what, name, skipped[name])
    return opened, skipped


def choose_backend(
    predictor: Predictor,
    cache_dir: Path,
    *,
    candidates: Sequence[BackendName] = DEFAULT_CANDIDATES,
    batch_size: int = 32,
    batches: int = 3,
    weights: bytes | None = None,
    clock: Clock = time.perf_counter,
    opener: Opener = open_backend,
) -> BackendChoice:
    """The fastest of `candidates` on synthetic uint8 batches at the model's input size.

    Each candidate is opened (exported first if needed) and runs one warm-up batch; one that
    fails to import, export or run is skipped with its reason (logged). The others are timed
    by `measure_rates`.

    Args:
        predictor: The model version.
        cache_dir: Where the exports are cached (see `exports`).
        candidates: The backends to measure.
        batch_size: Images per batch: production's batch size.
        batches: Timed batches per candidate.
        weights: The version's safetensors bytes where the caller has them.
        clock: The timer (tests inject one).
        opener: Opens a backend by name (tests inject one).

    Raises:
        NoBackendAvailable: No candidate worked.
    """
    exports = ModelExports(predictor, cache_dir, weights)
    images = synthetic_batch(batch_size, predictor.config.input_size)
    backends, skipped = open_candidates(
        lambda name: opener(name, exports),
        lambda backend: backend.predict(images),
        candidates,
        "inference backend",
    )
    if not backends:
        raise NoBackendAvailable(f"no inference backend works: {skipped}")
    rates = measure_rates(backends, images, batches, clock)
    best = max(rates, key=rates.__getitem__)
    _log.info("inference backend %s chosen; images/s %s", best, rates)
    return BackendChoice(backends[best], rates, skipped)


def configured_backend(
    config: BackendConfig,
    predictor: Predictor,
    cache_dir: Path,
    *,
    batch_size: int = 32,
    weights: bytes | None = None,
    clock: Clock = time.perf_counter,
    opener: Opener = open_backend,
) -> BackendChoice:
    """The backend `config` names, or with `auto` the fastest of its candidates: measured once
    per machine, model version and library versions, then read from the cache (module
    docstring). A cached choice that no longer opens is measured again."""
    exports = ModelExports(predictor, cache_dir, weights)
    if config.backend != "auto":
        return BackendChoice(opener(config.backend, exports), {}, {})
    inputs = choice_inputs(exports, config.candidates, batch_size)
    path = exports.root / f"choice-{cache_key(inputs)}.json"
    cached = _read_choice(path, inputs)
    if cached is not None:
        try:
            backend = opener(cached["backend"], exports)
            return BackendChoice(backend, cached["rates"], cached["skipped"], cached=True)
        except Exception as exc:  # e.g. a runtime uninstalled since: measure again
            _log.warning("cached backend %s does not open (%s): measuring", cached["backend"], exc)
    choice = choose_backend(
        predictor,
        cache_dir,
        candidates=config.candidates,
        batch_size=batch_size,
        batches=config.measure_batches,
        weights=exports.weights,
        clock=clock,
        opener=opener,
    )
    _write_choice(path, inputs, choice)
    return choice


def choice_inputs(
    exports: ModelExports, candidates: Sequence[str], batch_size: int
) -> dict[str, str]:
    """What the `auto` choice depends on: machine, model version, candidates, batch size and
    library versions."""
    from maskfind_pipeline.ml.precision import machine_identity

    return {
        **machine_identity(),
        **exports.onnx_inputs,
        **{f"version.{p}": library_version(p) for p in ("onnxruntime", "openvino")},
        "candidates": ",".join(candidates),
        "batch_size": str(batch_size),
    }


def _read_choice(path: Path, inputs: dict[str, str]) -> dict[str, Any] | None:
    data = read_choice(path, inputs)
    try:
        return data and {
            "backend": str(data["backend"]),
            "rates": {str(k): float(v) for k, v in data["rates"].items()},
            "skipped": {str(k): str(v) for k, v in data["skipped"].items()},
        }
    except (KeyError, TypeError, AttributeError, ValueError):
        return None


def _write_choice(path: Path, inputs: dict[str, str], choice: BackendChoice) -> None:
    """Keep the choice (written atomically; a failure only logs)."""
    write_choice(
        path, inputs, backend=choice.backend.name, rates=choice.rates, skipped=choice.skipped
    )


def synthetic_batch(batch_size: int, size: int, seed: int = 0) -> torch.Tensor:
    """Uniform random uint8 images (batch_size,3,size,size): the timing does not depend on
    content."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(
        0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=generator
    )
