"""Boot iPXE in QEMU as a real PXE client of a TFTP server on the host.

The guest is Debian's iPXE ROM for virtio-net (``ipxe-qemu``) under SeaBIOS, with QEMU user networking:
the host's 127.0.0.1 is 10.0.2.2 in the guest, and port 69 there is QEMU's own TFTP server, so the
server under test listens on a high port and DHCP hands out ``tftp://10.0.2.2:PORT/boot.ipxe``.

``boot.ipxe`` prints a marker, fetches ``payload.bin`` from the same server, prints a second marker and
then sleeps, so the screen stays still (this iPXE build has no ``poweroff``).  The ROM prints only to
the VGA console, so the harness reads the VGA text buffer (0xb8000) through QMP ``pmemsave`` a few
times a second, keeps every line seen, and quits QEMU through QMP once the second marker (or a
failure) shows.  That text is the guest-side evidence; the wire-side evidence (the relay saw every
DATA block and the final ACK) comes from ``tests.ipxe.wire.TransferLog`` on a proxy in front of the
server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

QEMU_BINARY = "qemu-system-x86_64"
IPXE_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")  # what QEMU loads for virtio-net-pci on Debian
GUEST_HOST_ADDRESS = "10.0.2.2"
MARKER = "EDGETFTP-IPXE"
SCRIPT_LOADED = f"{MARKER} script loaded"
PAYLOAD_FETCHED = f"{MARKER} payload fetched"
# iPXE's and SeaBIOS's words for giving up; any of them ends the boot early as a failure
FAILURE_TEXTS = ("Could not boot", "No more network devices", "No bootable device", "Connection timed out")
VGA_TEXT_ADDRESS = 0xB8000
VGA_COLUMNS, VGA_ROWS = 80, 25
SCREEN_POLL_SECONDS = 0.1


def unavailable_reason() -> str | None:
    """None when QEMU and the iPXE ROM are installed; otherwise what to install."""
    if shutil.which(QEMU_BINARY) is None:
        return f"{QEMU_BINARY} is not installed (apt-get install qemu-system-x86)"
    if not IPXE_ROM.exists():
        return f"the iPXE ROM {IPXE_ROM} is missing (apt-get install ipxe-qemu)"
    return None


def write_boot_content(root: Path, guest_port: int, payload_bytes: int = 1024 * 1024, seed: int = 7) -> str:
    """Write ``boot.ipxe`` and ``payload.bin`` (deterministic bytes) into ``root``; return its sha256."""
    root.mkdir(parents=True, exist_ok=True)
    payload = _deterministic_bytes(payload_bytes, seed)
    (root / "payload.bin").write_bytes(payload)
    script = "\n".join(
        [
            "#!ipxe",
            f"echo {SCRIPT_LOADED}",
            f"imgfetch tftp://{GUEST_HOST_ADDRESS}:{guest_port}/payload.bin",
            f"echo {PAYLOAD_FETCHED}",
            "sleep 600",
            "",
        ]
    )
    (root / "boot.ipxe").write_text(script)
    for path in (root / "payload.bin", root / "boot.ipxe"):
        path.chmod(0o644)
    return hashlib.sha256(payload).hexdigest()


def _deterministic_bytes(size: int, seed: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


@dataclass
class BootResult:
    succeeded: bool
    """The guest printed the 'payload fetched' marker."""
    elapsed: float
    """Seconds from starting QEMU to the marker (or to the end of the attempt)."""
    started_at: float
    """time.monotonic() when QEMU was started (to relate wire timestamps to the boot)."""
    screen_lines: list[str] = field(default_factory=list)
    """Every distinct non-empty line the VGA console showed, in order of first appearance."""
    failure: str | None = None
    timed_out: bool = False
    qemu_returncode: int | None = None

    def screen_text(self) -> str:
        return "\n".join(self.screen_lines)


class _Qmp:
    """A minimal QMP client over a unix socket (one command at a time, events skipped)."""

    def __init__(self, path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(10)
                self._sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self._sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._file = self._sock.makefile("rw", encoding="utf-8")
        self._file.readline()  # the greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: object) -> object:
        message: dict[str, object] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._file.write(json.dumps(message) + "\n")
        self._file.flush()
        while True:
            line = self._file.readline()
            if not line:
                raise ConnectionError("QMP closed")
            reply = json.loads(line)
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
            self._sock.close()


def read_vga_text(qmp: _Qmp, scratch: Path) -> list[str]:
    """The 80x25 text screen: character bytes are the even bytes of the buffer (odd ones are colours)."""
    size = VGA_COLUMNS * VGA_ROWS * 2
    qmp.execute("pmemsave", val=VGA_TEXT_ADDRESS, size=size, filename=str(scratch))
    raw = scratch.read_bytes()[0::2].decode("cp437")
    return [raw[row * VGA_COLUMNS : (row + 1) * VGA_COLUMNS].rstrip() for row in range(VGA_ROWS)]


def qemu_command(guest_port: int, qmp_path: Path) -> list[str]:
    bootfile = f"tftp://{GUEST_HOST_ADDRESS}:{guest_port}/boot.ipxe"
    return [
        QEMU_BINARY,
        "-nodefaults",  # no floppy or CD-ROM for SeaBIOS to try first
        "-vga",
        "std",  # the text console the harness reads
        "-accel",
        "tcg",  # KVM hangs on these machines
        "-display",
        "none",
        "-m",
        "128",
        "-netdev",
        f"user,id=n0,bootfile={bootfile}",
        "-device",
        "virtio-net-pci,netdev=n0",
        "-boot",
        "n",
        "-no-reboot",
        "-qmp",
        f"unix:{qmp_path},server=on,wait=off",
    ]


def boot(guest_port: int, timeout: float = 90.0, log_dir: Path | None = None) -> BootResult:
    """Boot iPXE against ``tftp://10.0.2.2:guest_port/boot.ipxe`` (the host's 127.0.0.1:guest_port).

    Returns when the guest printed the success marker or a failure text, or after ``timeout`` seconds;
    QEMU is always ended (QMP quit, then SIGKILL by PID).
    """
    # unix socket paths must stay under ~108 bytes, so not under a deep pytest tmp_path
    workdir = Path(tempfile.mkdtemp(prefix="ipxe-qemu-"))
    qmp_path, scratch = workdir / "qmp.sock", workdir / "vga.bin"
    log_path = (log_dir or workdir) / "qemu.log"
    with log_path.open("wb") as log:
        started_at = time.monotonic()
        process = subprocess.Popen(
            qemu_command(guest_port, qmp_path), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    result = BootResult(succeeded=False, elapsed=0.0, started_at=started_at)
    qmp: _Qmp | None = None
    try:
        qmp = _Qmp(qmp_path, timeout=20)
        _watch_screen(qmp, scratch, result, deadline=started_at + timeout)
        with contextlib.suppress(OSError, ConnectionError, RuntimeError):
            qmp.execute("quit")
    finally:
        if qmp is not None:
            qmp.close()
        result.qemu_returncode = _end(process)
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _watch_screen(qmp: _Qmp, scratch: Path, result: BootResult, deadline: float) -> None:
    seen: dict[str, None] = {}
    while True:
        now = time.monotonic()
        for line in read_vga_text(qmp, scratch):
            if line.strip():
                seen.setdefault(line, None)
        result.screen_lines = list(seen)
        result.elapsed = now - result.started_at
        if any(PAYLOAD_FETCHED in line for line in seen):
            result.succeeded = True
            return
        failures = [line for line in seen if any(text in line for text in FAILURE_TEXTS)]
        if failures:
            result.failure = failures[0]
            return
        if now > deadline:
            result.timed_out = True
            return
        time.sleep(SCREEN_POLL_SECONDS)


def _end(process: subprocess.Popen[bytes]) -> int:
    """Wait briefly for QEMU to exit after ``quit``; otherwise kill it by its PID."""
    try:
        return process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, 9)
        return process.wait(timeout=10)
