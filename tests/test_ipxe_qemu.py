"""iPXE in QEMU as a real PXE client: it loads boot.ipxe over TFTP, which fetches payload.bin.

Evidence comes from both sides: the guest's VGA console (iPXE's own "... ok" lines and the script's
markers, read through QMP) and the wire (the relay in front of the server saw every DATA block of
both files, their sha256 matches the files served, and the guest ACKed the last block).

Extra edgetftp flags for all edgetftp cases can be given in ``EDGETFTP_IPXE_EXTRA_ARGS`` (e.g.
"--anticipate 32"); ``python -m tests.ipxe.matrix`` runs the client x anticipation x RTT table.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from bench.impairment import ImpairmentProxy
from tests.ipxe import qemu, servers
from tests.ipxe.wire import TransferLog

pytestmark = pytest.mark.slow

BOOT_TIMEOUT = 120.0
LOSSY = {"loss": 0.02, "duplicate": 0.02, "reorder": 0.05, "delay_ms": 2.0, "jitter_ms": 2.0}


@pytest.fixture(scope="module", autouse=True)
def qemu_available() -> None:
    if reason := qemu.unavailable_reason():
        pytest.skip(reason)


@pytest.fixture
def served_dir(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "root"
    root.mkdir()
    yield root


def extra_edgetftp_args() -> list[str]:
    return shlex.split(os.environ.get("EDGETFTP_IPXE_EXTRA_ARGS", ""))


def boot_through_relay(
    server_factory: AbstractContextManager[servers.ServerProcess],
    served_dir: Path,
    payload_bytes: int = 1024 * 1024,
    **impairment: float,
) -> tuple[qemu.BootResult, TransferLog, str, servers.ServerProcess]:
    log = TransferLog()
    with (
        server_factory as server,
        ImpairmentProxy.start_in_thread(server.address, seed=3, tap=log, **impairment) as proxy,
    ):
        payload_sha = qemu.write_boot_content(served_dir, proxy.address[1], payload_bytes)
        result = qemu.boot(proxy.address[1], timeout=BOOT_TIMEOUT, log_dir=served_dir.parent)
    return result, log, payload_sha, server


def assert_booted(result: qemu.BootResult, log: TransferLog, payload_sha: str, served_dir: Path) -> None:
    screen = result.screen_text()
    assert result.succeeded, f"iPXE did not finish ({result.failure or 'timeout'}):\n{screen}"
    assert qemu.SCRIPT_LOADED in screen and "boot.ipxe... ok" in screen and "payload.bin... ok" in screen
    script_sha = hashlib.sha256((served_dir / "boot.ipxe").read_bytes()).hexdigest()
    for name, digest in (("boot.ipxe", script_sha), ("payload.bin", payload_sha)):
        done = [t for t in log.find(name) if t.complete]
        assert done, f"the relay never saw the final ACK of {name}: {log.find(name)}"
        assert done[-1].sha256() == digest
        assert done[-1].blksize == 1432  # iPXE asks for 1432 and every server here grants it
    payload = [t for t in log.find("payload.bin") if t.complete][-1]
    print(
        f"\niPXE boot: {result.elapsed:.1f} s to the marker; payload.bin {payload.duration:.3f} s, "
        f"{payload.data_datagrams} DATA datagrams for {len(payload.blocks)} blocks"
    )


def test_ipxe_boots_from_tftpd_hpa(served_dir: Path) -> None:
    if reason := servers.tftpd_hpa_unavailable_reason():
        pytest.skip(reason)
    server = servers.tftpd_hpa(served_dir, log_dir=served_dir.parent)
    result, log, payload_sha, started = boot_through_relay(server, served_dir)
    assert_booted(result, log, payload_sha, served_dir)
    assert all(t.server_port != started.address[1] for t in log.transfers())  # classic per-transfer TIDs


@pytest.mark.parametrize(
    "flags",
    [[], ["--anticipate", "8"], ["--port-mode", "per-transfer"]],
    ids=["defaults", "anticipate-8", "per-transfer"],
)
def test_ipxe_boots_from_edgetftp(served_dir: Path, flags: list[str]) -> None:
    server = servers.edgetftp(served_dir, [*flags, *extra_edgetftp_args()], log_dir=served_dir.parent)
    result, log, payload_sha, started = boot_through_relay(server, served_dir)
    assert_booted(result, log, payload_sha, served_dir)
    assert "transfer completed" in started.log() and "payload.bin" in started.log()
    if "per-transfer" not in flags:
        assert all(t.server_port == started.address[1] for t in log.transfers())


def test_ipxe_boots_from_edgetftp_over_a_lossy_path(served_dir: Path) -> None:
    """2% loss and duplication, 5% reordering, 2 ± 2 ms each way: real firmware still gets every byte."""
    server = servers.edgetftp(served_dir, extra_edgetftp_args(), log_dir=served_dir.parent)
    result, log, payload_sha, _ = boot_through_relay(server, served_dir, 256 * 1024, **LOSSY)
    assert_booted(result, log, payload_sha, served_dir)
