"""Run as a subprocess: predict a production day with the tiny model, optionally SIGKILLed.

    python -m tests.support.production_worker ROOT DAY [--die-at-part K]

ROOT holds the `data` and `work` stores. With `--die-at-part K` the process kills itself with
SIGKILL when it is about to commit log part K: the masks of that part's images are written,
their rows are not. Prints the number of rows this run committed.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from maskfind_pipeline.data.production import PredictionLog
from maskfind_pipeline.flows.options import ProductionOptions
from maskfind_pipeline.ml.backends.runtimes import TorchBackend
from maskfind_pipeline.ml.segmentation.predict import Predictor
from maskfind_pipeline.serving.day import ProductionModels, predict_day
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import TINY, tiny_weights

OPTIONS = ProductionOptions(batch_size=4, io_workers=3, commit_every=4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("day")
    parser.add_argument("--die-at-part", type=int, default=None)
    args = parser.parse_args()
    if args.die_at_part is not None:
        _die_at(args.die_at_part)
    predictor = Predictor.from_weights(TINY, tiny_weights(seed=3), version="7")
    models = ProductionModels(
        predictor.version,
        predictor.config,
        TorchBackend("torch_fp32", predictor).predict,
        "torch_fp32",
    )
    outcome = predict_day(
        args.day,
        models,
        data_store=LocalObjectStore(args.root / "data"),
        work_store=LocalObjectStore(args.root / "work"),
        options=OPTIONS,
        run_id=f"worker-{os.getpid()}",
    )
    print(len(outcome.rows))


def _die_at(dying: int) -> None:
    original = PredictionLog.append

    def append(self, rows, *, run_id, part):  # type: ignore[no-untyped-def]
        if part == dying:
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, rows, run_id=run_id, part=part)

    PredictionLog.append = append  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
