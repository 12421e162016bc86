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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, datasets, values = overall_matrix(cells)
    if dataset_order:
        order = [datasets.index(d) for d in dataset_order if d in datasets]
        datasets, values = [datasets[i] for i in order], values[:, order]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(datasets), 1.2 + 0.5 * len(models)))
    image = ax.imshow(
        np.ma.masked_invalid(values),
        cmap="viridis",
        vmin=np.nanmin(values) - 0.01 if np.isfinite(values).any() else 0,
        vmax=1.0,
        aspect="auto",
    )
    ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)), [f"v{m}" for m in models], fontsize=8)
    ax.set_xlabel("dataset version (test split)")
    ax.set_ylabel("model version")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white")
    fig.colorbar(image, ax=ax, label="mean IoU")
    ax.set_title("Backward compatibility: overall mIoU")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def matrix_markdown(cells: pa.Table) -> str:
    models, datasets, values = overall_matrix(cells)
    lines = [
        "| model \\ dataset | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for i, model in enumerate(models):
        cells_text = [f"{v:.4f}" if np.isfinite(v) else "" for v in values[i]]
        lines.append(f"| v{model} | " + " | ".join(cells_text) + " |")
    return "\n".join(lines)


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
