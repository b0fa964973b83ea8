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


TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process(pid: int) -> Proc | None:
    """One process as /proc/PID/stat shows it now; None if there is none (or it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            name, fields = f.read().split(" (", 1)[1].rsplit(")", 1)
    except (OSError, IndexError, ValueError):
        return None
    fields = fields.split()
    return Proc(int(fields[1]), name, fields[0], fields[19],
                (int(fields[11]) + int(fields[12])) / TICK)


def processes() -> dict[int, Proc]:
    """Every process readable now, by pid."""
    table = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit() and (proc := process(int(entry))) is not None:
            table[int(entry)] = proc
    return table


def alive(pid: int, start: str) -> bool:
    """The process `pid` that started at `start` still runs (not a zombie, not a new process
    that got its pid)."""
    proc = process(pid)
    return proc is not None and proc.state != "Z" and proc.start == start


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
