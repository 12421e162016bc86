"""Performance history: champion terms and mIoU, daily production rates, both checks, plots."""

from __future__ import annotations

import datetime as dt

import pytest

from maskfind_pipeline.evaluation.history import (
    GRADE3_CHECK,
    MIOU_CHECK,
    ChampionTerm,
    HistoryPolicy,
    alert_message,
    champion_miou,
    champion_terms,
    daily_production,
    history_alerts,
    history_checks,
)
from maskfind_pipeline.evaluation.history_plots import (
    champion_miou_png,
    grade3_rate_png,
    novelty_rate_png,
)

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def _cell(model: str, dataset: str, image_type: str, miou: float, hours: int = 0) -> dict:
    return {
        "model_version": model,
        "dataset_version": dataset,
        "group_kind": "image_type",
        "group": image_type,
        "miou": miou,
        "n_images": 10,
        "evaluated_at": T0 + dt.timedelta(hours=hours),
    }


def _log(day: str, image_type: str, grade: int | None, novel: bool | None = False, status="ok"):
    return {"day": day, "image_type": image_type, "status": status, "grade": grade, "novel": novel}


def _term(version: str, days: int, how: str = "promoted") -> ChampionTerm:
    return ChampionTerm(T0 + dt.timedelta(days=days), version, how)


def test_champion_terms_come_from_promotion_and_restore_tags_in_time_order() -> None:
    tags = {
        "1": {"promoted_at": "2026-03-01T00:00:00+00:00", "restored_at": "2026-03-05T00:00:00"},
        "2": {"promoted_at": "2026-03-03T00:00:00+00:00"},
        "3": {"dataset_version": "ds-a"},
        "4": {"promoted_at": "not a time"},
    }
    assert champion_terms(tags) == [_term("1", 0), _term("2", 2), _term("1", 4, "restored")]


def test_each_champion_is_measured_on_its_newest_dataset_version_per_image_type() -> None:
    cells = [
        _cell("1", "ds-b", "wafer", 0.91, hours=1),  # evaluated after ds-a, but ds-b is newer
        _cell("1", "ds-a", "wafer", 0.99, hours=2),
        _cell("1", "ds-a", "board", 0.70, hours=2),
        _cell("2", "ds-b", "wafer", 0.93, hours=3),
        _cell("3", "ds-b", "wafer", 0.50, hours=3),  # never champion
        {**_cell("2", "ds-b", "overall", 0.90), "group_kind": "overall"},
    ]
    rows = champion_miou(cells, [_term("1", 0), _term("2", 1)], dataset_order=["ds-a", "ds-b"])
    assert [(r["champion"], r["image_type"], r["miou"], r["dataset_version"]) for r in rows] == [
        ("1", "board", 0.7, "ds-a"),
        ("1", "wafer", 0.91, "ds-b"),
        ("2", "wafer", 0.93, "ds-b"),
    ]
    assert rows[-1]["since"] == T0 + dt.timedelta(days=1)


def test_dataset_versions_missing_from_the_order_are_ranked_by_first_evaluation() -> None:
    cells = [_cell("1", "ds-late", "wafer", 0.8, hours=5), _cell("1", "ds-early", "wafer", 0.6)]
    (row,) = champion_miou(cells, [_term("1", 0)])
    assert row["dataset_version"] == "ds-late"


def test_daily_production_counts_grades_and_rates_per_day_and_type() -> None:
    rows = [
        _log("2026-03-02", "wafer", 3, novel=True),
        _log("2026-03-02", "wafer", 1, novel=None),
        _log("2026-03-02", "wafer", None, novel=None, status="failed"),
        _log("2026-03-02", "wafer", 2, novel=False),
        _log("2026-03-01", "board", None, novel=None),
        {**_log("2026-03-01", "x", 1), "image_type": None},
    ]
    daily = daily_production(rows)
    assert [(r["day"], r["image_type"]) for r in daily] == [
        ("2026-03-01", "(unknown)"),
        ("2026-03-01", "board"),
        ("2026-03-02", "wafer"),
    ]
    wafer = daily[-1]
    assert (wafer["images"], wafer["failed"], wafer["graded"]) == (4, 1, 3)
    assert (wafer["grade_1"], wafer["grade_2"], wafer["grade_3"]) == (1, 1, 1)
    assert wafer["grade_3_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert (wafer["scored"], wafer["novel"], wafer["novel_rate"]) == (2, 1, 0.5)
    assert daily[1]["grade_3_rate"] is None and daily[1]["novel_rate"] is None


def _miou_history() -> list[dict]:
    cells = [
        _cell("1", "ds-a", "wafer", 0.90),
        _cell("1", "ds-a", "board", 0.80),
        _cell("1", "ds-a", "retired", 0.95),
        _cell("2", "ds-a", "wafer", 0.84),  # 0.06 below the best
        _cell("2", "ds-a", "board", 0.77),  # 0.03 below the best
    ]
    return champion_miou(cells, [_term("1", 0), _term("2", 1)])


def test_the_miou_check_fails_only_types_far_below_their_best() -> None:
    checks = history_checks(_miou_history(), [], _term("2", 1), HistoryPolicy())
    miou = next(c for c in checks if c.name == MIOU_CHECK)
    assert not miou.passed
    assert list(miou.failing) == ["wafer"]  # board within 0.05; retired not in the champion
    assert miou.checked == 2
    assert "wafer 0.840 (v2) vs best 0.900 (v1)" in miou.description
    loose = history_checks(_miou_history(), [], _term("2", 1), HistoryPolicy(max_miou_drop=0.07))
    assert loose[0].passed


def test_the_miou_check_looks_at_the_current_champion_only() -> None:
    restored = _term("1", 2, "restored")
    history = [*_miou_history(), *champion_miou([_cell("1", "ds-a", "wafer", 0.90)], [restored])]
    assert history_checks(history, [], restored, HistoryPolicy())[0].passed
    assert history_checks([], [], None, HistoryPolicy())[0].checked == 0


def _day(day: str, image_type: str, graded: int, grade3: int) -> list[dict]:
    return [_log(day, image_type, 3 if i < grade3 else 1) for i in range(graded)]


def test_the_grade3_check_judges_the_newest_day_with_enough_graded_images() -> None:
    rows = [
        *_day("2026-03-01", "wafer", 40, 30),  # an old bad day: ignored
        *_day("2026-03-02", "wafer", 40, 4),  # 10 %: fine
        *_day("2026-03-02", "board", 25, 6),  # 24 % of 25: fails
        *_day("2026-03-02", "tiny", 10, 9),  # 90 % but only 10 graded: not judged
    ]
    daily = daily_production(rows)
    grade3 = history_checks([], daily, None, HistoryPolicy())[1]
    assert grade3.name == GRADE3_CHECK
    assert list(grade3.failing) == ["board"] and grade3.checked == 2
    assert "on 2026-03-02" in grade3.description and "board 24% of 25" in grade3.description
    fewer = history_checks([], daily, None, HistoryPolicy(min_images=10))[1]
    assert sorted(fewer.failing) == ["board", "tiny"]
    assert history_checks([], daily, None, HistoryPolicy(max_grade3_rate=0.3))[1].passed


def test_alerts_are_the_failing_checks_and_their_message_names_them() -> None:
    daily = daily_production(_day("2026-03-02", "board", 25, 6))
    policy = HistoryPolicy()
    alerts = history_alerts(_miou_history(), daily, _term("2", 1), policy)
    assert [a.name for a in alerts] == [MIOU_CHECK, GRADE3_CHECK]
    assert history_alerts([], [], None, policy) == []
    text = alert_message([a.to_json() for a in alerts], run="0123456789abcdef")
    assert (
        text.splitlines()[0] == ":warning: performance_history (run 01234567): 2 failing check(s)"
    )
    assert "• miou_not_below_best: " in text and "wafer" in text and "board 24%" in text
    assert alerts[0].to_json()["image_types"] == ["wafer"]


def test_history_plots_are_pngs_with_and_without_data() -> None:
    daily = daily_production(
        [*_day("2026-03-01", "board", 5, 1), *_day("2026-03-02", "board", 5, 2)]
    )
    for png in (
        champion_miou_png(_miou_history()),
        grade3_rate_png(daily),
        novelty_rate_png(daily),
        champion_miou_png([]),
    ):
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
