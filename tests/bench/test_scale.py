"""bench/scale.py at a tiny scale: the simulation's structure and the last_n policy's growth."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scale import Config, Result, champion_before, report, simulate

CONFIG = Config(
    months=2,
    images_per_month=900,
    measure_months=(1, 2),
    last_n=3,
    promote_every=4,
    production_per_day=30,
    decode_per_type=1,
    cell_samples=3,
    isolate=False,
)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> Result:
    return simulate(CONFIG, Path(tmp_path_factory.mktemp("scale")))


def test_the_catalog_holds_every_accepted_pair_in_ingest_sized_parts(result: Result) -> None:
    nights = result.nights
    assert len(nights) == 31 + 28  # January and February 2027
    assert sum(n.pairs for n in nights) == CONFIG.months * CONFIG.images_per_month
    end = result.months[-1]
    assert end.catalog_rows + end.quarantine_rows == sum(n.pairs for n in nights)
    assert end.catalog_rows == result.rows_by_night[-1]
    # ~30 pairs a night, one part a night, compacted every night into a few size-tiered files.
    assert 1 <= end.files_read <= 2 * 24
    assert end.files_read < len(nights)


def test_measured_nights_ran_the_real_steps(result: Result) -> None:
    assert sorted(result.measured) == [31, 59]
    for index, m in result.measured.items():
        night = result.nights[index - 1]
        ingest, version = m["ingest"], m["version"]
        assert ingest["new_samples"] + ingest["quarantined"] == night.pairs
        assert ingest["skipped_already_seen"] == sum(n.pairs for n in result.nights[: index - 1])
        assert ingest["catalog_rows_after"] == result.rows_by_night[index - 1]
        assert version["created"] and version["checks_passed"]
        assert version["manifest_rows"] == result.rows_by_night[index - 1]
        assert version["parent"] is not None  # last night's version, diffed against
        assert version["test_rows"] == result.test_by_night[index - 1]
        assert m["production"]["rows"] == CONFIG.production_per_day
        assert m["production"]["parts"] == 1 and m["production"]["bytes"] > 0
    assert result.notes == []


def test_evaluation_cells_grow_as_the_last_n_policy_says(result: Result) -> None:
    """Night n adds: the challenger on every version (n), the other newest models on the new
    version (min(n, L) - 1), and the champion on it when it is older than the newest L."""
    cumulative = 0
    for e in result.evaluation:
        n, last_n = e.index, CONFIG.last_n
        champion = champion_before(n, CONFIG.promote_every)
        expected = n + min(n, last_n) - 1 + (1 if champion and champion <= n - last_n else 0)
        cumulative += expected
        assert (e.cells, e.cumulative) == (expected, cumulative)
        assert (e.all_cells, e.all_cumulative) == (2 * n - 1, n * n)
        assert e.images <= e.all_images
        assert e.scored <= e.images and e.models <= e.cells
    assert result.evaluation[-1].all_cumulative > result.evaluation[-1].cumulative


def test_the_report_names_measured_and_extrapolated_quantities(result: Result) -> None:
    text = report(result)
    for heading in ("Measured nights: ingest", "dataset_version", "Storage", "Thresholds"):
        assert heading in text
    assert "First bottleneck" in text or "No threshold" in text
    assert "Consistency checks passed" in text
    assert "| month |" in report(result, markdown=True)
