"""Performance history: champion terms from the registry, their cells, the production logs."""

from __future__ import annotations

from dataclasses import dataclass

from maskfind_pipeline.data.parts import PartTable
from maskfind_pipeline.data.production import (
    PREDICTION_SCHEMA,
    PREDICTIONS,
    PredictionLog,
    parse_day,
)
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.evaluation.cells import CellStore
from maskfind_pipeline.evaluation.history import (
    ChampionTerm,
    HistoryCheck,
    HistoryPolicy,
    champion_miou,
    champion_terms,
    daily_production,
    history_checks,
)
from maskfind_pipeline.evaluation.history_plots import (
    champion_miou_png,
    grade3_rate_png,
    novelty_rate_png,
)
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.storage.base import ObjectStore

_LOG_COLUMNS = ["day", "image_type", "status", "grade", "novel"]


@dataclass(frozen=True)
class HistoryReport:
    """The two history tables, both checks, and the plots (name -> PNG bytes)."""

    terms: list[ChampionTerm]
    miou: list[dict[str, object]]
    daily: list[dict[str, object]]
    checks: list[HistoryCheck]
    plots: dict[str, bytes]

    @property
    def failing(self) -> list[HistoryCheck]:
        return [c for c in self.checks if not c.passed]


def build_history(
    policy: HistoryPolicy, *, registry: ModelRegistry, work_store: ObjectStore
) -> HistoryReport:
    """Read the registry's champion terms, every evaluated cell (one compacted table) and the
    newest production days' logs (`policy.production_days`), and tabulate, check and plot them.
    Each day's log but the newest's is compacted into one file first (`compact_day`)."""
    terms = champion_terms({m.version: m.tags for m in registry.versions()})
    order = [card["id"] for card in VersionStore(work_store).list()]
    champions = sorted({t.version for t in terms})
    miou = champion_miou(CellStore(work_store).read(models=champions).to_pylist(), terms, order)
    days = logged_days(work_store)[-policy.production_days :]
    for day in days[:-1]:
        compact_day(work_store, day)
    daily = [
        row
        for day in days
        for row in daily_production(
            PredictionLog(work_store, day).current().select(_LOG_COLUMNS).to_pylist()
        )
    ]
    return HistoryReport(
        terms=terms,
        miou=miou,
        daily=daily,
        checks=history_checks(miou, daily, terms[-1] if terms else None, policy),
        plots={
            "history-champion-miou": champion_miou_png(miou),
            "history-grade3-rate": grade3_rate_png(daily),
            "history-novelty-rate": novelty_rate_png(daily),
        },
    )


def compact_day(work_store: ObjectStore, day: str) -> bool:
    """Merge a day's log parts into one file (`data.parts.PartTable`); `PredictionLog` reads
    the compacted file like any part, and its latest-row-per-image view is unchanged."""
    log = PredictionLog(work_store, day)
    return PartTable(work_store, log.prefix, PREDICTION_SCHEMA).compact(min_parts=2)


def logged_days(work_store: ObjectStore) -> list[str]:
    """The days with a prediction log (`predictions/<YYYY-MM-DD>/`), oldest first."""
    days = []
    for name in work_store.folders(PREDICTIONS):
        try:
            days.append(parse_day(name).isoformat())
        except ValueError:
            continue
    return sorted(days)
