"""PNG plots as Dagster metadata: inline in markdown (the UI renders them) and as a file path."""

import base64
from pathlib import Path

import dagster as dg


def png_metadata(
    png: bytes, *, title: str, save_to: Path | None = None
) -> dict[str, dg.MetadataValue]:
    """`{title}`: the image inline; `{title}_path`: where it was saved, when `save_to` is given."""
    encoded = base64.b64encode(png).decode()
    out: dict[str, dg.MetadataValue] = {
        title: dg.MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")
    }
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        save_to.write_bytes(png)
        out[f"{title}_path"] = dg.MetadataValue.path(str(save_to))
    return out
