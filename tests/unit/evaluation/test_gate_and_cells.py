"""The promotion gate's rules and the incremental cell store."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from maskfind_pipeline.evaluation.cells import CELL_SCHEMA, Cell, CellStore
from maskfind_pipeline.evaluation.gate import GatePolicy, decide
from maskfind_pipeline.evaluation.planning import plan_cells
from maskfind_pipeline.storage import ObjectStore

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def _rows(model: str, dataset: str, overall: float, per_type: dict[str, tuple[float, int]]):
    rows = [
        dict(
            model_version=model,
            dataset_version=dataset,
            group_kind="overall",
            group="overall",
            miou=overall,
            precision=0.9,
            recall=0.9,
            n_images=sum(n for _, n in per_type.values()),
            threshold=0.5,
            mlflow_run_id=None,
            evaluated_at=NOW,
        )
    ]
    rows += [
        dict(
            model_version=model,
            dataset_version=dataset,
            group_kind="image_type",
            group=t,
            miou=m,
            precision=0.9,
            recall=0.9,
            n_images=n,
            threshold=0.5,
            mlflow_run_id=None,
            evaluated_at=NOW,
        )
        for t, (m, n) in per_type.items()
    ]
    return rows


def _table(*groups: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([r for g in groups for r in g], schema=CELL_SCHEMA)


def test_better_everywhere_passes() -> None:
    cells = _table(
        _rows("1", "ds-a", 0.90, {"x": (0.90, 10), "y": (0.90, 10)}),
        _rows("2", "ds-a", 0.93, {"x": (0.92, 10), "y": (0.94, 10)}),
    )
    decision = decide(cells, "2", "1", GatePolicy())
    assert decision.passed and len(decision.evidence) == 3


def test_a_type_regressing_on_an_old_dataset_version_blocks_and_is_named() -> None:
    cells = _table(
        _rows("1", "ds-a", 0.90, {"x": (0.90, 10), "y": (0.90, 10)}),
        _rows("1", "ds-b", 0.90, {"x": (0.90, 10), "y": (0.90, 10)}),
        _rows("2", "ds-a", 0.91, {"x": (0.97, 10), "y": (0.85, 10)}),
        _rows("2", "ds-b", 0.95, {"x": (0.95, 10), "y": (0.95, 10)}),
    )
    decision = decide(cells, "2", "1", GatePolicy(tolerance=0.01))
    assert not decision.passed
    assert [(r["group"], r["dataset_version"]) for r in decision.regressions] == [("y", "ds-a")]
    assert "y on ds-a" in decision.reasons[0]


def test_within_tolerance_and_too_few_samples_do_not_block() -> None:
    cells = _table(
        _rows("1", "ds-a", 0.90, {"x": (0.90, 10), "rare": (0.90, 2)}),
        _rows("2", "ds-a", 0.90, {"x": (0.895, 10), "rare": (0.10, 2)}),
    )
    assert decide(cells, "2", "1", GatePolicy(tolerance=0.01, min_samples=5)).passed


def test_overall_must_be_at_least_as_good() -> None:
    cells = _table(
        _rows("1", "ds-a", 0.90, {"x": (0.90, 10)}), _rows("2", "ds-a", 0.899, {"x": (0.90, 10)})
    )
    decision = decide(cells, "2", "1", GatePolicy())
    assert not decision.passed and decision.regressions[0]["group"] == "overall"


def test_without_a_champion_the_floor_applies() -> None:
    good = _table(_rows("1", "ds-a", 0.85, {"x": (0.85, 10)}))
    bad = _table(_rows("1", "ds-a", 0.50, {"x": (0.50, 10)}))
    assert decide(good, "1", None, GatePolicy(floor=0.8)).passed
    decision = decide(bad, "1", None, GatePolicy(floor=0.8))
    assert not decision.passed and "below the floor" in decision.reasons[0]


def test_a_candidate_without_cells_never_passes() -> None:
    assert not decide(_table(_rows("1", "ds-a", 0.9, {})), "2", "1", GatePolicy()).passed


def test_a_dataset_version_the_candidate_was_never_evaluated_on_blocks() -> None:
    cells = _table(
        _rows("1", "ds-a", 0.90, {"x": (0.90, 10)}),
        _rows("1", "ds-b", 0.80, {"x": (0.80, 10)}),
        _rows("2", "ds-a", 0.95, {"x": (0.95, 10)}),
    )
    decision = decide(cells, "2", "1", GatePolicy())
    assert not decision.passed
    assert any("no evaluation on ds-b" in r for r in decision.reasons), decision.reasons
    with_b = pa.concat_tables([cells, _table(_rows("2", "ds-b", 0.85, {"x": (0.85, 10)}))])
    assert decide(with_b, "2", "1", GatePolicy()).passed


def test_the_champion_and_challenger_are_planned_on_every_dataset_version() -> None:
    cards = [{"id": d, "counts": {"x": {"test": {"labeled": 3}}}} for d in ("d1", "d2", "d3")]
    cards.append({"id": "d4", "counts": {"x": {"train": {"labeled": 3}}}})  # nothing to test
    plan = plan_cells(["1", "2", "3", "4"], cards, [Cell("4", "d3")], pinned=["1"], last_n=2)
    assert plan.models == ["1", "3", "4"]
    assert plan.datasets == ["d1", "d2", "d3"]
    assert {c.dataset_version for c in plan.wanted if c.model_version == "1"} == {"d1", "d2", "d3"}
    assert {c.dataset_version for c in plan.wanted if c.model_version == "3"} == {"d2", "d3"}
    assert Cell("4", "d3") in plan.wanted and Cell("4", "d3") not in plan.missing
    assert len(plan.missing) == len(plan.wanted) - 1
    everything = plan_cells(["1", "2"], cards, [], pinned=[], last_n=None)
    assert len(everything.wanted) == 2 * 3


def test_cell_store_is_incremental_and_create_once(store: ObjectStore) -> None:
    cells = CellStore(store)
    wanted = {Cell("1", "ds-a"), Cell("1", "ds-b")}
    assert cells.missing(wanted) == sorted(wanted)
    assert cells.write(Cell("1", "ds-a"), _rows("1", "ds-a", 0.9, {"x": (0.9, 3)}))
    assert not cells.write(Cell("1", "ds-a"), _rows("1", "ds-a", 0.1, {"x": (0.1, 3)}))
    assert cells.missing(wanted) == [Cell("1", "ds-b")]
    assert cells.read().column("miou").to_pylist() == [0.9, 0.9]
