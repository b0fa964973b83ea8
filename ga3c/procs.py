"""This machine's processes from Linux /proc (empty elsewhere): what runs below a process.

Used where ga3c must know about processes it did not start itself but caused: a local Ray's
GCS, raylet and workers (the throughput benchmark's CPU use of them, and the tests that
check none outlives a run). Pure Python, no TensorFlow, no Ray.
"""

from __future__ import annotations

import os
from typing import NamedTuple


class Proc(NamedTuple):
    parent: int
    name: str
    state: str  # "R", "S", ..., "Z" for a zombie
    start: str  # start time in clock ticks since boot: with the pid, names one process
    cpu_seconds: float  # user + system so far


def processes() -> dict[int, Proc]:
    """Every process readable now, by pid."""
    table = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                name, fields = f.read().split(" (", 1)[1].rsplit(")", 1)
        except (OSError, IndexError, ValueError):
            continue
        fields = fields.split()
        table[int(entry)] = Proc(int(fields[1]), name, fields[0], fields[19],
                                 (int(fields[11]) + int(fields[12])) / tick)
    return table


def descendants(pid: int) -> dict[int, Proc]:
    """Every process below `pid` (children, their children, ...), zombies included."""
    table = processes()
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, proc in table.items():
            if proc.parent == parent and child not in found:
                found[child] = proc
                frontier.append(child)
    return found
