"""Partitions shared across stages: dataset versions, model versions, their matrix, and
production days."""

import dagster as dg

DATASET_VERSIONS = dg.DynamicPartitionsDefinition(name="dataset_versions")
MODEL_VERSIONS = dg.DynamicPartitionsDefinition(name="model_versions")
# One cell of the backward-compatibility matrix per (model version, dataset version).
COMPAT_CELLS = dg.MultiPartitionsDefinition({"model": MODEL_VERSIONS, "dataset": DATASET_VERSIONS})
# One partition per production day (`production/<YYYY-MM-DD>/`), added by the production sensor
# when the day's folder appears: dynamic rather than daily time partitions, so the UI lists only
# days that have images and a backfill can address any of them, however old.
PRODUCTION_DAYS = dg.DynamicPartitionsDefinition(name="production_days")
