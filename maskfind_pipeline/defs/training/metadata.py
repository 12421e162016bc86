"""What a `mask_model` materialization shows, built in the asset or in a torchrun process."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from maskfind_pipeline.defs.metadata import markdown_table, table
from maskfind_pipeline.defs.metadata_images import png_metadata

if TYPE_CHECKING:
    from maskfind_pipeline.flows.training import TrainingOutcome
    from maskfind_pipeline.registry.records import RegisteredModel


def training_metadata(outcome: TrainingOutcome, plots_root: Path) -> dict[str, Any]:
    """Scalars, validation table, history and plots (inline, and saved under `plots_root`)."""
    result, version = outcome.result, outcome.registered.version
    plots_dir = plots_root / f"model-v{version}"
    return {
        **outcome.summary(),
        "val_metrics": table(result.val_metrics.rows(), limit=100),
        "history": markdown_table(result.history, limit=200),
        **{
            k: v
            for name, png in result.plots.items()
            for k, v in png_metadata(png, title=name, save_to=plots_dir / f"{name}.png").items()
        },
    }


def resumed_metadata(model: RegisteredModel) -> dict[str, Any]:
    """What a retry shows when it kept the version a killed attempt registered."""
    return {
        "model_version": model.version,
        "mlflow_run_id": model.run_id,
        "dataset_version": model.tags.get("dataset_version", ""),
        "resumed": True,
    }


def to_pipes(metadata: dict[str, Any]) -> dict[str, Any]:
    """The same metadata in Dagster Pipes' wire form (`{"type": ..., "raw_value": ...}` where a
    plain value would not say its type)."""
    return {name: _pipes_value(value) for name, value in metadata.items()}


def _pipes_value(value: Any) -> Any:
    if isinstance(value, dg.MarkdownMetadataValue):
        return {"type": "md", "raw_value": value.value}
    if isinstance(value, dg.PathMetadataValue):
        return {"type": "path", "raw_value": value.value}
    if isinstance(value, dg.TableMetadataValue):
        schema = value.schema.columns if value.schema else []
        return {
            "type": "table",
            "raw_value": {
                "records": [record.data for record in value.records],
                "schema": [{"name": c.name, "type": c.type} for c in schema],
            },
        }
    if isinstance(value, dg.MetadataValue):
        raise TypeError(f"no Pipes form for {type(value).__name__}")
    return value
