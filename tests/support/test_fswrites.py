"""The write recorder sees writes however they are made, from any thread, and only writes."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from tests.support.fswrites import record_reads, record_writes, snapshot


def test_every_kind_of_write_is_recorded_from_any_thread_and_reads_are_not(
    tmp_path: Path,
) -> None:
    (tmp_path / "old").write_bytes(b"r")
    with record_writes() as log:
        (tmp_path / "d" / "e").mkdir(parents=True)
        (tmp_path / "d" / "a").write_bytes(b"a")
        with open(tmp_path / "d" / "b", "ab"):
            pass
        os.close(os.open(tmp_path / "d" / "c", os.O_WRONLY | os.O_CREAT))
        os.replace(tmp_path / "d" / "a", tmp_path / "d" / "a2")
        os.link(tmp_path / "d" / "b", tmp_path / "d" / "b2")
        os.unlink(tmp_path / "d" / "b2")
        tempfile.mkstemp(dir=tmp_path / "d" / "e", prefix="t-")
        shutil.rmtree(tmp_path / "d" / "e")
        thread = threading.Thread(target=(tmp_path / "d" / "f").write_bytes, args=(b"f",))
        thread.start()
        thread.join()
        (tmp_path / "old").read_bytes()
        os.close(os.open(tmp_path / "old", os.O_RDONLY))
    (tmp_path / "after").write_bytes(b"late")
    d = os.path.realpath(tmp_path / "d")
    names = {(w.event, os.path.relpath(w.resolved, d)) for w in log.writes if w.resolved}
    assert {
        ("os.mkdir", "e"),
        ("open", "a"),
        ("open", "b"),
        ("open", "c"),
        ("os.rename", "a"),
        ("os.rename", "a2"),
        ("os.link", "b2"),
        ("os.remove", "b2"),
        ("shutil.rmtree", "e"),
        ("open", "f"),
    } <= names
    assert any(event == "open" and name.startswith("e/t-") for event, name in names)
    assert all(w.resolved is not None for w in log.writes)
    resolved = {w.resolved for w in log.writes}
    assert os.path.realpath(tmp_path / "old") not in resolved
    assert os.path.realpath(tmp_path / "after") not in resolved


def test_outside_follows_dot_dot_and_symlinks_and_is_not_fooled_by_prefixes(
    tmp_path: Path,
) -> None:
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (root / "link").symlink_to(elsewhere, target_is_directory=True)
    with record_writes() as log:
        (root / "sub" / "in").write_bytes(b"")
        os.mkdir(root / "sub" / ".." / "in-too")
        (root / "sub" / ".." / ".." / "out").write_bytes(b"")
        (root / "link" / "out-through-link").write_bytes(b"")
        (tmp_path / "root2").mkdir()
        root.chmod(0o755)
    outside = {os.path.basename(w.path) for w in log.outside(root)}
    assert outside == {"out", "out-through-link", "root2"}
    assert log.outside(root, elsewhere, tmp_path / "out", tmp_path / "root2") == []


def test_snapshot_lists_files_and_directories(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "f").write_bytes(b"")
    assert snapshot(tmp_path) == {tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "f"}


def test_threads_running_before_the_recording_are_left_out_unless_asked_for(
    tmp_path: Path,
) -> None:
    go, done = threading.Event(), threading.Event()

    def background() -> None:
        go.wait()
        (tmp_path / "background").write_bytes(b"")
        done.set()

    thread = threading.Thread(target=background)
    thread.start()
    with record_writes() as own, record_writes(all_threads=True) as every:
        go.set()
        done.wait()
        (tmp_path / "own").write_bytes(b"")
    thread.join()
    assert [os.path.basename(w.path) for w in own.writes] == ["own"]
    assert [os.path.basename(w.path) for w in every.writes] == ["background", "own"]


def test_reads_are_recorded_with_where_they_resolve_from_any_thread(tmp_path: Path) -> None:
    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "a").write_bytes(b"a")
    (tmp_path / "elsewhere").write_bytes(b"b")
    (tmp_path / "inside" / "link").symlink_to(tmp_path / "elsewhere")
    with record_reads() as log:
        (tmp_path / "inside" / "a").read_bytes()
        os.listdir(tmp_path / "inside")
        thread = threading.Thread(target=(tmp_path / "inside" / "link").read_bytes)
        thread.start()
        thread.join()
    (tmp_path / "elsewhere").read_bytes()  # after the block: not recorded
    resolved = {os.path.relpath(p, os.path.realpath(tmp_path)) for p in log.paths}
    assert resolved == {"inside/a", "inside", "elsewhere"}
    assert [r.path for r in log.outside(tmp_path / "inside")] == [str(tmp_path / "inside" / "link")]
