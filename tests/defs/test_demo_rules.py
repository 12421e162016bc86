"""When the demo's story goes on: a refused gate on night 2 is the pipeline at work (the
champion stays, production day 2 runs with it); any other failed run stops the story."""

from __future__ import annotations

import dagster as dg

from maskfind_pipeline.demo import DemoOptions, Night, Story


def _night(number: int, success: bool, promoted: bool | None) -> Night:
    promotion = {} if promoted is None else {"promoted": dg.MetadataValue.bool(promoted)}
    return Night(number, success, 1.0, {"promotion": promotion})


def test_a_refused_second_night_keeps_the_story_going() -> None:
    story = Story(DemoOptions(), nights=[_night(1, True, True), _night(2, False, False)])
    assert story.nights[1].refused and story.ok


def test_a_refused_first_night_or_a_crash_stops_it() -> None:
    no_champion = Story(DemoOptions(), nights=[_night(1, False, False)])
    assert no_champion.nights[0].refused and not no_champion.ok
    crashed = Story(DemoOptions(), nights=[_night(1, True, True), _night(2, False, None)])
    assert not crashed.nights[1].refused and not crashed.ok
    promoted = Story(DemoOptions(), nights=[_night(1, True, True), _night(2, True, True)])
    assert not promoted.nights[1].refused and promoted.ok
