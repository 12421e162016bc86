"""Which TCP addresses a process group listens on, read from /proc (Linux; no psutil needed).

A server started with `start_new_session` leads its own process group; its workers and helpers
(uvicorn workers, gRPC code servers, run workers) are in that group or below its leader. Their
listening sockets are the entries in LISTEN state of /proc/net/tcp and /proc/net/tcp6 whose
inodes appear among the processes' open file descriptors.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"  # TCP state in /proc/net/tcp*


@dataclass(frozen=True, order=True)
class Listener:
    """A listening TCP socket: its address and port, and the process holding it."""

    address: str
    port: int
    pid: int
    command: str

    @property
    def on_loopback(self) -> bool:
        ip = ipaddress.ip_address(self.address)
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return (mapped or ip).is_loopback

    def __str__(self) -> str:
        return f"{self.address}:{self.port} (pid {self.pid}: {self.command})"


def group_listeners(pgid: int) -> list[Listener]:
    """Every listening TCP socket of the processes in group `pgid` and of their descendants."""
    return listeners(group_pids(pgid))


def group_pids(pgid: int) -> set[int]:
    """The processes whose group is `pgid`, and every descendant of those (a child that moved
    to a group of its own included)."""
    parents: dict[int, int] = {}
    found: set[int] = set()
    for pid, ppid, group in _all_processes():
        parents[pid] = ppid
        if group == pgid:
            found.add(pid)
    grew = True
    while grew:
        below = {pid for pid, ppid in parents.items() if ppid in found} - found
        found |= below
        grew = bool(below)
    return found


def listeners(pids: Iterable[int]) -> list[Listener]:
    """The listening TCP sockets (IPv4 and IPv6) held by `pids`, sorted."""
    by_inode = _listening_inodes()
    found = set()
    for pid in pids:
        for inode in _socket_inodes(pid):
            if inode in by_inode:
                address, port = by_inode[inode]
                found.add(Listener(address, port, pid, _command(pid)))
    return sorted(found)


def _all_processes() -> Iterable[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every process."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        yield int(entry), int(fields[1]), int(fields[2])


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _listening_inodes() -> dict[int, tuple[str, int]]:
    """inode -> (address, port) of every TCP socket in LISTEN state in this network namespace."""
    found: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == _LISTEN:
                found[inode] = _address(local)
    return found


def _address(local: str) -> tuple[str, int]:
    """Decode "0100007F:1F90" (IPv4) or 32 hex digits + port (IPv6): each 32-bit word of the
    address is in the kernel's (little-endian) byte order, the port is big-endian hex."""
    hex_address, hex_port = local.split(":")
    raw = bytes.fromhex(hex_address)
    host = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(host)), int(hex_port, 16)


def _command(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [os.path.basename(a.decode(errors="replace")) for a in argv[:4] if a]
    return " ".join(" ".join(words).split())[:80]
