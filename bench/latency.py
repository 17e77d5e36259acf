"""Latency benchmark (issue 7): fetch time over real round-trip times, lock-step against anticipation.

Every fetch is one read by bench/loadgen's client (a lock-step client: it ACKs every block unless it
negotiated a windowsize) through the impairment relay on loopback, which adds a fixed one-way delay of
RTT/2 (optional jitter and loss) each way.  RTT-0 cells go straight to the server: the relay costs
~25 us per datagram, which is the whole figure at RTT 0.  Every run checks the sha256 of the bytes
received; a run with the wrong digest, or that did not finish, counts as failed and is shown as such.

Modes (rows): edgetftp lock-step (``--anticipate 0``, no windowsize), edgetftp ``--anticipate N``
(the client still does not ask for a windowsize), edgetftp with a client-negotiated RFC 7440
windowsize, and tftpd-hpa lock-step (5.2 has no windowsize) for reference.  Columns: RTT.  Then the
loss rows: every edgetftp mode fetching the smallest file at RTT 50 ms with 1% loss each way (``--loss``,
``--loss-rtt``), to show that it completes, with the right sha256, and what it costs.

    python -m bench.latency                 # full table, median of 3 (about 15 minutes)
    python -m bench.latency --quick         # 1 MiB, RTT 0 and 50 ms, one run (about 2 minutes)
    python -m bench.latency --rtt 50 --sizes-kib 1024 --anticipate 16 --repeat 5 --json out.json

A cell whose first run took longer than ``--long-cell-seconds`` (default 10) is not repeated: such
cells are RTT-bound (thousands of round trips) and vary by well under 1%; they are marked with a dagger.
Lock-step 10 MiB at RTT > 0 takes 7,323 round trips (146 s at 20 ms, 732 s at 100 ms), so by default
it is not run but estimated from the measured 1 MiB figure at the same RTT, scaled by the block count
(marked with a tilde); ``--large-lockstep measure`` measures it (adds about 40 minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.impairment import ImpairmentProxy
from bench.loadgen import ClientTiming, Session, SessionResult, TransferSpec, run_coroutine
from bench.peers import TFTPD_HPA_PEER, ServerProcess, edgetftp_with, start_server
from bench.stats import median

KiB = 1024
IPXE_BLKSIZE = 1432  # what iPXE asks for; most of the internet boots start with it
PROBE_FILE = "probe.bin"
DEFAULT_RTTS_MS = (0.0, 20.0, 50.0, 100.0)
DEFAULT_SIZES_KIB = (1024, 10 * 1024)
SPEEDUP_RTT_MS = 50.0
# the client's own retransmission: generous, so the server's (adaptive) timer is what is measured
CLIENT_TIMING = ClientTiming(ack_timeout=1.0, rrq_timeout=1.0, retries=10)
SINGLE_RUN_MARK = "\u2020"  # dagger
ESTIMATE_MARK = "~"


@dataclass(frozen=True)
class Mode:
    """One row: which server, started with which anticipation, fetched with which windowsize."""

    key: str
    label: str
    server: str  # "edgetftp" or "tftpd-hpa"
    anticipate: int | None = None  # edgetftp --anticipate (None: tftpd-hpa)
    windowsize: int | None = None  # RFC 7440 windowsize the client asks for (None: lock-step client)

    @property
    def lock_step(self) -> bool:
        return self.windowsize is None and not self.anticipate

    @property
    def server_key(self) -> str:
        return self.server if self.anticipate is None else f"{self.server}:{self.anticipate}"


def build_modes(anticipations: Sequence[int], windowsizes: Sequence[int], with_tftpd_hpa: bool) -> list[Mode]:
    modes = [Mode("lockstep", "edgetftp lock-step", "edgetftp", anticipate=0)]
    modes += [
        Mode(f"anticipate-{n}", f"edgetftp anticipate {n}", "edgetftp", anticipate=n) for n in anticipations
    ]
    modes += [
        Mode(f"windowsize-{n}", f"edgetftp windowsize {n} (client asks)", "edgetftp", 0, n)
        for n in windowsizes
    ]
    if with_tftpd_hpa:
        modes.append(Mode("tftpd-hpa", "tftpd-hpa 5.2 lock-step", "tftpd-hpa"))
    return modes


@dataclass(frozen=True)
class NetworkPath:
    """The network between client and server for one cell."""

    rtt_ms: float
    loss: float = 0.0
    jitter_ms: float = 0.0

    @property
    def direct(self) -> bool:
        return self.rtt_ms == 0 and self.loss == 0 and self.jitter_ms == 0


@dataclass
class Run:
    """One fetch."""

    seconds: float
    ok: bool
    sha256_ok: bool
    reason: str | None
    size: int
    granted: dict[str, str]
    server_datagrams: int | None  # datagrams the server sent (seen by the relay; None without relay)
    client_ack_retransmits: int


@dataclass
class Cell:
    mode: str
    size_kib: int
    rtt_ms: float
    loss: float
    jitter_ms: float
    runs: list[Run] = field(default_factory=list)
    estimated_seconds: float | None = None  # set instead of runs for an estimated lock-step cell

    @property
    def seconds(self) -> float | None:
        """Median over the successful runs; None if none succeeded."""
        if self.estimated_seconds is not None:
            return self.estimated_seconds
        return median([run.seconds for run in self.runs if run.ok])

    @property
    def all_ok(self) -> bool:
        return bool(self.runs) and all(run.ok for run in self.runs)


# --- content and servers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    root: Path
    sha256: dict[str, str]

    @staticmethod
    def file_name(size_kib: int) -> str:
        return f"file-{size_kib}k.bin"


def write_content(root: Path, sizes_kib: Sequence[int], seed: int = 7440) -> Content:
    """Random files of the given sizes (deterministic bytes), readable by tftpd-hpa's `nobody`."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    rng = random.Random(seed)
    digests = {}
    for name, size in [(PROBE_FILE, 100), *((Content.file_name(k), k * KiB) for k in sizes_kib)]:
        data = rng.randbytes(size)
        path = root / name
        path.write_bytes(data)
        path.chmod(0o644)
        digests[name] = hashlib.sha256(data).hexdigest()
    return Content(root, digests)


def tftpd_hpa_unavailable() -> str | None:
    reason = TFTPD_HPA_PEER.available()
    if reason is None and os.geteuid() != 0:
        reason = "tftpd-hpa --secure needs root to chroot"
    return reason


def start_servers(modes: Sequence[Mode], content: Content, log_dir: Path) -> dict[str, ServerProcess]:
    """One server process per distinct (server, anticipation); not pinned (the figures are RTT-bound)."""
    started: dict[str, ServerProcess] = {}
    try:
        for mode in modes:
            if mode.server_key in started:
                continue
            if mode.server == "tftpd-hpa":
                peer = TFTPD_HPA_PEER
            else:
                peer = edgetftp_with("--anticipate", str(mode.anticipate), "--log-level", "WARNING")
            server = start_server(peer, str(content.root), log_dir, cpu=None, allow_cgroups=False)
            started[mode.server_key] = server
            server.wait_until_serving(PROBE_FILE)
    except BaseException:
        stop_servers(started)
        raise
    return started


def stop_servers(servers: dict[str, ServerProcess]) -> None:
    for server in servers.values():
        server.stop()


# --- one fetch --------------------------------------------------------------------------------------------


async def _fetch(target: tuple[str, int], spec: TransferSpec) -> SessionResult:
    return await Session(target, spec, CLIENT_TIMING).run()


def fetch(
    server: tuple[str, int],
    filename: str,
    expected_sha256: str,
    path: NetworkPath,
    windowsize: int | None = None,
    seed: str = "0",
    blksize: int = IPXE_BLKSIZE,
) -> Run:
    """One read of ``filename`` through a fresh relay (or directly at RTT 0), sha256 checked."""
    spec = TransferSpec(filename, blksize=blksize, windowsize=windowsize, expected_sha256=expected_sha256)
    if path.direct:
        result = run_coroutine(_fetch(server, spec))
        return _run_from(result, expected_sha256, server_datagrams=None)
    relay = ImpairmentProxy.start_in_thread(
        server, delay_ms=path.rtt_ms / 2, jitter_ms=path.jitter_ms, loss=path.loss, seed=seed
    )
    try:
        result = run_coroutine(_fetch(relay.address, spec))
        stats = relay.stats()
    finally:
        relay.stop()
    return _run_from(result, expected_sha256, server_datagrams=stats.to_client.received)


def _run_from(result: SessionResult, expected_sha256: str, server_datagrams: int | None) -> Run:
    return Run(
        seconds=result.latency,
        ok=result.ok,
        sha256_ok=result.sha256 == expected_sha256,
        reason=result.reason,
        size=result.size,
        granted=dict(result.granted),
        server_datagrams=server_datagrams,
        client_ack_retransmits=result.ack_retransmits,
    )


# --- the plan ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    modes: list[Mode]
    sizes_kib: list[int]
    rtts_ms: list[float]
    repeat: int
    long_cell_seconds: float
    measure_large_lockstep: bool
    large_lockstep_kib: int  # lock-step cells at or above this size (and RTT > 0) are estimated
    loss: float
    loss_rtt_ms: float | None  # None: no loss rows
    jitter_ms: float
    seed: str


def blocks(size_kib: int, blksize: int = IPXE_BLKSIZE) -> int:
    """DATA blocks of a transfer (a file of whole blocks ends with an empty one)."""
    return size_kib * KiB // blksize + 1


def measure_cell(
    plan: Plan, mode: Mode, servers: dict[str, ServerProcess], content: Content, cell: Cell, path: NetworkPath
) -> None:
    """Run the cell's repeats (stopping after one if it was long); prints progress to stderr."""
    server = servers[mode.server_key]
    name = Content.file_name(cell.size_kib)
    for attempt in range(plan.repeat):
        seed = f"{plan.seed}:{mode.key}:{cell.size_kib}:{path.rtt_ms}:{path.loss}:{attempt}"
        run = fetch(server.address, name, content.sha256[name], path, mode.windowsize, seed)
        cell.runs.append(run)
        status = "ok" if run.ok else f"FAILED ({run.reason})"
        print(
            f"  {mode.label:<40} {cell.size_kib:>6} KiB  RTT {path.rtt_ms:>5g} ms  loss {path.loss:g}: "
            f"{run.seconds:8.3f} s {status}",
            file=sys.stderr,
            flush=True,
        )
        if run.seconds > plan.long_cell_seconds:
            break


def estimate_from(smaller: Cell, size_kib: int) -> float | None:
    """A lock-step time scaled by the block count: each block costs one round trip."""
    if smaller.seconds is None:
        return None
    return smaller.seconds * blocks(size_kib) / blocks(smaller.size_kib)


def run_plan(plan: Plan, content: Content, servers: dict[str, ServerProcess]) -> list[Cell]:
    cells: list[Cell] = []
    for rtt in plan.rtts_ms:
        path = NetworkPath(rtt, jitter_ms=plan.jitter_ms if rtt > 0 else 0.0)
        for size_kib in sorted(plan.sizes_kib):
            for mode in plan.modes:
                cell = Cell(mode.key, size_kib, rtt, 0.0, path.jitter_ms)
                cells.append(cell)
                if _estimated(plan, mode, size_kib, rtt):
                    base = _smallest_measured(cells, mode.key, rtt)
                    if base is not None:
                        cell.estimated_seconds = estimate_from(base, size_kib)
                        continue
                measure_cell(plan, mode, servers, content, cell, path)
    if plan.loss_rtt_ms is not None and plan.loss > 0:
        lossy = NetworkPath(plan.loss_rtt_ms, loss=plan.loss, jitter_ms=plan.jitter_ms)
        for mode in plan.modes:
            if mode.server != "edgetftp":
                continue
            cell = Cell(mode.key, min(plan.sizes_kib), lossy.rtt_ms, plan.loss, lossy.jitter_ms)
            cells.append(cell)
            measure_cell(plan, mode, servers, content, cell, lossy)
    return cells


def _estimated(plan: Plan, mode: Mode, size_kib: int, rtt: float) -> bool:
    return (
        mode.lock_step and rtt > 0 and size_kib >= plan.large_lockstep_kib and not plan.measure_large_lockstep
    )


def _smallest_measured(cells: Sequence[Cell], mode_key: str, rtt: float) -> Cell | None:
    measured = [c for c in cells if c.mode == mode_key and c.rtt_ms == rtt and c.loss == 0 and c.runs]
    return min(measured, key=lambda c: c.size_kib) if measured else None


# --- report -----------------------------------------------------------------------------------------------


def size_label(size_kib: int) -> str:
    return f"{size_kib // KiB} MiB" if size_kib % KiB == 0 else f"{size_kib} KiB"


def format_cell(cell: Cell | None) -> str:
    if cell is None:
        return "\u2013"
    if cell.estimated_seconds is not None:
        return f"{ESTIMATE_MARK}{cell.estimated_seconds:.0f}"
    if not cell.runs:
        return "\u2013"
    if not cell.all_ok:
        failed = sum(not run.ok for run in cell.runs)
        shown = "" if cell.seconds is None else f"{_seconds(cell.seconds)} "
        return f"{shown}FAILED {failed}/{len(cell.runs)}"
    mark = SINGLE_RUN_MARK if len(cell.runs) == 1 else ""
    return f"{_seconds(cell.seconds)}{mark}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "\u2013"
    return f"{value:.3f}" if value < 1 else f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _find(cells: Sequence[Cell], mode: str, size_kib: int, rtt: float, loss: float = 0.0) -> Cell | None:
    for cell in cells:
        if (cell.mode, cell.size_kib, cell.rtt_ms, cell.loss) == (mode, size_kib, rtt, loss):
            return cell
    return None


def render_time_table(plan: Plan, cells: Sequence[Cell], size_kib: int) -> str:
    header = [f"{size_label(size_kib)} ({blocks(size_kib)} blocks)", *(f"RTT {r:g} ms" for r in plan.rtts_ms)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode in plan.modes:
        row = [mode.label, *(format_cell(_find(cells, mode.key, size_kib, rtt)) for rtt in plan.rtts_ms)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def speedups(plan: Plan, cells: Sequence[Cell], size_kib: int, rtt: float) -> list[tuple[str, float, bool]]:
    """(mode label, lock-step time / mode time, lock-step figure estimated?) for every faster mode."""
    base = _find(cells, "lockstep", size_kib, rtt)
    if base is None or base.seconds is None:
        return []
    found = []
    for mode in plan.modes:
        cell = _find(cells, mode.key, size_kib, rtt)
        if mode.key == "lockstep" or mode.server != "edgetftp" or cell is None or not cell.seconds:
            continue
        found.append((mode.label, base.seconds / cell.seconds, base.estimated_seconds is not None))
    return found


def render_speedups(plan: Plan, cells: Sequence[Cell]) -> str:
    rtt = SPEEDUP_RTT_MS if SPEEDUP_RTT_MS in plan.rtts_ms else max(plan.rtts_ms)
    lines = []
    for size_kib in sorted(plan.sizes_kib):
        for label, factor, estimated in speedups(plan, cells, size_kib, rtt):
            note = " (lock-step figure estimated)" if estimated else ""
            lines.append(f"- {size_label(size_kib)}, {label}: {factor:.1f}x{note}")
    if not lines:
        return ""
    heading = f"Speedup over edgetftp lock-step at RTT {rtt:g} ms (target for 1 MiB: at least 8x):"
    return "\n".join([heading, "", *lines])


def render_loss_table(plan: Plan, cells: Sequence[Cell]) -> str:
    lossy = [cell for cell in cells if cell.loss > 0]
    if not lossy:
        return ""
    labels = {mode.key: mode.label for mode in plan.modes}
    header = ["mode", "size", "RTT ms", "loss each way", "time s", "completed, sha256 ok", "server datagrams"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in lossy:
        good = sum(run.ok and run.sha256_ok for run in cell.runs)
        sent = median([run.server_datagrams for run in cell.runs if run.server_datagrams is not None])
        row = [
            labels.get(cell.mode, cell.mode),
            size_label(cell.size_kib),
            f"{cell.rtt_ms:g}",
            f"{cell.loss:g}",
            format_cell(cell),
            f"{good}/{len(cell.runs)}",
            "\u2013" if sent is None else f"{sent:.0f} for {blocks(cell.size_kib)} blocks",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render_report(plan: Plan, cells: Sequence[Cell], skipped: Sequence[str]) -> str:
    parts = [
        f"Fetch time in seconds, median of up to {plan.repeat} runs, blksize {IPXE_BLKSIZE}, "
        f"client: bench/loadgen (lock-step unless it asks for a windowsize); "
        f"RTT 0 without the relay{_jitter_note(plan)}.",
        "",
    ]
    for size_kib in sorted(plan.sizes_kib):
        parts += [render_time_table(plan, cells, size_kib), ""]
    parts += [
        f"{SINGLE_RUN_MARK} one run (its first run took more than {plan.long_cell_seconds:g} s: RTT-bound). "
        f"{ESTIMATE_MARK} estimated, not run: the smaller lock-step time at that RTT scaled by block count.",
        "",
        render_speedups(plan, cells),
        "",
    ]
    loss_table = render_loss_table(plan, cells)
    if loss_table:
        parts += [f"With {plan.loss:g} loss each way:", "", loss_table, ""]
    parts += [f"Not run: {reason}" for reason in skipped]
    return "\n".join(parts).rstrip() + "\n"


def _jitter_note(plan: Plan) -> str:
    return f", jitter \u00b1{plan.jitter_ms:g} ms each way" if plan.jitter_ms else ""


def failures(cells: Sequence[Cell]) -> list[Cell]:
    return [cell for cell in cells if cell.runs and not all(run.ok and run.sha256_ok for run in cell.runs)]


# --- CLI --------------------------------------------------------------------------------------------------


def _numbers(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 MiB, RTT 0 and 50 ms, one run per cell")
    parser.add_argument("--rtt", type=_numbers, help="round-trip times in ms (default 0,20,50,100)")
    parser.add_argument("--sizes-kib", type=_integers, help="file sizes in KiB (default 1024,10240)")
    parser.add_argument(
        "--anticipate", type=_integers, default=[8, 16, 32], help="edgetftp --anticipate rows"
    )
    parser.add_argument(
        "--windowsize", type=_integers, default=[16], help="client-negotiated windowsize rows"
    )
    parser.add_argument("--no-tftpd-hpa", action="store_true", help="leave out the tftpd-hpa row")
    parser.add_argument("--repeat", type=int, help="runs per cell, median shown (default 3; 1 with --quick)")
    parser.add_argument("--long-cell-seconds", type=float, default=10.0, help="do not repeat longer cells")
    parser.add_argument(
        "--large-lockstep",
        choices=["estimate", "measure"],
        default="estimate",
        help="lock-step cells >= 10 MiB at RTT > 0: scale the 1 MiB figure, or measure (slow)",
    )
    parser.add_argument("--loss", type=float, default=0.01, help="loss each way for the loss rows (0: none)")
    parser.add_argument("--loss-rtt", type=float, default=SPEEDUP_RTT_MS, help="RTT of the loss rows, ms")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="uniform +/- on each one-way delay")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    parser.add_argument("--keep", action="store_true", help="keep the content and the server logs")
    return parser


def plan_from(args: argparse.Namespace, modes: list[Mode]) -> Plan:
    quick_rtts, quick_sizes = [0.0, SPEEDUP_RTT_MS], [1024]
    return Plan(
        modes=modes,
        sizes_kib=args.sizes_kib or (quick_sizes if args.quick else list(DEFAULT_SIZES_KIB)),
        rtts_ms=args.rtt or (quick_rtts if args.quick else list(DEFAULT_RTTS_MS)),
        repeat=args.repeat or (1 if args.quick else 3),
        long_cell_seconds=args.long_cell_seconds,
        measure_large_lockstep=args.large_lockstep == "measure",
        large_lockstep_kib=10 * 1024,
        loss=args.loss,
        loss_rtt_ms=args.loss_rtt if args.loss > 0 else None,
        jitter_ms=args.jitter_ms,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    skipped = []
    reason = None if args.no_tftpd_hpa else tftpd_hpa_unavailable()
    if reason:
        skipped.append(f"tftpd-hpa ({reason})")
    modes = build_modes(args.anticipate, args.windowsize, with_tftpd_hpa=not args.no_tftpd_hpa and not reason)
    plan = plan_from(args, modes)
    workdir = Path(tempfile.mkdtemp(prefix="edgetftp-latency-"))
    started = time.monotonic()
    try:
        content = write_content(workdir / "root", plan.sizes_kib)
        servers = start_servers(plan.modes, content, workdir / "logs")
        try:
            cells = run_plan(plan, content, servers)
        finally:
            stop_servers(servers)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.write(render_report(plan, cells, skipped))
    print(f"\n({time.monotonic() - started:.0f} s in all)", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(to_json(plan, cells), indent=2))
    return 1 if failures(cells) else 0


def to_json(plan: Plan, cells: Sequence[Cell]) -> dict[str, Any]:
    return {
        "plan": asdict(plan),
        "cells": [asdict(cell) | {"median_seconds": cell.seconds} for cell in cells],
    }


if __name__ == "__main__":
    sys.exit(main())
