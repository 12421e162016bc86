"""The reviewer's pyfunc code file: `registry.pyfunc_models.ReviewerPyfunc`."""

from mlflow.models import set_model

from maskfind_pipeline.registry.pyfunc_models import ReviewerPyfunc

set_model(ReviewerPyfunc())
