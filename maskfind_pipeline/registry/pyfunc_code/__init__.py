"""Code files MLflow logs as `python_model` ("models from code"); each calls `set_model` once.

They are executed by MLflow from their path when a version is logged, loaded or served; import
`registry.pyfunc_models` for the classes instead of importing these.
"""
