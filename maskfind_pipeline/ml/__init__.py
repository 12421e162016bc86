"""Model factory, training, metrics, threshold tuning and inference (torch lives in submodules)."""
