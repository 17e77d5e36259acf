"""Boot time with real clients and real firmware through a delay/loss relay, against the floor (issue 15).

Each cell is one client fetching one file from one server through bench/impairment's relay on
loopback (RTT/2 one-way delay, the same loss each way).  Clients: curl, busybox, atftp (lock-step, and
with windowsize 16), tftp-hpa's ``tftp``, iPXE in QEMU on SeaBIOS and on OVMF (UEFI).  Servers, in the
same run: edgetftp with its defaults, edgetftp ``--anticipate 0`` and tftpd-hpa.  A cell's time is
from the client's first RRQ to its last ACK, as the relay saw them; its sha256 is checked (the file
a program wrote; for iPXE the blocks the relay saw).  Beside each cell: the floor, 3 RTT plus the
file's serialization at ``--bandwidth-mbit`` (100 Mbit/s assumed).

    python -m bench.boottime                                    # the whole matrix (hours)
    python -m bench.boottime --clients curl,busybox --sizes 1024 --rtts 50 --loss 0,1 --jobs 4
    python -m bench.boottime --edgetftp-src /work/main          # the server of another checkout

A cell with a lock-step server whose lower bound (one RTT per block, or per window) exceeds the cap is
not run and shows "> cap, >= bound"; a run stopped at the cap shows "> cap".  Results go to
``--output`` (.md and .json, default docs/boot-time-results).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import boottime_firmware as firmware
from bench import boottime_source
from bench.boottime_model import (
    CLIENTS,
    DEFAULT_BANDWIDTH_MBIT,
    SERVERS,
    Cell,
    ClientSpec,
    KiB,
    Run,
    ServerSpec,
    block_count,
    floor_seconds,
    format_cell,
    format_seconds,
    lock_step_lower_bound,
)
from bench.boottime_report import check_targets, render_table, render_targets
from bench.impairment import ImpairmentProxy
from bench.latency import PROBE_FILE, Content, write_content
from bench.peers import TFTPD_HPA_PEER, Peer, ServerProcess, edgetftp_with, start_server
from tests.ipxe.wire import TransferLog

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "docs" / "boot-time-results"
DEFAULT_CLIENTS = ("curl", "busybox", "atftp", "atftp-w16", "atftp-w64", "tftp-hpa", "ipxe-bios", "ipxe-uefi")
DEFAULT_SIZES_KIB = (64, 1024, 10 * 1024)
DEFAULT_RTTS_MS = (20.0, 50.0, 100.0, 200.0)
DEFAULT_LOSS_PERCENT = (0.0, 1.0, 3.0)
DEFAULT_CAP_S = 150.0
LONG_CELL_S = 20.0  # a cell whose first run took longer is not repeated: RTT-bound, little spread
ASSUMED_ANTICIPATION = 16  # only to order the work (longest first); never in a figure


# --- servers --------------------------------------------------------------------------------------------


def edgetftp_pythonpath(src: Path) -> str:
    """PYTHONPATH that makes ``python -m edgetftp`` run the checkout at ``src``, whatever is installed."""
    server_dir = src.resolve() / "server"
    if not (server_dir / "edgetftp" / "__main__.py").exists():
        raise SystemExit(f"--edgetftp-src: {src} has no server/edgetftp/__main__.py")
    return os.pathsep.join(filter(None, [str(server_dir), os.environ.get("PYTHONPATH")]))


def source_commit(src: Path) -> str:
    probe = subprocess.run(
        ["git", "-C", str(src), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() or "unknown"


def peer_for(server: ServerSpec) -> Peer:
    if server.kind == "tftpd-hpa":
        return TFTPD_HPA_PEER
    return edgetftp_with(*server.args, "--log-level", "WARNING")


def start_servers(servers: Sequence[ServerSpec], root: Path, log_dir: Path) -> dict[str, ServerProcess]:
    started: dict[str, ServerProcess] = {}
    try:
        for server in servers:
            process = start_server(peer_for(server), str(root), log_dir, cpu=None, allow_cgroups=False)
            started[server.key] = process
            process.wait_until_serving(PROBE_FILE)
    except BaseException:
        for process in started.values():
            process.stop()
        raise
    return started


def with_extra_args(server: ServerSpec, extra: tuple[str, ...]) -> ServerSpec:
    """edgetftp servers get ``--edgetftp-arg`` flags too (e.g. fly.toml's settings); tftpd-hpa does not."""
    if server.kind != "edgetftp" or not extra:
        return server
    return dataclasses.replace(server, args=(*server.args, *extra))


def server_unavailable(server: ServerSpec) -> str | None:
    if server.kind == "tftpd-hpa":
        if reason := TFTPD_HPA_PEER.available():
            return reason
        return None if os.geteuid() == 0 else "tftpd-hpa --secure needs root to chroot"
    return None


# --- programs -------------------------------------------------------------------------------------------


def program_command(client: ClientSpec, host: str, port: int, remote: str, local: Path) -> list[str]:
    """The command line of a real client program fetching ``remote`` into ``local``."""
    if client.key == "curl":
        return ["curl", "--silent", "--show-error", "-o", str(local), f"tftp://{host}:{port}/{remote}"]
    if client.key == "busybox":
        return [
            "busybox",
            "tftp",
            "-g",
            "-r",
            remote,
            "-l",
            str(local),
            "-b",
            str(client.blksize),
            host,
            str(port),
        ]
    if client.key.startswith("atftp"):
        options = ["--option", f"blksize {client.blksize}"]
        if client.windowsize:
            options += ["--option", f"windowsize {client.windowsize}"]
        return ["atftp", "--get", "-r", remote, "-l", str(local), *options, host, str(port)]
    if client.key == "tftp-hpa":
        return ["tftp", host, str(port), "-m", "binary", "-c", "get", remote, str(local)]
    raise ValueError(f"no command for {client.key}")


class RunningPrograms:
    """The client programs running now, so that an interrupted run ends them (by the PIDs it
    started) instead of the pool running out its queue: Ctrl-C used to leave a matrix going."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: set[subprocess.Popen[bytes]] = set()
        self._stopping = False

    @contextlib.contextmanager
    def start(self, command: list[str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
        with self._lock:
            if self._stopping:
                raise KeyboardInterrupt("the run is being stopped")
            process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self._processes.add(process)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate()
            with self._lock:
                self._processes.discard(process)

    def stop_all(self) -> None:
        with self._lock:
            self._stopping = True
            for process in self._processes:
                if process.poll() is None:
                    process.kill()


RUNNING = RunningPrograms()


def run_program(
    client: ClientSpec,
    upstream: tuple[str, int],
    filename: str,
    expected_sha256: str,
    rtt_ms: float,
    loss: float,
    seed: str,
    cap_s: float,
    workdir: Path,
) -> Run:
    log = TransferLog()
    local = workdir / f"{client.key}-{time.monotonic_ns()}.out"
    relay = ImpairmentProxy.start_in_thread(upstream, delay_ms=rtt_ms / 2, loss=loss, seed=seed, tap=log)
    returncode: int | None = None
    note = ""
    try:
        command = program_command(client, *relay.address, filename, local)
        started = time.monotonic()
        with RUNNING.start(command, workdir) as process:
            try:
                out, err = process.communicate(timeout=cap_s)
                returncode, note = process.returncode, _last_line(err or out)
            except subprocess.TimeoutExpired:
                note = f"no exit within {cap_s:g} s"
        client_seconds = time.monotonic() - started
        stats = relay.stats()
    finally:
        relay.stop()
    digest = hashlib.sha256(local.read_bytes()).hexdigest() if local.exists() else ""
    local.unlink(missing_ok=True)
    done = [t for t in log.find(filename) if t.complete]
    seconds = done[-1].duration if done else None
    sha_ok = digest == expected_sha256
    if returncode == 0 and not sha_ok:  # keep the client's own words: tftp-hpa exits 0 after an ERROR
        note = ("exit 0 but wrong sha256" if digest else "exit 0 but no file") + (f": {note}" if note else "")
    return Run(
        ok=returncode == 0 and sha_ok and seconds is not None,
        seconds=seconds if seconds is not None else client_seconds,
        capped=returncode is None,
        note=_run_note(returncode, sha_ok, seconds is not None, note),
        client_seconds=client_seconds,
        data_datagrams=stats.to_client.received,
    )


def _run_note(returncode: int | None, sha_ok: bool, final_ack_seen: bool, client_words: str) -> str:
    if returncode == 0 and sha_ok:
        return "" if final_ack_seen else "the relay never saw the final ACK"
    return client_words or f"exit {returncode}"


def _last_line(output: bytes) -> str:
    lines = [line.strip() for line in output.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:100] if lines else ""


def client_unavailable(client: ClientSpec) -> str | None:
    if client.kind == "program":
        return None if shutil.which(client.program) else f"{client.program} is not installed"
    if client.kind == "ipxe-bios":
        return firmware.bios_unavailable()
    return firmware.uefi_unavailable()


# --- the plan ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    clients: list[ClientSpec]
    servers: list[ServerSpec]
    sizes_kib: list[int]
    rtts_ms: list[float]
    losses: list[float]  # fractions
    repeat: int
    cap_s: float
    bandwidth_mbit: float
    seed: str


def plan_cells(plan: Plan) -> list[Cell]:
    cells = []
    unavailable = {c.key: client_unavailable(c) for c in plan.clients}
    unavailable_servers = {s.key: server_unavailable(s) for s in plan.servers}
    for client in plan.clients:
        for size_kib in plan.sizes_kib:
            for rtt in plan.rtts_ms:
                for loss in plan.losses:
                    for server in plan.servers:
                        floor = floor_seconds(size_kib * KiB, rtt, plan.bandwidth_mbit)
                        cell = Cell(client.key, server.key, size_kib, rtt, loss, floor, plan.cap_s)
                        cell.lower_bound_s = lock_step_lower_bound(client, server, size_kib * KiB, rtt)
                        cell.not_run = _why_not_run(cell, client, server, unavailable, unavailable_servers)
                        cells.append(cell)
    return cells


def _why_not_run(
    cell: Cell,
    client: ClientSpec,
    server: ServerSpec,
    unavailable: dict[str, str | None],
    unavailable_servers: dict[str, str | None],
) -> str:
    if reason := unavailable[client.key] or unavailable_servers[server.key]:
        return reason
    if client.kind == "ipxe-uefi" and server.kind != "edgetftp":
        return "the UEFI harness starts edgetftp only"
    if cell.lower_bound_s is not None and cell.lower_bound_s > cell.cap_s:
        return "over the cap"
    return ""


def expected_seconds(cell: Cell) -> float:
    """A rough guess, only to start the longest cells first when cells run in parallel."""
    if cell.lower_bound_s is not None:
        return cell.lower_bound_s
    client = CLIENTS[cell.client]
    window = client.windowsize or ASSUMED_ANTICIPATION
    return math.ceil(block_count(cell.size_kib * KiB, client.blksize) / window) * cell.rtt_ms / 1000


# --- running --------------------------------------------------------------------------------------------


RunOnce = Callable[[Cell, str], Run]
_PROGRESS_LOCK = threading.Lock()


def run_cell(cell: Cell, repeat: int, run_once: RunOnce, seed: str) -> Cell:
    """Up to ``repeat`` runs; a long, capped or failed first run is not repeated."""
    for index in range(repeat):
        # one seed for every server: the same dice (not the same losses, since fate is per datagram)
        run = run_once(cell, f"{seed}:{cell.client}:{cell.size_kib}:{cell.rtt_ms}:{cell.loss}:{index}")
        cell.runs.append(run)
        if not run.ok or (run.seconds or 0) > LONG_CELL_S:
            break
    with _PROGRESS_LOCK:  # cells finish on several threads; one line each
        print(json.dumps({"cell": _cell_summary(cell)}), file=sys.stderr, flush=True)
    return cell


def _cell_summary(cell: Cell) -> dict[str, Any]:
    return {
        "client": cell.client,
        "server": cell.server,
        "size_kib": cell.size_kib,
        "rtt_ms": cell.rtt_ms,
        "loss": cell.loss,
        "shown": format_cell(cell),
        "runs": [run.seconds for run in cell.runs],
    }


@dataclasses.dataclass
class Context:
    content: Content
    servers: dict[str, ServerProcess]
    workdir: Path
    cap_s: float
    specs: list[ServerSpec]

    def run_once(self, cell: Cell, seed: str) -> Run:
        client, server = CLIENTS[cell.client], self.servers.get(cell.server)
        filename = Content.file_name(cell.size_kib)
        sha = self.content.sha256[filename]
        if client.kind == "ipxe-uefi":
            flags = next(spec.args for spec in self.specs if spec.key == cell.server)
            return firmware.run_ipxe_uefi(
                flags, cell.size_kib * KiB, cell.rtt_ms, cell.loss, seed, self.cap_s
            )
        assert server is not None
        if client.kind == "ipxe-bios":
            root = self.content.root
            return firmware.run_ipxe_bios(
                server.address, root, filename, sha, cell.rtt_ms, cell.loss, seed, self.cap_s
            )
        run = run_program(
            client,
            server.address,
            filename,
            sha,
            cell.rtt_ms,
            cell.loss,
            seed,
            self.cap_s,
            self.workdir / "out",
        )
        run.blocks = block_count(cell.size_kib * KiB, client.blksize)
        return run


def run_cells(cells: list[Cell], context: Context, repeat: int, jobs: int, seed: str) -> None:
    """Client programs in parallel (``jobs``: they are RTT-bound), then the QEMU cells one at a time."""
    to_run = [cell for cell in cells if not cell.not_run]
    programs = sorted(
        (c for c in to_run if CLIENTS[c.client].kind == "program"), key=expected_seconds, reverse=True
    )
    firmware_cells = [c for c in to_run if CLIENTS[c.client].kind != "program"]
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        list(pool.map(lambda cell: run_cell(cell, repeat, context.run_once, seed), programs))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # the queue: nothing more starts
        RUNNING.stop_all()  # the programs running now: their threads return at once
        raise
    pool.shutdown()
    for cell in firmware_cells:
        run_cell(cell, repeat, context.run_once, seed)


# --- report ---------------------------------------------------------------------------------------------


def render_markdown(
    plan: Plan, cells: list[Cell], command: str, meta: dict[str, Any], first_data: str | None, jobs: int
) -> str:
    servers = [s.key for s in plan.servers]
    parts = [
        f"Command: `{command}`",
        "",
        f"edgetftp: {meta['edgetftp_src']} at {meta['edgetftp_commit']}; "
        f"finished {meta['finished_utc']} UTC; "
        f"{meta['wall_seconds']:.0f} s wall; {os.cpu_count()} CPUs shared; jobs {jobs}; repeat {plan.repeat} "
        f"(median; the run count in brackets when more than one); cap {plan.cap_s:g} s per run.",
        f"Floor = 3 \u00d7 RTT + size / {plan.bandwidth_mbit:g} Mbit/s (assumed path bandwidth). "
        "Times: first RRQ to last ACK at the relay, seconds. Every figure had its sha256 checked.",
        "",
        render_table(cells, servers),
        "",
        "Issue 15 targets, as far as this run measured them:",
        "",
        render_targets(check_targets(cells)),
        "",
    ]
    nbp = render_uefi_nbp(cells, plan.bandwidth_mbit)
    if nbp:
        parts += [
            "EDK II's own download of ipxe.efi in the UEFI cells (it negotiates a window itself):",
            "",
            nbp,
            "",
        ]
    if first_data is not None:
        parts += ["Time to the first DATA of a cold object (one fresh client per run):", "", first_data, ""]
    not_run = sorted(
        {f"{c.client} \u00d7 {c.server}: {c.not_run}" for c in cells if c.not_run and not c.over_cap}
    )
    parts += [f"Not run: {line}" for line in not_run]
    return "\n".join(parts).rstrip() + "\n"


def render_uefi_nbp(cells: list[Cell], bandwidth_mbit: float) -> str:
    """The firmware's NBP download, recorded beside each UEFI run: a windowsize client of its own."""
    lines = []
    for cell in cells:
        for run in cell.runs:
            if "nbp_seconds" not in run.extra:
                continue
            nbp = run.extra
            floor = floor_seconds(
                nbp["nbp_blocks"] * int(nbp["nbp_oack"].get("blksize", 512)), cell.rtt_ms, 100.0
            )
            lines.append(
                f"| {SERVERS[cell.server].label} | {cell.rtt_ms:g} | {cell.loss:.0%} | {nbp['nbp_options']} "
                f"| {nbp['nbp_oack']} | {format_seconds(nbp['nbp_seconds'])} | {format_seconds(floor)} "
                f"| {nbp['nbp_data_datagrams']} / {nbp['nbp_blocks']} |"
            )
    if not lines:
        return ""
    header = "| server | RTT ms | loss | options asked | granted | ipxe.efi s | floor s | DATA / blocks |"
    return "\n".join([header, "|---|---|---|---|---|---|---|---|", *lines])


def write_results(
    prefix: Path, markdown: str, cells: list[Cell], meta: dict[str, Any], first_data: Any
) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".md").write_text(markdown)
    document = {"meta": meta, "cells": [dataclasses.asdict(c) for c in cells], "first_data": first_data}
    prefix.with_suffix(".json").write_text(json.dumps(document, indent=2, default=str))


# --- CLI ------------------------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _keys(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        keys = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [key for key in keys if key not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {','.join(choices)}")
        return keys

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.boottime", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=_keys(list(CLIENTS)), default=list(DEFAULT_CLIENTS))
    parser.add_argument("--servers", type=_keys(list(SERVERS)), default=list(SERVERS))
    parser.add_argument(
        "--sizes",
        type=lambda t: [int(v) for v in _floats(t)],
        default=list(DEFAULT_SIZES_KIB),
        help="KiB, e.g. 64,1024,10240",
    )
    parser.add_argument("--rtts", type=_floats, default=list(DEFAULT_RTTS_MS), help="ms, e.g. 20,50")
    parser.add_argument("--loss", type=_floats, default=list(DEFAULT_LOSS_PERCENT), help="percent each way")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=DEFAULT_CAP_S, help="cap per run, seconds")
    parser.add_argument("--jobs", type=int, default=1, help="client programs run in parallel")
    parser.add_argument("--bandwidth-mbit", type=float, default=DEFAULT_BANDWIDTH_MBIT)
    parser.add_argument("--edgetftp-src", type=Path, default=REPO, help="checkout whose server to run")
    parser.add_argument(
        "--edgetftp-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra flag for both edgetftp servers, repeatable: --edgetftp-arg=--max-window=16",
    )
    parser.add_argument("--seed", default="0")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="PREFIX: writes PREFIX.md/.json")
    parser.add_argument(
        "--first-data-sources",
        type=lambda t: [p for p in t.split(",") if p],
        default=[],
        help="also time the first DATA of a cold object: some of local,s3,origin (+ registered)",
    )
    parser.add_argument("--first-data-rtt", type=float, default=50.0)
    parser.add_argument("--first-data-repeat", type=int, default=5)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is not threading.main_thread():
        return _run(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # so the servers are stopped as for Ctrl-C
    try:
        return _run(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    command = "python -m bench.boottime " + shlex.join(sys.argv[1:] if argv is None else argv)
    os.environ["PYTHONPATH"] = edgetftp_pythonpath(args.edgetftp_src)  # every edgetftp we start, UEFI's too
    plan = Plan(
        clients=[CLIENTS[k] for k in args.clients],
        servers=[with_extra_args(SERVERS[k], tuple(args.edgetftp_arg)) for k in args.servers],
        sizes_kib=args.sizes,
        rtts_ms=args.rtts,
        losses=[p / 100 for p in args.loss],
        repeat=max(1, args.repeat),
        cap_s=args.timeout,
        bandwidth_mbit=args.bandwidth_mbit,
        seed=args.seed,
    )
    started = time.monotonic()
    cells = plan_cells(plan)
    workdir = Path(tempfile.mkdtemp(prefix="edgetftp-boottime-"))
    first_data: list[boottime_source.FirstData] = []
    try:
        content = write_content(workdir / "root", plan.sizes_kib)
        (workdir / "out").mkdir()
        runnable = [s for s in plan.servers if not server_unavailable(s)]
        servers = start_servers(runnable, content.root, workdir / "logs")
        try:
            context = Context(content, servers, workdir, plan.cap_s, plan.servers)
            run_cells(cells, context, plan.repeat, args.jobs, plan.seed)
        finally:
            for process in servers.values():
                process.stop()
        if args.first_data_sources:
            first_data = boottime_source.measure_sources(
                args.first_data_sources, args.first_data_rtt, args.first_data_repeat, workdir / "sources"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {
        "command": command,
        "edgetftp_src": str(args.edgetftp_src),
        "edgetftp_commit": source_commit(args.edgetftp_src),
        "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "wall_seconds": time.monotonic() - started,
        "bandwidth_mbit": plan.bandwidth_mbit,
        "cap_s": plan.cap_s,
        "jobs": args.jobs,
        "edgetftp_extra_args": args.edgetftp_arg,
    }
    first_data_table = boottime_source.render_first_data(first_data) if first_data else None
    markdown = render_markdown(plan, cells, command, meta, first_data_table, args.jobs)
    sys.stdout.write(markdown)
    write_results(args.output, markdown, cells, meta, [dataclasses.asdict(r) for r in first_data])
    return 0 if all(not c.failures() for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
