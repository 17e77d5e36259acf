"""The impairment relay (bench/impairment.py): measured on real loopback UDP, then with real TFTP servers.

Timing assertions are lower bounds only (a delay must not be skipped); rates are checked statistically
(the RNG is seeded, so a run repeats, but the bounds would hold for any seed at ±5 sigma).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.impairment import Addr, Direction, Impairment, ImpairmentProxy
from tests.ipxe import servers
from tests.ipxe.wire import TransferLog

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
CURL = "/usr/bin/curl"


# -- a UDP echo server, optionally answering from a new port per peer (like an RFC 1350 TID) ------------


class EchoServer:
    """Echo every datagram.  With ``per_peer_port`` the first datagram of each peer is answered from a
    fresh socket, which then echoes that peer's datagrams (what a classic TFTP server does)."""

    def __init__(self, per_peer_port: bool = False) -> None:
        self.per_peer_port = per_peer_port
        self.main = self._socket()
        self.tid_sockets: dict[Addr, socket.socket] = {}
        self.peers_seen: list[Addr] = []
        self.received_on_tid: list[tuple[Addr, bytes]] = []
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.main, selectors.EVENT_READ)
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> Addr:
        host, port = self.main.getsockname()
        return host, port

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        return sock

    def _serve(self) -> None:
        while self._running:
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)  # only sockets are registered
                while True:
                    try:
                        data, peer = sock.recvfrom(65535)
                    except BlockingIOError:
                        break
                    self._answer(sock, data, peer)

    def _answer(self, sock: socket.socket, data: bytes, peer: Addr) -> None:
        if peer not in self.peers_seen:
            self.peers_seen.append(peer)
        if sock is not self.main:
            self.received_on_tid.append((peer, data))
        if self.per_peer_port and sock is self.main:
            if peer not in self.tid_sockets:
                self.tid_sockets[peer] = self._socket()
                self._selector.register(self.tid_sockets[peer], selectors.EVENT_READ)
            sock = self.tid_sockets[peer]
        sock.sendto(data, peer)

    def close(self) -> None:
        self._running = False
        self._thread.join(5)
        for sock in (self.main, *self.tid_sockets.values()):
            sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def tid_echo() -> Iterator[EchoServer]:
    server = EchoServer(per_peer_port=True)
    yield server
    server.close()


def client_socket(timeout: float = 2.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(timeout)
    return sock


def send_numbered(sock: socket.socket, dest: Addr, count: int, burst: int = 100) -> None:
    """Send datagrams b"00000", b"00001", ... in bursts small enough for the socket buffers."""
    for start in range(0, count, burst):
        for number in range(start, min(start + burst, count)):
            sock.sendto(b"%05d" % number, dest)
        time.sleep(0.005)


def collect(sock: socket.socket, quiet: float = 0.5) -> list[int]:
    """Numbers received until nothing arrives for ``quiet`` seconds, in arrival order."""
    sock.settimeout(quiet)
    numbers: list[int] = []
    while True:
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            return numbers
        numbers.append(int(data))


def within_five_sigma(observed: int, trials: int, probability: float) -> bool:
    sigma = (trials * probability * (1 - probability)) ** 0.5
    return bool(abs(observed - trials * probability) <= 5 * sigma + 1)


# -- settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [{"loss": 1.5}, {"duplicate": -0.1}, {"reorder": 2.0}, {"delay_ms": -1.0}, {"jitter_ms": -5.0}]
)
def test_rejects_out_of_range_settings(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        Impairment(**bad)


def test_per_direction_settings_override_the_shared_ones() -> None:
    proxy = ImpairmentProxy(("127.0.0.1", 9), loss=0.3, to_client=Impairment(delay_ms=7))
    assert proxy.impairments[Direction.TO_SERVER] == Impairment(loss=0.3)
    assert proxy.impairments[Direction.TO_CLIENT] == Impairment(delay_ms=7)


# -- delay and jitter --------------------------------------------------------------------------------


def test_delay_is_applied_in_each_direction(echo: EchoServer) -> None:
    """Through the asyncio API: a round trip costs at least twice the one-way delay."""
    one_way_ms = 40.0

    async def measure() -> list[float]:
        async with ImpairmentProxy(echo.address, delay_ms=one_way_ms) as proxy:
            loop = asyncio.get_running_loop()
            sock = client_socket()
            sock.setblocking(False)
            rtts = []
            for number in range(10):
                started = time.monotonic()
                sock.sendto(b"%05d" % number, proxy.address)
                reply = await asyncio.wait_for(loop.sock_recv(sock, 100), 5)
                rtts.append(time.monotonic() - started)
                assert reply == b"%05d" % number
            sock.close()
            assert proxy.stats.to_server.sent == proxy.stats.to_client.sent == 10
            return rtts

    rtts = asyncio.run(measure())
    assert min(rtts) >= 2 * one_way_ms / 1000 - 0.001, rtts


def test_jitter_varies_the_delay_within_its_bounds(echo: EchoServer) -> None:
    delay_ms, jitter_ms = 30.0, 20.0
    with ImpairmentProxy.start_in_thread(echo.address, delay_ms=delay_ms, jitter_ms=jitter_ms) as proxy:
        sock = client_socket()
        rtts = []
        for number in range(30):
            started = time.monotonic()
            sock.sendto(b"%05d" % number, proxy.address)
            sock.recvfrom(100)
            rtts.append(time.monotonic() - started)
        sock.close()
    assert min(rtts) >= 2 * (delay_ms - jitter_ms) / 1000 - 0.001, rtts
    assert max(rtts) - min(rtts) > 0.010, f"no variation seen: {rtts}"  # the jitter range is 80 ms


# -- loss, duplication, reordering ---------------------------------------------------------------------


@pytest.mark.parametrize("direction", [Direction.TO_SERVER, Direction.TO_CLIENT])
def test_loss_rate_matches_the_setting(echo: EchoServer, direction: Direction) -> None:
    count, loss = 2000, 0.1
    lossy = {direction.value: Impairment(loss=loss)}
    clean = {d.value: Impairment() for d in Direction if d is not direction}
    with ImpairmentProxy.start_in_thread(echo.address, seed=11, **lossy, **clean) as proxy:
        sock = client_socket()
        send_numbered(sock, proxy.address, count)
        received = collect(sock)
        stats = proxy.stats()
        sock.close()
    dropped = stats.direction(direction).dropped
    assert within_five_sigma(dropped, count, loss), (dropped, count)
    assert len(received) == count - dropped  # every datagram is accounted for
    assert len(set(received)) == len(received)


def test_duplication_rate_matches_the_setting(echo: EchoServer) -> None:
    count, duplicate = 2000, 0.2
    with ImpairmentProxy.start_in_thread(
        echo.address, seed=5, to_server=Impairment(duplicate=duplicate), to_client=Impairment()
    ) as proxy:
        sock = client_socket()
        send_numbered(sock, proxy.address, count)
        received = collect(sock)
        stats = proxy.stats()
        sock.close()
    copies = Counter(received)
    doubled = sum(1 for n in copies.values() if n == 2)
    assert set(copies.values()) <= {1, 2}
    assert doubled == stats.to_server.duplicated
    assert within_five_sigma(doubled, count, duplicate), doubled
    assert len(copies) == count


@pytest.mark.parametrize("delay_ms", [0.0, 5.0])
def test_reordering_swaps_neighbours(echo: EchoServer, delay_ms: float) -> None:
    count, reorder = 1000, 0.3
    with ImpairmentProxy.start_in_thread(
        echo.address,
        seed=9,
        to_server=Impairment(reorder=reorder, delay_ms=delay_ms, reorder_hold_ms=200),
        to_client=Impairment(),
    ) as proxy:
        sock = client_socket()
        for number in range(count):  # back to back, so a held datagram is released by the next one
            sock.sendto(b"%05d" % number, proxy.address)
        received = collect(sock)
        stats = proxy.stats()
        sock.close()
    descents = sum(1 for a, b in itertools.pairwise(received) if a > b)
    assert sorted(received) == list(range(count))
    assert descents == stats.to_server.reordered > 0
    # after a hold the next datagram always leaves, so about p / (1 + p) of them swap
    assert 0.1 * count < stats.to_server.reordered < 0.4 * count


def test_a_held_datagram_with_no_successor_leaves_after_the_hold_time(echo: EchoServer) -> None:
    hold_ms = 60.0
    with ImpairmentProxy.start_in_thread(
        echo.address, to_server=Impairment(reorder=1.0, reorder_hold_ms=hold_ms), to_client=Impairment()
    ) as proxy:
        sock = client_socket()
        started = time.monotonic()
        sock.sendto(b"00001", proxy.address)
        assert sock.recvfrom(100)[0] == b"00001"
        elapsed = time.monotonic() - started
        stats = proxy.stats()
        sock.close()
    assert elapsed >= hold_ms / 1000 - 0.001
    assert (stats.to_server.held, stats.to_server.reordered) == (1, 0)


def test_spared_datagrams_are_never_dropped_or_duplicated(echo: EchoServer) -> None:
    count = 1000

    def even(direction: Direction, data: bytes) -> bool:
        return int(data) % 2 == 0

    with ImpairmentProxy.start_in_thread(echo.address, loss=0.3, duplicate=0.3, seed=3, spare=even) as proxy:
        sock = client_socket()
        send_numbered(sock, proxy.address, count)
        received = Counter(collect(sock))
        stats = proxy.stats()
        sock.close()
    assert all(received[n] == 1 for n in range(0, count, 2))  # spared both ways
    odd = [received[n] for n in range(1, count, 2)]
    assert odd.count(0) > 0 and max(odd) > 1  # the others still meet loss and duplication
    assert stats.to_server.dropped > 0 and stats.to_client.duplicated > 0


def run_lossy_sequence(echo: EchoServer, seed: int) -> list[int]:
    with ImpairmentProxy.start_in_thread(echo.address, loss=0.2, duplicate=0.2, seed=seed) as proxy:
        sock = client_socket()
        send_numbered(sock, proxy.address, 500)
        received = sorted(collect(sock))
        sock.close()
    return received


def test_the_same_seed_gives_the_same_fates(echo: EchoServer) -> None:
    first, second = run_lossy_sequence(echo, seed=42), run_lossy_sequence(echo, seed=42)
    other = run_lossy_sequence(echo, seed=43)
    assert first == second
    assert first != other


# -- flows and per-transfer ports ----------------------------------------------------------------------


def test_clients_stay_distinct_towards_the_server(echo: EchoServer) -> None:
    with ImpairmentProxy.start_in_thread(echo.address) as proxy:
        clients = [client_socket() for _ in range(3)]
        for index, sock in enumerate(clients):
            sock.sendto(b"%05d" % index, proxy.address)
            data, source = sock.recvfrom(100)
            assert (data, source) == (b"%05d" % index, proxy.address)
        stats = proxy.stats()
        for sock in clients:
            sock.close()
    assert len(set(echo.peers_seen)) == 3
    assert stats.flows == 3 and stats.transfer_ports == 0


def test_follows_replies_from_a_new_server_port(tid_echo: EchoServer) -> None:
    """RFC 1350 style: the reply comes from a new port, and the client's answers to it reach that port."""
    with ImpairmentProxy.start_in_thread(tid_echo.address) as proxy:
        sock = client_socket()
        sock.sendto(b"00000", proxy.address)
        data, side_port = sock.recvfrom(100)
        assert data == b"00000"
        assert side_port[1] != proxy.address[1]  # the client sees a new TID, as without the relay
        for number in range(1, 4):
            sock.sendto(b"%05d" % number, side_port)
            assert sock.recvfrom(100) == (b"%05d" % number, side_port)
        stranger = client_socket()
        stranger.sendto(b"99999", side_port)
        time.sleep(0.2)
        stats = proxy.stats()
        sock.close()
        stranger.close()
    assert [data for _, data in tid_echo.received_on_tid] == [b"00001", b"00002", b"00003"]
    assert len({peer for peer, _ in tid_echo.received_on_tid}) == 1
    assert (stats.flows, stats.transfer_ports, stats.stray) == (1, 1, 1)


def test_relays_over_ipv6_loopback() -> None:
    try:
        server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        server.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    server.settimeout(5)
    with ImpairmentProxy.start_in_thread(("::1", server.getsockname()[1]), listen=("::1", 0)) as proxy:
        client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        client.settimeout(5)
        client.sendto(b"request", proxy.address)
        data, relay = server.recvfrom(100)
        server.sendto(b"reply", relay)
        assert data == b"request"
        assert client.recvfrom(100)[0] == b"reply"
        client.close()
    server.close()


# -- the CLI -----------------------------------------------------------------------------------------


def test_cli_relays_and_reports_its_counters(echo: EchoServer) -> None:
    upstream = f"{echo.address[0]}:{echo.address[1]}"
    command = [sys.executable, "-m", "bench.impairment", "--listen", "127.0.0.1:0", "--upstream", upstream]
    command += ["--delay-ms", "5", "--to-client", "loss=0"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
        host_port = first_line.split()[1]
        address = (host_port.rpartition(":")[0], int(host_port.rpartition(":")[2]))
        sock = client_socket()
        for number in range(5):
            sock.sendto(b"%05d" % number, address)
            assert sock.recvfrom(100)[0] == b"%05d" % number
        sock.close()
    finally:
        os.kill(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
    counters = json.loads(output.strip().splitlines()[-1])
    assert process.returncode == 0
    assert counters["to_server"]["sent"] == counters["to_client"]["sent"] == 5
    assert json.loads(first_line.split(" ", 4)[4])["to_server"]["delay_ms"] == 5.0


# -- real TFTP servers through the relay -------------------------------------------------------------


def make_file(root: Path, name: str, size: int) -> str:
    data = os.urandom(size)
    (root / name).write_bytes(data)
    (root / name).chmod(0o644)
    return hashlib.sha256(data).hexdigest()


def curl_fetch(address: Addr, name: str, out: Path, *options: str, timeout: float = 120) -> float:
    started = time.monotonic()
    url = f"tftp://{address[0]}:{address[1]}/{name}"
    subprocess.run(
        [CURL, "-sS", "--connect-timeout", "3", *options, "-o", str(out), url], check=True, timeout=timeout
    )
    return time.monotonic() - started


IMPAIRED = {"loss": 0.05, "duplicate": 0.05, "reorder": 0.1, "delay_ms": 2.0, "jitter_ms": 2.0}


@pytest.fixture
def served_dir(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


def require_curl() -> None:
    if not os.access(CURL, os.X_OK):
        pytest.skip("curl is not installed")


@pytest.mark.parametrize("impairment", [{}, IMPAIRED], ids=["clean", "impaired"])
def test_curl_fetches_from_tftpd_hpa_through_the_relay(
    served_dir: Path, tmp_path: Path, impairment: dict[str, float]
) -> None:
    """tftpd-hpa replies from a new port per transfer: the relay must follow it."""
    if reason := servers.tftpd_hpa_unavailable_reason():
        pytest.skip(reason)
    require_curl()
    digest = make_file(served_dir, "file.bin", 64 * 1024)
    log = TransferLog()
    # -T 100000: retransmit after 100 ms; --tftp-no-options keeps curl from negotiating a 6 s timeout
    with (
        servers.tftpd_hpa(served_dir, ["-T", "100000"], log_dir=tmp_path) as server,
        ImpairmentProxy.start_in_thread(server.address, seed=1, tap=log, **impairment) as proxy,
    ):
        curl_fetch(proxy.address, "file.bin", tmp_path / "out.bin", "--tftp-no-options")
        stats = proxy.stats()
    assert hashlib.sha256((tmp_path / "out.bin").read_bytes()).hexdigest() == digest
    [transfer] = log.find("file.bin")
    assert transfer.complete and transfer.sha256() == digest
    assert transfer.server_port != server.address[1]
    assert stats.transfer_ports >= 1
    if impairment:
        assert stats.to_client.dropped + stats.to_server.dropped > 0


@pytest.mark.parametrize("port_mode", ["single", "per-transfer"])
@pytest.mark.parametrize("impairment", [{}, IMPAIRED], ids=["clean", "impaired"])
def test_curl_fetches_from_edgetftp_through_the_relay(
    served_dir: Path, tmp_path: Path, port_mode: str, impairment: dict[str, float]
) -> None:
    require_curl()
    digest = make_file(served_dir, "file.bin", 64 * 1024)
    log = TransferLog()
    flags = ["--port-mode", port_mode, "--timeout", "0.1", "--retries", "20"]
    with (
        servers.edgetftp(served_dir, flags, log_dir=tmp_path) as server,
        ImpairmentProxy.start_in_thread(server.address, seed=2, tap=log, **impairment) as proxy,
    ):
        curl_fetch(proxy.address, "file.bin", tmp_path / "out.bin", "--tftp-no-options")
        stats = proxy.stats()
    assert hashlib.sha256((tmp_path / "out.bin").read_bytes()).hexdigest() == digest
    [transfer] = log.find("file.bin")
    assert transfer.complete and transfer.sha256() == digest
    if port_mode == "single":
        assert transfer.server_port == server.address[1] and stats.transfer_ports == 0
    else:
        assert transfer.server_port != server.address[1] and stats.transfer_ports >= 1
