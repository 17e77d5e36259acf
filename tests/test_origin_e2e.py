"""The real server (``python -m edgetftp http://...``) with real TFTP clients and a real HTTP origin.

Origin request counts and request lines are read at the origin (tests/originsupport.py).
"""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from edgetftp.protocol import Data, OptionAck
from tests.conftest import ServerProcess
from tests.originsupport import (
    Answer,
    LoopThread,
    OriginServer,
    RawOrigin,
    make_test_ca,
    response_bytes,
)
from tests.rawclient import Fetch, RawClient
from tests.test_clients import concurrent_fetches, fetch_with

pytestmark = pytest.mark.integration

MiB = 1 << 20
CLIENTS = ("curl", "atftp", "busybox")
#: Names the path policy accepts (tests/test_policy.py) plus the characters URLs care about.
HOSTILE_ACCEPTED = [
    "%2e%2e/etc/passwd",
    "..foo/bar..",
    "ümlaut.efi",
    "\\Boot\\x64\\wdsnbp.com",
    "//boot.ipxe?x=1",
    "a#frag.cfg",
    "x%2fy",
    "%2e%2e",
    "q?.cfg",
    "a;b=c&d",
]
HOSTILE_REFUSED = ["../etc/passwd", "a/../../etc/passwd", "a/./b", "\\..\\x", "a//b", "..\\..\\windows"]


@pytest.fixture
def served(origins: tuple[OriginServer, RawOrigin]) -> Iterator[ServerProcess]:
    """edgetftp in front of the origin (restarted per test: every test starts with a cold cache)."""
    server = ServerProcess(
        ["--max-sessions-per-client", "100", "--origin-timeout", "1", origins[0].prefix()],
        env={"FLY_REGION": "ams"},
    )
    yield server
    server.stop()


def client_port_in(script: bytes) -> int:
    line = next(line for line in script.decode().splitlines() if line.startswith("echo booting"))
    return int(line.split()[2].rsplit(":", 1)[1])


def fetch_raw(server: ServerProcess, name: str, bind: str | None = None, **options: int) -> Fetch:
    with RawClient(server.address, timeout=10, bind=bind) as client:
        return client.fetch(name, "octet", **options)


# --- per-client answers ---


@pytest.mark.parametrize("client", CLIENTS)
def test_real_clients_get_their_own_script(
    origin: OriginServer, served: ServerProcess, tmp_path: Path, client: str
) -> None:
    scripts = []
    for attempt in range(2):
        out = tmp_path / f"boot-{attempt}.ipxe"
        result = fetch_with(client, served.address, "boot.ipxe", out, 1428 if attempt else None)
        assert out.exists(), result.stderr
        scripts.append(out.read_bytes())
    requests = {r.headers["X-TFTP-Port"]: r for r in origin.logged() if r.raw_path == "/boot/boot.ipxe"}
    for script in scripts:
        assert script.startswith(b"#!ipxe\necho booting 127.0.0.1:")
        assert b"region ams file boot.ipxe" in script
        logged = requests[str(client_port_in(script))]  # the origin saw this very client
        assert logged.headers["X-TFTP-IP"] == "127.0.0.1"
        assert logged.headers["X-TFTP-Listener"] == f"127.0.0.1:{served.port}"
        assert logged.headers["X-TFTP-Request-Id"].encode() in script
    assert scripts[0] != scripts[1]  # two requests, two machines' worth of answers


def test_two_clients_at_once_get_different_scripts(origin: OriginServer, served: ServerProcess) -> None:
    origin.generated_headers = {"Cache-Control": "max-age=60", "Vary": "X-TFTP-IP"}
    origin.delay = 0.3  # the second request arrives while the first is at the origin
    results: dict[str, Fetch] = {}

    def fetch_from(address: str) -> None:
        results[address] = fetch_raw(served, "boot.ipxe", bind=address, blksize=1428)

    threads = [threading.Thread(target=fetch_from, args=(a,)) for a in ("127.0.0.2", "127.0.0.3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for address in ("127.0.0.2", "127.0.0.3"):
        assert f"echo booting {address}:".encode() in results[address].data
    # Cached per client address: asking again costs nothing and still gives each its own script.
    again = fetch_raw(served, "boot.ipxe", bind="127.0.0.3")
    assert again.data == results["127.0.0.3"].data
    assert origin.count("/boot/boot.ipxe") == 2


@pytest.mark.parametrize("host", ["::1", "0.0.0.0"])
def test_context_names_the_address_the_request_arrived_at(
    origins: tuple[OriginServer, RawOrigin], host: str
) -> None:
    origin = origins[0]
    origin.start()
    origin.reset()
    server = ServerProcess([origin.prefix()], host=host)
    try:
        target = ("::1" if host == "::1" else "127.0.0.1", server.port)
        with RawClient(target, timeout=10) as client:
            fetched = client.fetch("boot.ipxe")
            client_port = client.sock.getsockname()[1]
    finally:
        server.stop()
    (request,) = origin.logged()
    expected_listener = f"[::1]:{server.port}" if host == "::1" else f"127.0.0.1:{server.port}"
    assert request.headers["X-TFTP-Listener"] == expected_listener  # the arrival address, not 0.0.0.0
    assert request.headers["X-TFTP-IP"] == target[0] and request.headers["X-TFTP-Port"] == str(client_port)
    assert f"booting {target[0]}:{client_port}".encode() in fetched.data


def test_https_origin_verified_against_the_system_trust(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    ca_file, context = make_test_ca(tmp_path)
    thread = LoopThread()
    origin = OriginServer(thread, ssl_context=context)
    try:
        origin.files["/boot/menu.ipxe"] = Answer(body=b"#!ipxe\necho over TLS\n")
        trusted = ServerProcess([origin.prefix()], env={"SSL_CERT_FILE": str(ca_file)})
        untrusted = ServerProcess([origin.prefix()])
        try:
            assert fetch_raw(trusted, "menu.ipxe").data == b"#!ipxe\necho over TLS\n"
            refused = fetch_raw(untrusted, "menu.ipxe")
            assert refused.error is not None and refused.error.code == 0
            assert "certificate verify failed" in untrusted.wait_for_log("origin failed")
        finally:
            trusted.stop()
            untrusted.stop()
        assert origin.count("/boot/menu.ipxe") == 1  # the untrusted one never sent its request
    finally:
        origin.stop()
        thread.stop()


def test_static_headers_from_the_environment_reach_the_origin_and_not_the_log(
    origins: tuple[OriginServer, RawOrigin],
) -> None:
    origin = origins[0]
    origin.start()
    origin.reset()
    secrets = "Authorization: Bearer tok-5ecret\nX-Fleet: lab, rack 4"
    server = ServerProcess(
        ["--log-level", "DEBUG", "--origin-header", "X-Extra: 1", origin.prefix()],
        env={"EDGETFTP_ORIGIN_HEADER": secrets},
    )
    try:
        assert fetch_raw(server, "boot.ipxe").data.startswith(b"#!ipxe")
        log = server.log()
    finally:
        server.stop()
    (request,) = origin.logged()
    # The command line wins over the environment (pydantic-settings): only X-Extra is sent here.
    assert request.headers.get("X-Extra") == "1" and "Authorization" not in request.headers
    server = ServerProcess(["--log-level", "DEBUG", origin.prefix()], env={"EDGETFTP_ORIGIN_HEADER": secrets})
    try:
        assert fetch_raw(server, "boot.ipxe").data.startswith(b"#!ipxe")
        log += server.log()
    finally:
        server.stop()
    request = origin.logged()[-1]
    assert (
        request.headers["Authorization"] == "Bearer tok-5ecret"
        and request.headers["X-Fleet"] == "lab, rack 4"
    )
    assert "tok-5ecret" not in log


def test_cacheable_file_fetched_by_50_clients_costs_one_origin_request(
    origin: OriginServer, served: ServerProcess, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    origin.files["/boot/ipxe.efi"] = Answer(
        body=data, headers={"Cache-Control": "max-age=300", "ETag": '"1"'}
    )
    origin.delay = 0.2
    results = concurrent_fetches(served, "ipxe.efi", tmp_path, 50)
    assert sum(result == data for result in results) == 50
    assert origin.count("/boot/ipxe.efi") == 1


def test_size_probe_gets_the_origin_size(origin: OriginServer, served: ServerProcess) -> None:
    data = bytes(700_000)
    origin.files["/boot/probe.efi"] = Answer(body=data, headers={"Cache-Control": "max-age=60"})
    with RawClient(served.address, timeout=10) as client:
        client.rrq("probe.efi", tsize=0, blksize=1468)  # EDK II asks the size ...
        packet, address = client.receive()
        assert isinstance(packet, OptionAck) and packet.options["tsize"] == str(len(data))
        client.abort(address)  # ... then ERROR 8
        fetched = client.fetch("probe.efi", blksize=1468, tsize=0)  # and downloads
    assert fetched.data == data and fetched.oack is not None and fetched.oack["tsize"] == str(len(data))
    assert origin.count("/boot/probe.efi") == 1


# --- path safety ---


def test_hostile_names_reach_the_origin_only_as_escaped_segments(
    origin: OriginServer, served: ServerProcess
) -> None:
    with RawClient(served.address, timeout=5) as client:
        for name in HOSTILE_ACCEPTED:
            fetched = client.fetch(name)
            assert fetched.error is not None and fetched.error.code == 1, (name, fetched)
        for name in HOSTILE_REFUSED:
            fetched = client.fetch(name)
            assert fetched.error is not None and fetched.error.code in (1, 2), (name, fetched)
    logged = [r.raw_path for r in origin.logged()]
    assert len(logged) == len(HOSTILE_ACCEPTED)  # refused names never reach the origin
    for raw_path in logged:
        assert raw_path.startswith("/boot/") and "?" not in raw_path and "#" not in raw_path
        segments = raw_path.removeprefix("/boot/").split("/")
        assert all(unquote(s) not in ("", ".", "..") and "/" not in unquote(s) for s in segments), raw_path
    decoded = {unquote(p.removeprefix("/boot/")) for p in logged}
    assert "%2e%2e/etc/passwd" in decoded and "x%2fy" in decoded and "boot.ipxe?x=1" in decoded
    assert "a#frag.cfg" in decoded and "Boot/x64/wdsnbp.com" in decoded


# --- failures ---


def test_origin_statuses_become_clean_errors(origin: OriginServer, served: ServerProcess) -> None:
    origin.files["/boot/denied.efi"] = Answer(status=403, body=b"no")
    origin.files["/boot/gone.efi"] = Answer(status=410)
    origin.files["/boot/broken.efi"] = Answer(status=500, body=b"internal 0xdeadbeef")
    expected = {"missing.efi": 1, "gone.efi": 1, "denied.efi": 2, "broken.efi": 0}
    for name, code in expected.items():
        fetched = fetch_raw(served, name, blksize=1428, tsize=0)
        assert fetched.error is not None and fetched.error.code == code, (name, fetched)
        assert fetched.oack is None and fetched.blocks == 0  # decided before any OACK
        assert "deadbeef" not in fetched.error.message and "500" not in fetched.error.message
    assert "HTTP 500" in served.log()  # the origin's answer is in the log only


def test_outage_slow_origin_cached_files_and_recovery(origin: OriginServer, served: ServerProcess) -> None:
    origin.files["/boot/warm.efi"] = Answer(body=b"W" * 5000, headers={"Cache-Control": "max-age=1"})
    origin.files["/boot/cold.efi"] = Answer(body=b"C" * 5000)
    assert fetch_raw(served, "warm.efi").data == b"W" * 5000
    time.sleep(1.1)  # expired: the next request asks the origin
    origin.stop()
    try:
        assert fetch_raw(served, "warm.efi").data == b"W" * 5000  # stale-if-error stands in
        cold = fetch_raw(served, "cold.efi")
        assert cold.error is not None and cold.error.code == 0
    finally:
        origin.start()
    origin.delay = 3.0  # slower than --origin-timeout 1
    slow = fetch_raw(served, "cold.efi")
    assert slow.error is not None and slow.error.code == 0
    origin.delay = 0
    assert fetch_raw(served, "cold.efi").data == b"C" * 5000  # recovered by itself
    assert "serving the cached copy of" in served.log()


@pytest.fixture
def raw_served(origins: tuple[OriginServer, RawOrigin]) -> Iterator[tuple[RawOrigin, ServerProcess]]:
    raw = origins[1]
    raw.responses.clear()
    server = ServerProcess(["--origin-timeout", "1", "--origin-buffer-max", str(MiB), raw.url + "/boot/"])
    yield raw, server
    server.stop()


def test_wrong_length_and_reset_bodies_end_in_errors(raw_served: tuple[RawOrigin, ServerProcess]) -> None:
    raw, served = raw_served
    raw.responses["/boot/short.bin"] = [response_bytes("200 OK", {"Content-Length": "1000"}, b"x" * 600)]
    raw.responses["/boot/long.bin"] = [response_bytes("200 OK", {"Content-Length": "10"}, b"x" * 30)]
    raw.responses["/boot/big-short.bin"] = [
        response_bytes("200 OK", {"Content-Length": str(4 * MiB)}, b"y" * 300_000)
    ]
    raw.responses["/boot/reset.bin"] = [
        response_bytes("200 OK", {"Content-Length": str(4 * MiB)}, b"z" * 300_000),
        RawOrigin.RESET,
    ]
    raw.responses["/boot/ok.bin"] = [response_bytes("200 OK", {"Content-Length": "4"}, b"okay")]
    for name in ("short.bin", "long.bin"):  # buffered: refused before any OACK
        fetched = fetch_raw(served, name, blksize=1428, tsize=0)
        assert fetched.error is not None and fetched.error.code == 0 and fetched.oack is None, name
    for name in ("big-short.bin", "reset.bin"):  # streamed: the transfer ends with an ERROR mid-way
        fetched = fetch_raw(served, name, blksize=1428, tsize=0)
        assert fetched.oack is not None and fetched.oack["tsize"] == str(4 * MiB), name
        assert fetched.error is not None and fetched.error.code == 0, name
        assert 0 < fetched.blocks * 1428 < 4 * MiB
    assert fetch_raw(served, "ok.bin").data == b"okay"


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("name", ["huge.img", "huge-chunked.img"])
def test_2gib_body_streams_with_bounded_memory(
    origin: OriginServer, served: ServerProcess, name: str
) -> None:
    assert fetch_raw(served, "boot.ipxe").data  # warm up the process (imports, session)
    before = peak_rss_bytes(served.proc.pid)
    with RawClient(served.address, timeout=10) as client:
        client.rrq(name, blksize=8192, windowsize=16, tsize=0)
        packet, address = client.receive()
        assert isinstance(packet, OptionAck)
        # Known length: tsize is the origin's; chunked and larger than the buffer: no tsize at all.
        assert packet.options.get("tsize") == ("2147483648" if name == "huge.img" else None)
        client.ack(0, address)
        received = 0
        block = 0
        while received < 24 * MiB:
            reply, _ = client.receive()
            if isinstance(reply, Data) and reply.block == (block + 1) & 0xFFFF:
                block += 1
                received += len(reply.payload)
                if block % 16 == 0:
                    client.ack(block & 0xFFFF, address)
        client.abort(address)
    deadline = time.monotonic() + 5
    while origin.open_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    growth = peak_rss_bytes(served.proc.pid) - before
    assert origin.open_streams == 0  # the abort closed the origin stream
    assert origin.streamed_bytes < 128 * MiB  # read as the client went, not ahead of it
    assert growth < 40 * MiB, growth  # 24 MiB went through; the 8 MiB no-length buffer is the bound
    sent = origin.streamed_bytes / MiB
    print(f"\n{name}: 24 MiB of 2 GiB streamed, peak RSS +{growth / MiB:.1f} MiB, origin sent {sent:.0f} MiB")


# --- figures ---

BENCH_ROUNDS = 21
FIRST_ANSWER_ROUNDS = 101


@pytest.mark.slow
def test_bench_origin_latency_figures(origins: tuple[OriginServer, RawOrigin], tmp_path: Path) -> None:
    """Prints the median time a cached and an uncached origin file add to a transfer vs a local file."""
    origin = origins[0]
    origin.start()
    origin.reset()
    data = bytes(range(256)) * 256  # 64 KiB, a typical script + small binary
    origin.files["/boot/cached.efi"] = Answer(body=data, headers={"Cache-Control": "max-age=3600"})
    origin.files["/boot/uncached.efi"] = Answer(body=data, headers={"Cache-Control": "no-store"})
    local_root = tmp_path / "local"
    local_root.mkdir()
    (local_root / "local.efi").write_bytes(data)
    server = ServerProcess([f"{local_root},{origin.prefix()}"])
    samples: dict[str, list[float]] = {"local.efi": [], "cached.efi": [], "uncached.efi": []}
    lines = []
    try:
        for client in ("curl", "atftp", "busybox"):
            for values in samples.values():
                values.clear()
            assert fetch_with(client, server.address, "cached.efi", tmp_path / "warm", 1432).returncode == 0
            for round_number in range(BENCH_ROUNDS):
                names = list(samples) if round_number % 2 else list(reversed(samples))  # interleaved
                for name in names:
                    out = tmp_path / "bench.out"
                    started = time.perf_counter()
                    fetch_with(client, server.address, name, out, 1432)
                    samples[name].append(time.perf_counter() - started)
                    assert out.read_bytes() == data
            local, cached, uncached = (statistics.median(samples[n]) * 1000 for n in samples)
            lines.append(
                f"{client} 64 KiB blksize 1432, median of {BENCH_ROUNDS}: local {local:.2f} ms, "
                f"origin cached {cached:.2f} ms (+{cached - local:.2f}), "
                f"origin uncached {uncached:.2f} ms (+{uncached - local:.2f})"
            )
        first_answer: dict[str, list[float]] = {name: [] for name in samples}
        with RawClient(server.address, timeout=10) as prober:
            for round_number in range(FIRST_ANSWER_ROUNDS):
                names = list(samples) if round_number % 2 else list(reversed(samples))
                for name in names:
                    started = time.perf_counter()
                    prober.rrq(name, blksize=1432, tsize=0)
                    packet, address = prober.receive()  # the OACK: resolution done
                    first_answer[name].append(time.perf_counter() - started)
                    assert isinstance(packet, OptionAck) and packet.options["tsize"] == str(len(data))
                    prober.abort(address)
        local, cached, uncached = (statistics.median(first_answer[n]) * 1000 for n in samples)
        lines.append(
            f"RRQ -> OACK, median of {FIRST_ANSWER_ROUNDS}: local {local:.3f} ms, "
            f"origin cached {cached:.3f} ms (+{cached - local:.3f}), "
            f"origin uncached {uncached:.3f} ms (+{uncached - local:.3f})"
        )
        lines.append(
            f"origin requests: cached.efi {origin.count('/boot/cached.efi')}, "
            f"uncached.efi {origin.count('/boot/uncached.efi')}, local.efi {origin.count('/boot/local.efi')}"
        )
    finally:
        server.stop()
    print("\n" + "\n".join(lines))
