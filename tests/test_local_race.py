"""Confinement holds against a local writer racing the lookup (issue 12 item 6).

A thread swaps ``root/race`` (a directory holding ``x.efi``) with ``root/swap`` (a symlink to a
directory outside the root) with ``renameat2(RENAME_EXCHANGE)`` as fast as it can, while clients ask
for ``race/x.efi``.  Before the change, ``realpath`` then ``open`` served 19% of the requests from
outside and 15% hit an uncaught OSError ("Internal error").  Now every answer is the inside file or
a clean refusal: zero outside bytes, zero internal errors -- through the real server (openat2 where
the kernel has it) and in-process through the openat walk.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgetftp.sources.base import SourceError
from edgetftp.sources.local import LocalSource
from tests.conftest import ServerProcess
from tests.rawclient import RawClient

pytestmark = pytest.mark.integration

RACE_SECONDS = 10.0
INSIDE = b"I" * 3000
OUTSIDE = b"O" * 3000
AT_FDCWD = -100
RENAME_EXCHANGE = 2


def _renameat2() -> Callable[[bytes, bytes], int]:
    libc = ctypes.CDLL(None, use_errno=True)
    function = libc.renameat2
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

    def exchange(first: bytes, second: bytes) -> int:
        return int(function(AT_FDCWD, first, AT_FDCWD, second, RENAME_EXCHANGE))

    return exchange


@pytest.fixture
def race_tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "race").mkdir(parents=True)
    (root / "race" / "x.efi").write_bytes(INSIDE)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.efi").write_bytes(OUTSIDE)
    os.symlink(tmp_path / "outside", root / "swap")
    return root


@pytest.fixture
def swapper(race_tree: Path) -> Iterator[Counter[str]]:
    """Exchange ``race`` and ``swap`` in a loop until the test ends; counts the swaps done."""
    try:
        exchange = _renameat2()
    except AttributeError:
        pytest.skip("the C library has no renameat2")
    counts: Counter[str] = Counter()
    stop = threading.Event()
    first, second = os.fsencode(race_tree / "race"), os.fsencode(race_tree / "swap")

    def swap() -> None:
        while not stop.is_set():
            if exchange(first, second) == 0:
                counts["swaps"] += 1
            else:
                counts["failed"] += 1

    thread = threading.Thread(target=swap, name="renameat2-exchange", daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join()


def test_exchange_race_through_the_real_server(race_tree: Path, swapper: Counter[str]) -> None:
    server = ServerProcess([str(race_tree)])
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + RACE_SECONDS

    def client() -> None:
        with RawClient(server.address, timeout=5) as raw:
            while time.monotonic() < deadline:
                result = raw.fetch("race/x.efi")
                if result.error is not None:
                    outcome = f"error {result.error.code} {result.error.message}"
                else:
                    outcome = {INSIDE: "inside"}.get(
                        result.data, "outside" if b"O" in result.data else "other"
                    )
                with lock:
                    outcomes[outcome] += 1

    try:
        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        log = server.log()
    finally:
        server.stop()
    print(f"\nrace through the server: {dict(outcomes)}, swaps {dict(swapper)}")
    assert swapper["swaps"] > 1000  # the race really ran
    assert outcomes["inside"] > 0
    assert outcomes["outside"] == outcomes["other"] == 0
    assert not [outcome for outcome in outcomes if "Internal" in outcome]
    assert "internal error" not in log.lower() and "Traceback" not in log


def test_exchange_race_through_the_openat_walk(race_tree: Path, swapper: Counter[str]) -> None:
    source = LocalSource(race_tree, use_openat2=False, cache_bytes=0)
    outcomes: Counter[str] = Counter()

    async def scenario() -> None:
        deadline = time.monotonic() + RACE_SECONDS / 2
        while time.monotonic() < deadline:
            try:
                content = await source.open("race/x.efi")
            except SourceError as exc:
                outcomes[type(exc).__name__] += 1
                continue
            data = bytes(content.memory) if content.memory is not None else b""
            outcomes["inside" if data == INSIDE else "outside"] += 1
            await content.aclose()

    asyncio.run(scenario())
    print(f"\nrace through the walk: {dict(outcomes)}, swaps {dict(swapper)}")
    assert outcomes["inside"] > 0 and outcomes["outside"] == 0
    assert set(outcomes) <= {"inside", "AccessDenied", "FileNotFound"}
