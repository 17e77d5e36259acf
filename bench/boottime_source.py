"""Time to the first DATA of a cold object, per source kind, over the same delay relay (issue 15).

A source kind (``SOURCES``) sets up where the files live and how edgetftp is pointed at them: a local
directory, an S3 bucket on a moto server (tests/s3support.py) and an HTTP origin (tests/originsupport.py,
aiohttp on loopback); ``--first-data-sources local,s3,origin`` measures them side by side, and
``register_source`` adds further kinds.

Each measurement is one fresh client: RRQ (blksize 1432) -> OACK -> ACK 0 -> DATA 1, timed from the
RRQ leaving to DATA 1 arriving, through the relay at the given RTT; then the client sends ERROR 0 so
the server forgets the session.  "Cold": every measurement asks for an object nobody has asked for
before (edgetftp's cache has never seen it).  The source's own round trip (``round_trip``) is timed
beside, so the result can be read against the target "at most one source round trip above local".
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.impairment import ImpairmentProxy
from bench.peers import Peer, ServerFailed, edgetftp_with, start_server
from bench.stats import median

OBJECT_BYTES = 64 * 1024
PROBE_NAME = "probe.bin"
BLKSIZE = 1432
RRQ_RESEND_S = 1.0
FETCH_TIMEOUT_S = 15.0
OP_RRQ, OP_DATA, OP_ACK, OP_ERROR, OP_OACK = 1, 3, 4, 5, 6


@dataclass
class SourceUnderTest:
    """What edgetftp is started with, and how to time one round trip to the source itself."""

    source: str  # edgetftp's SOURCE argument
    flags: tuple[str, ...] = ()
    round_trip: Callable[[], float] | None = None  # seconds of one request to the source, if it has one


SourceSetup = Callable[[Path, dict[str, bytes], contextlib.ExitStack], SourceUnderTest]
"""(workdir, objects by name, a stack for cleanups) -> the source, with every object stored in it."""


def local_source(workdir: Path, objects: dict[str, bytes], stack: contextlib.ExitStack) -> SourceUnderTest:
    root = workdir / "local-root"
    root.mkdir(parents=True, exist_ok=True)
    for name, data in objects.items():
        (root / name).write_bytes(data)
    return SourceUnderTest(str(root))


S3_BUCKET, S3_PREFIX = "edgetftp-boottime", "boot/"


def s3_source(workdir: Path, objects: dict[str, bytes], stack: contextlib.ExitStack) -> SourceUnderTest:
    """A moto server behind tests/s3support's proxy; dummy AWS credentials in the environment meanwhile."""
    from tests.s3support import REGION, s3_endpoint  # moto and boto3: only when S3 is measured

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's HTTP server logs every request
    endpoint = stack.enter_context(s3_endpoint())
    endpoint.create_bucket(S3_BUCKET)
    for name, data in objects.items():
        endpoint.put(S3_BUCKET, S3_PREFIX + name, data)
    flags = ("--endpoint-url", endpoint.url, "--force-path-style", "--region", REGION)
    round_trip = functools.partial(_http_get_seconds, endpoint.url, f"/{S3_BUCKET}/{S3_PREFIX}{PROBE_NAME}")
    return SourceUnderTest(f"s3://{S3_BUCKET}/{S3_PREFIX}", flags, round_trip)


ORIGIN_PREFIX = "/boot/"


def origin_source(workdir: Path, objects: dict[str, bytes], stack: contextlib.ExitStack) -> SourceUnderTest:
    """An aiohttp origin on loopback answering each object with 200 and no caching headers."""
    from tests.originsupport import Answer, running_origin  # aiohttp: only when the origin is measured

    origin, _ = stack.enter_context(running_origin())
    for name, data in objects.items():
        origin.files[ORIGIN_PREFIX + name] = Answer(body=data)
    round_trip = functools.partial(_http_get_seconds, origin.url, ORIGIN_PREFIX + PROBE_NAME)
    return SourceUnderTest(origin.prefix(ORIGIN_PREFIX), (), round_trip)


def _http_get_seconds(url: str, path: str) -> float:
    """One GET of a small object over a fresh connection: what a cold fetch costs the server at least."""
    host_port = url.removeprefix("http://")
    connection = http.client.HTTPConnection(host_port, timeout=10)
    started = time.perf_counter()
    try:
        connection.request("GET", path)
        connection.getresponse().read()
    finally:
        connection.close()
    return time.perf_counter() - started


SOURCES: dict[str, SourceSetup] = {"local": local_source, "s3": s3_source, "origin": origin_source}


def register_source(name: str, setup: SourceSetup) -> None:
    """The hook for further source kinds: measured when named in the CLI."""
    SOURCES[name] = setup


@dataclass
class FirstData:
    source: str
    rtt_ms: float
    seconds: list[float] = field(default_factory=list)
    source_round_trip_s: float | None = None
    note: str = ""

    @property
    def median_s(self) -> float | None:
        return median(self.seconds)


def measure_sources(
    names: list[str], rtt_ms: float, repeat: int, workdir: Path, edgetftp_args: tuple[str, ...] = ()
) -> list[FirstData]:
    objects = {PROBE_NAME: bytes(100), **{_cold_name(i): _object_bytes(i) for i in range(repeat)}}
    results = []
    for name in names:
        result = FirstData(name, rtt_ms)
        try:
            with contextlib.ExitStack() as stack:
                under_test = SOURCES[name](workdir / name, objects, stack)
                peer = edgetftp_with(*edgetftp_args, *under_test.flags, "--log-level", "WARNING")
                _measure(result, peer, under_test, repeat, rtt_ms, workdir / name / "logs")
        except (ServerFailed, OSError, ImportError, TimeoutError) as exc:
            result.note = f"{type(exc).__name__}: {exc}"[:200]
        results.append(result)
    return results


def _measure(
    result: FirstData, peer: Peer, under_test: SourceUnderTest, repeat: int, rtt: float, logs: Path
) -> None:
    server = start_server(peer, under_test.source, logs, cpu=None, allow_cgroups=False)
    try:
        server.wait_until_serving(PROBE_NAME)
        with ImpairmentProxy.start_in_thread(server.address, delay_ms=rtt / 2) as relay:
            for index in range(repeat):
                result.seconds.append(first_data_seconds(relay.address, _cold_name(index)))
        if under_test.round_trip is not None:
            result.source_round_trip_s = median([under_test.round_trip() for _ in range(5)])
    finally:
        server.stop()


def _cold_name(index: int) -> str:
    return f"cold-{index}.bin"


def _object_bytes(index: int) -> bytes:
    return bytes((index * 31 + n) % 251 for n in range(OBJECT_BYTES))


def first_data_seconds(server: tuple[str, int], filename: str) -> float:
    """RRQ to DATA 1 (through an OACK and ACK 0 when the server answers with one)."""
    rrq = (
        struct.pack("!H", OP_RRQ) + filename.encode() + b"\0octet\0blksize\0" + str(BLKSIZE).encode() + b"\0"
    )
    with _udp_socket() as sock:
        started = time.perf_counter()
        deadline = started + FETCH_TIMEOUT_S
        sock.sendto(rrq, server)
        next_resend = started + RRQ_RESEND_S
        while time.perf_counter() < deadline:
            sock.settimeout(max(0.01, min(next_resend, deadline) - time.perf_counter()))
            try:
                data, peer = sock.recvfrom(65536)
            except TimeoutError:
                sock.sendto(rrq, server)
                next_resend = time.perf_counter() + RRQ_RESEND_S
                continue
            opcode = struct.unpack_from("!H", data)[0]
            if opcode == OP_OACK:
                sock.sendto(struct.pack("!HH", OP_ACK, 0), peer)
            elif opcode == OP_DATA:
                seconds = time.perf_counter() - started
                sock.sendto(struct.pack("!HH", OP_ERROR, 0) + b"benchmark done\0", peer)
                return seconds
            elif opcode == OP_ERROR:
                message = data[4:].split(b"\0", 1)[0].decode(errors="replace")
                raise OSError(f"server answered ERROR: {message}")
    raise TimeoutError(f"no DATA for {filename} within {FETCH_TIMEOUT_S:g} s")


@contextlib.contextmanager
def _udp_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock
    finally:
        sock.close()


def render_first_data(results: list[FirstData]) -> str:
    local = next((r.median_s for r in results if r.source == "local"), None)
    lines = [
        "| source | RTT ms | first DATA, median s | runs | above local, ms | one source round trip, ms "
        "| note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        above = None if r.median_s is None or local is None else (r.median_s - local) * 1000
        trip = None if r.source_round_trip_s is None else r.source_round_trip_s * 1000
        row = [
            r.source,
            f"{r.rtt_ms:g}",
            _fmt(r.median_s, 3),
            str(len(r.seconds)),
            _fmt(above, 1),
            _fmt(trip, 1),
        ]
        lines.append("| " + " | ".join([*row, r.note or ""]) + " |")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    return "\u2013" if value is None else f"{value:.{digits}f}"
