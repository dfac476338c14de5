"""What the caps guard reads as a relay's memory, in a real cgroup: the working set, not the
page cache of the files the relay wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay.agent import caps
from relay.agent.tiers import NANO
from relay.host import cgroups

BACKEND = cgroups.detect()


@pytest.mark.skipif(BACKEND is None, reason="no writable cgroup v1/v2 hierarchy on this host")
def test_the_page_cache_of_a_relays_files_is_not_its_memory(tmp_path: Path) -> None:
    """Found in review: the guard read memory.usage_in_bytes / memory.current, which count the
    page cache: a relay of 12 MiB that had written 80 MiB of log read as a full nano cap (64 MiB)
    and refused joins for good, though the kernel reclaims that cache before it would kill it."""
    assert BACKEND is not None
    group = BACKEND.create(f"test-pagecache-{os.getpid()}", NANO, cpu_capped=False)
    writer = (
        "import os, sys\n"
        "sys.stdin.readline()\n"
        f"with open({str(tmp_path / 'log')!r}, 'wb') as f:\n"
        "    for _ in range(80):\n"
        "        f.write(os.urandom(1 << 20))\n"
        "        f.flush()\n"
        "print('written', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", writer], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        group.add(child.pid)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "written"
        usage_file = caps.cgroup_memory_file(Path(f"/proc/{child.pid}"))
        assert usage_file is not None
        usage = int(usage_file.read_text())
        assert usage > NANO.memory_bytes * NANO.join_refusal_ratio  # what the guard read before
        working_set = caps.memory_reader(Path(f"/proc/{child.pid}"))()
        assert working_set < NANO.memory_bytes / 2, (usage, working_set)
    finally:
        child.kill()
        child.wait()
        group.remove()


def test_rss_through_a_kept_descriptor_follows_the_process() -> None:
    """The agent reads its RSS for every heartbeat from a descriptor it keeps open: the figure
    must be today's, not the one of the first read."""
    files = caps.KeptFiles()
    try:
        before = caps.rss_bytes(read=files.read)
        ballast = bytearray(b"\x01") * (32 << 20)  # 32 MiB, every page written
        after = caps.rss_bytes(read=files.read)
        assert after - before >= 30 << 20
        assert abs(after - caps.rss_bytes()) < 4 << 20  # the same as a read by path
        del ballast
    finally:
        files.close()
