"""A run launched from the UI, through the daemon, as a person does it: `dagster dev` (webserver
and daemon, the project's dagster.yaml and workspace.yaml) on loopback, headless Chromium clicking
"Materialize" on image_catalog's page; the run goes through the instance's QueuedRunCoordinator,
the daemon dequeues and starts it, and it succeeds. Then the promote_model launchpad offers the
fields of its config class.

Screenshots are kept in tmp_path; with MASKFIND_UI_SCREENSHOTS=FOLDER they are copied there too
(`asset_graph.png` is docs/ui_asset_graph.png, the README's picture of the asset graph)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.flows.options import ManualPromotion
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.daemon import LOCATION_OVERRIDES
from tests.support.webserver import ChromiumPage, chromium_page, dagster_dev

# Slow (about 26 s): the queue and the daemon are tested in make test by test_run_queue.py, the
# UI in Chromium by test_ui.py; this one clicks a run through both (make test-slow).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed"),
    pytest.mark.timeout(240),
]
ROOT = Path(__file__).resolve().parents[2]
WORKSPACE = ROOT / "workspace.yaml"
LOCATION = "maskfind_pipeline"  # workspace.yaml's location_name
SCREENSHOTS_ENV = "MASKFIND_UI_SCREENSHOTS"
FINISHED_STATUSES = ("Success", "Failure", "Canceled")  # the run page's status tag


def test_materialize_clicked_in_the_ui_runs_through_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"MASKFIND_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in LOCATION_OVERRIDES:
        monkeypatch.delenv(key, raising=False)
    Path(env["DAGSTER_HOME"]).mkdir()
    shutil.copy(ROOT / "dagster.yaml", Path(env["DAGSTER_HOME"]) / "dagster.yaml")
    synthetic.generate(
        LocalObjectStore(tmp_path / "home" / "data"), synthetic.DEFAULT_TYPES[:2], 8, size=64
    )
    shots: list[Path] = []
    try:
        with (
            # The instance's SQLite storage is created here, before the webserver and the daemon
            # both open it: two processes creating it at once stamp its schema version twice.
            dg.DagsterInstance.get() as instance,
            dagster_dev(WORKSPACE, env, tmp_path) as server,
            chromium_page(width=1600, height=900, log_path=tmp_path / "chromium.log") as page,
        ):
            assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)

            # The asset graph, the first thing a person opens; every group expanded.
            page.goto(f"{server.url}/asset-groups")
            _skip_the_community_dialog(page)
            _expand_all_groups(page)

            # image_catalog's page: click "Materialize" (no run config needed), then "View" on
            # the "Launched run" toast, and watch the run page until the run has finished.
            page.goto(f"{server.url}/assets/image_catalog")
            page.wait_for(
                "document.body.innerText.includes('Every valid image/mask pair')",
                what="image_catalog's description",
            )
            page.click(_button("Materialize"), what='the "Materialize" button')
            page.click(
                "[...document.querySelectorAll('a, button')].find(e => { "
                "if (e.innerText.trim() !== 'View') return false; "
                "for (let p = e.parentElement, i = 0; p && i < 4; p = p.parentElement, i++) "
                "if (p.innerText.includes('Launched run')) return true; return false; })",
                what='"View" on the "Launched run" toast',
            )
            page.wait_for(
                "/\\/runs\\/[0-9a-f-]{36}/.test(location.pathname)", what="the run's page"
            )
            run_id = page.evaluate("location.pathname").rsplit("/", 1)[-1]
            page.wait_for(
                f"{_leaf_with_text(FINISHED_STATUSES)}.length > 0",
                what="the run to finish",
                timeout_s=120,
            )
            shots.append(page.screenshot(tmp_path / "run.png"))
            shown = page.evaluate(f"{_leaf_with_text(FINISHED_STATUSES)}[0].innerText")

            run = instance.get_run_by_id(run_id)
            assert run is not None, run_id
            log = server.log_path.read_text(errors="replace")
            assert shown == "Success", (shown, log[-4000:])
            assert run.status == dg.DagsterRunStatus.SUCCESS, (run.status, log[-4000:])
            assert run.asset_selection == {dg.AssetKey("image_catalog")}, run.asset_selection
            assert run.tags.get("dagster/from_ui") == "true", run.tags
            # Through the queue: submitted, the run was only enqueued (RUN_ENQUEUED, which the
            # default coordinator never writes); the daemon dequeued and started it.
            events = [
                record.dagster_event.event_type
                for record in instance.all_logs(run_id)
                if record.dagster_event is not None
            ]
            assert dg.DagsterEventType.RUN_ENQUEUED in events, events
            assert events.index(dg.DagsterEventType.RUN_ENQUEUED) < events.index(
                dg.DagsterEventType.RUN_STARTING
            ), events
            assert re.search(r"QueuedRunCoordinatorDaemon.*Launched 1 runs", log), log[-4000:]
            assert image_catalog_materialized(instance, run_id)

            # The asset graph again, image_catalog now materialized: the README's picture.
            page.goto(f"{server.url}/asset-groups")
            _hide_the_group_sidebar(page)
            shots.append(page.screenshot(tmp_path / "asset_graph.png"))

            # promote_model's launchpad: the editor scaffolds the defaults; "Scaffold missing
            # config" adds the required fields; every field of ManualPromotion is then there.
            page.goto(f"{server.url}/locations/{LOCATION}/jobs/promote_model/playground")
            editor = "document.querySelector('.CodeMirror').CodeMirror.getValue()"
            page.wait_for(f"{editor}.includes('promote_version:')", what="the scaffolded config")
            page.click(_button("Scaffold missing config"), what='"Scaffold missing config"')
            page.click(_button("Confirm"), what='"Confirm" scaffolding the missing paths')
            fields = sorted(ManualPromotion.model_fields)
            page.wait_for(
                f"{json.dumps(fields)}.every(f => {editor}.includes(`  ${{f}}:`))",
                what=f"the fields {fields} in the launchpad's editor",
            )
            config = page.evaluate(editor)
            for field in fields:
                assert re.search(rf"^\s+{field}:", config, re.MULTILINE), (field, config)
            page.wait_for("!document.body.innerText.includes('Missing paths:')", what="no dialog")
            assert "Launch Run" in page.text()
            shots.append(page.screenshot(tmp_path / "promote_model_launchpad.png"))
    finally:
        if os.environ.get(SCREENSHOTS_ENV) and shots:
            folder = Path(os.environ[SCREENSHOTS_ENV])
            folder.mkdir(parents=True, exist_ok=True)
            for shot in shots:
                shutil.copy(shot, folder / shot.name)
    for shot in shots:
        assert shot.stat().st_size > 10_000, shot
    with pytest.raises(ProcessLookupError):  # no webserver, daemon or code server left behind
        os.killpg(server.process.pid, 0)


def image_catalog_materialized(instance: dg.DagsterInstance, run_id: str) -> bool:
    event = instance.get_latest_materialization_event(dg.AssetKey("image_catalog"))
    return event is not None and event.run_id == run_id


def _button(label: str) -> str:
    """A JavaScript expression: the button whose text is `label`."""
    return (
        f"[...document.querySelectorAll('button')].find(e => e.innerText.trim() === "
        f"{json.dumps(label)})"
    )


def _leaf_with_text(texts: tuple[str, ...]) -> str:
    """A JavaScript expression: the elements without children whose text is one of `texts`."""
    return (
        f"[...document.querySelectorAll('body *')].filter(e => e.children.length === 0 && "
        f"{json.dumps(list(texts))}.includes((e.innerText || '').trim()))"
    )


def _skip_the_community_dialog(page: ChromiumPage) -> None:
    """A fresh instance greets with "Join the Dagster community"; a person clicks "Skip"."""
    page.wait_for(
        "[...document.querySelectorAll('button')].some(e => "
        "e.innerText.trim().startsWith('Materialize all'))",
        what="the asset graph",
    )
    dialog = "document.body.innerText.includes('Join the Dagster community')"
    try:  # asked for when the app loads: by the time the graph is drawn it is there
        page.wait_for(dialog, what="the community dialog", timeout_s=5)
    except AssertionError:
        return
    page.click(_button("Skip"), what='"Skip" on the community dialog')
    page.wait_for(f"!({dialog})", what="the community dialog to close")


def _expand_all_groups(page: ChromiumPage) -> None:
    """The graph's settings menu (the last gear on the page): "Expand all groups"."""
    page.click(
        "[...document.querySelectorAll('button')].filter(e => "
        "e.querySelector('[aria-label=settings]')).at(-1)",
        what="the graph's settings button",
    )
    page.click(
        "[...document.querySelectorAll('[role=menuitem], .bp5-menu-item')].find(e => "
        "e.innerText.includes('Expand all groups'))",
        what='"Expand all groups"',
    )
    page.press("Escape", "Escape", 27)
    page.wait_for(  # the collapsed groups list no assets
        "document.body.innerText.split('\\n').includes('image_catalog')",
        what="the image_catalog node",
    )


def _hide_the_group_sidebar(page: ChromiumPage) -> None:
    """Hide the list of groups left of the graph, so the graph gets the width."""
    page.wait_for(
        "document.body.innerText.includes('compat_evaluation')", what="the expanded graph"
    )
    page.click(
        "[...document.querySelectorAll('button')].find(e => e.innerText.trim() === '' && "
        "e.querySelector('[aria-label=panel_show_right]'))",
        what="the sidebar's hide button",
    )
    page.wait_for(
        "!document.querySelector('input[placeholder^=\"Jump to\"]')",
        what="the group sidebar to close",
    )
    time.sleep(1)  # the graph slides into the freed width
