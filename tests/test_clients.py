"""Real TFTP clients (curl, atftp, tftp-hpa, busybox) fetch files from a real edgetftp process."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.impairment import Direction, ImpairmentProxy, Spare
from tests.conftest import SIZES, ContentTree, ServerProcess

pytestmark = pytest.mark.integration


def _have(tool: str) -> bool:
    return shutil.which(tool) is not None


def fetch_with(
    client: str,
    server: tuple[str, int],
    name: str,
    out: Path,
    blksize: int | None = None,
    windowsize: int | None = None,
    curl_max_time: int | None = 60,
) -> subprocess.CompletedProcess[bytes]:
    """``client`` fetches ``name`` into ``out``; ``curl_max_time`` None runs curl without
    --max-time (then it re-ACKs every 72 s, not every 5)."""
    host, port = server
    if client == "curl":
        url_host = f"[{host}]" if ":" in host else host
        options = ["--tftp-blksize", str(blksize)] if blksize else ["--tftp-no-options"]
        if curl_max_time is not None:
            options += ["--max-time", str(curl_max_time)]
        command = [
            "curl",
            "-sS",
            *options,
            "-o",
            str(out),
            f"tftp://{url_host}:{port}/{name}",
        ]
    elif client == "atftp":
        options = []
        if blksize:
            options += ["--option", f"blksize {blksize}", "--option", "tsize"]
        if windowsize:
            options += ["--option", f"windowsize {windowsize}"]
        command = ["atftp", *options, "-g", "-r", name, "-l", str(out), host, str(port)]
    elif client == "tftp-hpa":
        command = ["tftp", host, str(port), "-m", "binary", "-c", "get", name, str(out)]
    elif client == "busybox":
        options = ["-b", str(blksize)] if blksize else []
        command = ["busybox", "tftp", *options, "-g", "-r", name, "-l", str(out), host, str(port)]
    else:
        raise ValueError(client)
    return subprocess.run(command, capture_output=True, timeout=120, check=False)


def concurrent_fetches(server: ServerProcess, name: str, out_dir: Path, clients: int) -> list[bytes]:
    """``clients`` real client processes at once (curl, atftp and busybox in turn, blksize 1432); what
    each one wrote (empty when it wrote nothing)."""
    host, port = server.address
    commands = []
    for i in range(clients):
        out = out_dir / f"out-{i}"
        kind = ("curl", "atftp", "busybox")[i % 3]
        if kind == "curl":
            command = [
                "curl",
                "-sS",
                "--tftp-blksize",
                "1432",
                "-o",
                str(out),
                f"tftp://{host}:{port}/{name}",
            ]
        elif kind == "atftp":
            command = ["atftp", "--option", "blksize 1432", "-g", "-r", name, "-l", str(out), host, str(port)]
        else:
            command = ["busybox", "tftp", "-b", "1432", "-g", "-r", name, "-l", str(out), host, str(port)]
        commands.append((command, out))
    processes = [
        (subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out)
        for command, out in commands
    ]
    try:
        for process, _ in processes:
            process.wait(timeout=120)
    finally:
        for process, _ in processes:  # a client still running after a failure is ended by its PID
            if process.poll() is None:
                process.kill()
                process.wait()
    return [out.read_bytes() if out.exists() else b"" for _, out in processes]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


CLIENTS = {
    "curl": "curl",
    "atftp": "atftp",
    "tftp-hpa": "tftp",
    "busybox": "busybox",
}
# tftp-hpa 5.2's client cannot ask for a blksize: it always runs at 512.
BLKSIZES: dict[str, list[int | None]] = {
    "curl": [None, 1428, 8192],
    "atftp": [None, 1428, 8192],
    "tftp-hpa": [None],
    "busybox": [None, 1428, 8192],
}
CASES = [
    pytest.param(client, blksize, id=f"{client}-{blksize or 'default'}")
    for client in CLIENTS
    for blksize in BLKSIZES[client]
]


@pytest.mark.parametrize(("client", "blksize"), CASES)
def test_every_size_with_every_client(
    client: str, blksize: int | None, shared_server: ServerProcess, content: ContentTree, tmp_path: Path
) -> None:
    if not _have(CLIENTS[client]):
        pytest.skip(f"{client} is not installed")
    names = [*SIZES, "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", "Boot/x64/wdsnbp.com"]
    for name in names:
        if client == "curl" and name == "empty.bin" and blksize:
            continue  # curl 7.88 fails on 0-byte files when it sent options, with any server
        out = tmp_path / name.replace("/", "_")
        result = fetch_with(client, shared_server.address, name, out, blksize)
        assert result.returncode == 0, (name, result.stderr)
        assert sha256_of(out) == content.digests[name], f"{client} blksize={blksize} {name}"


@pytest.mark.parametrize("windowsize", [4, 16])
def test_atftp_windowsize(
    windowsize: int, shared_server: ServerProcess, content: ContentTree, tmp_path: Path
) -> None:
    if not _have("atftp"):
        pytest.skip("atftp is not installed")
    for name in ("big.bin", "x1428.bin", "s513.bin", "empty.bin"):
        out = tmp_path / name
        result = fetch_with("atftp", shared_server.address, name, out, blksize=1428, windowsize=windowsize)
        assert result.returncode == 0, result.stderr
        assert sha256_of(out) == content.digests[name]
    assert f"windowsize={windowsize}" in shared_server.log()


@pytest.mark.parametrize("client", ["curl", "atftp"])  # busybox refuses blksize < 512
def test_block_number_rollover(
    client: str, shared_server: ServerProcess, content: ContentTree, tmp_path: Path
) -> None:
    """blksize 8 needs 65,549 blocks for rollover.bin: the block number wraps from 65535 to 0."""
    if not _have(client):
        pytest.skip(f"{client} is not installed")
    out = tmp_path / "rollover.bin"
    result = fetch_with(client, shared_server.address, "rollover.bin", out, blksize=8)
    assert result.returncode == 0, result.stderr
    assert sha256_of(out) == content.digests["rollover.bin"]


def test_netascii_with_tftp_hpa(shared_server: ServerProcess, content: ContentTree, tmp_path: Path) -> None:
    """tftp-hpa converts netascii back to the local convention: the bytes round-trip exactly."""
    if not _have("tftp"):
        pytest.skip("tftp-hpa is not installed")
    out = tmp_path / "text.txt"
    host, port = shared_server.address
    subprocess.run(
        ["tftp", host, str(port), "-m", "netascii", "-c", "get", "text.txt", str(out)],
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert sha256_of(out) == content.digests["text.txt"]


def test_missing_file_fails_every_client(shared_server: ServerProcess, tmp_path: Path) -> None:
    for client, tool in CLIENTS.items():
        if not _have(tool):
            continue
        out = tmp_path / f"{client}.out"
        result = fetch_with(client, shared_server.address, "no-such-file.efi", out)
        produced = out.exists() and out.stat().st_size > 0
        assert result.returncode != 0 or not produced, client


def drop_the_first_ack_0(count: int = 1) -> tuple[list[bytes], Spare]:
    """A relay ``spare`` that lets everything through but the client's first ``count`` ACK 0s (with
    loss 1.0)."""
    dropped: list[bytes] = []

    def spare(direction: Direction, datagram: bytes) -> bool:
        if direction is Direction.TO_SERVER and datagram[:4] == b"\x00\x04\x00\x00" and len(dropped) < count:
            dropped.append(datagram)
            return False
        return True

    return dropped, spare


@pytest.mark.parametrize(
    ("client", "lost"),
    [
        # curl without --max-time repeats its ACK 0 only after 72 s (an hour / 50), after our session
        # without an ACK has given up (19 s): it hung for good until our timer resent the OACK late.
        ("curl", 1),
        # atftp aborts on a second OACK: its own re-ACK (5 s) must come before our late resend.
        ("atftp", 1),
        ("busybox", 1),
        # its ACK 0 and its re-ACK 5 s later: a second OACK at 7 s would make atftp abort (a 10 MiB
        # cell of the bench at 3% loss did), so it must wait for atftp's next re-ACK (10 s)
        ("atftp", 2),
    ],
)
def test_a_lost_ack_0_costs_each_client_seconds_not_the_file(
    client: str, lost: int, shared_server: ServerProcess, content: ContentTree, tmp_path: Path
) -> None:
    if not _have(CLIENTS[client]):
        pytest.skip(f"{client} is not installed")
    dropped, spare = drop_the_first_ack_0(lost)
    out = tmp_path / "x1432.bin"
    with ImpairmentProxy.start_in_thread(shared_server.address, loss=1.0, spare=spare) as proxy:
        result = fetch_with(client, proxy.address, "x1432.bin", out, blksize=1428, curl_max_time=None)
    assert len(dropped) == lost
    assert result.returncode == 0, result.stderr
    assert sha256_of(out) == content.digests["x1432.bin"]
