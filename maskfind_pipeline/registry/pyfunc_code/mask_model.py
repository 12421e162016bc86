"""The mask model's pyfunc code file: `registry.pyfunc_models.MaskPyfunc`."""

from mlflow.models import set_model

from maskfind_pipeline.registry.pyfunc_models import MaskPyfunc

set_model(MaskPyfunc())
