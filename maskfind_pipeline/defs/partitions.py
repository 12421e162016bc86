"""Partitions shared across stages: dataset versions, model versions and their matrix."""

import dagster as dg

DATASET_VERSIONS = dg.DynamicPartitionsDefinition(name="dataset_versions")
MODEL_VERSIONS = dg.DynamicPartitionsDefinition(name="model_versions")
# One cell of the backward-compatibility matrix per (model version, dataset version).
COMPAT_CELLS = dg.MultiPartitionsDefinition({"model": MODEL_VERSIONS, "dataset": DATASET_VERSIONS})
