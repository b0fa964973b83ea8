"""ga3c.procs: this machine's processes from /proc (used to find and check Ray's)."""

import os
import subprocess
import sys
import time

import pytest

from ga3c import procs

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")


def test_a_child_is_found_alive_then_a_zombie_then_gone():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        found = procs.descendants(os.getpid())
        assert child.pid in found and found[child.pid].parent == os.getpid()
        start = found[child.pid].start
        assert procs.alive(child.pid, start)
        assert not procs.alive(child.pid, start + "0")  # another process with that pid
        child.kill()
        deadline = time.monotonic() + 10
        while procs.process(child.pid).state != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not procs.alive(child.pid, start)  # a zombie (not yet waited for)
    finally:
        child.kill()
        child.wait(10)
    assert procs.process(child.pid) is None and child.pid not in procs.processes()
    assert procs.process(os.getpid()).cpu_seconds > 0
