"""Resident memory is bounded by --cache-bytes (issue 12 item 3).

15 RRQs that are never acknowledged, round-robin over five 56 MiB files (280 MiB together, more
than the 256 MiB cache).  Before: each re-read after an eviction allocated a new copy while the
sessions still held the old ones: RSS 41 -> 937 MiB.  Now an evicted buffer still in use is found
again through the weak registry: every file is held once, whatever the number of sessions, so RSS
stays within the baseline + the distinct files pinned (here all five: 280 MiB) + 48 MiB of slack,
and the ``edgetftp_resident_file_bytes`` gauge says exactly what is held.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from edgetftp.protocol import Data
from tests.conftest import ServerProcess, free_tcp_port
from tests.rawclient import RawClient

pytestmark = pytest.mark.slow

MiB = 2**20
FILE_SIZE = 56 * MiB
FILES = 5
CACHE_BYTES = 256 * MiB
SLACK = 48 * MiB  # interpreter, sockets, allocator slack


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def resident_gauge(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("edgetftp_resident_file_bytes "):
                return float(line.split()[1])
    raise AssertionError("no edgetftp_resident_file_bytes gauge")


def test_rss_stays_bounded_under_a_never_acked_thrash(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for index in range(FILES):
        with open(root / f"f{index}.img", "wb") as file:
            file.truncate(FILE_SIZE)  # sparse: fast to make, read as zeros
    http_port = free_tcp_port()
    server = ServerProcess(
        ["--cache-bytes", str(CACHE_BYTES), "--http-listen", f"127.0.0.1:{http_port}", str(root)]
    )
    clients = [RawClient(server.address, timeout=30) for _ in range(15)]
    try:
        baseline = rss(server.proc.pid)
        peak = baseline
        for index, client in enumerate(clients):
            client.rrq(f"f{index % FILES}.img")
            packet, _ = client.receive()  # the file is resident before DATA 1 leaves; never ACKed
            assert isinstance(packet, Data) and packet.block == 1
            peak = max(peak, rss(server.proc.pid))
        held = resident_gauge(http_port)
    finally:
        for client in clients:
            client.close()
        server.stop()
    print(
        f"\nRSS {baseline / MiB:.0f} -> peak {peak / MiB:.0f} MiB with 15 never-ACKed sessions over "
        f"{FILES} x {FILE_SIZE // MiB} MiB, --cache-bytes {CACHE_BYTES // MiB} MiB; "
        f"resident gauge {held / MiB:.0f} MiB"
    )
    assert held == FILES * FILE_SIZE  # each file once: the cache plus the one evicted but pinned
    assert peak <= baseline + FILES * FILE_SIZE + SLACK
