"""Performance over time, per image type: the champion's test mIoU and production's grades.

The champion series has one point per champion term (a time a version became champion: its
`promoted_at` tag, or `restored_at` after a rollback) and image type: that champion's mIoU on
the newest dataset version it was evaluated on that has the type (the dataset version is in the
row, so a jump that comes from a new test set is visible). The production series has one row per
day and image type: grades, grade-3 rate, novelty rate. Two checks warn: an image type whose
current champion is well below the best champion it had, and one whose newest day has too many
grade 3 masks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from maskfind_pipeline.core_config import CoreConfig

MIOU_CHECK = "miou_not_below_best"
GRADE3_CHECK = "grade3_rate_below_limit"


class HistoryPolicy(CoreConfig):
    """How far an image type may fall before `performance_history` warns, and how much it reads."""

    max_miou_drop: float = Field(default=0.05, ge=0.0, le=1.0)
    """How far the current champion's test mIoU on an image type may fall below the best
    champion's before the `miou_not_below_best` check warns."""
    max_grade3_rate: float = Field(default=0.2, ge=0.0, le=1.0)
    """The share of grade 3 masks of an image type on the newest production day above which the
    `grade3_rate_below_limit` check warns."""
    min_images: int = Field(default=20, ge=1)
    """Graded images an image type needs on the newest day for its grade-3 rate to be checked."""
    production_days: int = Field(default=90, ge=1)
    """How many of the newest production days are read, tabulated and plotted."""


@dataclass(frozen=True, order=True)
class ChampionTerm:
    """A time `version` became champion (`promoted` by the gate or by hand, or `restored`)."""

    since: dt.datetime
    version: str
    how: str = "promoted"


@dataclass(frozen=True)
class HistoryCheck:
    """One warning check: the image types it looked at and those that fail, with why."""

    name: str
    checked: int
    failing: dict[str, str] = field(default_factory=dict)
    scope: str = ""

    @property
    def passed(self) -> bool:
        return not self.failing

    @property
    def description(self) -> str:
        if self.failing:
            return f"{self.scope}: " + "; ".join(f"{t} {w}" for t, w in self.failing.items())
        return f"{self.scope}: none of {self.checked} image type(s)"

    def to_json(self) -> dict[str, object]:
        return {
            "check": self.name,
            "image_types": sorted(self.failing),
            "description": self.description,
        }


def champion_terms(tags_by_version: Mapping[str, Mapping[str, str]]) -> list[ChampionTerm]:
    """Every recorded time a version became champion, oldest first (unparsable times skipped).

    A version promoted twice keeps only its latest `promoted_at`, so its first term is lost.
    """
    terms = []
    for version, tags in tags_by_version.items():
        for tag, how in (("promoted_at", "promoted"), ("restored_at", "restored")):
            since = _time(tags.get(tag, ""))
            if since is not None:
                terms.append(ChampionTerm(since, str(version), how))
    return sorted(terms)


def champion_miou(
    cells: Iterable[Mapping[str, object]],
    terms: Sequence[ChampionTerm],
    dataset_order: Sequence[str] = (),
) -> list[dict[str, object]]:
    """Per champion term and image type: the champion's mIoU on its newest dataset version.

    Dataset versions are ordered by `dataset_order` (oldest first, e.g. by creation); versions
    missing from it count as older than all of it, ordered by when they were first evaluated.
    """
    rows = [r for r in cells if r["group_kind"] == "image_type"]
    rank = _dataset_rank(rows, dataset_order)
    newest: dict[tuple[str, str], Mapping[str, object]] = {}
    for row in sorted(rows, key=lambda r: rank[str(r["dataset_version"])]):
        newest[(str(row["model_version"]), str(row["group"]))] = row
    out = []
    for term in terms:
        for (model, image_type), row in sorted(newest.items()):
            if model == term.version:
                out.append(
                    {
                        "since": term.since,
                        "champion": term.version,
                        "how": term.how,
                        "image_type": image_type,
                        "miou": round(float(str(row["miou"])), 4),
                        "dataset_version": row["dataset_version"],
                        "n_images": row["n_images"],
                    }
                )
    return out


def daily_production(rows: Iterable[Mapping[str, object]]) -> list[dict[str, object]]:
    """Per production day and image type: images, failures, grades, grade-3 and novelty rates.

    `rows` are prediction log rows (one per image: `PredictionLog.current()`); rates are over the
    graded (grade) and the scored (novel is not null) images, None when there are none.
    """
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for row in rows:
        key = (str(row["day"]), str(row.get("image_type") or "(unknown)"))
        entry = counts.setdefault(key, dict.fromkeys(_COUNTS, 0))
        entry["images"] += 1
        if row["status"] != "ok":
            entry["failed"] += 1
            continue
        if row.get("grade") in (1, 2, 3):
            entry["graded"] += 1
            entry[f"grade_{row['grade']}"] += 1
        if row.get("novel") is not None:
            entry["scored"] += 1
            entry["novel"] += bool(row["novel"])
    return [
        {
            "day": day,
            "image_type": image_type,
            **c,
            "grade_3_rate": _rate(c["grade_3"], c["graded"]),
            "novel_rate": _rate(c["novel"], c["scored"]),
        }
        for (day, image_type), c in sorted(counts.items())
    ]


def history_checks(
    miou: Sequence[Mapping[str, object]],
    daily: Sequence[Mapping[str, object]],
    current: ChampionTerm | None,
    policy: HistoryPolicy,
) -> list[HistoryCheck]:
    """Both checks: the current champion's mIoU against the best, the newest day's grade 3."""
    return [_miou_check(miou, current, policy), _grade3_check(daily, policy)]


def history_alerts(
    miou: Sequence[Mapping[str, object]],
    daily: Sequence[Mapping[str, object]],
    current: ChampionTerm | None,
    policy: HistoryPolicy,
) -> list[HistoryCheck]:
    """The checks that fail."""
    return [c for c in history_checks(miou, daily, current, policy) if not c.passed]


def alert_message(
    failing: Sequence[Mapping[str, object]], *, asset: str = "performance_history", run: str = ""
) -> str:
    """A short text (Slack mrkdwn) of failing checks, as stored by `HistoryCheck.to_json`."""
    where = f" (run {run[:8]})" if run else ""
    lines = [f":warning: {asset}{where}: {len(failing)} failing check(s)"]
    lines += [f"• {c['check']}: {c['description']}" for c in failing]
    return "\n".join(lines)


def _miou_check(
    miou: Sequence[Mapping[str, object]], current: ChampionTerm | None, policy: HistoryPolicy
) -> HistoryCheck:
    scope = f"current champion more than {policy.max_miou_drop:g} mIoU below the best"
    by_type: dict[str, list[Mapping[str, object]]] = {}
    for row in miou:
        by_type.setdefault(str(row["image_type"]), []).append(row)
    failing, checked = {}, 0
    for image_type, points in sorted(by_type.items()):
        latest = [p for p in points if current and p["since"] == current.since]
        if not latest:
            continue
        checked += 1
        best = max(points, key=lambda p: float(str(p["miou"])))
        now, top = float(str(latest[0]["miou"])), float(str(best["miou"]))
        if top - now > policy.max_miou_drop:
            failing[image_type] = (
                f"{now:.3f} (v{current and current.version}) vs best {top:.3f} "
                + (f"(v{best['champion']})")
            )
    return HistoryCheck(MIOU_CHECK, checked, failing, scope)


def _grade3_check(daily: Sequence[Mapping[str, object]], policy: HistoryPolicy) -> HistoryCheck:
    last = max((str(r["day"]) for r in daily), default="")
    scope = (
        f"grade-3 rate above {policy.max_grade3_rate:.0%} on {last or 'no day'} "
        f"(types with {policy.min_images}+ graded images)"
    )
    failing, checked = {}, 0
    for row in daily:
        graded = int(str(row["graded"]))
        if row["day"] != last or graded < policy.min_images:
            continue
        checked += 1
        rate = float(str(row["grade_3_rate"]))
        if rate > policy.max_grade3_rate:
            failing[str(row["image_type"])] = f"{rate:.0%} of {graded}"
    return HistoryCheck(GRADE3_CHECK, checked, failing, scope)


_COUNTS = ("images", "failed", "graded", "grade_1", "grade_2", "grade_3", "scored", "novel")


def _dataset_rank(
    rows: Sequence[Mapping[str, object]], order: Sequence[str]
) -> dict[str, tuple[int, Any]]:
    first: dict[str, Any] = {}
    for row in rows:
        name, when = str(row["dataset_version"]), row["evaluated_at"]
        first[name] = min(first.get(name, when), when)
    known = {name: i for i, name in enumerate(order)}
    return {name: (known.get(name, -1), when) for name, when in first.items()}


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _time(text: str) -> dt.datetime | None:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
