"""No file I/O on the event loop (issue 10): while a 64 MiB file is read cold into memory, the server
keeps answering another client.

Before, a cache miss read the whole file synchronously in ``open_now``: every other client waited
for it.  Now the fill runs on a thread pool, so a small file fetched right after the big RRQ
completes before the big file's first DATA can leave.  The figures (fill latency, the other
client's fetch time) are printed; the assertion is the order of events, not a timing.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from edgetftp.protocol import Data
from tests.conftest import ServerProcess
from tests.rawclient import RawClient

pytestmark = pytest.mark.integration

BIG = 64 * 2**20  # the default --cache-object-max: read whole into memory


def write_cold(path: Path, size: int) -> None:
    """Write the file and drop it from the page cache, so the server's read goes to the disk."""
    with open(path, "wb") as file:
        for _ in range(size // 2**20):
            file.write(os.urandom(2**20))
        file.flush()
        os.fsync(file.fileno())
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def test_the_loop_serves_another_client_during_a_cold_64_mib_read(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write_cold(root / "big.img", BIG)
    (root / "small.ipxe").write_bytes(b"#!ipxe\nchain http://boot/menu\n")
    (root / "warm-up.txt").write_bytes(b"first request after start")
    server = ServerProcess([str(root)])
    try:
        with RawClient(server.address, timeout=10) as first:
            assert first.fetch("warm-up.txt").error is None  # start-up costs stay out of the figures
        big_first_reply: list[float] = []
        with RawClient(server.address, timeout=30) as big, RawClient(server.address, timeout=10) as small:

            def wait_for_big() -> None:
                packet, _ = big.receive()
                big_first_reply.append(time.monotonic())
                assert isinstance(packet, Data) and packet.block == 1

            started = time.monotonic()
            big.rrq("big.img")
            waiter = threading.Thread(target=wait_for_big)
            waiter.start()
            fetched = small.fetch("small.ipxe")
            small_done = time.monotonic()
            waiter.join()
    finally:
        server.stop()
    assert fetched.error is None and fetched.data.startswith(b"#!ipxe")
    print(
        f"\ncold 64 MiB fill: first DATA after {1000 * (big_first_reply[0] - started):.1f} ms; "
        f"the other client's whole fetch took {1000 * (small_done - started):.1f} ms"
    )
    assert small_done < big_first_reply[0]  # served while the fill ran, not after it
