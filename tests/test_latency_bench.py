"""The latency benchmark's own code (bench/latency.py): a tiny real run, no timing assertions.

Real servers (edgetftp, and tftpd-hpa when it can run) on loopback, the real relay at RTT 20 ms,
64 KiB files: checks the table's shape, that every run was verified by sha256, that a wrong digest is
caught, and that the estimate for the slow lock-step cells is derived from a measured cell.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import latency
from bench.latency import Cell, NetworkPath, Run

pytestmark = pytest.mark.integration

SMALL_KIB = 64


def test_tiny_run_prints_the_tables_and_verifies_every_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_json = tmp_path / "latency.json"
    argv = ["--rtt", "0,20", "--sizes-kib", str(SMALL_KIB), "--anticipate", "8", "--windowsize", "4"]
    argv += ["--repeat", "1", "--loss", "0.05", "--loss-rtt", "20", "--json", str(report_json)]
    if latency.tftpd_hpa_unavailable():
        argv.append("--no-tftpd-hpa")
    assert latency.main(argv) == 0
    out = capsys.readouterr().out

    blocks = SMALL_KIB * 1024 // latency.IPXE_BLKSIZE + 1
    assert f"| 64 KiB ({blocks} blocks) | RTT 0 ms | RTT 20 ms |" in out
    for label in ("edgetftp lock-step", "edgetftp anticipate 8", "edgetftp windowsize 4 (client asks)"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {label} |"))
        assert len(row.strip("|").split("|")) == 3 and "FAILED" not in row
    assert "Speedup over edgetftp lock-step at RTT 20 ms" in out
    assert "With 0.05 loss each way:" in out

    report = json.loads(report_json.read_text())
    cells = report["cells"]
    assert {(c["mode"], c["rtt_ms"], c["loss"]) for c in cells} >= {
        ("lockstep", 0.0, 0.0),
        ("lockstep", 20.0, 0.0),
        ("anticipate-8", 20.0, 0.05),
        ("windowsize-4", 20.0, 0.0),
    }
    runs = [run for cell in cells for run in cell["runs"]]
    assert runs and all(run["ok"] and run["sha256_ok"] and run["size"] == SMALL_KIB * 1024 for run in runs)
    windowed = next(c for c in cells if c["mode"] == "windowsize-4" and c["rtt_ms"] == 20.0)
    assert windowed["runs"][0]["granted"] == {"blksize": "1432", "windowsize": "4"}
    lock_step = next(c for c in cells if c["mode"] == "lockstep" and c["rtt_ms"] == 20.0)
    assert lock_step["runs"][0]["granted"] == {"blksize": "1432"}  # no windowsize: a lock-step client
    relayed = [run for c in cells if c["rtt_ms"] > 0 for run in c["runs"]]
    assert all(run["server_datagrams"] >= blocks for run in relayed)  # the relay carried every block


def test_a_wrong_digest_is_reported_as_a_failed_run(tmp_path: Path) -> None:
    content = latency.write_content(tmp_path / "root", [SMALL_KIB])
    modes = latency.build_modes([8], [], with_tftpd_hpa=False)
    started = latency.start_servers(modes, content, tmp_path / "logs")
    try:
        server = started["edgetftp:8"]
        name = latency.Content.file_name(SMALL_KIB)
        good = latency.fetch(server.address, name, content.sha256[name], NetworkPath(20.0))
        bad = latency.fetch(server.address, name, "0" * 64, NetworkPath(20.0))
    finally:
        latency.stop_servers(started)
    assert good.ok and good.sha256_ok
    assert not bad.ok and not bad.sha256_ok and bad.reason == "sha256 mismatch"


def _cell(mode: str, size_kib: int, seconds: list[float], ok: bool = True) -> Cell:
    runs = [Run(s, ok, ok, None, size_kib * 1024, {}, None, 0) for s in seconds]
    return Cell(mode, size_kib, 50.0, 0.0, 0.0, runs)


def test_estimate_scales_the_measured_lock_step_time_by_blocks() -> None:
    measured = _cell("lockstep", 1024, [36.0, 37.0, 38.0])
    estimate = latency.estimate_from(measured, 10 * 1024)
    assert estimate == pytest.approx(37.0 * latency.blocks(10 * 1024) / latency.blocks(1024))
    assert latency.format_cell(
        Cell("lockstep", 10240, 50.0, 0.0, 0.0, estimated_seconds=estimate)
    ).startswith("~")


def test_failed_runs_are_shown_and_counted() -> None:
    failed = _cell("anticipate-8", 1024, [5.0], ok=False)
    assert "FAILED 1/1" in latency.format_cell(failed)
    assert latency.failures([failed, _cell("lockstep", 1024, [37.0])]) == [failed]
    assert latency.format_cell(_cell("lockstep", 1024, [37.0])).endswith(latency.SINGLE_RUN_MARK)
