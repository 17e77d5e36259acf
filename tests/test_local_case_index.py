"""``--case-insensitive`` lookups through a lower-cased name index per directory (issue 12 item 10).

Before: every miss listed the directory on the event loop -- 200 misses in a 50,000-entry directory
stalled the server 7.8 s.  Now a directory is listed once per mtime (off the loop, on the thread
pool) and each miss is a dictionary lookup; the index follows changes to the directory.  The real
server keeps answering another client while the misses come in.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edgetftp.protocol import Error
from edgetftp.sources.base import FileNotFound
from edgetftp.sources.local import LocalSource
from tests.conftest import ServerProcess
from tests.rawclient import RawClient

pytestmark = pytest.mark.integration

ENTRIES = 50_000
MISSES = 200
SCANNERS = 100  # concurrent sessions from one address stay under --max-sessions-per-client


@pytest.fixture(scope="module")
def big_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("case-index")
    crowded = root / "Crowded"
    crowded.mkdir()
    for index in range(ENTRIES):
        (crowded / f"Entry-{index:05d}.BIN").touch()
    (crowded / "Boot.EFI").write_bytes(b"boot")
    (root / "other.txt").write_bytes(b"other client")
    return root


def test_misses_list_each_directory_once_per_change(big_directory: Path) -> None:
    source = LocalSource(big_directory, case_insensitive=True)

    async def scenario() -> float:
        started = time.perf_counter()
        for index in range(MISSES):
            with pytest.raises(FileNotFound):
                await source.open(f"crowded/missing-{index}.efi")
        elapsed = time.perf_counter() - started
        content = await source.open("CROWDED/boot.efi")
        assert content.memory is not None and bytes(content.memory) == b"boot"
        return elapsed

    elapsed = asyncio.run(scenario())
    print(f"\n{MISSES} case-insensitive misses in a {ENTRIES}-entry directory: {elapsed:.3f} s")
    assert source.index_builds == 2  # the root and "Crowded", once each
    (big_directory / "Crowded" / "NEW.efi").write_bytes(b"new")
    try:
        assert asyncio.run(source.open("crowded/new.EFI")).size == 3  # the mtime moved: rebuilt
        assert source.index_builds == 3  # "Crowded" again; the root did not change
    finally:
        (big_directory / "Crowded" / "NEW.efi").unlink()


def test_the_server_keeps_serving_during_the_misses(big_directory: Path) -> None:
    server = ServerProcess(["--case-insensitive", str(big_directory)])
    scanners = [RawClient(server.address, timeout=10) for _ in range(SCANNERS)]  # one session each
    try:
        with RawClient(server.address, timeout=10) as other:
            for index, scanner in enumerate(scanners):
                scanner.rrq(f"crowded/missing-{index}.efi")
            started = time.monotonic()
            fetched = other.fetch("other.txt")
            elapsed = time.monotonic() - started
        answers = [scanner.receive_or_none(5) for scanner in scanners]
    finally:
        for scanner in scanners:
            scanner.close()
        server.stop()
    print(f"\nanother client's fetch during {SCANNERS} concurrent misses: {1000 * elapsed:.1f} ms")
    assert fetched.error is None and fetched.data == b"other client"
    assert all(answer is not None and isinstance(answer[0], Error) for answer in answers)
