"""What the boot-time benchmark (bench/boottime.py) measures: clients, servers, cells, runs, the floor.

Kept apart from the runner so the report and the target checks can be built (and tested) from JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.stats import median

KiB = 1024
DEFAULT_BANDWIDTH_MBIT = 100.0  # the path bandwidth assumed for the floor (the figure)
FLOOR_ROUND_TRIPS = 3  # RRQ -> OACK -> ACK 0 -> first DATA, and the last ACK

ClientKind = Literal["program", "ipxe-bios", "ipxe-uefi"]
ServerKind = Literal["edgetftp", "tftpd-hpa"]


@dataclass(frozen=True)
class ClientSpec:
    """A real TFTP client: a program on the host, or iPXE firmware in QEMU."""

    key: str
    label: str
    kind: ClientKind
    blksize: int  # the block size it transfers with (asked for, or RFC 1350's 512)
    windowsize: int | None = None  # the RFC 7440 window it asks for (None: a lock-step client)
    program: str = ""  # the executable, for kind "program"


@dataclass(frozen=True)
class ServerSpec:
    key: str
    label: str
    kind: ServerKind
    args: tuple[str, ...] = ()
    anticipates: bool = True  # sends ahead of a lock-step client's ACK (edgetftp's default)

    def grants_window(self) -> bool:
        return self.kind == "edgetftp"  # tftpd-hpa 5.2 ignores windowsize


CLIENTS: dict[str, ClientSpec] = {
    client.key: client
    for client in (
        ClientSpec("curl", "curl 7.88 (defaults: blksize 512)", "program", 512, program="curl"),
        ClientSpec("busybox", "busybox 1.35 tftp -b 1432", "program", 1432, program="busybox"),
        ClientSpec("atftp", "atftp 0.8 blksize 1432", "program", 1432, program="atftp"),
        ClientSpec("atftp-w16", "atftp 0.8 blksize 1432 windowsize 16", "program", 1432, 16, "atftp"),
        ClientSpec("atftp-w64", "atftp 0.8 blksize 1432 windowsize 64", "program", 1432, 64, "atftp"),
        ClientSpec("tftp-hpa", "tftp-hpa 5.2 client (RFC 1350, 512)", "program", 512, program="tftp"),
        ClientSpec("ipxe-bios", "iPXE (SeaBIOS, QEMU) imgfetch", "ipxe-bios", 1432),
        ClientSpec("ipxe-uefi", "iPXE on OVMF (UEFI, QEMU) imgfetch", "ipxe-uefi", 1432),
    )
}

SERVERS: dict[str, ServerSpec] = {
    server.key: server
    for server in (
        ServerSpec("default", "edgetftp default", "edgetftp"),
        ServerSpec("anticipate0", "edgetftp --anticipate 0", "edgetftp", ("--anticipate", "0"), False),
        ServerSpec("tftpd-hpa", "tftpd-hpa 5.2", "tftpd-hpa", anticipates=False),
    )
}


def block_count(size_bytes: int, blksize: int) -> int:
    """DATA blocks of a transfer, the final short (possibly empty) block included."""
    return size_bytes // blksize + 1


def floor_seconds(size_bytes: int, rtt_ms: float, bandwidth_mbit: float) -> float:
    """The physical floor: 3 round trips of protocol plus the serialization of the file on the path."""
    return FLOOR_ROUND_TRIPS * rtt_ms / 1000 + size_bytes * 8 / (bandwidth_mbit * 1e6)


def lock_step_lower_bound(
    client: ClientSpec, server: ServerSpec, size_bytes: int, rtt_ms: float
) -> float | None:
    """A proven lower bound when the server waits for ACKs (one round trip per window); None otherwise."""
    if server.anticipates and client.windowsize is None:
        return None
    window = client.windowsize if (client.windowsize and server.grants_window()) else 1
    return math.ceil(block_count(size_bytes, client.blksize) / window) * rtt_ms / 1000


@dataclass
class Run:
    """One fetch."""

    ok: bool  # completed, and the sha256 of the bytes received is right
    seconds: float | None  # first RRQ to the last ACK as seen by the relay (None: never finished)
    capped: bool = False  # stopped at the per-cell time cap
    note: str = ""
    client_seconds: float | None = None  # the client program's wall time (programs only)
    data_datagrams: int = 0  # DATA datagrams the server sent (retransmissions included)
    blocks: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Cell:
    client: str
    server: str
    size_kib: int
    rtt_ms: float
    loss: float
    floor_s: float
    cap_s: float
    runs: list[Run] = field(default_factory=list)
    not_run: str = ""  # why the cell was not run (tool missing, harness cannot, or over the cap)
    lower_bound_s: float | None = None

    @property
    def key(self) -> tuple[str, int, float, float]:
        return (self.client, self.size_kib, self.rtt_ms, self.loss)

    @property
    def completed(self) -> bool:
        return bool(self.runs) and all(run.ok for run in self.runs)

    @property
    def over_cap(self) -> bool:
        skipped_over_cap = (
            self.lower_bound_s is not None and self.lower_bound_s > self.cap_s and not self.runs
        )
        return skipped_over_cap or any(run.capped for run in self.runs)

    @property
    def median_s(self) -> float | None:
        return median([run.seconds for run in self.runs if run.ok and run.seconds is not None])

    def failures(self) -> list[Run]:
        return [run for run in self.runs if not run.ok and not run.capped]


def format_seconds(value: float | None) -> str:
    if value is None:
        return "\u2013"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_cell(cell: Cell | None) -> str:
    """Median seconds; "> cap" for capped cells; a cross with the reason for failures."""
    if cell is None:
        return "\u2013"
    if cell.over_cap:
        bound = f", \u2265 {format_seconds(cell.lower_bound_s)}" if cell.lower_bound_s else ""
        return f"> {cell.cap_s:g} s{bound}"
    if cell.not_run:
        return f"not run ({cell.not_run})"
    failed = cell.failures()
    if failed:
        return f"\u2717 {len(failed)}/{len(cell.runs)} ({failed[0].note or 'failed'})"
    shown = format_seconds(cell.median_s)
    return shown if len(cell.runs) < 2 else f"{shown} ({len(cell.runs)})"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def format_ratio(value: float | None) -> str:
    return "\u2013" if value is None else f"{value:.1f}\u00d7" if value >= 10 else f"{value:.2f}\u00d7"


def size_label(size_kib: int) -> str:
    return f"{size_kib // KiB} MiB" if size_kib % KiB == 0 else f"{size_kib} KiB"


def find_cell(
    cells: Sequence[Cell], client: str, server: str, size_kib: int, rtt: float, loss: float
) -> Cell | None:
    for cell in cells:
        if (cell.client, cell.server, cell.size_kib, cell.rtt_ms, cell.loss) == (
            client,
            server,
            size_kib,
            rtt,
            loss,
        ):
            return cell
    return None
