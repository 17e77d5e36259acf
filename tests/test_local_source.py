"""The local source: confinement to the root (openat2 and the openat walk), only regular files, shared
resident copies, ``open_now`` from memory only, streamed files pinned to what was opened."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from edgetftp.sources.base import AccessDenied, Content, FileNotFound, SourceChanged
from edgetftp.sources.local import LocalSource
from tests.s3support import RecordingObserver

T = TypeVar("T")
RESOLVERS = [pytest.param(None, id="openat2"), pytest.param(False, id="walk")]


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable

    return asyncio.run(main())


pytestmark = pytest.mark.unit


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.efi").write_bytes(b"A" * 1000)
    (root / "sub" / "Mixed.Case").write_bytes(b"mixed")
    (root / "sub" / "deeper" / "d.efi").write_bytes(b"deep")
    (tmp_path / "secret").write_bytes(b"secret")
    (tmp_path / "root-sibling").mkdir()
    (tmp_path / "root-sibling" / "x").write_bytes(b"sibling")
    os.symlink("a.efi", root / "inside-link")
    os.symlink("../a.efi", root / "sub" / "up-link")  # relative, stays inside
    os.symlink("sub/deeper", root / "dir-link")  # an inner directory symlink, used mid-path
    os.symlink(tmp_path / "secret", root / "outside-link")
    os.symlink(root / "a.efi", root / "absolute-inside")  # absolute: refused even though inside
    os.symlink("../root-sibling", root / "sibling-dir")
    os.symlink("loop", root / "loop")
    os.mkfifo(root / "fifo")
    return root


def read(source: LocalSource, path: str) -> bytes:
    async def scenario() -> bytes:
        content = await source.open(path)
        try:
            return await read_all(content)
        finally:
            await content.aclose()

    return run(scenario())


async def read_all(content: Content, chunk: int = 65536) -> bytes:
    if content.memory is not None:
        return bytes(content.memory)
    parts, offset = [], 0
    while offset < content.size:
        part = await content.read(offset, chunk)
        parts.append(part)
        offset += len(part)
    return b"".join(parts)


@pytest.mark.parametrize("openat2", RESOLVERS)
def test_regular_files_and_inner_symlinks(tree: Path, openat2: bool | None) -> None:
    source = LocalSource(tree, use_openat2=openat2)
    assert read(source, "a.efi") == b"A" * 1000
    assert read(source, "inside-link") == b"A" * 1000
    assert read(source, "sub/up-link") == b"A" * 1000
    assert read(source, "dir-link/d.efi") == b"deep"


@pytest.mark.parametrize("openat2", RESOLVERS)
@pytest.mark.parametrize(
    "path",
    [
        "outside-link",
        "absolute-inside",
        "sibling-dir/x",
        "sub",
        "fifo",
        "loop",
        "/dev/zero",
        "../secret",
        "sub/../../secret",
    ],
)
def test_escapes_and_special_files_are_refused(tree: Path, path: str, openat2: bool | None) -> None:
    with pytest.raises((AccessDenied, FileNotFound)):
        read(LocalSource(tree, use_openat2=openat2), path)


def test_the_kernel_resolver_is_used_where_it_exists(tree: Path) -> None:
    source = LocalSource(tree)
    assert source.resolver in ("openat2", "openat walk")
    assert LocalSource(tree, use_openat2=False).resolver == "openat walk"


@pytest.mark.parametrize("openat2", RESOLVERS)
def test_missing_file(tree: Path, openat2: bool | None) -> None:
    with pytest.raises(FileNotFound):
        read(LocalSource(tree, use_openat2=openat2), "nope.efi")


def test_fifo_does_not_block(tree: Path) -> None:
    with pytest.raises(AccessDenied):
        read(LocalSource(tree), "fifo")  # O_NONBLOCK: returns at once instead of waiting for a writer


@pytest.mark.parametrize("openat2", RESOLVERS)
def test_case_insensitive_lookup(tree: Path, openat2: bool | None) -> None:
    source = LocalSource(tree, case_insensitive=True, use_openat2=openat2)
    assert read(source, "SUB/mixed.case") == b"mixed"
    (tree / "sub" / "NEW.EFI").write_bytes(b"new")  # the directory's mtime changes: index rebuilt
    assert read(source, "sub/new.efi") == b"new"
    with pytest.raises(FileNotFound):
        read(LocalSource(tree), "SUB/mixed.case")


def test_root_of_slash_serves_beneath_it(tree: Path) -> None:
    source = LocalSource("/")
    assert read(source, str(tree / "a.efi").lstrip("/")) == b"A" * 1000


def test_open_now_answers_from_memory_only(tree: Path) -> None:
    source = LocalSource(tree)
    assert source.open_now("a.efi") is None  # cold: open() reads it on the thread pool
    assert read(source, "a.efi") == b"A" * 1000
    warm = source.open_now("a.efi")
    assert warm is not None and warm.memory is not None and bytes(warm.memory) == b"A" * 1000
    with pytest.raises(FileNotFound):  # a missing name is answered at once (metadata only)
        source.open_now("nope.efi")
    insensitive = LocalSource(tree, case_insensitive=True)
    assert insensitive.open_now("NOPE.efi") is None  # may need a directory listing: open()'s to answer


def test_concurrent_opens_share_one_copy_and_changes_are_seen(tree: Path) -> None:
    source = LocalSource(tree)

    async def scenario() -> None:
        first, second = await asyncio.gather(source.open("a.efi"), source.open("a.efi"))
        assert first.memory is not None and second.memory is not None
        assert first.memory.obj is second.memory.obj  # one buffer for every transfer
        (tree / "a.efi").write_bytes(b"B" * 10)
        third = await source.open("a.efi")
        assert third.memory is not None and bytes(third.memory) == b"B" * 10

    run(scenario())


def test_an_evicted_buffer_in_use_is_shared_not_read_again(tree: Path) -> None:
    for name in ("one", "two", "three"):
        (tree / name).write_bytes(name.encode() * 30_000)
    observer = RecordingObserver()
    source = LocalSource(tree, cache_bytes=200_000, object_max=200_000, observer=observer)

    async def scenario() -> None:
        held = [await source.open(name) for name in ("one", "two", "three")]  # "three" evicts the others
        assert source.buffers.cached <= 200_000
        again = await source.open("one")
        assert again.memory is not None and held[0].memory is not None
        assert again.memory.obj is held[0].memory.obj  # found again, not read into a second copy
        assert source.buffers.resident == 330_000  # every pinned buffer once, nothing more
        held.clear()
        del again

    run(scenario())
    # A pool thread drops its reference to the last fill's result just after handing it over.
    deadline = time.monotonic() + 5
    while source.buffers.resident != source.buffers.cached and time.monotonic() < deadline:
        time.sleep(0.01)
    assert source.buffers.resident == source.buffers.cached <= 200_000  # unpinned: only the LRU remains
    assert observer.cache["eviction"] >= 1
    assert observer.resident[-1] == source.buffers.resident


def test_large_files_are_streamed(tree: Path) -> None:
    (tree / "large.bin").write_bytes(os.urandom(300_000))
    source = LocalSource(tree, object_max=100_000)

    async def scenario() -> bytes:
        content = await source.open("large.bin")
        assert content.memory is None and content.size == 300_000
        assert source.open_now("large.bin") is None
        try:
            return await read_all(content)
        finally:
            await content.aclose()

    assert run(scenario()) == (tree / "large.bin").read_bytes()


@pytest.mark.parametrize("change", ["truncate", "overwrite", "grow"])
def test_a_streamed_file_that_changes_raises_source_changed(tree: Path, change: str) -> None:
    path = tree / "large.bin"
    path.write_bytes(b"o" * 300_000)
    observer = RecordingObserver()
    source = LocalSource(tree, object_max=100_000, observer=observer)

    async def scenario() -> None:
        content = await source.open("large.bin")
        try:
            assert await content.read(0, 65536) == b"o" * 65536
            with open(path, "r+b") as file:
                if change == "truncate":
                    file.truncate(100_000)
                elif change == "overwrite":
                    file.write(b"n" * 300_000)
                    os.utime(file.fileno(), ns=(1, 1))  # even a size-preserving rewrite moves mtime
                else:
                    file.seek(0, os.SEEK_END)
                    file.write(b"more")
            with pytest.raises(SourceChanged) as caught:
                await content.read(65536, 65536)
            assert caught.value.public_message == "File changed"
        finally:
            await content.aclose()

    run(scenario())
    assert observer.errors["changed"] == 1
