"""`generalization_study`: train on the first k image types, test on seen and unseen types.

One op plans the trainings, one mapped op per training runs them (in parallel on the
multi-process executor as far as pool `training` allows), one op assembles the table and the
plot and records them as a materialization of asset `generalization_study`.
"""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from maskfind_pipeline.defs.config import core_of, run_config_for
from maskfind_pipeline.defs.metadata_images import png_metadata
from maskfind_pipeline.defs.ownership import OWNERS, asset_code_version
from maskfind_pipeline.defs.resources import CacheResource, ObjectStoreResource
from maskfind_pipeline.evaluation.generalization import Row, StepOutcome
from maskfind_pipeline.flows.generalization import StudyOptions, StudyTask

ASSET = "generalization_study"

_COLUMNS = {
    "step": ("string", "k=1..k=K: trained on the first k image types; all: on every type"),
    "n_types_seen": ("int", "image types in training"),
    "added_type": ("string", "the image type this step adds to the previous one"),
    "seen_miou": ("float", "test mIoU on the types trained on (mean over types)"),
    "unseen_miou": ("float", "test mIoU on the other types (mean over types)"),
    "n_test_seen": ("int", "test images of seen types"),
    "n_test_unseen": ("int", "test images of unseen types"),
    "epochs": ("int", "epochs run"),
    "stop_reason": ("string", "completed, early_stopping or time_budget"),
    "train_minutes": ("float", "wall-clock minutes of the training epochs"),
}

generalization_study_asset = dg.AssetSpec(
    ASSET,
    group_name="studies",
    owners=OWNERS,
    code_version=asset_code_version(1),
    deps=["dataset_version"],
    kinds={"pytorch"},
    description="Test mIoU on seen and unseen image types of models trained on the first k "
    "image types of a dataset version, and of one trained on all: a table and a plot. "
    "Materialized by job generalization_study.",
)


class StudyConfig(run_config_for(StudyOptions)):
    """The study's dataset version, image type order, K, images per type and training budget
    (`flows.generalization.StudyOptions`)."""


@dg.op(out=dg.DynamicOut(StudyTask))
def study_plan(
    context: dg.OpExecutionContext, config: StudyConfig, work_store: ObjectStoreResource
) -> Iterator[dg.DynamicOutput[StudyTask]]:
    """One training per k = 1..K and one on all image types of the dataset version."""
    from maskfind_pipeline.data.version_store import VersionStore
    from maskfind_pipeline.flows.generalization import plan_study

    tasks = plan_study(core_of(config, StudyOptions), VersionStore(work_store.open()))
    first = tasks[0]
    context.log.info(f"dataset version {first.dataset_version}, image types: {first.order}")
    for task in tasks:
        yield dg.DynamicOutput(task, mapping_key=task.step.key)


@dg.op(pool="training")
def study_training(
    context: dg.OpExecutionContext,
    task: StudyTask,
    data_store: ObjectStoreResource,
    work_store: ObjectStoreResource,
    cache: CacheResource,
) -> StepOutcome:
    """Train on the step's seen image types; test on every type's test split."""
    from maskfind_pipeline.data.version_store import VersionStore
    from maskfind_pipeline.flows.generalization import run_study_step

    def on_epoch(report) -> None:
        context.log.info(
            f"{task.step.label} epoch {report.epoch}/{report.epochs}: loss "
            f"{report.train_loss:.4f}, val mIoU {report.val_miou:.4f} "
            f"({report.images_per_second:.0f} img/s)"
        )

    return run_study_step(
        task,
        versions=VersionStore(work_store.open()),
        data_store=data_store.open(),
        cache=cache.open(),
        decoded_root=Path(cache.root) / "decoded",
        on_epoch=on_epoch,
    )


@dg.op(out=dg.Out(list, description="The table's rows."))
def study_report(
    context: dg.OpExecutionContext, outcomes: list[StepOutcome], cache: CacheResource
) -> list[Row]:
    """The table and plot of every training, recorded on asset `generalization_study` and
    saved under `<home>/plots/generalization.png`."""
    from maskfind_pipeline.evaluation.generalization import generalization_png, study_table

    rows = study_table(outcomes)
    save_to = Path(cache.root).parent / "plots" / "generalization.png"
    everything = next(o.step for o in outcomes if o.step.is_all)
    context.log_event(
        dg.AssetMaterialization(
            ASSET,
            metadata={
                "dataset_version": outcomes[0].dataset_version,
                "image_types": dg.MetadataValue.json(list(everything.seen)),
                "study": _table(rows),
                **png_metadata(generalization_png(rows), title="generalization", save_to=save_to),
            },
        )
    )
    return rows


@dg.job(
    description="Train on the first k image types (k = 1..K) and on all of them; test mIoU on "
    "seen and unseen types as a table and a plot (asset generalization_study).",
    tags={"maskfind/kind": "study"},
)
def generalization_study() -> None:
    tasks = study_plan()
    study_report(tasks.map(study_training).collect())


def _table(rows: list[Row]) -> dg.TableMetadataValue:
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name, kind, about) for name, (kind, about) in _COLUMNS.items()]
    )
    records = [dg.TableRecord({n: row[n] for n in _COLUMNS}) for row in rows]
    return dg.MetadataValue.table(records=records, schema=schema)
