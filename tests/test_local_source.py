"""The local source: confinement to the root, only regular files, shared resident copies."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from edgetftp.sources.base import AccessDenied, FileNotFound
from edgetftp.sources.local import LocalSource

pytestmark = pytest.mark.unit


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.efi").write_bytes(b"A" * 1000)
    (root / "sub" / "Mixed.Case").write_bytes(b"mixed")
    (tmp_path / "secret").write_bytes(b"secret")
    (tmp_path / "root-sibling").mkdir()
    (tmp_path / "root-sibling" / "x").write_bytes(b"sibling")
    os.symlink("a.efi", root / "inside-link")
    os.symlink(tmp_path / "secret", root / "outside-link")
    os.symlink("../root-sibling", root / "sibling-dir")
    os.mkfifo(root / "fifo")
    return root


def open_now(source: LocalSource, path: str) -> bytes:
    content = source.open_now(path)
    assert content.memory is not None
    return bytes(content.memory)


def test_regular_files_and_inner_symlinks(tree: Path) -> None:
    source = LocalSource(tree)
    assert open_now(source, "a.efi") == b"A" * 1000
    assert open_now(source, "inside-link") == b"A" * 1000


@pytest.mark.parametrize("path", ["outside-link", "sibling-dir/x", "sub", "fifo", "/dev/zero", "../secret"])
def test_escapes_and_special_files_are_refused(tree: Path, path: str) -> None:
    with pytest.raises((AccessDenied, FileNotFound)):
        LocalSource(tree).open_now(path)


def test_fifo_does_not_block(tree: Path) -> None:
    with pytest.raises(AccessDenied):
        LocalSource(tree).open_now("fifo")  # O_NONBLOCK: returns at once instead of waiting for a writer


def test_missing_file(tree: Path) -> None:
    with pytest.raises(FileNotFound):
        LocalSource(tree).open_now("nope.efi")


def test_case_insensitive_lookup(tree: Path) -> None:
    assert open_now(LocalSource(tree, case_insensitive=True), "SUB/mixed.case") == b"mixed"
    with pytest.raises(FileNotFound):
        LocalSource(tree).open_now("SUB/mixed.case")


def test_concurrent_opens_share_one_copy_and_changes_are_seen(tree: Path) -> None:
    source = LocalSource(tree)
    first, second = source.open_now("a.efi"), source.open_now("a.efi")
    assert first.memory is not None and second.memory is not None
    assert first.memory.obj is second.memory.obj  # one bytes object for every transfer
    (tree / "a.efi").write_bytes(b"B" * 10)
    assert open_now(source, "a.efi") == b"B" * 10


def test_large_files_are_streamed(tree: Path) -> None:
    (tree / "large.bin").write_bytes(os.urandom(300_000))
    source = LocalSource(tree, resident_max=100_000)
    content = source.open_now("large.bin")
    assert content.memory is None and content.size == 300_000

    async def read_all() -> bytes:
        chunks, offset = [], 0
        while offset < content.size:
            chunk = await content.read(offset, 65536)
            chunks.append(chunk)
            offset += len(chunk)
        await content.aclose()
        return b"".join(chunks)

    assert asyncio.run(read_all()) == (tree / "large.bin").read_bytes()
