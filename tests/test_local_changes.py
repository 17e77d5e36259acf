"""A streamed local file that changes while a real client fetches it (issue 12 item 4).

Before: a short pread counted as the end of the file, so a truncated file "completed" with 2 of
4 MiB, an in-place overwrite delivered old and new bytes mixed, and a grown file sent more than the
tsize.  Now the source reads from the descriptor it opened, checks size/mtime/inode around every
read, and raises SourceChanged: the client gets an ERROR, the server logs the transfer as a source
error and counts it in ``edgetftp_source_errors{kind="changed"}``.  Renaming a new file over the
old one stays consistent (the opened inode is served to the end).
"""

from __future__ import annotations

import os
import random
import shutil
import urllib.request
from pathlib import Path

import pytest

from edgetftp.protocol import Data, Error, OptionAck
from tests.conftest import ServerProcess, free_tcp_port
from tests.rawclient import RawClient

pytestmark = pytest.mark.integration

SIZE = 4 * 2**20
BLKSIZE = 1432
OLD = random.Random(4).randbytes(SIZE)
NEW = random.Random(5).randbytes(SIZE)


def change_file(path: Path, change: str) -> None:
    if change == "truncate":
        os.truncate(path, SIZE // 2)
    elif change == "overwrite":  # what cp does: O_TRUNC, then write the new bytes
        replacement = path.with_name("replacement")
        replacement.write_bytes(NEW)
        shutil.copyfile(replacement, path)
    elif change == "grow":
        with open(path, "ab") as file:
            file.write(b"x" * 65536)
    elif change == "rename-over":
        replacement = path.with_name("replacement")
        replacement.write_bytes(NEW)
        os.rename(replacement, path)


def fetch_while_changing(
    server: ServerProcess, name: str, path: Path, change: str
) -> tuple[bytes, Error | None]:
    """Lock-step fetch; the file is changed once the first DATA arrived."""
    received: list[bytes] = []
    with RawClient(server.address, timeout=10) as client:
        client.rrq(name, blksize=BLKSIZE, tsize=0)
        expected = 1
        while True:
            packet, address = client.receive()
            if isinstance(packet, Error):
                return b"".join(received), packet
            if isinstance(packet, OptionAck):
                assert packet.options["tsize"] == str(SIZE)
                client.ack(0, address)
                continue
            assert isinstance(packet, Data)
            if packet.block != expected & 0xFFFF:
                continue
            received.append(packet.payload)
            if expected == 1:
                change_file(path, change)
            client.ack(packet.block, address)
            if len(packet.payload) < BLKSIZE:
                return b"".join(received), None
            expected += 1


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    lines = [line for line in text.splitlines() if line.startswith(name)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


@pytest.mark.parametrize("change", ["truncate", "overwrite", "grow"])
def test_a_file_changed_mid_transfer_ends_in_an_error(tmp_path: Path, change: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    path = root / "image.bin"
    path.write_bytes(OLD)
    http_port = free_tcp_port()
    server = ServerProcess(
        ["--cache-object-max", "65536", "--http-listen", f"127.0.0.1:{http_port}", str(root)]
    )
    try:
        data, error = fetch_while_changing(server, "image.bin", path, change)
        log = server.wait_for_log("source-error")
        changed = metric(http_port, 'edgetftp_source_errors_total{kind="changed"}')
    finally:
        server.stop()
    assert error is not None and error.code == 0, f"completed with {len(data)} bytes"
    assert len(data) < SIZE and data == OLD[: len(data)]  # only bytes of the file as opened
    assert "changed" in log and "transfer completed" not in log
    assert changed == 1


def test_a_file_replaced_by_rename_is_served_as_opened(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    path = root / "image.bin"
    path.write_bytes(OLD)
    server = ServerProcess(["--cache-object-max", "65536", str(root)])
    try:
        data, error = fetch_while_changing(server, "image.bin", path, "rename-over")
    finally:
        server.stop()
    assert error is None and data == OLD
