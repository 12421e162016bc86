"""Performance history as PNG bytes, one line per image type (matplotlib `Figure`, no pyplot)."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

_MAX_LEGEND = 20


def champion_miou_png(miou: Sequence[Mapping[str, object]]) -> bytes:
    """Test mIoU of the champion of each date: a step from each term to the next."""
    series = _series(miou, "since", "miou")
    return _lines_png(series, title="champion test mIoU", ylabel="mean IoU", steps=True)


def grade3_rate_png(daily: Sequence[Mapping[str, object]]) -> bytes:
    """Share of grade 3 among the graded production images of each day."""
    series = _series(daily, "day", "grade_3_rate")
    return _lines_png(series, title="production grade-3 rate", ylabel="grade 3 / graded")


def novelty_rate_png(daily: Sequence[Mapping[str, object]]) -> bytes:
    """Share of novel images (unlike the champion's training types) of each day."""
    series = _series(daily, "day", "novel_rate")
    return _lines_png(series, title="production novelty rate", ylabel="novel / scored")


def _series(
    rows: Sequence[Mapping[str, object]], x: str, y: str
) -> dict[str, list[tuple[dt.date, float]]]:
    out: dict[str, list[tuple[dt.date, float]]] = {}
    for row in rows:
        if row[y] is not None:
            out.setdefault(str(row["image_type"]), []).append((_when(row[x]), float(str(row[y]))))
    return {name: sorted(points) for name, points in sorted(out.items())}


def _lines_png(
    series: Mapping[str, list[tuple[dt.date, float]]],
    *,
    title: str,
    ylabel: str,
    steps: bool = False,
) -> bytes:
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, points in series.items():
        xs, ys = zip(*points, strict=True)
        style = "steps-post" if steps else "default"
        ax.plot(xs, ys, marker="o", markersize=3, label=name, drawstyle=style)
    if not series:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
    elif len(series) <= _MAX_LEGEND:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="image type")
    ax.set(title=title, ylabel=ylabel)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _when(value: object) -> dt.date:
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))
