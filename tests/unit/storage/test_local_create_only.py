"""Create-only puts on the local store race between processes: the loser changes nothing."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from maskfind_pipeline.storage import LocalObjectStore, ObjectExists

WRITERS = 6
KEYS = 8


def _race(root: str, writer: int, barrier, outcomes) -> None:  # type: ignore[no-untyped-def]
    store = LocalObjectStore(root)
    for k in range(KEYS):
        barrier.wait()
        try:
            store.put(
                f"labeled/k{k}.png",
                f"writer {writer} ".encode() * 4096,
                tags={"writer": str(writer)},
                create_only=True,
            )
            outcomes.put((k, writer))
        except ObjectExists:
            pass


def test_losing_writers_leave_the_winners_object_and_tags(tmp_path: Path) -> None:
    context = mp.get_context("spawn")
    barrier, outcomes = context.Barrier(WRITERS), context.Queue()
    processes = [
        context.Process(target=_race, args=(str(tmp_path), w, barrier, outcomes))
        for w in range(WRITERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    winners: dict[int, list[int]] = {}
    while not outcomes.empty():
        key, writer = outcomes.get()
        winners.setdefault(key, []).append(writer)
    store = LocalObjectStore(tmp_path)
    for k in range(KEYS):
        assert len(winners.get(k, [])) == 1, f"key {k}: winners {winners.get(k)}"
        winner = str(winners[k][0])
        key = f"labeled/k{k}.png"
        assert store.get(key).startswith(f"writer {winner} ".encode())
        assert store.tags(key) == {"writer": winner}
