"""`maskfind`: generate synthetic data, run the demo, serve the UI, run benchmarks."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from maskfind_pipeline.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@click.group()
def main() -> None:
    """Universal mask finding: one U-Net for every camera and station."""


@main.command()
@click.option(
    "--to", "uri", help="Store URI (directory or s3://bucket/prefix); default: data store."
)
@click.option(
    "--types",
    default="all",
    show_default=True,
    help="'all', 'unseen', a count, or comma-separated type names.",
)
@click.option("--count", default=16, show_default=True, help="Samples per image type.")
@click.option("--seed", default=0, show_default=True)
@click.option("--size", default=256, show_default=True, help="Image side in pixels.")
@click.option(
    "--start-index", default=0, show_default=True, help="Extend a set without changing it."
)
@click.option(
    "--failures",
    "failed_model",
    default=None,
    metavar="MODEL_VERSION",
    help="Write relabeled production failures of this model version instead.",
)
@click.option(
    "--production",
    "day",
    default=None,
    metavar="YYYY-MM-DD",
    help="Write that day's unlabeled production stream instead.",
)
@click.option(
    "--contact-sheet",
    "sheet",
    type=click.Path(dir_okay=False),
    default=None,
    help="Only render a PNG grid of images with mask overlays to this path.",
)
def generate(
    uri: str | None,
    types: str,
    count: int,
    seed: int,
    size: int,
    start_index: int,
    failed_model: str | None,
    day: str | None,
    sheet: str | None,
) -> None:
    """Write synthetic factory images (and masks, tags) in the store layout of DESIGN.md."""
    from maskfind_pipeline import synthetic
    from maskfind_pipeline.storage import open_store

    image_types = synthetic.resolve_types(types)
    if sheet:
        synthetic.render_contact_sheet(image_types, per_type=2, seed=seed, size=size).save(sheet)
        click.echo(f"contact sheet of {len(image_types)} image types -> {sheet}")
        return
    settings = Settings.from_env()
    store = open_store(uri or settings.data_uri, endpoint_url=settings.s3_endpoint_url)
    start = time.perf_counter()
    with _progress_bar(len(image_types) * count, "generate") as tick:
        if failed_model:
            keys = synthetic.generate_failures(
                store,
                image_types,
                count,
                failed_model_version=failed_model,
                seed=seed,
                size=size,
                start_index=start_index,
                progress=tick,
            )
        elif day:
            keys = synthetic.generate_production(
                store,
                image_types,
                count,
                day=dt.date.fromisoformat(day),
                seed=seed,
                size=size,
                start_index=start_index,
                progress=tick,
            )
        else:
            keys = synthetic.generate(
                store,
                image_types,
                count,
                seed=seed,
                size=size,
                start_index=start_index,
                progress=tick,
            )
    rate = len(keys) / (time.perf_counter() - start)
    click.echo(f"wrote {len(keys)} images to {store.uri} ({rate:.0f} images/s)")


@main.command()
@click.option("--count", default=150, show_default=True, help="Labeled samples per image type.")
@click.option("--failures", default=3, show_default=True, help="Failures per type on night 2.")
@click.option("--size", default=128, show_default=True, help="Image and model input size.")
@click.option("--epochs", default=30, show_default=True)
@click.option("--max-minutes", default=2.5, show_default=True, help="Training budget per night.")
def demo(count: int, failures: int, size: int, epochs: int, max_minutes: float) -> None:
    """Two nights on the embedded defaults: labeled data, then relabeled production failures.

    Each night ingests, versions the dataset, trains the demo's offline-pretrained
    EfficientNet-Lite0 U-Net, evaluates the matrix in both directions and promotes only if the
    gate passes.
    """
    from maskfind_pipeline import synthetic
    from maskfind_pipeline.storage import open_store

    settings = _prepare_home()
    store = open_store(settings.data_uri)
    types = synthetic.DEFAULT_TYPES
    if not any(True for _ in store.list("labeled/")):
        with _progress_bar(len(types) * count, "generate labeled") as tick:
            synthetic.generate(store, types, count, size=size, progress=tick)
    run_config = _demo_run_config(size=size, epochs=epochs, max_minutes=max_minutes)
    ok = _night(1, run_config)
    if ok and failures and not any(True for _ in store.list("failures/")):
        with _progress_bar(len(types) * failures, "generate failures") as tick:
            synthetic.generate_failures(
                store, types, failures, failed_model_version="1", size=size, progress=tick
            )
        ok = _night(2, run_config)
    click.echo(f"Inspect it: make ui  (DAGSTER_HOME={settings.dagster_home})")
    sys.exit(0 if ok else 1)


_SUMMARY_KEYS = (
    *("new_samples", "skipped_already_seen", "quarantined", "catalog_samples"),
    *("dataset_version", "created", "parent", "samples"),
    *("model_version", "val_miou", "threshold", "pretrained", "stop_reason"),
    *("cells_computed", "candidate", "champion_before", "champion_after", "promoted"),
    *("miou", "n_images"),
)
_PRINTED_TABLES = ("diff_vs_parent", "matrix", "reasons")


def _demo_run_config(*, size: int, epochs: int, max_minutes: float) -> dict[str, Any]:
    """The nightly job's run config for the demo, built from the core settings."""
    from maskfind_pipeline.evaluation.gate import GatePolicy
    from maskfind_pipeline.flows.settings import TrainingSettings
    from maskfind_pipeline.ml.config import TrainConfig, demo_model_spec

    training = TrainingSettings(
        model=demo_model_spec(size),
        train=TrainConfig(
            epochs=epochs,
            batch_size=32,
            learning_rate=3e-3,
            early_stopping_patience=10,
            max_minutes=max_minutes,
        ),
    )
    gate = GatePolicy(floor=0.5, min_samples=3)
    return {
        "ops": {
            "mask_model": {"config": training.model_dump(mode="json")},
            "promotion": {"config": gate.model_dump(mode="json")},
        }
    }


def _night(number: int, run_config: dict[str, Any]) -> bool:
    result = _run_job("nightly", run_config)
    click.echo(f"night {number}: run {result.run_id} {'succeeded' if result.success else 'FAILED'}")
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        summary = ", ".join(f"{k}={meta[k].value}" for k in _SUMMARY_KEYS if k in meta)
        name = event.asset_key.to_user_string() if event.asset_key else "?"
        partition = f"[{event.partition}]" if event.partition else ""
        click.echo(f"  {name}{partition}: {summary}")
        for table in _PRINTED_TABLES:
            if table in meta:
                click.echo(textwrap.indent(str(meta[table].value), "    "))
    return result.success


@main.command()
@click.option("--port", default=3000, show_default=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The open-source webserver has no authentication: keep it on loopback.",
)
def ui(port: int, host: str) -> None:
    """Serve the Dagster UI for this project (dagster dev)."""
    _prepare_home()
    dagster = Path(sys.executable).with_name("dagster")
    cmd = [
        str(dagster),
        "dev",
        "-w",
        str(PROJECT_ROOT / "workspace.yaml"),
        "-h",
        host,
        "-p",
        str(port),
    ]
    sys.exit(subprocess.call(cmd, cwd=PROJECT_ROOT))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("name", default="ingest")
@click.pass_context
def bench(ctx: click.Context, name: str) -> None:
    """Run bench/<NAME>.py as `python -m bench.NAME` (extra arguments are passed on).

    Benchmarks live in the source checkout, beside the test helpers they share."""
    script = PROJECT_ROOT / "bench" / f"{name}.py"
    if not script.exists():
        raise click.UsageError(f"no benchmark {script} (benchmarks need a source checkout)")
    command = [sys.executable, "-m", f"bench.{name}", *ctx.args]
    sys.exit(subprocess.call(command, cwd=PROJECT_ROOT))


@contextmanager
def _progress_bar(total: int, desc: str) -> Iterator[Callable[[int], None]]:
    with tqdm(total=total, desc=desc, unit="img") as bar:

        def tick(_: int) -> None:
            bar.update(1)

        yield tick


def _prepare_home() -> Settings:
    """Create MASKFIND_HOME and a DAGSTER_HOME inside it holding the project's dagster.yaml."""
    settings = Settings.from_env()
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", settings.dagster_home / "dagster.yaml")
    os.environ["MASKFIND_HOME"] = str(settings.home)
    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home))
    return settings


def _run_job(name: str, run_config: dict[str, Any] | None = None):
    import dagster as dg

    from maskfind_pipeline.definitions import defs

    job = defs().resolve_job_def(name)
    return job.execute_in_process(
        run_config=run_config, instance=dg.DagsterInstance.get(), raise_on_error=False
    )
