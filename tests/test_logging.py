"""Logs a shipper can parse and a scanner cannot flood; metrics that say what really happened."""

from __future__ import annotations

import io
import json
import socket
import time
import urllib.request
from collections.abc import Callable

import pytest
from loguru import logger

from edgetftp.observability import JunkLogLimiter, LogAndMetrics, metric_outcome, setup_logging
from edgetftp.protocol.events import Outcome, TransferEnded, TransferStats
from tests.conftest import ContentTree, ServerProcess, free_tcp_port
from tests.rawclient import RawClient

pytestmark = pytest.mark.integration

StartServer = Callable[..., ServerProcess]

ECS_TRANSFER_KEYS = {
    "@timestamp",
    "log.level",
    "message",
    "ecs.version",
    "client.ip",
    "client.port",
    "file.path",
    "event.outcome",
    "event.duration",
    "server.bytes",
    "tftp.outcome",
    "tftp.blksize",
}


def metrics(http_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line[:1] != "#"}


def json_lines(server: ServerProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


def test_json_log_lines_are_flat_ecs_objects(start_server: StartServer, content: ContentTree) -> None:
    server = start_server("--log-json", str(content.root))
    with RawClient(server.address) as client:
        assert len(client.fetch("s1024.bin", blksize=512).data) == 1024
        assert client.fetch("no-such-file.bin").error is not None
    server.wait_for_log('"file.path":"no-such-file.bin"')  # (the readiness probe is rejected too)
    raw_lines = [line for line in server.log().splitlines() if line.strip()]
    records = json_lines(server)  # every line parses on its own
    assert len(records) == len(raw_lines) >= 3
    for line, record in zip(raw_lines, records, strict=True):
        assert {"@timestamp", "log.level", "message"} <= record.keys(), line
        assert all(not isinstance(value, dict | list) for value in record.values()), line  # flat
        assert line.isascii() and ".py" not in line and "record" not in record, line  # no paths, icons
        assert (
            str(record["@timestamp"]).endswith("Z")
            and record["log.level"] == str(record["log.level"]).lower()
        )
    (done,) = [r for r in records if r.get("tftp.outcome") == "completed"]
    assert done.keys() >= ECS_TRANSFER_KEYS
    assert (done["file.path"], done["server.bytes"], done["file.size"]) == ("s1024.bin", 1024, 1024)
    assert (done["client.ip"], done["event.outcome"], done["message"]) == (
        "127.0.0.1",
        "success",
        "transfer completed",
    )
    assert isinstance(done["event.duration"], int) and isinstance(done["client.port"], int)
    assert done.get("tftp.retransmits", 0) == 0 and done.get("tftp.windowsize", 1) == 1  # left out: usual
    done_line = next(line for line in raw_lines if '"tftp.outcome":"completed"' in line)
    print(f"\nJSON transfer line: {len(done_line.encode())} bytes")
    assert len(done_line.encode()) <= 400, done_line
    (missing,) = [r for r in records if r.get("file.path") == "no-such-file.bin"]
    assert (missing["tftp.error_code"], missing["event.outcome"], missing["log.level"]) == (
        1,
        "failure",
        "warning",
    )
    assert missing["file.path"] == "no-such-file.bin" and missing["event.reason"]


def test_a_long_name_from_ipv6_still_fits_a_normal_line(
    start_server: StartServer, content: ContentTree
) -> None:
    server = start_server("--log-json", str(content.root), host="::1")
    with RawClient(server.address) as client:
        assert client.fetch("pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", blksize=1428, windowsize=16, tsize=0).data
    line = server.wait_for_log('"tftp.outcome":"completed"').splitlines()[-1]
    assert json.loads(line)["tftp.windowsize"] == 16
    print(f"\nJSON transfer line (IPv6, options): {len(line.encode())} bytes")
    assert len(line.encode()) <= 400, line


def send_junk(server: tuple[str, int], sources: list[str], per_source: int) -> int:
    """RRQs for names that do not exist, ``per_source`` from each source address; returns the
    ERROR replies received (each source waits for its answers, so nothing is lost in a buffer)."""
    replies = 0
    for index, source in enumerate(sources):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            sock.settimeout(10)
            for n in range(per_source):
                sock.sendto(b"\0\1" + f"scan-{index}-{n}.bin".encode() + b"\0octet\0", server)
            for _ in range(per_source):
                reply, _ = sock.recvfrom(2048)
                assert reply[:4] == b"\0\5\0\1", reply  # ERROR 1 File not found
                replies += 1
    return replies


def test_ten_thousand_junk_requests_cannot_flood_the_log(
    start_server: StartServer, content: ContentTree
) -> None:
    http_port = free_tcp_port()
    server = start_server("--http-listen", f"127.0.0.1:{http_port}", str(content.root))
    before = len(server.log().encode())
    sources = [f"127.0.0.{host}" for host in range(2, 202)]  # 200 addresses x 50 requests
    started = time.monotonic()
    assert send_junk(server.address, sources, 50) == 10_000
    elapsed = time.monotonic() - started
    rejected = metrics(http_port)['edgetftp_transfers_total{outcome="rejected"}']
    assert 10_000 <= rejected <= 10_000 + 3  # all counted (plus the readiness probe's one or two)
    with RawClient(server.address) as client:  # a real client is still served and logged
        assert len(client.fetch("s512.bin").data) == 512
    log = server.wait_for_log("transfer completed")
    junk_lines = [line for line in log.splitlines() if "transfer rejected" in line]
    junk_bytes = len(log.encode()) - before
    minutes = int(elapsed // 60) + 1  # the bound is per minute (the run usually takes seconds)
    print(
        f"\n10,000 junk RRQs from 200 addresses in {elapsed:.1f}s: "
        f"{len(junk_lines)} lines, {junk_bytes} log bytes"
    )
    assert len(junk_lines) <= 100 * minutes
    assert junk_bytes <= 101 * 400 * minutes


def test_one_address_gets_five_lines_a_minute_then_one_summary() -> None:
    now = [1000.0]
    stream = io.StringIO()
    setup_logging("INFO", json=True, stream=stream)
    try:
        limiter = JunkLogLimiter(per_client=5, total=100, window=60.0, clock=lambda: now[0])
        allowed = [limiter.allow("192.0.2.1") for _ in range(1000)]
        assert allowed.count(True) == 5 and allowed[:5] == [True] * 5
        others = [limiter.allow(f"198.51.100.{n}") for n in range(200)]
        assert others.count(True) == 95  # 100 lines a minute in all
        assert stream.getvalue() == ""
        now[0] += 60.0
        assert limiter.allow("192.0.2.1")  # a new minute: the summary first, then this line is allowed
    finally:
        logger.remove()
    (summary,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert summary["tftp.suppressed"] == 995 + 105 and summary["log.level"] == "warning"


def test_a_source_failure_before_the_first_reply_counts_as_source_error() -> None:
    stats = TransferStats(filename="boot.ipxe", mode="octet", started=0.0, ended=0.1)
    failed = TransferEnded(Outcome.REJECTED, stats, error_code=0, reason="S3 HEAD failed")
    missing = TransferEnded(Outcome.REJECTED, stats, error_code=1, reason="no such key")
    assert metric_outcome(failed) is Outcome.SOURCE_ERROR and metric_outcome(missing) is Outcome.REJECTED
    stream = io.StringIO()
    setup_logging("INFO", json=True, stream=stream)
    try:
        LogAndMetrics().transfer_ended(("192.0.2.9", 2000), failed)
    finally:
        logger.remove()
    record = json.loads(stream.getvalue())
    assert record["tftp.outcome"] == "source-error" and record["event.reason"] == "S3 HEAD failed"


def test_an_unreachable_s3_endpoint_is_counted_as_source_error(start_server: StartServer) -> None:
    pytest.importorskip("aioboto3", reason="the s3 extra is not installed")
    http_port, dead_port = free_tcp_port(), free_tcp_port()  # nothing listens on dead_port
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
    server = start_server(
        *("--http-listen", f"127.0.0.1:{http_port}", "--endpoint-url", f"http://127.0.0.1:{dead_port}"),
        *("--force-path-style", "--s3-timeout", "1", "--s3-retries", "1", "s3://bucket/boot/"),
        env=env,
    )
    fetched = None
    for _ in range(3):  # a client repeats an unanswered RRQ (a loaded machine may be slow to answer)
        with RawClient(server.address, timeout=10) as client:
            try:
                fetched = client.fetch("boot.ipxe")
                break
            except TimeoutError:
                continue
    assert fetched is not None and fetched.error is not None and fetched.error.code == 0
    server.wait_for_log("source-error")
    counted = metrics(http_port)
    assert counted['edgetftp_transfers_total{outcome="source-error"}'] >= 1
    assert counted.get('edgetftp_transfers_total{outcome="rejected"}', 0) == 0
