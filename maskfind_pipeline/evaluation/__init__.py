"""Backward-compatibility evaluation: the model x dataset-version matrix and the promotion gate."""
