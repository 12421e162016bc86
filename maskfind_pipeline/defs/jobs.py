"""Every job of the code location, in one place.

Asset jobs are here; the three op jobs live beside their ops (`promotion/jobs.py`:
`promote_model`, `rollback_model`; `study/assets.py`: `generalization_study`). The schedules and
sensors that start each job sit with the stage they serve (`schedules.py`, `*/sensors.py`,
`review_queue/labeling.py`) and import it from here.
"""

import dagster as dg

nightly_job = dg.define_asset_job(
    "nightly",
    selection=dg.AssetSelection.assets(
        "image_catalog",
        "dataset_version",
        "mask_model",
        "label_audit",
        "test_scores",
        "compat_evaluation",
        "promotion",
    ),
    description="Ingest, version the dataset, train, audit the labels, evaluate both "
    "directions, gate, promote.",
    tags={"maskfind/kind": "nightly"},
)

evaluation_job = dg.define_asset_job(
    "evaluation",
    selection=dg.AssetSelection.assets("test_scores", "compat_evaluation"),
    description="Fill the missing cells of the model x dataset-version matrix.",
    tags={"maskfind/kind": "evaluation"},
)

reviewer_job = dg.define_asset_job(
    "reviewer",
    selection=dg.AssetSelection.assets("reviewer_model"),
    description="Train, judge and register the reviewer against the current mask models.",
    tags={"maskfind/kind": "reviewer"},
)

production_job = dg.define_asset_job(
    "production",
    selection=dg.AssetSelection.assets("production_predictions", "review_queue"),
    description="Predict and grade one production day, and queue what people should relabel. "
    "One run per day at a time: the instance's run queue limits tag `dagster/partition` to one "
    "run per value (dagster.yaml).",
    tags={"maskfind/kind": "production"},
)

history_job = dg.define_asset_job(
    "history",
    selection=dg.AssetSelection.assets("performance_history"),
    description="Tabulate and plot performance over time; warn about regressions.",
    tags={"maskfind/kind": "history"},
)

labeling_out_job = dg.define_asset_job(
    "label_studio_out",
    selection=dg.AssetSelection.assets("label_studio_tasks"),
    description="Send a production day's review queue to Label Studio.",
)

labeling_back_job = dg.define_asset_job(
    "label_studio_back",
    selection=dg.AssetSelection.assets("returned_labels"),
    description="Read finished Label Studio annotations back as failure samples.",
)
