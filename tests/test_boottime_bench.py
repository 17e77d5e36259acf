"""The boot-time benchmark end to end (bench/boottime.py): a tiny real matrix, no timing assertions.

Real client programs fetch through the real relay from real servers (edgetftp default and
``--anticipate 0``, tftpd-hpa when it can run); the test checks the table's shape, that every run
was sha256-verified, the floor beside each cell, that a wrong digest is caught, that an over-cap
lock-step cell is reported as "> cap" rather than dropped, and the first-DATA probe.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import boottime, boottime_source
from bench.boottime_model import CLIENTS, SERVERS, Cell, KiB, Run, floor_seconds, format_cell
from bench.latency import Content, write_content
from bench.peers import edgetftp_with, start_server

pytestmark = pytest.mark.slow

SIZE_KIB = 64
RTT_MS = 20.0
REPO = Path(__file__).resolve().parent.parent


def _programs() -> list[str]:
    return [key for key in ("busybox", "curl") if shutil.which(CLIENTS[key].program)]


def _servers() -> list[str]:
    servers = ["default", "anticipate0"]
    return [*servers, "tftpd-hpa"] if boottime.server_unavailable(SERVERS["tftpd-hpa"]) is None else servers


@pytest.fixture(scope="module")
def programs() -> list[str]:
    found = _programs()
    if not found:
        pytest.skip("neither busybox nor curl is installed")
    return found


def test_tiny_matrix_prints_the_table_and_verifies_every_run(
    programs: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = _servers()
    prefix = tmp_path / "results"
    argv = ["--clients", ",".join(programs), "--servers", ",".join(servers), "--sizes", str(SIZE_KIB)]
    argv += ["--rtts", f"{RTT_MS:g}", "--loss", "0,3", "--repeat", "1", "--timeout", "60", "--jobs", "2"]
    argv += ["--output", str(prefix)]
    assert boottime.main(argv) == 0
    out = capsys.readouterr().out

    header = "| client | size | RTT ms | loss | floor s | " + " | ".join(SERVERS[s].label for s in servers)
    ratios = " | default / floor" + (" | default / tftpd-hpa" if "tftpd-hpa" in servers else "")
    assert header + ratios + " |" in out
    floor = floor_seconds(SIZE_KIB * KiB, RTT_MS, 100.0)
    rows = [line for line in out.splitlines() if line.startswith(f"| {CLIENTS[programs[0]].label} |")]
    assert len(rows) == 2  # loss 0 and 3%
    assert all("| 64 KiB | 20 | " in row and f"| {floor:.2f} |" in row for row in rows)
    assert prefix.with_suffix(".md").read_text() == out

    document = json.loads(prefix.with_suffix(".json").read_text())
    cells = document["cells"]
    assert len(cells) == len(programs) * 2 * len(servers)
    for cell in cells:
        assert cell["not_run"] == "" and len(cell["runs"]) == 1
        run = cell["runs"][0]
        assert run["ok"], cell  # exit 0, the file's sha256 right, the final ACK seen by the relay
        assert run["seconds"] > 0.0 and run["blocks"] > 0 and run["data_datagrams"] >= run["blocks"]
    assert document["meta"]["edgetftp_commit"]


def test_a_wrong_digest_fails_the_run(programs: list[str], tmp_path: Path) -> None:
    content = write_content(tmp_path / "root", [SIZE_KIB])
    (tmp_path / "out").mkdir()
    servers = boottime.start_servers([SERVERS["default"]], content.root, tmp_path / "logs")
    try:
        run = boottime.run_program(
            CLIENTS[programs[0]],
            servers["default"].address,
            Content.file_name(SIZE_KIB),
            "0" * 64,
            RTT_MS,
            0.0,
            "seed",
            30.0,
            tmp_path / "out",
        )
    finally:
        servers["default"].stop()
    assert not run.ok and "wrong sha256" in run.note


def test_lock_step_cells_over_the_cap_are_reported_not_dropped() -> None:
    plan = boottime.Plan(
        clients=[CLIENTS["curl"]],
        servers=[SERVERS["default"], SERVERS["anticipate0"]],
        sizes_kib=[10 * KiB],
        rtts_ms=[200.0],
        losses=[0.0],
        repeat=1,
        cap_s=60.0,
        bandwidth_mbit=100.0,
        seed="0",
    )
    cells = boottime.plan_cells(plan)
    lock_step = next(c for c in cells if c.server == "anticipate0")
    default = next(c for c in cells if c.server == "default")
    # 10 MiB at blksize 512 is 20,481 blocks, one round trip each: at least 4,096 s
    assert lock_step.lower_bound_s == pytest.approx(20481 * 0.2)
    assert lock_step.over_cap and format_cell(lock_step).startswith("> 60 s")
    assert default.lower_bound_s is None and not default.over_cap
    if shutil.which("curl"):
        assert default.not_run == ""


def test_capped_run_is_shown_as_over_the_cap() -> None:
    cell = Cell("busybox", "tftpd-hpa", 1024, 50.0, 0.01, 0.25, 5.0)
    cell.runs.append(Run(ok=False, seconds=5.0, capped=True, note="no exit within 5 s"))
    assert format_cell(cell) == "> 5 s" and not cell.failures()


def test_first_data_of_a_cold_local_object(tmp_path: Path) -> None:
    results = boottime_source.measure_sources(["local"], RTT_MS, 2, tmp_path)
    assert results[0].note == "" and len(results[0].seconds) == 2
    # at least the three one-way trips of RRQ, OACK/ACK 0 and DATA 1 through the relay
    assert min(results[0].seconds) >= 1.5 * RTT_MS / 1000
    assert "| local | 20 |" in boottime_source.render_first_data(results)


def test_first_data_from_a_cold_s3_object(tmp_path: Path) -> None:
    pytest.importorskip("moto")
    results = boottime_source.measure_sources(["local", "s3"], RTT_MS, 2, tmp_path)
    s3 = results[1]
    assert s3.note == "" and len(s3.seconds) == 2, s3.note
    assert s3.source_round_trip_s is not None and s3.source_round_trip_s > 0


def test_first_data_from_a_cold_origin_object(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp")
    results = boottime_source.measure_sources(["origin"], RTT_MS, 2, tmp_path)
    origin = results[0]
    assert origin.note == "" and len(origin.seconds) == 2, origin.note
    assert origin.source_round_trip_s is not None and origin.source_round_trip_s > 0


def test_first_data_probe_reads_data_one(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "probe.bin").write_bytes(b"x" * 100)
    (tmp_path / "root" / "f.bin").write_bytes(b"y" * 5000)
    server = start_server(
        edgetftp_with(), str(tmp_path / "root"), tmp_path / "logs", cpu=None, allow_cgroups=False
    )
    try:
        server.wait_until_serving("probe.bin")
        assert boottime_source.first_data_seconds(server.address, "f.bin") > 0
        with pytest.raises(OSError, match="ERROR"):
            boottime_source.first_data_seconds(server.address, "missing.bin")
    finally:
        server.stop()


def test_edgetftp_args_go_to_edgetftp_servers_only() -> None:
    extra = ("--max-window=16",)
    assert boottime.with_extra_args(SERVERS["anticipate0"], extra).args == ("--anticipate", "0", *extra)
    assert boottime.with_extra_args(SERVERS["tftpd-hpa"], extra).args == ()


def test_a_checkout_without_a_server_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--edgetftp-src"):
        boottime.edgetftp_pythonpath(tmp_path)


def _process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, start time in ticks, command name), from /proc."""
    table: dict[int, tuple[int, str, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # it ended while we looked
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        table[int(stat.parent.name)] = (int(fields[1]), fields[19], name)
    return table


def _descendants(root: int) -> dict[int, tuple[str, str]]:
    """The processes below ``root``: pid -> (start time, command name); a pid reused later has
    another start time, so it is never mistaken for one of these."""
    table = _process_table()
    found: dict[int, tuple[str, str]] = {}
    parents = {root}
    while True:
        children = {pid for pid, (ppid, _, _) in table.items() if ppid in parents and pid not in found}
        if not children:
            return found
        found.update({pid: table[pid][1:] for pid in children})
        parents = children


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_ends_its_clients_and_servers(tmp_path: Path, stop_signal: int) -> None:
    """Ctrl-C used to leave the matrix going: the pool ran out its queue (each client up to the cap),
    and SIGTERM skipped the clean-up, leaving edgetftp and the client behind."""
    if not shutil.which("busybox"):
        pytest.skip("busybox is not installed")
    argv = ["--clients", "busybox", "--servers", "anticipate0", "--sizes", "1024", "--rtts", "200"]
    argv += ["--loss", "0", "--repeat", "1", "--timeout", "150", "--output", str(tmp_path / "results")]
    bench = subprocess.Popen([sys.executable, "-m", "bench.boottime", *argv], cwd=REPO)
    seen: dict[int, tuple[str, str]] = {}
    try:
        deadline = time.monotonic() + 60
        while not any(name == "busybox" for _, name in seen.values()):  # 147 s of lock-step ahead
            assert bench.poll() is None and time.monotonic() < deadline, "the client never started"
            time.sleep(0.2)
            seen.update(_descendants(bench.pid))
        bench.send_signal(stop_signal)
        bench.wait(timeout=30)
        table = _process_table()
        left = [name for pid, (started, name) in seen.items() if pid in table and table[pid][1] == started]
        assert left == []
    finally:
        for pid, (started, _) in _descendants(bench.pid).items() | seen.items():
            if _process_table().get(pid, (0, "", ""))[1] == started:
                os.kill(pid, signal.SIGKILL)  # only what this test's bench started, by PID
        if bench.poll() is None:
            bench.kill()
            bench.wait()
