"""The boot-time benchmark's report: the table (floor beside each cell) and issue 15's targets, checked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.boottime_model import (
    CLIENTS,
    SERVERS,
    Cell,
    find_cell,
    format_cell,
    format_ratio,
    format_seconds,
    ratio,
    size_label,
)

LOCK_STEP_TARGET_S = 1.0  # 1 MiB at RTT 50 ms, no loss, every lock-step client
WINDOW_TARGET_FLOOR_MULTIPLE = 3.0  # the same, for a client that negotiates windowsize
TARGET_SIZE_KIB, TARGET_RTT_MS = 1024, 50.0
LOSSY = (0.01, 0.03)
IPXE_TARGET_RTT_MS, IPXE_TARGET_LOSS = 100.0, 0.01
NOISE_TOLERANCE = 0.05  # "not slower than tftpd-hpa": within 5%, the spread of equal lock-step runs here


@dataclass(frozen=True)
class Verdict:
    target: str
    cell: str
    met: bool | None  # None: not measured in this run, or not decidable (both capped)
    detail: str


def _row_keys(cells: Sequence[Cell]) -> list[tuple[str, int, float, float]]:
    seen: dict[tuple[str, int, float, float], None] = {}
    for cell in cells:
        seen.setdefault(cell.key, None)
    return list(seen)


def render_table(cells: Sequence[Cell], servers: Sequence[str]) -> str:
    """One row per (client, size, RTT, loss); one column per server; floor and ratios beside."""
    header = ["client", "size", "RTT ms", "loss", "floor s", *(SERVERS[s].label for s in servers)]
    with_floor_ratio = "default" in servers
    with_hpa_ratio = with_floor_ratio and "tftpd-hpa" in servers
    header += ["default / floor"] * with_floor_ratio + ["default / tftpd-hpa"] * with_hpa_ratio
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for client, size_kib, rtt, loss in _row_keys(cells):
        by_server = {s: find_cell(cells, client, s, size_kib, rtt, loss) for s in servers}
        floor = next(c.floor_s for c in by_server.values() if c is not None)
        default, hpa = by_server.get("default"), by_server.get("tftpd-hpa")
        row = [CLIENTS[client].label, size_label(size_kib), f"{rtt:g}", f"{loss:.0%}", format_seconds(floor)]
        row += [format_cell(by_server[s]) for s in servers]
        if with_floor_ratio:
            row.append(format_ratio(ratio(_completed_median(default), floor)))
        if with_hpa_ratio:
            row.append(format_ratio(ratio(_completed_median(default), _completed_median(hpa))))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _completed_median(cell: Cell | None) -> float | None:
    return cell.median_s if cell is not None and cell.completed else None


def _cell_name(cell: Cell) -> str:
    return f"{cell.client}, {size_label(cell.size_kib)}, RTT {cell.rtt_ms:g} ms, loss {cell.loss:.0%}"


def check_targets(cells: Sequence[Cell]) -> list[Verdict]:
    verdicts = _lock_step_and_window_targets(cells)
    verdicts += _loss_targets(cells)
    verdicts += _ipxe_target(cells)
    return verdicts


def _lock_step_and_window_targets(cells: Sequence[Cell]) -> list[Verdict]:
    verdicts = []
    for cell in cells:
        if (cell.server, cell.size_kib, cell.rtt_ms, cell.loss) != (
            "default",
            TARGET_SIZE_KIB,
            TARGET_RTT_MS,
            0,
        ):
            continue
        seconds = _completed_median(cell)
        if CLIENTS[cell.client].windowsize is None:
            name = f"1 MiB at 50 ms \u2264 {LOCK_STEP_TARGET_S:g} s (lock-step client)"
            met = (
                None
                if seconds is None and cell.not_run
                else seconds is not None and seconds <= LOCK_STEP_TARGET_S
            )
        else:
            name = f"1 MiB at 50 ms \u2264 {WINDOW_TARGET_FLOOR_MULTIPLE:g}\u00d7 floor (windowsize client)"
            limit = WINDOW_TARGET_FLOOR_MULTIPLE * cell.floor_s
            met = None if seconds is None and cell.not_run else seconds is not None and seconds <= limit
        detail = f"{format_cell(cell)} s, floor {format_seconds(cell.floor_s)} s"
        verdicts.append(Verdict(name, _cell_name(cell), met, detail))
    return verdicts


def _loss_targets(cells: Sequence[Cell]) -> list[Verdict]:
    verdicts = []
    for cell in cells:
        if cell.loss not in LOSSY or cell.server == "tftpd-hpa" or (cell.not_run and not cell.over_cap):
            continue
        hpa = find_cell(cells, cell.client, "tftpd-hpa", cell.size_kib, cell.rtt_ms, cell.loss)
        name = f"loss {cell.loss:.0%}: completes, sha256 right, not slower than tftpd-hpa ({cell.server})"
        met, detail = _no_slower(cell, hpa)
        verdicts.append(Verdict(name, _cell_name(cell), met, detail))
    return verdicts


def _no_slower(cell: Cell, hpa: Cell | None) -> tuple[bool | None, str]:
    mine = _completed_median(cell)
    theirs = _completed_median(hpa)
    detail = f"{format_cell(cell)} against tftpd-hpa {format_cell(hpa)}"
    if cell.failures():
        return False, detail
    if mine is None:  # capped: only decidable if tftpd-hpa finished within the cap
        return (False if theirs is not None else None), detail
    if hpa is None or (hpa.not_run and not hpa.over_cap):
        return None, detail
    return (theirs is None or mine <= theirs * (1 + NOISE_TOLERANCE)), detail


def _ipxe_target(cells: Sequence[Cell]) -> list[Verdict]:
    verdicts = []
    for cell in cells:
        if not cell.client.startswith("ipxe") or cell.server != "default":
            continue
        if (cell.rtt_ms, cell.loss) != (IPXE_TARGET_RTT_MS, IPXE_TARGET_LOSS):
            continue
        met = None if cell.not_run else cell.completed
        name = "iPXE boots its chain at RTT 100 ms, 1% loss, defaults"
        verdicts.append(Verdict(name, _cell_name(cell), met, format_cell(cell)))
    return verdicts


def render_targets(verdicts: Sequence[Verdict]) -> str:
    if not verdicts:
        return "No cell of this run bears on issue 15's targets."
    marks = {True: "met", False: "**missed**", None: "not decided"}
    lines = ["| target | cell | verdict | figures |", "|---|---|---|---|"]
    lines += [f"| {v.target} | {v.cell} | {marks[v.met]} | {v.detail} |" for v in verdicts]
    return "\n".join(lines)
