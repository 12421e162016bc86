"""Local-store specifics: nothing is ever written outside the root, no partial files."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskfind_pipeline.storage import InvalidKey, LocalObjectStore
from tests.support.fswrites import record_writes, snapshot

_segments = st.one_of(
    st.sampled_from(["..", ".", "", "labeled", "a.png", "\x00", "/", "C:", "~", "..\\x"]),
    st.text(min_size=1, max_size=300),
)
_keys = st.lists(_segments, min_size=1, max_size=5).map("/".join)


# Deeper than the `..` segments a key of the strategy is likely to hold, so that an escape by
# `..` still lands inside the scanned tmp_path; any other escape is caught by the write log.
_ROOT_DEPTH = 8


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=_keys)
def test_any_key_is_refused_or_lands_inside_the_root(tmp_path: Path, key: str) -> None:
    root = tmp_path.joinpath(*(f"up{i}" for i in range(_ROOT_DEPTH)), "root")
    root.mkdir(parents=True, exist_ok=True)
    store = LocalObjectStore(root)
    before = snapshot(tmp_path)
    try:
        with record_writes() as log:
            try:
                store.put(key, b"payload", tags={"image_type": "t"})
            except InvalidKey:
                pass
            except OSError as exc:  # the filesystem itself refused (e.g. a name it cannot hold)
                assert exc.errno is not None
    finally:
        created = snapshot(tmp_path) - before
        _remove(created)  # every example (and hypothesis's replay of one) starts from `before`
    assert log.outside(root) == []
    assert [p for p in created if not p.is_relative_to(root)] == []


def _remove(paths: set[Path]) -> None:
    for path in sorted(paths, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


def test_sidecars_and_temporary_files_are_not_listed(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("labeled/a.png", b"x", tags={"image_type": "t"})
    (tmp_path / "labeled" / ".tmp-deadbeef").write_bytes(b"half written")
    assert [info.key for info in store.list()] == ["labeled/a.png"]
    assert (tmp_path / "labeled" / "a.tags.json").exists()


def test_failed_write_leaves_no_file_at_the_final_path(tmp_path: Path, monkeypatch) -> None:
    store = LocalObjectStore(tmp_path)

    def crash(*args: object) -> None:
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", crash)
    with contextlib.suppress(OSError):
        store.put("labeled/a.png", b"x" * 1000)
    assert not (tmp_path / "labeled" / "a.png").exists()
    assert list((tmp_path / "labeled").iterdir()) == []
