"""Soak: the nightly job ten times in a row on growing data, then a production day of 2,000
images, all in one process; nothing may grow without bound (open files, threads, temporary
directories, memory). Behind `slow` (about 10 minutes on 2 cores)."""

from __future__ import annotations

import datetime as dt
import gc
import os
import tempfile
import threading
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.partitions import PRODUCTION_DAYS
from maskfind_pipeline.defs.resources import build_resources
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.ml.segmentation.config import ModelSpec
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import tiny_training

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

NIGHTS = 10
TYPES = synthetic.DEFAULT_TYPES[:3]
MODEL = ModelSpec(
    encoder_name="resnet18", encoder_weights=None, input_size=32, decoder_channels=(16, 8, 8, 8, 8)
)
DAY = dt.date(2026, 12, 1)


@dataclass(frozen=True)
class Usage:
    """What this process holds: open file descriptors, threads, temporary entries, RSS."""

    files: int
    threads: int
    temporaries: int
    mapped_files: int
    """Files mapped into memory (decoded caches are memory-mapped): a mapping outlives its fd."""
    anon_mb: float
    rss_mb: float

    @classmethod
    def now(cls) -> Usage:
        status = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        maps = Path("/proc/self/maps").read_text().splitlines()
        return cls(
            files=len(os.listdir("/proc/self/fd")),
            threads=threading.active_count(),
            temporaries=len(os.listdir(tempfile.gettempdir())),
            mapped_files=len({line.split()[-1] for line in maps if "/decoded/" in line}),
            anon_mb=int(status["RssAnon"].split()[0]) / 1024,
            rss_mb=int(status["VmRSS"].split()[0]) / 1024,
        )


@dataclass(frozen=True)
class Soak:
    usage: list[Usage]
    """After each of the ten nights, then after the production day."""
    python_heap_growth_mb: float
    """What Python allocated and still holds, from after night 2 to the end (tracemalloc)."""

    def report(self) -> str:
        lines = [f"{i + 1:>2}: {u}" for i, u in enumerate(self.usage)]
        return "\n".join([*lines, f"Python heap growth: {self.python_heap_growth_mb:.1f} MB"])


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Soak:
    locations = Locations.from_env({"MASKFIND_HOME": str(tmp_path_factory.mktemp("soak"))})
    data = LocalObjectStore(locations.data_uri)
    instance = dg.DagsterInstance.ephemeral()
    nightly = defs().resolve_job_def("nightly")
    config = {
        "ops": {
            "mask_model": {"config": tiny_training(MODEL, epochs=1)},
            "promotion": {"config": {"floor": 0.0, "tolerance": 1.0, "overall_tolerance": 1.0}},
        }
    }
    usage: list[Usage] = []
    for night in range(NIGHTS):
        if night == 2:  # imports and caches have warmed up
            gc.collect()
            tracemalloc.start()
        synthetic.generate(data, TYPES, 8 * (night + 1), size=32)  # growing: 8 more per type
        result = nightly.execute_in_process(
            run_config=config, instance=instance, resources=build_resources(locations)
        )
        assert result.success, f"night {night + 1} failed"
        gc.collect()
        usage.append(Usage.now())

    synthetic.generate_production(data, TYPES, 667, day=DAY, size=32)  # 2,001 images
    instance.add_dynamic_partitions(str(PRODUCTION_DAYS.name), [DAY.isoformat()])
    day = (
        defs()
        .resolve_implicit_global_asset_job_def()
        .get_subset(asset_selection={dg.AssetKey("production_predictions")})
        .execute_in_process(
            run_config={
                "ops": {
                    "production_predictions": {
                        "config": {"backend": {"backend": "torch_fp32"}, "batch_size": 64}
                    }
                }
            },
            instance=instance,
            resources=build_resources(locations),
            partition_key=DAY.isoformat(),
        )
    )
    assert day.success
    predicted = next(
        e.materialization.metadata["predicted_now"].value
        for e in day.get_asset_materialization_events()
    )
    assert predicted == 3 * 667
    gc.collect()
    usage.append(Usage.now())
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return Soak(usage, held / 2**20)


def test_ten_nights_and_a_big_production_day_leave_nothing_growing(soak: Soak) -> None:
    settled, last = soak.usage[2], soak.usage[-1]
    assert last.files <= settled.files + 8, soak.report()
    assert last.threads <= settled.threads + 4, soak.report()
    assert last.temporaries <= settled.temporaries + 2, soak.report()
    assert last.mapped_files <= settled.mapped_files + 1, soak.report()
    assert soak.python_heap_growth_mb < 32, soak.report()


@pytest.mark.xfail(
    strict=False,  # on some machines and runs it holds: 2026-12-07 (Intel Xeon, AMX) once each
    reason="measured 2026-12-05: anonymous memory 1.0 -> 2.5 GB over ten tiny nights in one "
    "process, in steps, while Python's own heap stays flat (tracemalloc): native allocations "
    "(torch / oneDNN / glibc arenas) not yet explained; run workers are one process per run "
    "in production, so this does not accumulate there. Not every run grows: on 2026-12-07 one "
    "run stayed under the limit and the next grew",
)
def test_resident_memory_stops_growing_after_the_first_nights(soak: Soak) -> None:
    nightly_rss = [u.rss_mb for u in soak.usage[2:NIGHTS]]
    growth_per_night = (nightly_rss[-1] - nightly_rss[0]) / (len(nightly_rss) - 1)
    assert growth_per_night < 25, soak.report()  # MB a night
