"""iPXE in QEMU boots through two layers in one boot: binaries from the directory, scripts from an origin.

SOURCE is ``<baked dir>,http://127.0.0.1:PORT/boot/``.  The guest's DHCP bootfile is ``boot.ipxe``,
which only the origin has: its first answer chainloads ``undionly.kpxe`` (Debian's real iPXE
binary, only in the directory), the chainloaded iPXE asks for ``boot.ipxe`` again, and the origin's
second answer prints the markers and fetches ``payload.bin`` (directory again).  Evidence from the
guest's screen (both scripts' lines), the origin's request log (two ``boot.ipxe`` requests with the
client's context; never a request for the directory's files) and the server's transfer log.
"""

from __future__ import annotations

import random
import shutil
import threading
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.ipxe import qemu
from tests.originsupport import OriginServer, RawOrigin

pytestmark = pytest.mark.slow

UNDIONLY = Path("/usr/lib/ipxe/undionly.kpxe")
CHAINING = "EDGETFTP-ORIGIN chaining"
BOOT_TIMEOUT = 180.0


@pytest.fixture(scope="module", autouse=True)
def qemu_available() -> None:
    if reason := qemu.unavailable_reason():
        pytest.skip(reason)
    if not UNDIONLY.exists():
        pytest.skip(f"{UNDIONLY} is missing (apt-get install ipxe)")


class TwoStageScripts:
    """The origin's boot.ipxe: the first request chainloads undionly.kpxe, later ones fetch the payload."""

    def __init__(self, guest_port: int) -> None:
        self.guest_port = guest_port
        self.served = 0
        self._lock = threading.Lock()

    def __call__(self, headers: dict[str, str]) -> bytes:
        with self._lock:
            self.served += 1
            first = self.served == 1
        base = f"tftp://{qemu.GUEST_HOST_ADDRESS}:{self.guest_port}"
        client = f"{headers.get('X-TFTP-IP')}:{headers.get('X-TFTP-Port')}"
        if first:
            lines = ["#!ipxe", f"echo {CHAINING} for {client}", f"chain {base}/undionly.kpxe"]
        else:
            lines = [
                "#!ipxe",
                f"echo {qemu.SCRIPT_LOADED} for {client}",
                f"imgfetch {base}/payload.bin",
                f"echo {qemu.PAYLOAD_FETCHED}",
                "sleep 600",
            ]
        return ("\n".join(lines) + "\n").encode()


def test_ipxe_chainloads_a_baked_binary_and_a_generated_script(
    origins: tuple[OriginServer, RawOrigin], tmp_path: Path
) -> None:
    origin = origins[0]
    origin.start()
    origin.reset()
    baked = tmp_path / "baked"
    baked.mkdir()
    shutil.copy(UNDIONLY, baked / "undionly.kpxe")
    payload = random.Random(14).randbytes(256 * 1024)
    (baked / "payload.bin").write_bytes(payload)
    server = ServerProcess(["--log-level", "INFO", f"{baked},{origin.prefix()}"])
    scripts = TwoStageScripts(server.port)
    origin.generator = scripts
    try:
        result = qemu.boot(server.port, timeout=BOOT_TIMEOUT, log_dir=tmp_path)
        log = server.log()
    finally:
        server.stop()
    screen = result.screen_text()
    assert result.succeeded, f"iPXE did not finish ({result.failure or 'timeout'}):\n{screen}\n{log}"
    assert CHAINING in screen and "undionly.kpxe... ok" in screen and qemu.SCRIPT_LOADED in screen
    boot_requests = [r for r in origin.logged() if r.raw_path == "/boot/boot.ipxe"]
    assert len(boot_requests) == 2 and scripts.served == 2
    assert all(r.headers["X-TFTP-IP"] == "127.0.0.1" for r in boot_requests)  # slirp's view of the guest
    assert {r.raw_path for r in origin.logged()} == {"/boot/boot.ipxe"}  # binaries never asked there
    completed = [line for line in log.splitlines() if "transfer completed client=127.0.0.1" in line]
    for name, size in (("undionly.kpxe", UNDIONLY.stat().st_size), ("payload.bin", len(payload))):
        assert any(f"file='{name}' bytes={size} " in line for line in completed), (name, completed)
    print(f"\niPXE two-layer boot: {result.elapsed:.1f} s to the marker (boot.ipxe twice from the origin)")
