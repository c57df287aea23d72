"""Per-process CPU time, memory and TCP connections, read from Linux ``/proc``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_PROC = Path("/proc")
_CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
# /proc/net/tcp state code of an established connection.
_TCP_ESTABLISHED = "01"


def child_pids(pid: int) -> list[int]:
    """Return the direct children of ``pid`` (gunicorn or Node cluster workers)."""
    try:
        text = (_PROC / str(pid) / "task" / str(pid) / "children").read_text()
    except OSError:
        return []
    return [int(field) for field in text.split()]


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of one process, in seconds.

    The kernel counts in clock ticks (usually 10 ms), so short intervals
    need many requests for a precise per-request figure. A process that has
    exited counts as zero.
    """
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    # The command name may contain spaces, so fields are counted after ")".
    fields = text.rpartition(")")[2].split()
    user_ticks, system_ticks = int(fields[11]), int(fields[12])
    return (user_ticks + system_ticks) / _CLOCK_TICKS_PER_SECOND


def total_cpu_seconds(pids: Iterable[int]) -> float:
    """Return the summed CPU time of ``pids``, in seconds."""
    return sum(cpu_seconds(pid) for pid in pids)


def rss_bytes(pid: int) -> int:
    """Return the resident set size of one process, or 0 if it has exited."""
    try:
        lines = (_PROC / str(pid) / "status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def established_connections(pids: Iterable[int], port: int) -> dict[int, int]:
    """Count, per process, the established TCP connections on local ``port``.

    Matches the socket inodes of ``/proc/net/tcp`` and ``tcp6`` against each
    process's file descriptors, which shows how a server's workers share
    the connections of a load generator.
    """
    inodes = _established_inodes(port)
    counts: dict[int, int] = {}
    for pid in pids:
        count = 0
        fd_dir = _PROC / str(pid) / "fd"
        try:
            entries = list(fd_dir.iterdir())
        except OSError:
            entries = []
        for entry in entries:
            try:
                target = os.readlink(entry)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                count += 1
        counts[pid] = count
    return counts


def _established_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rpartition(":")[2], 16)
            if local_port == port and fields[3] == _TCP_ESTABLISHED:
                inodes.add(fields[9])
    return inodes
