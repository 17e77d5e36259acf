"""UEFI PXE in QEMU: EDK II's own PXE and MTFTP client (OVMF) loads ipxe.efi from edgetftp on port 69.

QEMU's user networking cannot carry this: its slirp answers every UDP datagram to 10.0.2.2:69 with its
own TFTP server (with no ``tftp=`` configured, an error: the guest shows "PXE-E23: Client received
TFTP error from server" and nothing reaches the host), and UEFI PXE always uses port 69 of the DHCP
next-server.  So the guest gets a real link instead, in a network namespace this test makes:

    netns: tap device (10.231.0.1/24) <- QEMU (OVMF, virtio-net, no option ROM: EDK II's own stack)
           dnsmasq: DHCP only; next-server 10.231.0.1; file ipxe.efi, or boot.ipxe for iPXE (option 175)
           relay (bench/impairment, in a thread that entered the namespace) on 10.231.0.1:69,
             delay/loss, and a TransferLog tap: wire evidence of every transfer
           edgetftp on 127.0.0.1:6969 inside the namespace (started with ``ip netns exec``)

Boot: OVMF DHCP -> TFTP ipxe.efi (EDK II asks tsize first, aborts with ERROR 8, then fetches it with
blksize 1468 and windowsize 4) -> iPXE starts, DHCP again -> boot.ipxe -> payload.bin (iPXE: lock-step,
blksize 1432, so ``--anticipate`` applies) -> marker on the console.  OVMF and iPXE print to the
serial port, which QEMU writes to a file that the harness reads.

    python -m tests.test_uefi_pxe --anticipate 0,8,16,32 --delay-ms 0,25    # the boot matrix

Needs root (namespaces, tap), qemu-system-x86, ovmf, dnsmasq-base (or dnsmasq), ipxe (ipxe.efi).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from bench.impairment import ImpairmentProxy, ProxyThread
from tests import serverproc
from tests.ipxe.wire import ObservedTransfer, TransferLog
from tests.serverproc import ServerProcess

OVMF_CANDIDATES = (Path("/usr/share/ovmf/OVMF.fd"), Path("/usr/share/qemu/OVMF.fd"))
IPXE_EFI = Path("/usr/lib/ipxe/ipxe.efi")
QEMU = "qemu-system-x86_64"
SERVER_IP = "10.231.0.1"
PREFIX = 24
DHCP_RANGE = ("10.231.0.100", "10.231.0.150")
UPSTREAM = ("127.0.0.1", 6969)  # edgetftp, inside the namespace
MARKER = "EDGETFTP-UEFI"
SCRIPT_LOADED = f"{MARKER} script loaded"
PAYLOAD_FETCHED = f"{MARKER} payload fetched"
FAILURE_TEXTS = ("PXE-E", "Access Denied", "No bootable", "Could not boot", "Connection timed out")
BOOT_TIMEOUT = 240.0
FINAL_ACK_GRACE = 15.0
CLONE_NEWNET = 0x40000000
_ANSI = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]")

pytestmark = pytest.mark.slow


# --- what is needed ---------------------------------------------------------------------------------------


def ovmf_firmware() -> Path | None:
    return next((path for path in OVMF_CANDIDATES if path.exists()), None)


def unavailable_reason() -> str | None:
    """None when everything the boot needs is here; otherwise what is missing."""
    if os.geteuid() != 0:
        return "needs root (network namespace and tap device)"
    needs = {
        "ip": "iproute2",
        QEMU: "qemu-system-x86",
        "dnsmasq": "dnsmasq-base",
    }
    for program, package in needs.items():
        if shutil.which(program) is None:
            return f"{program} is not installed (apt-get install {package})"
    if ovmf_firmware() is None:
        return "OVMF firmware is missing (apt-get install ovmf)"
    if not IPXE_EFI.exists():
        return f"{IPXE_EFI} is missing (apt-get install ipxe)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing (no tap devices)"
    return None


# --- the namespace and what runs in it --------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Namespace:
    name: str
    tap: str

    def run_in(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    @property
    def path(self) -> Path:
        return Path("/var/run/netns") / self.name


@contextlib.contextmanager
def namespace_with_tap() -> Iterator[Namespace]:
    """A fresh network namespace with loopback and a tap device holding the server address."""
    tag = uuid.uuid4().hex[:6]
    namespace = Namespace(f"edgeuefi{tag}", f"tapuefi{tag}")
    _ip("netns", "add", namespace.name)
    try:
        _ip("-n", namespace.name, "link", "set", "lo", "up")
        _ip("-n", namespace.name, "tuntap", "add", "dev", namespace.tap, "mode", "tap")
        _ip("-n", namespace.name, "addr", "add", f"{SERVER_IP}/{PREFIX}", "dev", namespace.tap)
        _ip("-n", namespace.name, "link", "set", namespace.tap, "up")
        yield namespace
    finally:
        subprocess.run(["ip", "netns", "del", namespace.name], check=False, capture_output=True)


def _enter_namespace(path: Path) -> None:
    """Move the calling thread (only) into the network namespace at ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns {path}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class _NamespacedProxyThread(ProxyThread):
    """The relay's thread enters the namespace before it opens any socket."""

    def __init__(self, proxy: ImpairmentProxy, netns: Path) -> None:
        self._netns = netns
        super().__init__(proxy)

    def _run(self) -> None:
        _enter_namespace(self._netns)
        super()._run()


@dataclass
class Process:
    """A subprocess we started (through ``ip netns exec``, which execs it: same PID); stopped by PID."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)


def _spawn(name: str, command: Sequence[str], log_path: Path) -> Process:
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return Process(name, popen, log_path)


@contextlib.contextmanager
def running(name: str, command: Sequence[str], log_path: Path, ready_text: str) -> Iterator[Process]:
    """Start ``command``; wait until its log shows ``ready_text``; stop it at the end."""
    process = _spawn(name, command, log_path)
    try:
        deadline = time.monotonic() + 30
        while ready_text not in process.log():
            if process.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {process.log()[-2000:]}")
            time.sleep(0.05)
        yield process
    finally:
        process.stop()


def dnsmasq_command(namespace: Namespace, lease_file: Path) -> list[str]:
    """DHCP only (no DNS, no TFTP): ipxe.efi for the firmware, boot.ipxe once iPXE asks (option 175)."""
    return namespace.run_in(
        "dnsmasq",
        "--no-daemon",
        "--user=root",
        "--port=0",
        f"--interface={namespace.tap}",
        "--bind-interfaces",
        f"--dhcp-range={DHCP_RANGE[0]},{DHCP_RANGE[1]},255.255.255.0,1h",
        "--dhcp-match=set:ipxe,175",
        f"--dhcp-boot=tag:!ipxe,ipxe.efi,,{SERVER_IP}",
        f"--dhcp-boot=tag:ipxe,boot.ipxe,,{SERVER_IP}",
        "--no-resolv",
        "--no-hosts",
        f"--dhcp-leasefile={lease_file}",
        "--pid-file=",
        "--log-dhcp",
    )


def edgetftp_in(namespace: Namespace, root: Path, flags: Sequence[str], log_dir: Path) -> ServerProcess:
    """edgetftp inside the namespace (a 1 s drain: the harness ends QEMU mid-boot, and the stop should not
    wait for its sessions), ready when an RRQ sent from inside the namespace gets a TFTP answer."""

    def command(host: str, port: int) -> list[str]:
        return namespace.run_in(*serverproc.edgetftp_command([*flags, str(root)])(host, port))

    probe = serverproc.probe_through(namespace.run_in())
    return ServerProcess(command=command, host=UPSTREAM[0], port=UPSTREAM[1], log_dir=log_dir, probe=probe)


def qemu_command(namespace: Namespace, serial: Path, firmware: Path) -> list[str]:
    return namespace.run_in(
        QEMU,
        "-nodefaults",
        "-accel",
        "tcg",  # KVM hangs on these machines
        "-display",
        "none",
        "-m",
        "256",
        "-bios",
        str(firmware),
        "-netdev",
        f"tap,id=n0,ifname={namespace.tap},script=no,downscript=no",
        # romfile= (empty): no iPXE option ROM, so the firmware's own VirtioNetDxe and PXE stack boot
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
        "-boot",
        "n",
        "-no-reboot",
        "-serial",
        f"file:{serial}",
    )


# --- content ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootContent:
    root: Path
    sha256: dict[str, str]


def write_boot_content(root: Path, payload_bytes: int = 1024 * 1024, seed: int = 7) -> BootContent:
    """ipxe.efi (Debian's), a boot.ipxe that fetches payload.bin and prints markers, payload.bin."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(IPXE_EFI, root / "ipxe.efi")
    script = "\n".join(
        [
            "#!ipxe",
            f"echo {SCRIPT_LOADED}",
            f"imgfetch tftp://{SERVER_IP}/payload.bin",
            f"echo {PAYLOAD_FETCHED}",
            "sleep 600",
            "",
        ]
    )
    (root / "boot.ipxe").write_text(script)
    rng = __import__("random").Random(seed)
    (root / "payload.bin").write_bytes(rng.randbytes(payload_bytes))
    digests = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in root.iterdir()}
    return BootContent(root, digests)


# --- one boot ---------------------------------------------------------------------------------------------


@dataclass
class UefiBoot:
    succeeded: bool
    elapsed: float
    serial_lines: list[str]
    failure: str | None
    transfers: list[ObservedTransfer]
    server_log: str
    final_ack_lag: float | None = None
    """Seconds from the harness seeing the marker to the payload's final ACK (negative: before)."""

    def serial_text(self) -> str:
        return "\n".join(self.serial_lines)

    def complete(self, filename: str) -> list[ObservedTransfer]:
        return [t for t in self.transfers if t.filename.lstrip("/") == filename and t.complete]


def read_serial(path: Path) -> list[str]:
    if not path.exists():
        return []
    text = _ANSI.sub("", path.read_bytes().decode("utf-8", "replace")).replace("\r", "\n")
    return [line.strip() for line in text.splitlines() if line.strip()]


def watch_serial(serial: Path, qemu: Process, timeout: float) -> tuple[bool, str | None, float]:
    """Poll the serial log until the payload marker, a failure text, QEMU's exit or the timeout."""
    started = time.monotonic()
    while True:
        lines = read_serial(serial)
        elapsed = time.monotonic() - started
        if any(PAYLOAD_FETCHED in line for line in lines):
            return True, None, elapsed
        failures = [line for line in lines if any(text in line for text in FAILURE_TEXTS)]
        if failures:
            return False, failures[0], elapsed
        if qemu.popen.poll() is not None:
            return False, f"QEMU exited with {qemu.popen.returncode}", elapsed
        if elapsed > timeout:
            return False, "timeout", elapsed
        time.sleep(0.2)


def boot_uefi(
    workdir: Path,
    edgetftp_flags: Sequence[str] = (),
    delay_ms: float = 0.0,
    loss: float = 0.0,
    payload_bytes: int = 1024 * 1024,
    seed: str = "0",
    timeout: float = BOOT_TIMEOUT,
) -> tuple[UefiBoot, BootContent]:
    """Boot OVMF once against edgetftp (through the relay) and collect both sides' evidence."""
    firmware = ovmf_firmware()
    assert firmware is not None
    content = write_boot_content(workdir / "root", payload_bytes)
    wire = TransferLog()
    serial = workdir / "serial.log"
    with contextlib.ExitStack() as stack:
        namespace = stack.enter_context(namespace_with_tap())
        stack.enter_context(
            running(
                "dnsmasq",
                dnsmasq_command(namespace, workdir / "leases"),
                workdir / "dnsmasq.log",
                "DHCP, sockets bound",
            )
        )
        server = stack.enter_context(edgetftp_in(namespace, content.root, edgetftp_flags, workdir))
        proxy = ImpairmentProxy(
            UPSTREAM, listen=(SERVER_IP, 69), delay_ms=delay_ms, loss=loss, seed=seed, tap=wire
        )
        stack.enter_context(_NamespacedProxyThread(proxy, namespace.path))
        qemu = _spawn("qemu", qemu_command(namespace, serial, firmware), workdir / "qemu.log")
        try:
            succeeded, failure, elapsed = watch_serial(serial, qemu, timeout)
            marker_seen_at = time.monotonic()
            # iPXE on UEFI queues its ACKs behind the firmware's transmit (SNP): the final ACK of a burst
            # may leave after the script has printed its marker, so give it a moment before QEMU ends
            final = wire.wait_for_complete("payload.bin", FINAL_ACK_GRACE) if succeeded else None
        finally:
            qemu.stop()
        log = server.log()
    lag = None if final is None or final.final_ack_at is None else final.final_ack_at - marker_seen_at
    boot = UefiBoot(succeeded, elapsed, read_serial(serial), failure, wire.transfers(), log, lag)
    return boot, content


# --- the tests --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def uefi_available() -> None:
    if reason := unavailable_reason():
        pytest.skip(reason)


def assert_uefi_booted(boot: UefiBoot, content: BootContent) -> None:
    serial = boot.serial_text()
    assert boot.succeeded, f"the boot did not finish ({boot.failure}):\n{serial}\n{boot.server_log[-3000:]}"
    # the firmware's side: EDK II loaded the NBP, then iPXE ran the script and fetched the payload
    assert "NBP file downloaded successfully" in serial
    assert "iPXE" in serial and SCRIPT_LOADED in serial
    # the wire: every file complete with the right bytes, at the block sizes each client asks for
    expected_blksize = {"ipxe.efi": 1468, "boot.ipxe": 1432, "payload.bin": 1432}
    for name, blksize in expected_blksize.items():
        done = boot.complete(name)
        assert done, f"the relay never saw the final ACK of {name}: {[t for t in boot.transfers]}"
        assert done[0].sha256() == content.sha256[name]
        assert done[0].blksize == blksize
    assert "transfer completed" in boot.server_log and "ipxe.efi" in boot.server_log


@pytest.mark.parametrize(
    ("flags", "delay_ms"),
    [([], 0.0), (["--anticipate", "32"], 25.0)],
    ids=["defaults-direct", "anticipate-32-rtt-50ms"],
)
def test_uefi_pxe_boots_ipxe_from_edgetftp(tmp_path: Path, flags: list[str], delay_ms: float) -> None:
    boot, content = boot_uefi(tmp_path, flags, delay_ms=delay_ms)
    assert_uefi_booted(boot, content)
    nbp = boot.complete("ipxe.efi")[0]
    # EDK II asks for a window (RFC 7440), so anticipation does not apply to it; the window is granted
    assert nbp.oack is not None and "windowsize" in nbp.options and "windowsize" in nbp.oack
    print(
        f"\nUEFI PXE: {boot.elapsed:.1f} s to the marker; ipxe.efi {nbp.duration:.3f} s "
        f"({nbp.options}), {nbp.data_datagrams} DATA for {len(nbp.blocks)} blocks"
    )


# --- the matrix (python -m tests.test_uefi_pxe) -----------------------------------------------------------


@dataclass
class MatrixCell:
    anticipate: int
    delay_ms: float
    loss: float
    ok: bool
    boot_seconds: float
    probe: str  # what happened to the tsize probe
    nbp_options: dict[str, str]
    nbp_oack: dict[str, str]
    nbp_seconds: float | None
    nbp_datagrams: str
    payload_seconds: float | None
    payload_datagrams: str
    final_ack_lag: float | None
    note: str
    serial_tail: list[str] = field(default_factory=list)


def _summary(done: list[ObservedTransfer]) -> tuple[float | None, str]:
    if not done:
        return None, "\u2013"
    transfer = done[0]
    seconds = None if transfer.duration is None else round(transfer.duration, 3)
    return seconds, f"{transfer.data_datagrams} / {len(transfer.blocks)}"


def run_matrix_cell(
    anticipate: int, delay_ms: float, loss: float, extra: Sequence[str], seed: str
) -> MatrixCell:
    with tempfile.TemporaryDirectory(prefix="uefi-matrix-") as workdir:
        flags = ["--anticipate", str(anticipate), *extra]
        boot, content = boot_uefi(Path(workdir), flags, delay_ms=delay_ms, loss=loss, seed=seed)
    nbp = boot.complete("ipxe.efi")
    probes = [t for t in boot.transfers if t.filename == "ipxe.efi" and "tsize" in t.options]
    probe = "; ".join(f"{who} ERROR {code} {message!r}" for t in probes for who, code, message in t.errors)
    sha_ok = all(
        boot.complete(name) and boot.complete(name)[0].sha256() == content.sha256[name]
        for name in ("ipxe.efi", "boot.ipxe", "payload.bin")
    )
    nbp_seconds, nbp_datagrams = _summary(nbp)
    payload_seconds, payload_datagrams = _summary(boot.complete("payload.bin"))
    note = "" if boot.succeeded else (boot.failure or "?")
    if boot.succeeded and not sha_ok:
        note = "sha256 mismatch on the wire"
    return MatrixCell(
        anticipate=anticipate,
        delay_ms=delay_ms,
        loss=loss,
        ok=boot.succeeded and sha_ok,
        boot_seconds=round(boot.elapsed, 1),
        probe=probe or "\u2013",
        nbp_options=nbp[0].options if nbp else {},
        nbp_oack=(nbp[0].oack or {}) if nbp else {},
        nbp_seconds=nbp_seconds,
        nbp_datagrams=nbp_datagrams,
        payload_seconds=payload_seconds,
        payload_datagrams=payload_datagrams,
        final_ack_lag=None if boot.final_ack_lag is None else round(boot.final_ack_lag, 2),
        note=note,
        serial_tail=boot.serial_lines[-8:],
    )


def _numbers(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.test_uefi_pxe", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--anticipate", type=lambda t: [int(n) for n in _numbers(t)], default=[0, 8, 16, 32])
    parser.add_argument("--delay-ms", type=_numbers, default=[0.0, 25.0], help="one-way; RTT = 2x")
    parser.add_argument("--loss", type=float, default=0.0, help="loss each way on the TFTP path")
    parser.add_argument("--extra", default="", help="more edgetftp flags, one shell-quoted string")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--json", action="store_true", help="one JSON object per cell")
    args = parser.parse_args(argv)
    if reason := unavailable_reason():
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    import json
    import shlex

    if not args.json:
        print(
            "| anticipate | RTT ms | loss | ok | boot s | NBP options asked -> granted | NBP s "
            "| NBP DATA / blocks | iPXE payload s | payload DATA / blocks | final ACK after marker s | note |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    failures = 0
    for delay_ms in args.delay_ms:
        for anticipate in args.anticipate:
            cell = run_matrix_cell(anticipate, delay_ms, args.loss, shlex.split(args.extra), args.seed)
            failures += not cell.ok
            if args.json:
                print(json.dumps(asdict(cell)), flush=True)
                continue
            options = f"{_options(cell.nbp_options)} -> {_options(cell.nbp_oack)}"
            print(
                f"| {anticipate} | {2 * delay_ms:g} | {args.loss:g} | {'yes' if cell.ok else 'NO'} "
                f"| {cell.boot_seconds} | {options} | {cell.nbp_seconds} | {cell.nbp_datagrams} "
                f"| {cell.payload_seconds} | {cell.payload_datagrams} | {cell.final_ack_lag} | {cell.note} |",
                flush=True,
            )
    return 1 if failures else 0


def _options(options: dict[str, str]) -> str:
    return " ".join(f"{name}={value}" for name, value in options.items()) or "\u2013"


if __name__ == "__main__":
    sys.exit(main())
