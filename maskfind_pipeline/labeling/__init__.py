"""The review queue in the tools people label with: Label Studio (API and JSON export) and CVAT
(export files). Out: tasks with the model's mask as a prediction; back: corrected masks written
as `failures/` samples with a record of every answer (`labeling.returns`)."""
