"""Run edgetftp and tftpd-hpa side by side on the issue-5 scenarios and print one table with the ratios.

    python -m bench.run                 # full run, median of 3 (a few minutes)
    python -m bench.run --quick         # smoke run with small counts (< 1 minute)
    python -m bench.run --s3            # also the S3 source with a warm cache (moto server on 127.0.0.1)
    python -m bench.run --reference-src ../base   # edgetftp against an older checkout instead of tftpd-hpa

Every server runs pinned to CPU 0 (``taskset -c 0``); this process, the load generator, pins itself to
CPU 1.  Both servers are started for a scenario and the repeats alternate between them, so slow drift of
the machine hits both alike.  The JSON with every run and the medians goes to bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import (
    ClientTiming,
    LoadConfig,
    LoadSummary,
    TransferSpec,
    held_sessions,
    loop_name,
    run_coroutine,
    run_load,
)
from bench.peers import (
    TFTPD_HPA_PEER,
    Peer,
    ServerFailed,
    ServerProcess,
    edgetftp_build,
    edgetftp_with,
    make_cpu_meter,
    pin_self,
    start_server,
)
from bench.report import Metric, Value, median_of_runs, render_table

KiB = 1024
MiB = 1024 * KiB
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SERVER_CPU = 0
CLIENT_CPU = 1
PROBE_FILE = "probe.bin"  # what start-up waits for: the first served file
S3_BUCKET = "edgetftp-bench"
S3_PREFIX = "boot/"
TIMES = "\u00d7"  # the multiplication sign of the table


@dataclass(frozen=True)
class Sizes:
    """Scenario sizes; ``QUICK`` is the smoke-run variant."""

    s1_size: int = 100 * KiB
    s1_count: int = 400
    s1_concurrency: int = 20
    s2_size: int = 20 * MiB
    s3_size: int = 1 * MiB
    s3_count: int = 400
    s3_concurrency: int = 200
    duplicate_check_count: int = 100
    memory_sessions: int = 1000
    blksize: int = 1428
    windowsize: int = 16


FULL = Sizes()
QUICK = Sizes(
    s1_count=40,
    s1_concurrency=10,
    s2_size=2 * MiB,
    s3_count=40,
    s3_concurrency=20,
    duplicate_check_count=20,
    memory_sessions=100,
)


def _size_text(size: int) -> str:
    return f"{size // MiB} MiB" if size >= MiB else f"{size // KiB} KiB"


def metrics_for(sizes: Sizes) -> list[Metric]:
    """The table rows, labelled with the sizes actually run."""
    s1 = f"{_size_text(sizes.s1_size)} {TIMES} {sizes.s1_count}, {sizes.s1_concurrency} concurrent"
    s3 = f"{_size_text(sizes.s3_size)} {TIMES} {sizes.s3_count}, {sizes.s3_concurrency} concurrent"
    s2 = f"{_size_text(sizes.s2_size)}, blksize {sizes.blksize}"
    live = f"{sizes.memory_sessions:,} live sessions"
    return [
        Metric(
            "s1_cpu_ms",
            f"S1: {s1}, blksize {sizes.blksize} — server CPU ms per transfer",
            "lower",
            f"≤ 0.8{TIMES}",
        ),
        Metric("s1_per_s", "S1: transfers per second", "higher"),
        Metric("s1_p99_s", "S1: p99 latency, s", "info"),
        Metric("s1_completed", "S1: transfers completed", "info", "all"),
        Metric("s2_lock_mb_s", f"S2: {s2}, lock-step — MB/s", "higher", f"≥ 0.95{TIMES}"),
        Metric("s2_win_mb_s", f"S2: same with windowsize {sizes.windowsize} — MB/s", "higher", "≥ 104 MB/s"),
        Metric("s2_lock_cpu_s_per_mib", "S2: server CPU s per MiB, lock-step", "lower", f"≤ 1{TIMES}"),
        Metric("s2_win_cpu_s_per_mib", f"S2: server CPU s per MiB, windowsize {sizes.windowsize}", "info"),
        Metric("s3_p99_s", f"S3: {s3} — p99 latency, s", "lower", f"≤ 0.5{TIMES}"),
        Metric("s3_completed", "S3: transfers completed", "info", "all"),
        Metric(
            "s3_duplicate_sessions",
            f"S3: duplicate sessions, every RRQ sent twice ({sizes.duplicate_check_count} transfers)",
            "lower",
            "0",
        ),
        Metric("mem_rss_mib", f"Memory: RSS of the server process, {live}, MiB", "lower", "≤ 64 MiB"),
        Metric("mem_pss_mib", f"Memory: PSS of server + children, {live}, MiB", "info"),
        Metric("mem_reached", "Memory: sessions live at the measurement", "info"),
        Metric("startup_s", "Start-up: process start → first file served (local), s", "lower", "≤ 1 s"),
        Metric("s3src_cpu_ms", f"S3 source, warm cache: {s1} — server CPU ms per transfer", "info"),
        Metric("s3src_p99_s", "S3 source, warm cache: p99 latency, s", "info"),
    ]


# --- content ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContentFile:
    name: str
    size: int
    sha256: str


@dataclass
class Content:
    root: Path
    files: dict[str, ContentFile] = field(default_factory=dict)

    def spec(self, name: str, **options: Any) -> TransferSpec:
        return TransferSpec(name, expected_sha256=self.files[name].sha256, **options)


def make_content(root: Path, sizes: Sizes, seed: int = 5) -> Content:
    """Random (seeded) files readable by tftpd-hpa's unprivileged user after it drops root."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    generator = random.Random(seed)
    content = Content(root)
    wanted = {PROBE_FILE: KiB, "s1.bin": sizes.s1_size, "s2.bin": sizes.s2_size, "s3.bin": sizes.s3_size}
    for name, size in wanted.items():
        data = generator.randbytes(size)
        path = root / name
        path.write_bytes(data)
        path.chmod(0o644)
        content.files[name] = ContentFile(name, size, hashlib.sha256(data).hexdigest())
    return content


# --- measuring one load run ---------------------------------------------------------------------------------


@dataclass
class Measured:
    summary: LoadSummary
    server_cpu_seconds: float


def measure(server: ServerProcess, config: LoadConfig, use_uvloop: bool) -> Measured:
    """Run a load and the server CPU it cost (children included, waited for until they exit)."""
    server.settle()
    cpu_before = server.cpu_seconds()
    summary = run_coroutine(run_load(config), use_uvloop)
    server.settle()
    return Measured(summary, server.cpu_seconds() - cpu_before)


def _completed(summary: LoadSummary) -> str:
    return f"{summary.ok}/{summary.sessions}"


def _per_transfer_ms(measured: Measured) -> float | None:
    ok = measured.summary.ok
    return measured.server_cpu_seconds * 1000 / ok if ok else None


def _per_mib(measured: Measured) -> float | None:
    mib = measured.summary.bytes_ok / MiB
    return measured.server_cpu_seconds / mib if mib else None


@dataclass
class Context:
    content: Content
    sizes: Sizes
    use_uvloop: bool
    repeat_index: int = 0
    raw: list[dict[str, Any]] = field(default_factory=list)  # every load summary, for the JSON

    def load(self, server: ServerProcess, name: str, spec: TransferSpec, **kwargs: Any) -> Measured:
        timing = kwargs.pop("timing", ClientTiming())
        config = LoadConfig(server.address, spec, timing, **kwargs)
        measured = measure(server, config, self.use_uvloop)
        self.raw.append(
            {
                "peer": server.peer.name,
                "scenario": name,
                "repeat": self.repeat_index,
                "server_cpu_seconds": measured.server_cpu_seconds,
                "summary": measured.summary.to_dict(),
            }
        )
        return measured


# --- scenarios --------------------------------------------------------------------------------------------

Scenario = Callable[[ServerProcess, Context], dict[str, Value]]


def scenario_s1(server: ServerProcess, ctx: Context) -> dict[str, Value]:
    sizes = ctx.sizes
    spec = ctx.content.spec("s1.bin", blksize=sizes.blksize)
    measured = ctx.load(server, "S1", spec, concurrency=sizes.s1_concurrency, count=sizes.s1_count)
    return {
        "s1_cpu_ms": _per_transfer_ms(measured),
        "s1_per_s": measured.summary.ok / measured.summary.wall_seconds,
        "s1_p99_s": measured.summary.latency_seconds["p99"],
        "s1_completed": _completed(measured.summary),
    }


def scenario_s2(server: ServerProcess, ctx: Context) -> dict[str, Value]:
    sizes = ctx.sizes
    lock = ctx.load(server, "S2 lock-step", ctx.content.spec("s2.bin", blksize=sizes.blksize))
    windowed_spec = ctx.content.spec("s2.bin", blksize=sizes.blksize, windowsize=sizes.windowsize)
    windowed = ctx.load(server, "S2 windowed", windowed_spec)
    # a server without RFC 7440 leaves windowsize out of its OACK: that run was lock-step, so show the dash
    window_granted = windowed.summary.granted.get("windowsize") == str(sizes.windowsize)
    return {
        "s2_lock_mb_s": lock.summary.throughput_mb_s if lock.summary.failed == 0 else None,
        "s2_lock_cpu_s_per_mib": _per_mib(lock),
        "s2_win_mb_s": windowed.summary.throughput_mb_s if window_granted and windowed.summary.ok else None,
        "s2_win_cpu_s_per_mib": _per_mib(windowed) if window_granted else None,
    }


def scenario_s3(server: ServerProcess, ctx: Context) -> dict[str, Value]:
    sizes = ctx.sizes
    spec = ctx.content.spec("s3.bin", blksize=sizes.blksize)
    measured = ctx.load(server, "S3", spec, concurrency=sizes.s3_concurrency, count=sizes.s3_count)
    figures: dict[str, Value] = {
        "s3_p99_s": measured.summary.latency_seconds["p99"],
        "s3_completed": _completed(measured.summary),
    }
    if ctx.repeat_index == 0:  # the duplicate check is a yes/no fact, one run is enough
        # the RRQ twice, back to back: a retransmission that crossed the server's reply
        duplicate = ClientTiming(duplicate_rrq=True, linger=0.5)
        count = sizes.duplicate_check_count
        checked = ctx.load(server, "S3 duplicate RRQ", spec, timing=duplicate, concurrency=count, count=count)
        figures["s3_duplicate_sessions"] = checked.summary.duplicate_sessions
    return figures


def scenario_memory(server: ServerProcess, ctx: Context) -> dict[str, Value]:
    """Sessions that stop after the OACK (never ACK) stay live on the server; read its memory then."""
    count = ctx.sizes.memory_sessions
    spec = ctx.content.spec("s3.bin", blksize=ctx.sizes.blksize)
    timing = ClientTiming(rrq_timeout=0.5, retries=10)

    async def hold_and_read() -> dict[str, Value]:
        async with held_sessions(server.address, spec, timing, count) as held:
            return {
                "mem_rss_mib": server.rss_bytes() / MiB,
                "mem_pss_mib": server.pss_bytes_with_children() / MiB,
                "mem_reached": f"{held.reached}/{held.requested}",
            }

    figures = run_coroutine(hold_and_read(), ctx.use_uvloop)
    ctx.raw.append({"peer": server.peer.name, "scenario": "memory", "repeat": ctx.repeat_index, **figures})
    server.settle(timeout=10)
    return figures


SCENARIOS: dict[str, Scenario] = {
    "s1": scenario_s1,
    "s2": scenario_s2,
    "s3": scenario_s3,
    "memory": scenario_memory,
}


# --- orchestration ----------------------------------------------------------------------------------------


@dataclass
class Options:
    repeat: int = 3
    quick: bool = False
    scenarios: tuple[str, ...] = ("s1", "s2", "s3", "memory", "startup")
    s3: bool = False
    use_uvloop: bool = True
    edgetftp_args: tuple[str, ...] = ()
    peers: tuple[str, ...] = ("edgetftp", "tftpd-hpa")
    reference_src: str | None = None  # the reference column is this older edgetftp checkout
    results_dir: Path | None = RESULTS_DIR
    pin: bool = True


@dataclass
class Outcome:
    medians: dict[str, dict[str, Value]]
    runs: dict[str, list[dict[str, Value]]]
    startups: dict[str, list[float]]
    skipped: dict[str, str]
    table: str
    raw: list[dict[str, Any]]
    machine: dict[str, Any]
    json_path: Path | None = None


@contextlib.contextmanager
def running_servers(
    peers: list[Peer], content: Content, log_dir: Path, startups: dict[str, list[float]], cpu: int | None
) -> Iterator[dict[str, ServerProcess]]:
    servers: dict[str, ServerProcess] = {}
    try:
        for peer in peers:
            server = start_server(peer, str(content.root), log_dir, cpu=cpu)
            servers[peer.name] = server
            startups[peer.name].append(server.wait_until_serving(PROBE_FILE))
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def select_peers(options: Options) -> tuple[list[Peer], dict[str, str]]:
    reference = (
        edgetftp_build(options.reference_src, *options.edgetftp_args)
        if options.reference_src
        else TFTPD_HPA_PEER
    )
    candidates = {"edgetftp": edgetftp_with(*options.edgetftp_args), "tftpd-hpa": reference}
    peers, skipped = [], {}
    for name in options.peers:
        reason = candidates[name].available()
        if reason is None:
            peers.append(candidates[name])
        else:
            skipped[name] = reason
    return peers, skipped


def machine_facts(use_uvloop: bool) -> dict[str, Any]:
    tftpd_version = ""
    with contextlib.suppress(OSError):
        probe = subprocess.run([TFTPD_HPA_PEER.executable, "-V"], capture_output=True, text=True, check=False)
        tftpd_version = (probe.stdout + probe.stderr).strip().splitlines()[0]
    meter = make_cpu_meter("probe")
    meter.close()
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadgen_loop": loop_name(use_uvloop),
        "cpu_meter": meter.kind,
        "tftpd_hpa": tftpd_version,
        "server_cpu": SERVER_CPU,
        "client_cpu": CLIENT_CPU,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def raise_open_file_limit() -> None:
    """1,000 held sessions are 1,000 sockets: lift the soft limit (often 1024) to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_benchmark(options: Options, workdir: Path) -> Outcome:
    sizes = QUICK if options.quick else FULL
    raise_open_file_limit()
    pinned = options.pin and pin_self(CLIENT_CPU)
    server_cpu = SERVER_CPU if pinned else None
    peers, skipped = select_peers(options)
    content = make_content(workdir / "content", sizes)
    ctx = Context(content, sizes, options.use_uvloop)
    runs: dict[str, list[dict[str, Value]]] = {
        peer.name: [{} for _ in range(options.repeat)] for peer in peers
    }
    startups: dict[str, list[float]] = {peer.name: [] for peer in peers}
    for name in options.scenarios:
        if name == "startup":
            measure_startups(peers, content, workdir / "logs", startups, options.repeat, server_cpu)
            continue
        try:
            with running_servers(peers, content, workdir / "logs", startups, server_cpu) as servers:
                for repeat in range(options.repeat):
                    ctx.repeat_index = repeat
                    for peer in _rotated(peers, repeat):
                        runs[peer.name][repeat].update(SCENARIOS[name](servers[peer.name], ctx))
        except ServerFailed as exc:  # one broken scenario should not lose the others' figures
            skipped[name] = str(exc)
    if options.s3:
        s3_figures = run_s3_source(peers, content, ctx, workdir, server_cpu, options.repeat, skipped)
        for peer_name, figures in s3_figures.items():
            for repeat, figure in enumerate(figures):
                runs[peer_name][repeat].update(figure)
    medians = {name: _medians(peer_runs) for name, peer_runs in runs.items()}
    for name, values in startups.items():
        medians[name]["startup_s"] = median_of_runs([{"v": value} for value in values], "v")
    columns = [peer.name for peer in peers] if len(peers) == 2 else ["edgetftp", "tftpd-hpa"]
    table = render_table(metrics_for(sizes), medians, columns)
    facts = machine_facts(options.use_uvloop) | {"pinned": pinned, "quick": options.quick}
    outcome = Outcome(medians, runs, startups, skipped, table, ctx.raw, facts)
    if options.results_dir is not None:
        outcome.json_path = write_json(outcome, options)
    return outcome


def measure_startups(
    peers: list[Peer],
    content: Content,
    log_dir: Path,
    startups: dict[str, list[float]],
    repeat: int,
    cpu: int | None,
) -> None:
    """Fresh process each time: spawn to first file served.  Starts of the other scenarios count too."""
    for repeat_index in range(repeat):
        for peer in _rotated(peers, repeat_index):
            with running_servers([peer], content, log_dir, startups, cpu):
                pass


def _rotated(peers: list[Peer], shift: int) -> list[Peer]:
    if not peers:
        return peers
    shift %= len(peers)
    return peers[shift:] + peers[:shift]


def _medians(peer_runs: list[dict[str, Value]]) -> dict[str, Value]:
    keys = {key for run in peer_runs for key in run}
    return {key: median_of_runs(peer_runs, key) for key in sorted(keys)}


# --- S3 source ----------------------------------------------------------------------------------------------


def run_s3_source(
    peers: list[Peer],
    content: Content,
    ctx: Context,
    workdir: Path,
    cpu: int | None,
    repeat: int,
    skipped: dict[str, str],
) -> dict[str, list[dict[str, Value]]]:
    """edgetftp with an S3 source (moto server on 127.0.0.1), S1's load after one warming fetch."""
    edgetftp = next((peer for peer in peers if peer.name == "edgetftp"), None)
    if edgetftp is None:
        return {}
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        skipped["s3-source"] = f"moto is not installed ({exc})"
        return {}
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's HTTP server logs every request
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        _upload(endpoint, content)
        return {"edgetftp": _s3_runs(edgetftp, endpoint, content, ctx, workdir, cpu, repeat, skipped)}
    finally:
        moto.stop()


S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}


def _upload(endpoint: str, content: Content) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_boto_credentials())
    s3.create_bucket(Bucket=S3_BUCKET)
    for name in (PROBE_FILE, "s1.bin"):
        s3.put_object(Bucket=S3_BUCKET, Key=S3_PREFIX + name, Body=(content.root / name).read_bytes())


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
    }


def _s3_runs(
    edgetftp: Peer,
    endpoint: str,
    content: Content,
    ctx: Context,
    workdir: Path,
    cpu: int | None,
    repeat: int,
    skipped: dict[str, str],
) -> list[dict[str, Value]]:
    peer = dataclasses.replace(
        edgetftp, extra_args=(*edgetftp.extra_args, "--endpoint-url", endpoint, "--force-path-style")
    )
    env = os.environ | S3_ENV
    server = start_server(peer, f"s3://{S3_BUCKET}/{S3_PREFIX}", workdir / "logs", cpu=cpu, env=env)
    figures: list[dict[str, Value]] = []
    try:
        server.wait_until_serving(PROBE_FILE)
        spec = content.spec("s1.bin", blksize=ctx.sizes.blksize)
        ctx.load(server, "S3 source warm-up", spec)  # fills the cache
        for repeat_index in range(repeat):
            ctx.repeat_index = repeat_index
            measured = ctx.load(
                server, "S3 source", spec, concurrency=ctx.sizes.s1_concurrency, count=ctx.sizes.s1_count
            )
            p99 = measured.summary.latency_seconds["p99"]
            figures.append({"s3src_cpu_ms": _per_transfer_ms(measured), "s3src_p99_s": p99})
    except ServerFailed as exc:
        skipped["s3-source"] = f"edgetftp did not serve from S3: {exc}"
    finally:
        server.stop()
    return figures


# --- output -----------------------------------------------------------------------------------------------


def write_json(outcome: Outcome, options: Options) -> Path:
    assert options.results_dir is not None
    options.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = options.results_dir / f"bench-{stamp}{'-quick' if options.quick else ''}.json"
    document = {
        "machine": outcome.machine,
        "options": {key: str(value) for key, value in dataclasses.asdict(options).items()},
        "medians": outcome.medians,
        "runs": outcome.runs,
        "startups": outcome.startups,
        "skipped": outcome.skipped,
        "table": outcome.table,
        "loads": outcome.raw,
    }
    path.write_text(json.dumps(document, indent=2, default=str))
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one repeat: a smoke run")
    parser.add_argument("--repeat", type=int, help="runs per scenario, median taken (3; --quick: 1)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[*SCENARIOS, "startup"],
        help="run only these (repeatable; default all)",
    )
    parser.add_argument("--s3", action="store_true", help="also the S3 source with a warm cache (needs moto)")
    peers = ["edgetftp", "tftpd-hpa"]
    parser.add_argument("--peer", action="append", choices=peers, help="only these servers (repeatable)")
    parser.add_argument(
        "--edgetftp-arg", action="append", default=[], help="extra edgetftp flag (repeatable)"
    )
    parser.add_argument(
        "--reference-src",
        metavar="CHECKOUT",
        help="compare against another edgetftp checkout (old commit) instead of tftpd-hpa",
    )
    parser.add_argument("--no-uvloop", action="store_true", help="load generator on asyncio's own loop")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and load generator to CPUs")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (content, server logs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = Options(
        repeat=args.repeat or (1 if args.quick else 3),
        quick=args.quick,
        scenarios=tuple(args.scenario or Options.scenarios),
        s3=args.s3,
        use_uvloop=not args.no_uvloop,
        edgetftp_args=tuple(args.edgetftp_arg),
        peers=tuple(args.peer or Options.peers),
        pin=not args.no_pin,
        reference_src=args.reference_src,
    )
    workdir = Path(tempfile.mkdtemp(prefix="edgetftp-bench-"))
    try:
        outcome = run_benchmark(options, workdir)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(outcome.table)
    for name, reason in outcome.skipped.items():
        print(f"skipped {name}: {reason}")
    facts = outcome.machine
    print(
        f"\n{facts['cpus']} CPUs, pinned={facts['pinned']}, cpu meter={facts['cpu_meter']}, "
        f"load generator on {facts['loadgen_loop']}, {facts['tftpd_hpa']}, median of {options.repeat}"
    )
    if outcome.json_path:
        print(f"results: {outcome.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
