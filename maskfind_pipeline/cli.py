"""`maskfind`: generate synthetic data, run the demo, serve the UI, run benchmarks."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from maskfind_pipeline.locations import Locations
from maskfind_pipeline.registry.credentials import redact

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
    locations = Locations.from_env()
    store = open_store(uri or locations.data_uri, endpoint_url=locations.s3_endpoint_url)
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
@click.option("--count", default=None, type=int, help="Labeled samples per known image type.")
@click.option("--size", default=None, type=int, help="Image and model input size.")
@click.option(
    "--fresh",
    is_flag=True,
    help="Delete MASKFIND_HOME first (the story starts from an empty factory).",
)
@click.option(
    "--labeling",
    type=click.Choice(["files", "label-studio"]),
    default="files",
    show_default=True,
    help="How the people's corrections come back: files under failures/, or annotations in "
    "Label Studio (LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY, else the embedded server).",
)
def demo(count: int | None, size: int | None, fresh: bool, labeling: str) -> None:
    """The trust loop in two nights and two production days (see `maskfind_pipeline.demo`).

    Night 1 trains without image type X; production day 1 brings X, the reviewer and the
    novelty alarm flag it and the queue lists it; the demo relabels only the queued images;
    night 2 learns them and the gate decides; production day 2 shows what changed.
    """
    import dagster as dg

    from maskfind_pipeline.demo import DemoOptions, run_story
    from maskfind_pipeline.storage import open_store

    locations = Locations.from_env()
    if fresh and locations.home.exists():
        shutil.rmtree(locations.home)
    locations = _prepare_home()
    data = open_store(locations.data_uri)
    if any(True for _ in data.list("")):
        raise click.UsageError(
            f"{locations.home} already holds data; the demo starts from an empty factory: "
            "pass --fresh to delete it, or set MASKFIND_HOME to a new folder"
        )
    overrides = {k: v for k, v in {"count": count, "size": size}.items() if v is not None}
    with _labeling_tool(labeling, locations) as client:
        story = run_story(
            DemoOptions.model_validate({**overrides, "labeling": labeling}),
            data_store=data,
            work_store=open_store(locations.work_uri),
            instance=dg.DagsterInstance.get(),
            run_job=_run_job,
            echo=click.echo,
            label_studio=client,
        )
    click.echo(f"Inspect it: make ui  (DAGSTER_HOME={locations.dagster_home})")
    sys.exit(0 if story.ok else 1)


@contextmanager
def _labeling_tool(labeling: str, locations: Locations) -> Iterator[Any]:
    """None for file drops; a Label Studio client for "label-studio": the configured server,
    else the embedded one, started for the demo under MASKFIND_HOME/label-studio."""
    if labeling != "label-studio":
        yield None
        return
    from maskfind_pipeline.labeling.label_studio import LabelStudio
    from maskfind_pipeline.labeling.server import LabelStudioUnavailable, label_studio

    url, key = os.environ.get("LABEL_STUDIO_URL"), os.environ.get("LABEL_STUDIO_API_KEY")
    if url and key:
        yield LabelStudio(url, key)
        return
    try:
        with label_studio(
            locations.home / "label-studio", files_root=Path(locations.data_uri).parent
        ) as server:
            click.echo(
                f"Label Studio: {server.url} (embedded, started in "
                f"{server.seconds_to_start:.0f} s; `make ui` serves it again)"
            )
            yield LabelStudio(server.url, server.credentials.api_key)
    except LabelStudioUnavailable as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--port", default=3000, show_default=True, help="Dagster UI port.")
@click.option("--mlflow-port", default=5000, show_default=True, help="MLflow UI port.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The open-source webserver has no authentication: keep it on loopback.",
)
def ui(port: int, mlflow_port: int, host: str) -> None:
    """Serve the Dagster UI (`dg dev`: webserver + daemon) and, beside it, the MLflow UI of
    the embedded tracking store; Ctrl-C (or SIGTERM) stops both, and it exits after them."""
    locations = _prepare_home()
    # Started with SIGINT ignored (`nohup ... &`, a background shell, some service managers), we
    # would hand that on: an ignored signal stays ignored across exec, and dg dev stops only on
    # SIGINT. A handler is not inherited, so the children start with the default.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    dagster_cmd, mlflow_cmd = ui_commands(locations, host=host, port=port, mlflow_port=mlflow_port)
    # MLflow's job runners (huey consumers) serve GenAI jobs the pipeline never submits.
    mlflow_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow_ui = (
        subprocess.Popen(mlflow_cmd, cwd=PROJECT_ROOT, env=mlflow_env) if mlflow_cmd else None
    )
    mlflow_url = (
        f"http://{host}:{mlflow_port}"
        if mlflow_cmd
        else redact(locations.mlflow_tracking_uri or "?")
    )
    click.echo(
        f"Dagster UI: http://{host}:{port}    MLflow UI: {mlflow_url}    (Ctrl-C stops both)"
    )
    venv = {**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parent.parent)}
    dagster = subprocess.Popen(dagster_cmd, cwd=PROJECT_ROOT, env=venv)
    children = [c for c in (dagster, mlflow_ui) if c is not None]
    trees: dict[int, set[int]] = {c.pid: set() for c in children}

    def look() -> None:  # what each has started so far (orphans leave the tree when it ends)
        trees.update({c.pid: trees[c.pid] | _descendants(c.pid) for c in children})

    def stop(signum: int, _frame: object) -> None:  # SIGTERM: what Ctrl-C does, then wait
        look()
        _signal(dagster, signal.SIGINT)  # dg dev stops its webserver and daemon on it
        if mlflow_ui is not None:
            _signal(mlflow_ui, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    code = None
    while code is None:
        try:
            code = dagster.wait(timeout=5)
        except subprocess.TimeoutExpired:
            look()
        except KeyboardInterrupt:  # Ctrl-C reached the whole group: wait for dg dev
            continue
    if mlflow_ui is not None:
        _signal(mlflow_ui, signal.SIGTERM)
    for child in children:
        _reap(child, trees[child.pid] | _descendants(child.pid))
    sys.exit(0 if code in (0, -signal.SIGINT, 128 + signal.SIGINT) else code)


def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
    if process.poll() is None:
        process.send_signal(signum)


def _reap(process: subprocess.Popen[bytes], tree: set[int], timeout_s: float = 30) -> None:
    """Wait for `process`, then for what it started (`tree`): SIGTERM, then SIGKILL, to any
    still running `timeout_s` later (e.g. a code server its parent left behind)."""
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait()
    for signum in (signal.SIGTERM, signal.SIGKILL):
        left = [pid for pid in tree if _alive(pid)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [pid for pid in left if _alive(pid)]


def _descendants(pid: int) -> set[int]:
    """The processes below `pid` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            children.setdefault(int(stat.rpartition(")")[2].split()[1]), []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def ui_commands(
    locations: Locations, *, host: str, port: int, mlflow_port: int
) -> tuple[list[str], list[str] | None]:
    """`dg dev` for this project (its `[tool.dg]` in pyproject.toml: the same code location,
    webserver and daemon as `dagster dev -w workspace.yaml`, in this environment), and
    `mlflow ui` for the embedded SQLite tracking store (None when MLFLOW_TRACKING_URI names a
    server: it has its own UI), both bound to `host`."""
    bin_dir = Path(sys.executable).parent
    dagster = [str(bin_dir / "dg"), "dev", "--use-active-venv", "--target-path", str(PROJECT_ROOT)]
    dagster += ["-h", host, "-p", str(port)]
    if locations.mlflow_tracking_uri:
        return dagster, None
    mlflow = [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", locations.tracking_uri]
    mlflow += ["--host", host, "--port", str(mlflow_port)]
    return dagster, mlflow


@main.group()
def review() -> None:
    """The people's half of the loop: labeling-tool exports in, Label Studio beside the UI."""


@review.command("import")
@click.argument("path", type=click.Path(exists=True))
@click.option("--annotator", default=None, help="Who labeled it (CVAT's files do not say).")
def review_import(path: str, annotator: str | None) -> None:
    """Write the corrected masks of an export as failure samples: a CVAT "COCO 1.0" or
    "Segmentation mask 1.1" export (zip or folder) of a review queue, or Label Studio's JSON
    export. A broken or partial export is refused whole; nothing is imported twice."""
    import uuid

    from maskfind_pipeline.flows.labeling import import_export
    from maskfind_pipeline.labeling.exports import ExportError
    from maskfind_pipeline.storage import open_store

    locations = Locations.from_env()
    stores = {"endpoint_url": locations.s3_endpoint_url}
    try:
        tool, report = import_export(
            path,
            data_store=open_store(locations.data_uri, **stores),
            work_store=open_store(locations.work_uri, **stores),
            run_id=f"import-{uuid.uuid4().hex[:8]}",
            annotator=annotator,
        )
    except ExportError as exc:
        raise click.ClickException(f"refused, nothing imported: {exc}") from exc
    counts = ", ".join(f"{status} {n}" for status, n in report.counts().items()) or "nothing new"
    click.echo(f"{tool} export {path}: {counts}; {report.already_recorded} already recorded")
    for row in report.rows:
        if row["status"] not in ("imported", "revised"):
            click.echo(f"  {row['image_id']}: {row['status']} ({row['reason']})")
    click.echo(f"{len(report.written)} failure samples written; the next nightly run ingests them")


@review.command("label-studio")
@click.option("--port", default=8080, show_default=True, help="Label Studio's port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Keep it on loopback.")
def review_label_studio(port: int, host: str) -> None:
    """Run the embedded Label Studio (from `make label-studio`'s environment) with its data
    under MASKFIND_HOME/label-studio, serving images of the local data store (from the folder
    above it); Ctrl-C stops it."""
    import signal

    from maskfind_pipeline.labeling.server import LabelStudioUnavailable, label_studio

    locations = Locations.from_env()
    data_dir = locations.home / "label-studio"
    local = "://" not in locations.data_uri
    files = Path(locations.data_uri).resolve().parent if local else locations.home
    files.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        with label_studio(data_dir, files_root=files, port=port, host=host) as server:
            click.echo(
                f"Label Studio: {server.url}    (user {server.credentials.email}, password and "
                f"API token in {data_dir / 'maskfind-credentials.json'})"
            )
            server.process.wait()
    except LabelStudioUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        pass


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


@main.group()
def weights() -> None:
    """Pretrained encoder weights (training itself never downloads any)."""


@weights.command("fetch")
@click.argument("encoder", required=False)
@click.option(
    "--weights",
    "weights_name",
    default="imagenet",
    show_default=True,
    help="Pretrained weights name (ModelSpec.encoder_weights).",
)
@click.option(
    "--sha256",
    "checksums",
    multiple=True,
    metavar="FILE=HEX",
    help="Expected SHA-256 of a file that has no pinned checksum yet (repeatable).",
)
def weights_fetch(encoder: str | None, weights_name: str, checksums: tuple[str, ...]) -> None:
    """Download ENCODER's pretrained weights, verified before they enter the cache training reads
    (default ENCODER: the production default, resnet34).

    resnet34: torchvision's file into the torch.hub cache (TORCH_HOME), checked by torch.hub
    against the SHA-256 prefix in its name. Others: the Hugging Face files into HF_HUB_CACHE
    (HF_ENDPOINT selects a mirror), checked against pinned SHA-256 checksums; files with none are
    refused. Run it on a machine with internet, then copy the cache to machines without one."""
    from maskfind_pipeline.ml.weights import fetch as fetch

    name = encoder or fetch.DEFAULT_ENCODER
    try:
        files = fetch.fetch_weights(name, weights=weights_name, checksums=checksums)
    except (fetch.WeightsFetchError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    for file in files:
        how = "downloaded" if file.downloaded else "already cached"
        click.echo(f"{file.label}: sha256 {file.sha256} OK, {how}")
        click.echo(f"  {file.path}")


@contextmanager
def _progress_bar(total: int, desc: str) -> Iterator[Callable[[int], None]]:
    with tqdm(total=total, desc=desc, unit="img") as bar:

        def tick(_: int) -> None:
            bar.update(1)

        yield tick


def _prepare_home() -> Locations:
    """Create MASKFIND_HOME and a DAGSTER_HOME inside it holding the project's dagster.yaml."""
    locations = Locations.from_env()
    locations.dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", locations.dagster_home / "dagster.yaml")
    os.environ["MASKFIND_HOME"] = str(locations.home)
    os.environ.setdefault("DAGSTER_HOME", str(locations.dagster_home))
    return locations


def _run_job(
    name: str, run_config: dict[str, Any] | None = None, *, partition_key: str | None = None
):
    import dagster as dg

    from maskfind_pipeline.definitions import defs

    job = defs().resolve_job_def(name)
    return job.execute_in_process(
        run_config=run_config,
        instance=dg.DagsterInstance.get(),
        partition_key=partition_key,
        raise_on_error=False,
    )
