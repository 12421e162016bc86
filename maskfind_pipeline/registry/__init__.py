"""The MLflow model registry: logging, registering, aliases, and loading without unpickling."""
