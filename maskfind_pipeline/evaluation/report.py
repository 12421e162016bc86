"""The matrix as a heatmap (PNG) and a markdown table, and challenger-vs-champion deltas."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa


def overall_matrix(cells: pa.Table) -> tuple[list[str], list[str], np.ndarray]:
    """Models (rows, by version number), dataset versions (columns, in order) and overall mIoU."""
    rows = [r for r in cells.to_pylist() if r["group_kind"] == "overall"]
    models = sorted({r["model_version"] for r in rows}, key=_version_key)
    datasets = list(
        dict.fromkeys(r["dataset_version"] for r in sorted(rows, key=lambda r: r["evaluated_at"]))
    )
    values = np.full((len(models), len(datasets)), np.nan)
    for r in rows:
        values[models.index(r["model_version"]), datasets.index(r["dataset_version"])] = r["miou"]
    return models, datasets, values


def heatmap_png(cells: pa.Table, *, dataset_order: list[str] | None = None) -> bytes:
    """Overall mIoU of every evaluated (model version, dataset version) cell."""
    models, datasets, values = overall_matrix(cells)
    if dataset_order:
        order = [datasets.index(d) for d in dataset_order if d in datasets]
        datasets, values = [datasets[i] for i in order], values[:, order]
    return _heatmap(
        values,
        columns=datasets,
        rows=[f"v{m}" for m in models],
        xlabel="dataset version (test split)",
        ylabel="model version",
        title="Backward compatibility: overall mIoU",
    )


def type_matrix(cells: pa.Table, dataset_version: str) -> tuple[list[str], list[str], np.ndarray]:
    """Image types (rows), models (columns, by version) and their mIoU on one dataset version."""
    rows = [
        r
        for r in cells.to_pylist()
        if r["group_kind"] == "image_type" and r["dataset_version"] == dataset_version
    ]
    types = sorted({r["group"] for r in rows})
    models = sorted({r["model_version"] for r in rows}, key=_version_key)
    values = np.full((len(types), len(models)), np.nan)
    for r in rows:
        values[types.index(r["group"]), models.index(r["model_version"])] = r["miou"]
    return types, models, values


def type_heatmap_png(cells: pa.Table, dataset_version: str) -> bytes:
    """mIoU per image type (rows) of every model evaluated on `dataset_version` (columns): where
    a new model got better or worse, type by type."""
    types, models, values = type_matrix(cells, dataset_version)
    return _heatmap(
        values,
        columns=[f"v{m}" for m in models],
        rows=types,
        xlabel="model version",
        ylabel="image type",
        title=f"mIoU per image type on {dataset_version}",
    )


def _heatmap(
    values: np.ndarray, *, columns: list[str], rows: list[str], xlabel: str, ylabel: str, title: str
) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.6 + 1.3 * len(columns), 1.2 + 0.5 * len(rows)))
    image = ax.imshow(
        np.ma.masked_invalid(values),
        cmap="viridis",
        vmin=np.nanmin(values) - 0.01 if np.isfinite(values).any() else 0,
        vmax=1.0,
        aspect="auto",
    )
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white")
    fig.colorbar(image, ax=ax, label="mean IoU")
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def matrix_rows(cells: pa.Table) -> list[dict[str, object]]:
    """The overall matrix as rows: `model` (v<version>), then one column per dataset version
    (in evaluation order) holding its overall test mIoU, None where the cell is missing."""
    models, datasets, values = overall_matrix(cells)
    return [
        {
            "model": f"v{model}",
            **{
                dataset: round(float(v), 4) if np.isfinite(v) else None
                for dataset, v in zip(datasets, values[i], strict=True)
            },
        }
        for i, model in enumerate(models)
    ]


def type_deltas(cells: pa.Table, candidate: str, champion: str) -> list[dict[str, object]]:
    """Per dataset version and image type: candidate mIoU minus champion mIoU."""
    rows = [r for r in cells.to_pylist() if r["group_kind"] in ("overall", "image_type")]
    champ = {
        (r["dataset_version"], r["group"]): r["miou"]
        for r in rows
        if r["model_version"] == champion
    }
    out = []
    for r in rows:
        key = (r["dataset_version"], r["group"])
        if r["model_version"] == candidate and key in champ:
            out.append(
                {
                    "dataset_version": key[0],
                    "group": key[1],
                    "champion": champ[key],
                    "candidate": r["miou"],
                    "delta": round(r["miou"] - champ[key], 4),
                }
            )
    return sorted(out, key=lambda d: (str(d["dataset_version"]), str(d["group"])))


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (1 << 30, version)
