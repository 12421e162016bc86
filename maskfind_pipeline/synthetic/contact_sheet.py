"""Rendered samples of the generator in a contact sheet (`data.contact_sheet`), masks outlined."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from maskfind_pipeline.data.contact_sheet import contact_sheet
from maskfind_pipeline.synthetic.render import render_sample
from maskfind_pipeline.synthetic.types import ImageType
from maskfind_pipeline.synthetic.writer import sample_rng


def render_contact_sheet(
    types: Sequence[ImageType], *, per_type: int = 2, seed: int = 0, size: int = 256
) -> Image.Image:
    """Render `per_type` samples of each type (the same ones `generate` writes) into a sheet."""
    samples = []
    for image_type in types:
        for index in range(per_type):
            sample = render_sample(image_type, sample_rng(seed, image_type, index), size)
            samples.append((image_type.name, sample.image, sample.mask))
    return contact_sheet(samples, columns=per_type * max(1, 4 // per_type))
