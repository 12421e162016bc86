"""Record every filesystem write (or read) this process attempts, from any thread, and
snapshot trees.

`record_writes()` listens to Python's audit events (PEP 578), which the interpreter raises
before the operation itself, so it sees attempts that then fail as well as ones that succeed,
through every wrapper (`open`, `io.open`, `os.open`, `pathlib`, `tempfile`, `shutil`, ...), not
only the functions a test thought to monkeypatch, from the recording thread and every thread
started while it records (e.g. the workers of a pool the code under test creates). Writes are
opening with a writing flag (O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND) and creating,
renaming, linking, removing, truncating or changing the metadata of a path. Native code that
calls the C library directly (e.g. Arrow's own file writers) raises no audit event.

`record_reads()` does the same for reads: every path opened (in any mode) or listed
(`os.listdir`, `os.scandir`), which is what "nothing outside the root is read" means.

The interpreter's own bytecode cache (any path with a `__pycache__` component) is left out: an
import that happens to run during a recording writes there and is not the code under test.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

# event -> ((index of a written path, index of its dir_fd or None), ...) in the event's args
_PATH_EVENTS: dict[str, tuple[tuple[int, int | None], ...]] = {
    "os.mkdir": ((0, 2),),
    "os.rename": ((0, 2), (1, 3)),  # also os.replace
    "os.link": ((1, 3),),
    "os.symlink": ((1, 2),),
    "os.remove": ((0, 1),),  # also os.unlink
    "os.rmdir": ((0, 1),),
    "os.truncate": ((0, None),),
    "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),),
    "os.utime": ((0, 3),),
    "os.setxattr": ((0, None),),
    "os.removexattr": ((0, None),),
    "shutil.copyfile": ((1, None),),
    "shutil.copytree": ((1, None),),
    "shutil.move": ((0, None), (1, None)),
    "shutil.rmtree": ((0, 1),),
}


@dataclass(frozen=True)
class Write:
    """One attempted write: the audit event, the path as given, and where it resolves to
    (symlinks and `..` followed, as the kernel would), or None where it cannot be resolved."""

    event: str
    path: str
    resolved: str | None


@dataclass
class WriteLog:
    """The writes attempted while a `record_writes()` block ran."""

    writes: list[Write] = field(default_factory=list)
    ignored_threads: frozenset[threading.Thread] = frozenset()
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def outside(self, *roots: str | os.PathLike[str]) -> list[Write]:
        """The writes that do not resolve to one of `roots` or a path under one of them
        (writes that cannot be resolved count as outside)."""
        resolved_roots = [os.path.realpath(root) for root in roots]
        return [
            write
            for write in self.writes
            if write.resolved is None
            or not any(_within(write.resolved, root) for root in resolved_roots)
        ]

    def _add(self, writes: Sequence[Write]) -> None:
        with self._lock:
            self.writes.extend(writes)


@dataclass
class ReadLog:
    """The paths opened or listed while a `record_reads()` block ran (resolved, or None)."""

    reads: list[Write] = field(default_factory=list)
    ignored_threads: frozenset[threading.Thread] = frozenset()
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def paths(self) -> list[str]:
        return [r.resolved for r in self.reads if r.resolved]

    def outside(self, *roots: str | os.PathLike[str]) -> list[Write]:
        """The reads that do not resolve into one of `roots` or the system's own data
        (`SYSTEM_READS`: time zones, /etc, /proc...); unresolvable ones count."""
        return WriteLog(self.reads).outside(*roots, *SYSTEM_READS)

    def _add(self, reads: Sequence[Write]) -> None:
        with self._lock:
            self.reads.extend(reads)


SYSTEM_READS = ("/usr/share/zoneinfo", "/etc", "/proc", "/sys", "/dev")
"""What any library may read (a time zone, the MIME types, a CPU count): not a test's data."""
_READ_EVENTS = {"open", "os.listdir", "os.scandir"}
_active_reads: list[ReadLog] = []
_active: list[WriteLog] = []
_install_lock = threading.Lock()
_installed = False


@contextmanager
def record_writes(*, all_threads: bool = False) -> Iterator[WriteLog]:
    """Record every filesystem write attempted inside the block by the calling thread and by
    the threads started meanwhile; with `all_threads`, also by threads that were already
    running (which, in a whole test session, can include other fixtures' background threads).

    The audit hook is installed once per process (hooks cannot be removed) and does nothing
    while no recording is active.
    """
    _install()
    running = set() if all_threads else set(threading.enumerate()) - {threading.current_thread()}
    log = WriteLog(ignored_threads=frozenset(running))
    _active.append(log)
    try:
        yield log
    finally:
        _active.remove(log)


@contextmanager
def record_reads(*, all_threads: bool = False) -> Iterator[ReadLog]:
    """Record every path opened or listed inside the block, by the calling thread and the
    threads started meanwhile (with `all_threads`, by every thread)."""
    _install()
    running = set() if all_threads else set(threading.enumerate()) - {threading.current_thread()}
    log = ReadLog(ignored_threads=frozenset(running))
    _active_reads.append(log)
    try:
        yield log
    finally:
        _active_reads.remove(log)


def _install() -> None:
    global _installed
    with _install_lock:
        if not _installed:
            sys.addaudithook(_hook)
            _installed = True


def snapshot(root: str | os.PathLike[str]) -> set[Path]:
    """Every file, directory and link under `root` (symlinked directories are not entered)."""
    found: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        found.update(Path(dirpath, name) for name in (*dirnames, *filenames))
    return found


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _hook(event: str, args: tuple[object, ...]) -> None:
    if _active_reads and event in _READ_EVENTS:
        _record_read(event, args)
    if not _active:
        return
    if event == "open":
        if not (isinstance(args[2], int) and args[2] & _WRITE_FLAGS):
            return
        if isinstance(args[0], int):
            return  # wraps a descriptor whose own opening was recorded
        targets: tuple[tuple[int, int | None], ...] = ((0, None),)
    else:
        found = _PATH_EVENTS.get(event)
        if found is None:
            return
        targets = found
    # An exception here would break the audited call itself, so nothing may escape.
    try:
        writes = [_write(event, args, path, dir_fd) for path, dir_fd in targets]
    except Exception:
        writes = [Write(event, repr(args), None)]
    writes = [w for w in writes if "__pycache__" not in Path(w.path).parts]
    if writes:
        thread = threading.current_thread()
        for log in list(_active):
            if thread not in log.ignored_threads:
                log._add(writes)


def _record_read(event: str, args: tuple[object, ...]) -> None:
    if not args or args[0] is None or isinstance(args[0], int):
        return  # a descriptor (its opening was recorded) or the working directory
    try:
        read = _write(event, (args[0],), 0, None)
    except Exception:
        read = Write(event, repr(args), None)
    if _is_import(event, read):
        return  # imports that happen to run meanwhile are not the code under test
    thread = threading.current_thread()
    for log in list(_active_reads):
        if thread not in log.ignored_threads:
            log._add([read])


def _is_import(event: str, read: Write) -> bool:
    """Whether a read is the import system's: inside the Python installation or venv, or a
    listing or code file below an import path."""
    if "__pycache__" in Path(read.path).parts or read.path.endswith((".py", ".pyc", ".so")):
        return True
    if read.resolved is None:
        return False
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    if any(_within(read.resolved, p) for p in prefixes):
        return True
    paths = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    return event != "open" and any(_within(read.resolved, p) for p in paths)


def _write(event: str, args: tuple[object, ...], index: int, dir_fd_index: int | None) -> Write:
    raw = args[index]
    dir_fd = args[dir_fd_index] if dir_fd_index is not None else None
    if isinstance(raw, int):
        return Write(event, f"<fd {raw}>", _fd_path(raw))
    if not isinstance(raw, str | bytes | os.PathLike):
        return Write(event, repr(raw), None)
    path = os.fsdecode(os.fspath(raw))
    if os.path.isabs(path):
        base: str | None = "/"
    elif isinstance(dir_fd, int) and dir_fd >= 0:
        base = _fd_path(dir_fd)
    else:
        base = os.getcwd()
    if base is None:
        return Write(event, path, None)
    try:
        return Write(event, path, os.path.realpath(os.path.join(base, path)))
    except (OSError, ValueError):
        return Write(event, path, None)


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
