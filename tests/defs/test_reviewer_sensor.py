"""The reviewer follows the champion: one run per newly promoted champion, none otherwise."""

from __future__ import annotations

import dagster as dg

from maskfind_pipeline.defs.reviewer.sensors import champion_changed_sensor


def _promotion(instance: dg.DagsterInstance, promoted: bool, champion: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "promotion", metadata={"promoted": promoted, "champion_after": champion}
        )
    )


def _tick(instance: dg.DagsterInstance, cursor: str | None) -> tuple[list[str], str | None]:
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    results = list(champion_changed_sensor(context))  # pyright: ignore[reportArgumentType]
    return [str(r.run_key) for r in results if isinstance(r, dg.RunRequest)], context.cursor


def test_a_new_champion_requests_one_reviewer_run() -> None:
    instance = dg.DagsterInstance.ephemeral()
    _promotion(instance, promoted=True, champion="1")
    runs, cursor = _tick(instance, None)
    assert runs == ["champion-1"]
    assert _tick(instance, cursor)[0] == []
    _promotion(instance, promoted=False, champion="1")
    runs, cursor = _tick(instance, cursor)
    assert runs == []
    _promotion(instance, promoted=True, champion="3")
    assert _tick(instance, cursor)[0] == ["champion-3"]
