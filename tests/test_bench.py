"""Tests of the benchmark tooling itself (bench/): real servers on loopback, real datagrams, no timing claims.

tftpd-hpa (/usr/sbin/in.tftpd) is the reference server: classic per-transfer TIDs, no windowsize.
Its cases skip when it is not installed; an edgetftp that does not serve fails the tests that use it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.loadgen import (
    ClientTiming,
    LoadConfig,
    LoadSummary,
    TransferSpec,
    held_sessions,
    run_coroutine,
    run_load,
)
from bench.peers import EDGETFTP, TFTPD_HPA_PEER, Peer, ServerProcess, start_server
from bench.report import MISSING, Metric, format_value, median_of_runs, ratio, render_table
from bench.run import Content, KiB, Options, Sizes, make_content, measure, run_benchmark
from bench.stats import percentile

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# s2.bin is over 65535 blocks at blksize 8 (> 512 KiB), so its block numbers wrap past 65535 -> 0
TEST_SIZES = Sizes(s1_size=100 * KiB, s2_size=520 * KiB, s3_size=64 * KiB)
TIMING = ClientTiming(ack_timeout=0.5, rrq_timeout=0.5, retries=6)


@pytest.fixture(scope="module")
def bench_content(tmp_path_factory: pytest.TempPathFactory) -> Content:
    return make_content(tmp_path_factory.mktemp("bench") / "content", TEST_SIZES)


def _serve(peer: Peer, content: Content, log_dir: Path) -> Iterator[ServerProcess]:
    reason = peer.available()
    if reason is not None:
        pytest.skip(reason)
    server = start_server(peer, str(content.root), log_dir, cpu=None)
    try:
        server.wait_until_serving("probe.bin")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tftpd_hpa(bench_content: Content, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _serve(TFTPD_HPA_PEER, bench_content, tmp_path_factory.mktemp("tftpd-logs"))


@pytest.fixture(scope="module")
def edgetftp(bench_content: Content, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _serve(EDGETFTP, bench_content, tmp_path_factory.mktemp("edgetftp-logs"))


@pytest.fixture(params=["tftpd-hpa", "edgetftp"])
def any_server(request: pytest.FixtureRequest) -> ServerProcess:
    fixture_name = "tftpd_hpa" if request.param == "tftpd-hpa" else "edgetftp"
    server: ServerProcess = request.getfixturevalue(fixture_name)
    return server


def fetch(
    server: ServerProcess,
    spec: TransferSpec,
    count: int = 1,
    concurrency: int = 1,
    timing: ClientTiming = TIMING,
) -> LoadSummary:
    return run_coroutine(run_load(LoadConfig(server.address, spec, timing, concurrency, count)))


# --- the load generator against real servers ---------------------------------------------------------------


def test_concurrent_fetches_arrive_whole(any_server: ServerProcess, bench_content: Content) -> None:
    spec = bench_content.spec("s1.bin", blksize=1428, tsize=True)
    summary = fetch(any_server, spec, count=6, concurrency=3)
    assert summary.failure_reasons == {}
    assert summary.ok == 6
    assert summary.bytes_ok == 6 * bench_content.files["s1.bin"].size
    assert summary.granted["blksize"] == "1428"
    assert summary.granted["tsize"] == str(bench_content.files["s1.bin"].size)
    p50, slowest = summary.latency_seconds["p50"], summary.latency_seconds["max"]
    assert p50 is not None and slowest is not None
    assert p50 <= slowest


def test_wrong_digest_is_reported_as_failure(any_server: ServerProcess, bench_content: Content) -> None:
    wrong = hashlib.sha256(b"not the file").hexdigest()
    spec = TransferSpec("s1.bin", blksize=1428, expected_sha256=wrong)
    summary = fetch(any_server, spec, count=3, concurrency=3)
    assert summary.ok == 0
    assert summary.failure_reasons == {"sha256 mismatch": 3}


def test_missing_file_fails_with_the_servers_error(any_server: ServerProcess) -> None:
    summary = fetch(any_server, TransferSpec("no-such-file.bin", blksize=1428))
    assert summary.failed == 1
    (reason,) = summary.failure_reasons
    assert reason.startswith("ERROR 1")


def test_block_numbers_roll_over_at_blksize_8(any_server: ServerProcess, bench_content: Content) -> None:
    file = bench_content.files["s2.bin"]
    assert file.size // 8 > 65535  # the premise: this transfer wraps the 16-bit block number
    summary = fetch(any_server, bench_content.spec("s2.bin", blksize=8))
    assert summary.failure_reasons == {}
    assert summary.granted == {"blksize": "8"}
    assert summary.bytes_ok == file.size


def test_plain_rfc1350_transfer_without_options(any_server: ServerProcess, bench_content: Content) -> None:
    summary = fetch(any_server, bench_content.spec("s3.bin"))
    assert summary.failure_reasons == {}
    assert summary.granted == {}  # DATA 1 came without an OACK: blksize 512


def test_windowed_transfer_against_edgetftp(edgetftp: ServerProcess, bench_content: Content) -> None:
    spec = bench_content.spec("s3.bin", blksize=1428, windowsize=16)
    summary = fetch(edgetftp, spec, count=4, concurrency=2)
    assert summary.failure_reasons == {}
    assert summary.granted["windowsize"] == "16"
    assert summary.out_of_order == 0


def test_windowsize_refused_by_tftpd_hpa_falls_back_to_lock_step(
    tftpd_hpa: ServerProcess, bench_content: Content
) -> None:
    summary = fetch(tftpd_hpa, bench_content.spec("s3.bin", blksize=1428, windowsize=16))
    assert summary.failure_reasons == {}
    assert "windowsize" not in summary.granted  # tftpd-hpa 5.2 predates RFC 7440


def test_duplicate_rrq_shows_as_second_tid_on_a_forking_server(
    tftpd_hpa: ServerProcess, bench_content: Content
) -> None:
    # tftpd-hpa forks a child per RRQ, so the repeated RRQ gets a second child answering from another
    # port; on a loaded CI machine some second children answer only after the transfer ended, which
    # the linger still catches and counts as a second TID
    timing = ClientTiming(ack_timeout=0.5, duplicate_rrq=True, linger=1.0)
    summary = fetch(
        tftpd_hpa, bench_content.spec("s3.bin", blksize=1428), count=4, concurrency=4, timing=timing
    )
    tftpd_hpa.settle(timeout=30.0)  # the second children retry until their own timeout
    assert summary.ok == 4
    assert summary.duplicate_sessions == 4
    assert summary.foreign_tid_packets >= 4


def test_duplicate_rrq_does_not_duplicate_edgetftp_sessions(
    edgetftp: ServerProcess, bench_content: Content
) -> None:
    timing = ClientTiming(ack_timeout=0.5, duplicate_rrq=True, linger=0.3)
    summary = fetch(
        edgetftp, bench_content.spec("s3.bin", blksize=1428), count=4, concurrency=4, timing=timing
    )
    assert summary.failure_reasons == {}
    assert summary.duplicate_sessions == 0


def test_held_sessions_stay_live_until_released(tftpd_hpa: ServerProcess, bench_content: Content) -> None:
    spec = bench_content.spec("s3.bin", blksize=1428)
    tftpd_hpa.settle(timeout=30.0)  # children of an earlier test still retrying would be counted

    async def hold() -> tuple[int, int]:
        async with held_sessions(tftpd_hpa.address, spec, TIMING, count=10) as held:
            return held.reached, tftpd_hpa.process_count()

    reached, processes_while_held = run_coroutine(hold())
    assert reached == 10
    assert processes_while_held == 11  # the daemon and one child per live session
    tftpd_hpa.settle()
    assert tftpd_hpa.process_count() == 1  # released with ERROR 0, every child ended


def test_server_cpu_includes_forked_children(tftpd_hpa: ServerProcess, bench_content: Content) -> None:
    spec = bench_content.spec("s1.bin", blksize=1428)
    measured = measure(tftpd_hpa, LoadConfig(tftpd_hpa.address, spec, TIMING, 4, 20), use_uvloop=True)
    assert measured.summary.ok == 20
    if tftpd_hpa.meter.kind == "proc":
        assert measured.server_cpu_seconds >= 0  # clock ticks of 10 ms may round a short run to 0
    else:
        assert measured.server_cpu_seconds > 0  # the daemon alone does almost nothing: this is the children


def test_cli_prints_a_json_summary(tftpd_hpa: ServerProcess, bench_content: Content) -> None:
    probe = bench_content.files["probe.bin"]
    command = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--server",
        f"{tftpd_hpa.host}:{tftpd_hpa.port}",
        "--file",
        probe.name,
        "--blksize",
        "512",
        "--count",
        "3",
        "--concurrency",
        "2",
        "--expect-sha256",
        probe.sha256,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    assert summary["ok"] == 3
    assert summary["bytes_ok"] == 3 * probe.size


# --- statistics and the table -------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    latencies = [float(value) for value in range(1, 101)]
    assert percentile(latencies, 0.5) == 50.0
    assert percentile(latencies, 0.99) == 99.0
    assert percentile(latencies, 1.0) == 100.0
    assert percentile([], 0.5) is None


def test_ratio_needs_two_numbers() -> None:
    assert ratio(1.5, 3.0) == 0.5
    assert ratio(None, 3.0) is None
    assert ratio(2.0, 0) is None
    assert ratio("40/40", "40/40") is None
    assert format_value(None) == MISSING


def test_table_and_ratios_from_a_tiny_real_run(tmp_path: Path) -> None:
    options = Options(
        repeat=1, quick=True, scenarios=("s1", "s2"), results_dir=tmp_path / "results", pin=False
    )
    outcome = run_benchmark(options, tmp_path / "work")
    reference = outcome.medians["tftpd-hpa"]
    assert reference["s1_completed"] == "40/40"
    assert isinstance(reference["s1_cpu_ms"], float)
    assert reference["s2_win_mb_s"] is None  # windowsize not granted by tftpd-hpa 5.2: shown as the dash
    rows = {line.split(" | ")[0].lstrip("| "): line for line in outcome.table.splitlines()[2:]}
    window_row = next(row for label, row in rows.items() if "windowsize 16 — MB/s" in label)
    assert window_row.split(" | ")[2] == MISSING
    cpu_row = next(row for label, row in rows.items() if label.startswith("S1:") and "CPU ms" in label)
    if "edgetftp" in outcome.medians:
        mine = outcome.medians["edgetftp"]["s1_cpu_ms"]
        assert isinstance(mine, float)
        assert cpu_row.split(" | ")[3] == f"{mine / reference['s1_cpu_ms']:.2f}"
    else:
        assert cpu_row.split(" | ")[3] == MISSING
    assert outcome.json_path is not None
    saved = json.loads(outcome.json_path.read_text())
    assert saved["table"] == outcome.table
    assert saved["medians"]["tftpd-hpa"]["s1_cpu_ms"] == reference["s1_cpu_ms"]


def test_median_of_runs_and_render_with_custom_rows() -> None:
    runs: list[dict[str, float | int | str | None]] = [{"x": 3.0}, {"x": 1.0}, {"x": 2.0, "y": "9/10"}]
    assert median_of_runs(runs, "x") == 2.0
    assert median_of_runs(runs, "y") == "9/10"
    assert median_of_runs(runs, "z") is None
    table = render_table([Metric("x", "X", "lower", "t")], {"edgetftp": {"x": 1.0}, "tftpd-hpa": {"x": 4.0}})
    assert table.splitlines()[2] == "| X | 1 | 4 | 0.25 | t |"
