"""A deterministic generator of synthetic factory images with exact product masks."""

from maskfind_pipeline.synthetic.contact_sheet import contact_sheet, render_contact_sheet
from maskfind_pipeline.synthetic.render import Sample, render_sample
from maskfind_pipeline.synthetic.types import (
    BACKGROUNDS,
    CAMERAS,
    DEFAULT_TYPES,
    PRODUCTS,
    UNSEEN_TYPES,
    ImageType,
    resolve_types,
)
from maskfind_pipeline.synthetic.writer import (
    encode_mask,
    encode_sample,
    generate,
    generate_failures,
    generate_production,
    production_truth,
    relabel_production,
    sample_rng,
)

__all__ = [
    "BACKGROUNDS",
    "CAMERAS",
    "DEFAULT_TYPES",
    "PRODUCTS",
    "UNSEEN_TYPES",
    "ImageType",
    "Sample",
    "contact_sheet",
    "encode_mask",
    "encode_sample",
    "generate",
    "generate_failures",
    "generate_production",
    "production_truth",
    "relabel_production",
    "render_contact_sheet",
    "render_sample",
    "resolve_types",
    "sample_rng",
]
