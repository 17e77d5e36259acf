"""edgetftp over real UDP on loopback, packet by packet: what a demanding client and a hostile one see."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from edgetftp.protocol import Data, Error, ErrorCode, OptionAck
from edgetftp.protocol.codes import Opcode
from edgetftp.protocol.packets import encode_request
from tests.conftest import ContentTree, ServerProcess, free_port, free_tcp_port
from tests.rawclient import RawClient

pytestmark = pytest.mark.integration

StartServer = Callable[..., ServerProcess]


def test_write_requests_are_refused_and_nothing_is_written(
    shared_server: ServerProcess, content: ContentTree
) -> None:
    before = sorted(p.name for p in content.root.rglob("*"))
    with RawClient(shared_server.address) as client:
        client.send(encode_request(Opcode.WRQ, "upload.bin", "octet", {"blksize": "1428"}))
        packet, _ = client.receive()
    assert packet == Error(ErrorCode.ACCESS_VIOLATION, "Server is read-only")
    assert sorted(p.name for p in content.root.rglob("*")) == before


@pytest.mark.parametrize(
    "name",
    [
        "../conftest.py",
        "/../../etc/passwd",
        "a/../../x",
        "..\\..\\etc\\passwd",
        "x\0y",
        "./big.bin",
        "a//b",
        "",
    ],
)
def test_hostile_names_get_access_violation(name: str, shared_server: ServerProcess) -> None:
    with RawClient(shared_server.address) as client:
        client.rrq(name, tsize=0, blksize=1428)
        packet, _ = client.receive()
    assert isinstance(packet, Error) and packet.code in (
        ErrorCode.ACCESS_VIOLATION,
        ErrorCode.ILLEGAL_OPERATION,
    )


def test_errors_come_before_any_oack(shared_server: ServerProcess) -> None:
    """PXELINUX breaks on an error after an OACK: a missing file must be an ERROR 1 straight away."""
    with RawClient(shared_server.address) as client:
        client.rrq("missing.efi", tsize=0, blksize=1468)
        packet, _ = client.receive()
    assert packet == Error(ErrorCode.FILE_NOT_FOUND, "File not found")


def test_leading_slash_and_backslashes_map_to_the_root(
    shared_server: ServerProcess, content: ContentTree
) -> None:
    with RawClient(shared_server.address) as client:
        result = client.fetch("/Boot\\x64\\wdsnbp.com")
    assert result.error is None
    assert result.data == (content.root / "Boot/x64/wdsnbp.com").read_bytes()


def test_oack_carries_only_requested_options(shared_server: ServerProcess, content: ContentTree) -> None:
    with RawClient(shared_server.address) as client:
        result = client.fetch("s1024.bin", blksize=1000)
        assert result.oack == {"blksize": "1000"}
        result = client.fetch("s1024.bin", tsize=0, timeout=3, windowsize=4, blksize=512)
        assert result.oack == {"tsize": "1024", "timeout": "3", "windowsize": "4", "blksize": "512"}
        assert result.data == (content.root / "s1024.bin").read_bytes()


def test_unknown_or_invalid_options_only_means_data_1(shared_server: ServerProcess) -> None:
    with RawClient(shared_server.address) as client:
        client.rrq("s513.bin", blksize="abc", multicast="", rollover=0)
        packet, _ = client.receive()
    assert isinstance(packet, Data) and packet.block == 1 and len(packet.payload) == 512


def test_retransmitted_request_is_not_a_second_session(
    start_server: StartServer, content: ContentTree
) -> None:
    server = start_server("--timeout", "2", str(content.root))
    with RawClient(server.address) as client:
        client.rrq("big.bin", blksize=1428, tsize=0)
        client.rrq("big.bin", blksize=1428, tsize=0)  # the client's own retransmission
        client.rrq("big.bin", blksize=1428, tsize=0)
        first, address = client.receive()
        assert isinstance(first, OptionAck)
        assert client.receive_or_none(0.5) is None  # one reply, not three
        client.ack(0, address)
        blocks = 0
        while True:
            packet, address = client.receive()
            assert isinstance(packet, Data)
            blocks += 1
            client.ack(packet.block, address)
            if len(packet.payload) < 1428:
                break
    log = server.wait_for_log("transfer completed")
    assert sum("transfer " in line and "big.bin" in line for line in log.splitlines()) == 1, log


def test_tsize_probe_then_new_request_from_the_same_port(
    shared_server: ServerProcess, content: ContentTree
) -> None:
    """UEFI: RRQ with tsize, ERROR 8 after the OACK, then the real RRQ from the same port."""
    with RawClient(shared_server.address) as client:
        client.rrq("x1432.bin", tsize=0, blksize=1432)
        packet, address = client.receive()
        assert packet == OptionAck({"tsize": str(1432 * 5), "blksize": "1432"})
        client.abort(address, 8)
        result = client.fetch("x1432.bin", blksize=1432)
    assert result.error is None and result.data == (content.root / "x1432.bin").read_bytes()


def test_different_request_replaces_a_live_session(
    shared_server: ServerProcess, content: ContentTree
) -> None:
    with RawClient(shared_server.address) as client:
        client.rrq("big.bin")
        packet, _ = client.receive()
        assert isinstance(packet, Data) and packet.block == 1
        result = client.fetch("s511.bin")  # the client gave up on big.bin and moved on
    assert result.data == (content.root / "s511.bin").read_bytes()


def test_blksize_is_clamped_to_the_mtu_override(start_server: StartServer, content: ContentTree) -> None:
    server = start_server("--mtu", "1300", str(content.root))
    with RawClient(server.address) as client:
        result = client.fetch("big.bin", blksize=1468)
    assert result.oack == {"blksize": "1268"}  # 1300 - 20 (IPv4) - 8 (UDP) - 4 (TFTP)
    assert result.data == (content.root / "big.bin").read_bytes()


def test_ipv6_blksize_overhead(start_server: StartServer, content: ContentTree) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        free_port(host="::1")  # the machine's IPv6 loopback, not edgetftp, decides whether this can run
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    server = start_server("--mtu", "1300", str(content.root), host="::1")
    with RawClient(server.address) as client:
        result = client.fetch("big.bin", blksize=1468)
    assert result.oack == {"blksize": "1248"}  # 1300 - 40 (IPv6) - 8 - 4
    assert result.data == (content.root / "big.bin").read_bytes()


def test_loopback_mtu_allows_the_largest_blksize(shared_server: ServerProcess, content: ContentTree) -> None:
    with RawClient(shared_server.address) as client:
        result = client.fetch("big.bin", blksize=65464)
    assert result.oack == {"blksize": "65464"}  # lo's MTU is 65536
    assert result.data == (content.root / "big.bin").read_bytes()


def test_single_port_mode_replies_from_the_listening_port(shared_server: ServerProcess) -> None:
    with RawClient(shared_server.address) as client:
        result = client.fetch("big.bin", blksize=1428)
    assert result.reply_addresses == {shared_server.address}


def test_per_transfer_mode_uses_a_fresh_port_and_rejects_strangers(
    start_server: StartServer, content: ContentTree
) -> None:
    server = start_server("--port-mode", "per-transfer", str(content.root))
    with RawClient(server.address) as client, RawClient(server.address) as stranger:
        client.rrq("big.bin", blksize=1428)
        packet, transfer_address = client.receive()
        assert isinstance(packet, OptionAck) and transfer_address[1] != server.port
        stranger.ack(0, transfer_address)
        reply, _ = stranger.receive()
        assert reply == Error(ErrorCode.UNKNOWN_TID, "Unknown transfer ID")
        client.ack(0, transfer_address)
        chunks = []
        while True:
            packet, address = client.receive()
            assert isinstance(packet, Data) and address == transfer_address
            chunks.append(packet.payload)
            client.ack(packet.block, address)
            if len(packet.payload) < 1428:
                break
    assert b"".join(chunks) == (content.root / "big.bin").read_bytes()


def test_wildcard_listener_answers_from_the_address_it_was_asked_on(
    start_server: StartServer, content: ContentTree
) -> None:
    server = start_server(str(content.root), host="0.0.0.0")
    with RawClient(("127.0.0.5", server.port)) as client:
        result = client.fetch("s513.bin", blksize=512)
    assert result.reply_addresses == {("127.0.0.5", server.port)}
    assert result.data == (content.root / "s513.bin").read_bytes()


def test_windows_from_a_wildcard_listener_keep_the_source_address(
    start_server: StartServer, content: ContentTree
) -> None:
    """A window leaves in one segmented (GSO) send, with the source-address control message."""
    server = start_server(str(content.root), host="0.0.0.0")
    with RawClient(("127.0.0.7", server.port)) as client:
        result = client.fetch("big.bin", blksize=1428, windowsize=16)
    assert result.reply_addresses == {("127.0.0.7", server.port)}
    assert result.data == (content.root / "big.bin").read_bytes()


def test_per_client_and_total_limits(start_server: StartServer, content: ContentTree) -> None:
    """A full quota or a full server answers with silence (an ERROR would end a PXE boot); the
    client's retried RRQ is served once a slot is free."""
    http_port = free_tcp_port()
    server = start_server(
        *("--max-sessions-per-client", "2", "--max-sessions", "3"),
        *("--http-listen", f"127.0.0.1:{http_port}", str(content.root)),
    )
    clients = [RawClient(server.address) for _ in range(3)]
    try:
        for client in clients[:2]:
            client.rrq("big.bin")
            packet, _ = client.receive()
            assert isinstance(packet, Data)  # running transfers, never acknowledged
        clients[2].rrq("big.bin")
        assert clients[2].receive_or_none(0.5) is None  # silence: the client retries later
        with RawClient(server.address, bind="127.0.0.2") as other:  # another address is still served
            result = other.fetch("s513.bin")
            assert result.data == (content.root / "s513.bin").read_bytes()
            other.rrq("big.bin")
            other.receive()
            with RawClient(server.address, bind="127.0.0.3") as third:
                third.rrq("s513.bin")
                assert third.receive_or_none(0.5) is None
        clients[0].abort(server.address)  # a slot of 127.0.0.1 frees up
        result = clients[2].fetch("s513.bin")  # the retried request
        assert result.data == (content.root / "s513.bin").read_bytes()
    finally:
        for client in clients:
            client.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'edgetftp_requests_refused_total{reason="client-full"} 1.0' in metrics
    assert 'edgetftp_requests_refused_total{reason="server-full"} 1.0' in metrics


def test_junk_never_stops_the_server(shared_server: ServerProcess, content: ContentTree) -> None:
    rng = __import__("random").Random(7)
    with RawClient(shared_server.address) as client:
        for _ in range(3000):
            client.send(rng.randbytes(rng.randrange(0, 600)))
        for datagram in (
            b"",
            b"\x00",
            b"\x00\x01",
            b"\x00\x01x",
            b"\x00\x01x\x00",
            b"\xff" * 70,
            b"\x00\x05\x00",
        ):
            client.send(datagram)
    with RawClient(shared_server.address) as client:
        result = client.fetch("big.bin", blksize=1428)
    assert result.data == (content.root / "big.bin").read_bytes()
    assert shared_server.proc.poll() is None


def test_sigterm_lets_running_transfers_finish(start_server: StartServer, content: ContentTree) -> None:
    server = start_server(str(content.root))
    with RawClient(server.address) as client:
        client.rrq("x1428.bin", blksize=1428)
        packet, address = client.receive()
        assert isinstance(packet, OptionAck)
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_log("draining 1 transfers")
        with RawClient(server.address) as late:
            late.rrq("s513.bin")
            assert late.receive_or_none(0.5) is None  # no new transfers while draining
        client.ack(0, address)
        for block in (1, 2, 3, 4):
            packet, address = client.receive()
            assert isinstance(packet, Data) and packet.block == block
            client.ack(block, address)
    assert server.proc.wait(10) == 0
    assert "transfer completed" in server.log()


def test_drain_deadline_aborts_stalled_transfers(start_server: StartServer, content: ContentTree) -> None:
    server = start_server("--drain-timeout", "1", "--timeout", "5", "--max-timeout", "5", str(content.root))
    with RawClient(server.address) as client:
        client.rrq("big.bin")
        packet, _ = client.receive()
        assert isinstance(packet, Data)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(10) == 0
        assert time.monotonic() - started < 5
        packet, _ = client.receive()
        assert packet == Error(ErrorCode.NOT_DEFINED, "Server shutting down")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgetftp", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["--max-blksize", "5", "CONTENT"], {}, "--max-blksize"),
        (["--listen", "127.0.0.1:99999", "CONTENT"], {}, "--listen"),
        (["--listen", "[::1", "CONTENT"], {}, "--listen"),
        (["--listen", "no.such.host.invalid:69", "CONTENT"], {}, "--listen"),
        (["/no/such/dir"], {}, "SOURCE"),
        (["ftp://bucket/x"], {}, "SOURCE"),
        (
            ["--max-sessions", "5", "--max-sessions-per-client", "10", "CONTENT"],
            {},
            "--max-sessions-per-client",
        ),
        (["--timeout", "5", "--max-timeout", "1", "CONTENT"], {}, "--max-timeout"),
        (["CONTENT"], {"EDGETFTP_RETRIES": "many"}, "EDGETFTP_RETRIES"),
        (["--port-mode", "sideways", "CONTENT"], {}, "--port-mode"),
        (["--http-listen", "127.0.0.1:x", "CONTENT"], {}, "--http-listen"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(
    args: list[str], env: dict[str, str], names: str, content: ContentTree
) -> None:
    args = [str(content.root) if a == "CONTENT" else a for a in args]
    if "--listen" not in args:
        args = ["--listen", f"127.0.0.1:{free_port()}", *args]
    result = run_cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_fails_with_one_clear_line(content: ContentTree) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = run_cli("--listen", f"127.0.0.1:{port}", str(content.root))
    assert result.returncode == 2
    expected = f"--listen (EDGETFTP_LISTEN): cannot bind UDP 127.0.0.1:{port}: Address already in use"
    assert result.stderr.strip().splitlines() == [f"edgetftp: invalid setting {expected}"]


def test_environment_configures_everything(start_server: StartServer, content: ContentTree) -> None:
    port = free_port()
    env = {
        "EDGETFTP_SOURCE": str(content.root),
        "EDGETFTP_LISTEN": f"127.0.0.1:{port}",
        "EDGETFTP_MTU": "1000",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetftp"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        result = None
        while time.monotonic() < deadline and result is None:
            with RawClient(("127.0.0.1", port), timeout=0.3) as client:
                try:
                    result = client.fetch("big.bin", blksize=1468)
                except TimeoutError:
                    continue
        assert result is not None and result.oack == {"blksize": "968"}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_health_metrics_and_json_logs(start_server: StartServer, content: ContentTree) -> None:
    http_port = free_tcp_port()
    server = start_server("--http-listen", f"127.0.0.1:{http_port}", "--log-json", str(content.root))
    with RawClient(server.address) as client:
        client.fetch("s1024.bin", blksize=512)
    server.wait_for_log("transfer completed")
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as response:
        assert response.status == 200 and response.read() == b"ok\n"
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'edgetftp_transfers_total{outcome="completed"} 1.0' in metrics
    assert "edgetftp_bytes_sent_total 1024.0" in metrics
    records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    finished = [r for r in records if r.get("tftp.outcome") == "completed"]
    assert finished and finished[0]["file.path"] == "s1024.bin"
    assert finished[0]["server.bytes"] == 1024


def test_netascii_and_mail_modes(shared_server: ServerProcess, content: ContentTree) -> None:
    with RawClient(shared_server.address) as client:
        result = client.fetch("text.txt", mode="NetASCII", tsize=0)
        raw = (content.root / "text.txt").read_bytes()
        assert result.data == raw.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
        assert result.oack is None  # tsize is not offered in netascii, and nothing else was asked
        client.rrq("text.txt", mode="mail")
        packet, _ = client.receive()
    assert packet == Error(ErrorCode.ILLEGAL_OPERATION, "Unsupported mode")


def test_extension_allow_list_over_the_wire(
    start_server: StartServer, content: ContentTree, tmp_path: Path
) -> None:
    server = start_server("--allow-extensions", ".bin,.txt", str(content.root))
    with RawClient(server.address) as client:
        assert client.fetch("s513.bin").error is None
        result = client.fetch("pxelinux.cfg/01-aa-bb-cc-dd-ee-ff")
    assert result.error == Error(ErrorCode.ACCESS_VIOLATION, "Access violation")


def test_per_transfer_mode_does_not_start_a_second_transfer_for_a_resent_request(
    start_server: StartServer, content: ContentTree
) -> None:
    server = start_server("--port-mode", "per-transfer", "--timeout", "2", str(content.root))
    with RawClient(server.address) as client:
        client.rrq("big.bin", blksize=1428)
        client.rrq("big.bin", blksize=1428)
        packet, _ = client.receive()
        assert isinstance(packet, OptionAck)
        assert client.receive_or_none(0.5) is None  # no second OACK from a second port


def test_client_rate_limit_paces_a_client_and_sends_all_it_counts(
    start_server: StartServer, content: ContentTree
) -> None:
    """--client-rate bounds what blind spoofed ACKs can reflect at one address (see README).  The
    budget paces the transfer (the core waits for it), so nothing counted as sent is dropped: no
    retransmission, and the bytes counted are the file's."""
    http_port = free_tcp_port()
    rate = 300_000  # bytes per second, with a burst of one second's worth
    server = start_server(
        *("--client-rate", str(rate), "--timeout", "0.3", "--retries", "20"),
        *("--http-listen", f"127.0.0.1:{http_port}", str(content.root)),
    )
    data = (content.root / "big.bin").read_bytes()
    started = time.monotonic()
    with RawClient(server.address, timeout=5) as client:
        result = client.fetch("big.bin", blksize=1428, windowsize=16)
    elapsed = time.monotonic() - started
    assert result.data == data
    assert elapsed >= (len(data) - rate) / rate  # the burst, then the rate: it cannot be faster
    server.wait_for_log("transfer completed")
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    samples = [line.split(" ") for line in metrics.splitlines() if not line.startswith("#")]
    values = {name: float(value) for name, value in samples}
    assert values["edgetftp_retransmits_total"] == 0
    assert values["edgetftp_bytes_sent_total"] == len(data)
    assert 'reason="rate-limited"' not in metrics


def test_option_values_with_unicode_digits_are_ignored(shared_server: ServerProcess) -> None:
    with RawClient(shared_server.address) as client:
        client.send(b"\x00\x01s513.bin\x00octet\x00blksize\x00\xb2\x00")  # "²" once decoded as latin-1
        packet, _ = client.receive()
    assert isinstance(packet, Data) and packet.block == 1  # the option is ignored, not fatal
