"""An asyncio TFTP load generator: many read sessions at once against one server, with a JSON summary.

Written from the RFCs (1350 TFTP, 2347 option extension, 2348 blksize, 2349 timeout/tsize, 7440
windowsize).  Each session is one non-blocking UDP socket driven by ``loop.add_reader``: a readiness
callback drains every queued datagram with ``recvfrom_into`` into one preallocated buffer, so the client
costs little per packet and does not become the bottleneck of the server it measures.

Session rules (client side):
- RRQ with the requested options.  An OACK is answered with ACK 0; a DATA 1 instead means the server
  ignored the options (RFC 2347), so the transfer runs with blksize 512 and no window.
- The first reply fixes the server's transfer ID (address and port): single-port servers answer from
  their listening port, classic servers (tftpd-hpa) from a fresh port.  Packets from any other port get
  ERROR 5 (RFC 1350) and are counted: a second TID is the mark of a duplicate session.
- In-order DATA is hashed (sha256) and ACKed after each full window (1 = lock-step) and at the last,
  short block.  Out-of-order or duplicate DATA re-ACKs the last in-order block once per stall (RFC 7440),
  so one gap does not make the server restart its window once per packet.
- Block numbers wrap at 2^16 (65535 -> 0).
- No progress for ``ack_timeout`` seconds re-sends the last ACK (or the RRQ, paced by ``rrq_timeout``);
  after ``retries`` re-sends the session fails.  The progress check is lazy: one timer per timeout
  period, not one per packet.

CLI: ``python -m bench.loadgen --server 127.0.0.1:6969 --file x --blksize 1428 --windowsize 16
--concurrency 20 --count 400 --expect-sha256 HEX`` prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, TypeVar

from bench.stats import latency_summary

OP_RRQ = 1
OP_DATA = 3
OP_ACK = 4
OP_ERROR = 5
OP_OACK = 6
ERROR_UNDEFINED = 0
ERROR_UNKNOWN_TID = 5
DEFAULT_BLKSIZE = 512
MAX_DATAGRAM = 65536 + 4
BLOCK_MODULUS = 1 << 16
HALF_BLOCK_SPACE = 1 << 15

_ACK = struct.Struct("!HH")
_ERROR_HEAD = struct.Struct("!HH")

T = TypeVar("T")


# --- packets (client side only) ---------------------------------------------------------------------------


def encode_rrq(filename: str, options: dict[str, str], mode: str = "octet") -> bytes:
    """RRQ: opcode, filename NUL, mode NUL, then option NUL value NUL pairs (RFC 2347)."""
    parts = [struct.pack("!H", OP_RRQ), filename.encode(), b"\0", mode.encode(), b"\0"]
    for name, value in options.items():
        parts += [name.encode(), b"\0", value.encode(), b"\0"]
    return b"".join(parts)


def encode_ack(block: int) -> bytes:
    return _ACK.pack(OP_ACK, block & 0xFFFF)


def encode_error(code: int, message: str) -> bytes:
    return _ERROR_HEAD.pack(OP_ERROR, code) + message.encode() + b"\0"


def decode_oack(body: bytes) -> dict[str, str]:
    """Option pairs of an OACK body (after the opcode); names lower-cased (they are case-insensitive)."""
    fields = body.split(b"\0")
    if fields and fields[-1] == b"":
        fields.pop()
    if len(fields) % 2:
        raise ValueError("OACK with an odd number of fields")
    return {
        fields[i].decode("ascii", "replace").lower(): fields[i + 1].decode("ascii", "replace")
        for i in range(0, len(fields), 2)
    }


def decode_error(body: bytes) -> tuple[int, str]:
    """ERROR body (after the opcode): code and message (NUL terminator optional, as some servers omit it)."""
    if len(body) < 2:
        return ERROR_UNDEFINED, "(short ERROR packet)"
    code = struct.unpack_from("!H", body)[0]
    return code, body[2:].split(b"\0", 1)[0].decode("utf-8", "replace")


# --- what to fetch and how -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransferSpec:
    """One file to read and the options to ask for (None = do not ask)."""

    filename: str
    blksize: int | None = None
    windowsize: int | None = None
    tsize: bool = False
    timeout_option: int | None = None
    expected_sha256: str | None = None

    def options(self) -> dict[str, str]:
        requested: dict[str, str] = {}
        if self.blksize is not None:
            requested["blksize"] = str(self.blksize)
        if self.tsize:
            requested["tsize"] = "0"
        if self.timeout_option is not None:
            requested["timeout"] = str(self.timeout_option)
        if self.windowsize is not None:
            requested["windowsize"] = str(self.windowsize)
        return requested


@dataclass(frozen=True, slots=True)
class ClientTiming:
    """Retransmission behaviour of every session."""

    ack_timeout: float = 1.0  # no progress for this long: re-send the last ACK
    rrq_timeout: float = 1.0  # pace of RRQ re-sends while the server has not answered
    retries: int = 5  # re-sends of one packet before the session fails
    duplicate_rrq: bool = False  # send the RRQ twice on purpose (does the server start two sessions?)
    duplicate_rrq_delay: float = 0.0  # 0: back to back; else after this delay, if no reply came yet
    linger: float = 0.0  # keep the socket open after the end, to catch stray packets of a second session
    rcvbuf: int | None = None  # SO_RCVBUF for each session socket (None = kernel default)


@dataclass(slots=True)
class SessionResult:
    ok: bool
    reason: str | None  # why it failed; None when ok
    latency: float  # seconds from the first RRQ to the last DATA (or to the failure)
    size: int  # bytes received in order
    sha256: str
    granted: dict[str, str] = field(default_factory=dict)  # the OACK's options ({} without OACK)
    rrq_sent: int = 0
    ack_retransmits: int = 0
    out_of_order: int = 0
    duplicate_data: int = 0
    foreign_tid_packets: int = 0  # datagrams from a second server port
    restarted: bool = False  # an OACK or DATA 1 arrived again after the transfer had moved on
    stray_after_done: int = 0  # DATA/OACK that arrived after completion (within ``linger``)
    send_errors: int = 0

    @property
    def duplicate_session(self) -> bool:
        """Evidence that the server ran two sessions for this one request."""
        return self.foreign_tid_packets > 0 or self.restarted or self.stray_after_done > 0


class _State(Enum):
    AWAIT_FIRST_REPLY = 1
    AWAIT_FIRST_DATA = 2  # OACK received and ACK 0 sent
    TRANSFER = 3
    FINISHED = 4


# --- one session ------------------------------------------------------------------------------------------


class Session:
    """One read transfer on its own UDP socket.  ``await run()`` returns its SessionResult.

    With ``stall=True`` the session stops at the first reply (OACK or DATA 1) and never ACKs it, then
    waits for ``hold`` to be set before sending ERROR 0 and closing: a live session on the server side.
    """

    def __init__(
        self,
        server: tuple[str, int],
        spec: TransferSpec,
        timing: ClientTiming,
        *,
        stall: bool = False,
        hold: asyncio.Event | None = None,
    ) -> None:
        self._server = server
        self._spec = spec
        self._timing = timing
        self._stall = stall
        self._hold = hold
        self._requested = spec.options()
        self._rrq = encode_rrq(spec.filename, self._requested)
        self._buffer = bytearray(MAX_DATAGRAM)
        self._view = memoryview(self._buffer)
        self._hasher = hashlib.sha256()
        self._state = _State.AWAIT_FIRST_REPLY
        self._peer: tuple[str, int] | None = None
        self._peer_address: Any = None  # full address from recvfrom, passed back to sendto
        self._blksize = DEFAULT_BLKSIZE
        self._window = 1
        self._expected = 1
        self._last_block = 0
        self._unacked = 0
        self._reacked = False
        self._blocks = 0
        self._progress_mark = 0
        self._tries = 0
        self._started = 0.0
        self._result = SessionResult(ok=False, reason="unfinished", latency=0.0, size=0, sha256="")
        loop = asyncio.get_running_loop()  # sessions are made inside the loop that runs them
        self.first_reply: asyncio.Future[None] = loop.create_future()
        self._done: asyncio.Future[None] = loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._sock: socket.socket | None = None

    @property
    def result(self) -> SessionResult:
        return self._result

    async def run(self) -> SessionResult:
        loop = asyncio.get_running_loop()
        try:
            self._sock = _open_socket(self._server[0], self._timing.rcvbuf)
        except OSError as exc:
            return self._fail_early(f"socket: {exc.strerror or exc}")
        try:
            loop.add_reader(self._sock.fileno(), self._on_readable)
            self._started = time.perf_counter()
            self._send_rrq()
            if self._timing.duplicate_rrq and self._timing.duplicate_rrq_delay <= 0:
                self._send_rrq()  # back to back: the server sees both before any ACK of ours
            elif self._timing.duplicate_rrq:
                loop.call_later(self._timing.duplicate_rrq_delay, self._send_duplicate_rrq)
            self._arm(self._timing.rrq_timeout)
            await self._done
            if self._timing.linger > 0:
                await asyncio.sleep(self._timing.linger)
            if self._stall and self._hold is not None and self._result.ok:
                await self._hold.wait()
                self._send(encode_error(ERROR_UNDEFINED, "benchmark released the session"))
        finally:
            self._close(loop)
        return self._result

    # --- I/O callbacks ---

    def _on_readable(self) -> None:
        sock = self._sock
        assert sock is not None
        buffer = self._buffer
        while True:
            try:
                size, address = sock.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                if self._state is not _State.FINISHED:
                    self._fail(f"socket: {exc.strerror or exc}")
                return
            if self._state is _State.FINISHED:
                self._count_stray(size, address)
                continue
            self._on_datagram(size, address)

    def _on_datagram(self, size: int, address: Any) -> None:
        if size < 4:
            return  # too short for any reply a client accepts; ignore like noise
        peer = (address[0], address[1])
        if peer != self._peer:
            if self._peer is None and address[0] == self._server[0]:
                self._peer, self._peer_address = peer, address
            else:
                self._result.foreign_tid_packets += 1
                self._send_to(encode_error(ERROR_UNKNOWN_TID, "Unknown transfer ID"), address)
                return
        view = self._view
        opcode = (view[0] << 8) | view[1]
        if opcode == OP_DATA:
            self._on_data((view[2] << 8) | view[3], size)
        elif opcode == OP_OACK:
            self._on_oack(bytes(view[2:size]))
        elif opcode == OP_ERROR:
            code, message = decode_error(bytes(view[2:size]))
            self._fail(f"ERROR {code}: {message}")
        else:
            self._fail(f"unexpected opcode {opcode}")

    def _on_oack(self, body: bytes) -> None:
        if self._state is _State.AWAIT_FIRST_REPLY:
            self._accept_oack(body)
        elif self._state is _State.AWAIT_FIRST_DATA:
            self._send(encode_ack(0))  # our ACK 0 was lost, or a duplicate RRQ was answered again
        elif self._blocks > 0:
            self._result.restarted = True  # a fresh OACK mid-transfer: the server began a second session

    def _accept_oack(self, body: bytes) -> None:
        try:
            granted = decode_oack(body)
        except ValueError as exc:
            self._fail(f"bad OACK: {exc}")
            return
        problem = _check_oack(granted, self._requested)
        if problem:
            self._fail(f"bad OACK: {problem}")
            return
        self._result.granted = granted
        self._blksize = int(granted.get("blksize", DEFAULT_BLKSIZE))
        self._window = int(granted.get("windowsize", 1))
        self._state = _State.AWAIT_FIRST_DATA
        self._set_first_reply()
        if self._stall:
            self._finish_stalled()
            return
        self._send(encode_ack(0))
        self._reset_progress()

    def _on_data(self, block: int, size: int) -> None:
        if self._state is not _State.TRANSFER:
            if self._state is _State.AWAIT_FIRST_REPLY:
                # DATA instead of OACK: options ignored (RFC 2347), plain RFC 1350 transfer
                self._blksize, self._window = DEFAULT_BLKSIZE, 1
                self._set_first_reply()
                if self._stall:
                    self._finish_stalled()
                    return
            self._state = _State.TRANSFER
        payload_size = size - 4
        if block == self._expected:
            if payload_size > self._blksize:
                self._fail(f"DATA of {payload_size} bytes exceeds blksize {self._blksize}")
                return
            self._hasher.update(self._view[4:size])
            self._result.size += payload_size
            self._blocks += 1
            self._last_block = block
            self._expected = (block + 1) % BLOCK_MODULUS
            self._reacked = False
            if payload_size < self._blksize:
                self._send(encode_ack(block))
                self._complete()
                return
            self._unacked += 1
            if self._unacked >= self._window:
                self._send(encode_ack(block))
                self._unacked = 0
            return
        self._on_unexpected_block(block)

    def _on_unexpected_block(self, block: int) -> None:
        distance = (block - self._expected) % BLOCK_MODULUS
        if distance < HALF_BLOCK_SPACE:
            self._result.out_of_order += 1
        else:
            self._result.duplicate_data += 1
            # block 1 again, long after its window was ACKed: a second stream for the same request
            if block == 1 and 2 * self._window < self._blocks < BLOCK_MODULUS - 1:
                self._result.restarted = True
        if not self._reacked:
            self._send(encode_ack(self._last_block))
            self._reacked = True
            self._unacked = 0

    def _count_stray(self, size: int, address: Any) -> None:
        if size >= 4 and self._view[1] in (OP_DATA, OP_OACK) and self._view[0] == 0:
            self._result.stray_after_done += 1
        if self._peer is not None and (address[0], address[1]) != self._peer:
            # a second session whose first reply came after our end still shows as a second TID
            self._result.foreign_tid_packets += 1
            self._send_to(encode_error(ERROR_UNKNOWN_TID, "Unknown transfer ID"), address)

    # --- timer ---

    def _arm(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._state is _State.FINISHED:
            return
        if self._state is _State.AWAIT_FIRST_REPLY:
            if self._result.rrq_sent > self._timing.retries:
                self._fail("timeout: no reply to RRQ")
                return
            self._send_rrq()
            self._arm(self._timing.rrq_timeout)
            return
        if self._blocks != self._progress_mark:
            self._reset_progress()
            return
        self._tries += 1
        if self._tries > self._timing.retries:
            self._fail(f"timeout: stalled after block {self._last_block} ({self._result.size} bytes)")
            return
        self._send(encode_ack(self._last_block))
        self._result.ack_retransmits += 1
        self._unacked = 0
        self._arm(self._timing.ack_timeout)

    def _reset_progress(self) -> None:
        self._progress_mark = self._blocks
        self._tries = 0
        if self._timer is not None:
            self._timer.cancel()
        self._arm(self._timing.ack_timeout)

    # --- sending ---

    def _send_rrq(self) -> None:
        self._result.rrq_sent += 1
        self._send_to(self._rrq, self._server)

    def _send_duplicate_rrq(self) -> None:
        # like a real client's retransmission: only while no reply has been seen (a client that has
        # answered the OACK never repeats its RRQ, so a repeat after our ACK 0 would be a new request)
        if self._state is _State.AWAIT_FIRST_REPLY and self._sock is not None:
            self._send_rrq()

    def _send(self, packet: bytes) -> None:
        self._send_to(packet, self._peer_address)

    def _send_to(self, packet: bytes, address: Any) -> None:
        assert self._sock is not None
        try:
            self._sock.sendto(packet, address)
        except OSError:  # a full send buffer or an ICMP error: the retransmit timer covers it
            self._result.send_errors += 1

    # --- endings ---

    def _complete(self) -> None:
        result = self._result
        result.latency = time.perf_counter() - self._started
        result.sha256 = self._hasher.hexdigest()
        result.ok, result.reason = True, None
        expected = self._spec.expected_sha256
        if expected and result.sha256 != expected.lower():
            result.ok, result.reason = False, "sha256 mismatch"
        elif "tsize" in result.granted and int(result.granted["tsize"]) != result.size:
            result.ok, result.reason = False, f"tsize {result.granted['tsize']} != {result.size} received"
        self._finish()

    def _finish_stalled(self) -> None:
        self._result.ok, self._result.reason = True, None
        self._result.latency = time.perf_counter() - self._started
        self._finish()

    def _fail(self, reason: str) -> None:
        self._result.ok, self._result.reason = False, reason
        self._result.latency = time.perf_counter() - self._started
        self._result.sha256 = self._hasher.hexdigest()
        self._set_first_reply()
        self._finish()

    def _fail_early(self, reason: str) -> SessionResult:
        self._result.reason = reason
        self._set_first_reply()
        return self._result

    def _set_first_reply(self) -> None:
        if not self.first_reply.done():
            self.first_reply.set_result(None)

    def _finish(self) -> None:
        self._state = _State.FINISHED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._done.done():
            self._done.set_result(None)

    def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        self._state = _State.FINISHED
        if self._timer is not None:
            self._timer.cancel()
        if self._sock is not None:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()


def _check_oack(granted: dict[str, str], requested: dict[str, str]) -> str | None:
    """What is wrong with an OACK, or None.  RFC 2347: only requested options, blksize/window not above."""
    if not requested:
        return "OACK although no option was requested"
    for name, value in granted.items():
        if name not in requested:
            return f"option {name!r} was not requested"
        if not value.isdigit():
            return f"option {name}={value!r} is not a number"
    for name in ("blksize", "windowsize"):
        if name in granted and not 1 <= int(granted[name]) <= int(requested[name]):
            return f"{name} {granted[name]} is outside 1..{requested[name]}"
    return None


def _open_socket(server_host: str, rcvbuf: int | None) -> socket.socket:
    family = socket.AF_INET6 if ":" in server_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    except OSError:
        sock.close()
        raise
    return sock


# --- many sessions ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadConfig:
    server: tuple[str, int]
    spec: TransferSpec
    timing: ClientTiming = ClientTiming()
    concurrency: int = 1
    count: int = 1


@dataclass(slots=True)
class LoadSummary:
    """Outcome of a load run; ``to_dict`` is the JSON the CLI prints."""

    sessions: int
    ok: int
    failed: int
    failure_reasons: dict[str, int]
    wall_seconds: float
    bytes_ok: int
    throughput_mb_s: float  # MB = 10^6 bytes, over the wall time of the whole run
    latency_seconds: dict[str, float | None]
    duplicate_sessions: int
    foreign_tid_packets: int
    rrq_retransmits: int
    ack_retransmits: int
    out_of_order: int
    duplicate_data: int
    granted: dict[str, str]  # the most common OACK option set ({} when the server sent none)
    concurrency: int
    client_cpu_seconds: float = 0.0  # CPU the load generator itself used: near wall_seconds = client-bound

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    results: list[SessionResult], wall_seconds: float, concurrency: int, duplicate_rrq: bool = False
) -> LoadSummary:
    good = [result for result in results if result.ok]
    reasons = Counter(result.reason or "?" for result in results if not result.ok)
    option_sets = Counter(tuple(sorted(result.granted.items())) for result in good)
    granted = dict(option_sets.most_common(1)[0][0]) if option_sets else {}
    extra_rrqs_per_session = 2 if duplicate_rrq else 1
    bytes_ok = sum(result.size for result in good)
    return LoadSummary(
        sessions=len(results),
        ok=len(good),
        failed=len(results) - len(good),
        failure_reasons=dict(reasons.most_common()),
        wall_seconds=wall_seconds,
        bytes_ok=bytes_ok,
        throughput_mb_s=bytes_ok / wall_seconds / 1e6 if wall_seconds > 0 else 0.0,
        latency_seconds=latency_summary([result.latency for result in good]),
        duplicate_sessions=sum(result.duplicate_session for result in results),
        foreign_tid_packets=sum(result.foreign_tid_packets for result in results),
        rrq_retransmits=sum(max(0, result.rrq_sent - extra_rrqs_per_session) for result in results),
        ack_retransmits=sum(result.ack_retransmits for result in results),
        out_of_order=sum(result.out_of_order for result in results),
        duplicate_data=sum(result.duplicate_data for result in results),
        granted=granted,
        concurrency=concurrency,
    )


async def run_load(config: LoadConfig) -> LoadSummary:
    """Run ``count`` sessions, at most ``concurrency`` at once, and summarise them."""
    results: list[SessionResult] = []
    pending = iter(range(config.count))  # shared by the workers: each next() hands out one session

    async def worker() -> None:
        for _ in pending:
            results.append(await Session(config.server, config.spec, config.timing).run())

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(max(1, min(config.concurrency, config.count)))))
    wall = time.perf_counter() - started
    summary = summarize(results, wall, config.concurrency, config.timing.duplicate_rrq)
    summary.client_cpu_seconds = time.process_time() - cpu_started
    return summary


@dataclass(slots=True)
class HeldSessions:
    """Sessions stalled after the server's first reply; ``reached`` is how many got that reply."""

    requested: int
    reached: int
    failure_reasons: dict[str, int]
    seconds_to_open: float


@contextlib.asynccontextmanager
async def held_sessions(
    server: tuple[str, int], spec: TransferSpec, timing: ClientTiming, count: int, open_timeout: float = 30.0
) -> AsyncIterator[HeldSessions]:
    """Open ``count`` sessions that never ACK (live on the server), yield, then release them (ERROR 0)."""
    hold = asyncio.Event()
    sessions = [Session(server, spec, timing, stall=True, hold=hold) for _ in range(count)]
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(session.run()) for session in sessions]
    try:
        await asyncio.wait([session.first_reply for session in sessions], timeout=open_timeout)
        opened = time.perf_counter() - started
        reached = [session for session in sessions if session.result.ok]
        reasons = Counter(session.result.reason or "?" for session in sessions if not session.result.ok)
        yield HeldSessions(count, len(reached), dict(reasons), opened)
    finally:
        hold.set()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- event loop -------------------------------------------------------------------------------------------


def loop_factory(use_uvloop: bool = True) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop when installed and wanted (it is cheaper per datagram), else asyncio's."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_coroutine(coroutine: Coroutine[Any, Any, T], use_uvloop: bool = True) -> T:
    with asyncio.Runner(loop_factory=loop_factory(use_uvloop)) as runner:
        return runner.run(coroutine)


def loop_name(use_uvloop: bool = True) -> str:
    return "uvloop" if loop_factory(use_uvloop) is not asyncio.new_event_loop else "asyncio"


# --- CLI --------------------------------------------------------------------------------------------------


def parse_server(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` -> (numeric address, port); names are resolved once here."""
    if text.startswith("["):
        host, _, port_text = text[1:].partition("]:")
    else:
        host, _, port_text = text.rpartition(":")
    if not host or not port_text.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    info = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_DGRAM)[0]
    return str(info[4][0]), int(port_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("--server", type=parse_server, required=True, help="HOST:PORT of the TFTP server")
    parser.add_argument("--file", required=True, help="file name to request")
    parser.add_argument("--blksize", type=int, help="request this blksize (RFC 2348)")
    parser.add_argument("--windowsize", type=int, help="request this windowsize (RFC 7440)")
    parser.add_argument("--tsize", action="store_true", help="request tsize and check it against the bytes")
    parser.add_argument("--timeout-option", type=int, help="request this timeout option (RFC 2349), seconds")
    parser.add_argument("--concurrency", type=int, default=1, help="sessions at once")
    parser.add_argument("--count", type=int, default=1, help="sessions in total")
    parser.add_argument("--expect-sha256", help="sha256 (hex) every transfer must have")
    parser.add_argument("--ack-timeout", type=float, default=1.0, help="seconds idle before a re-ACK")
    parser.add_argument("--rrq-timeout", type=float, default=1.0, help="seconds between RRQ re-sends")
    parser.add_argument("--retries", type=int, default=5, help="re-sends before a session fails")
    parser.add_argument("--duplicate-rrq", action="store_true", help="send every RRQ twice on purpose")
    parser.add_argument(
        "--duplicate-rrq-delay", type=float, default=0.0, help="0: back to back; else seconds, if unanswered"
    )
    parser.add_argument("--linger", type=float, default=0.0, help="seconds to watch for stray packets")
    parser.add_argument("--rcvbuf", type=int, help="SO_RCVBUF of each session socket, bytes")
    parser.add_argument("--no-uvloop", action="store_true", help="asyncio's own loop, not uvloop")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = TransferSpec(
        filename=args.file,
        blksize=args.blksize,
        windowsize=args.windowsize,
        tsize=args.tsize,
        timeout_option=args.timeout_option,
        expected_sha256=args.expect_sha256,
    )
    timing = ClientTiming(
        ack_timeout=args.ack_timeout,
        rrq_timeout=args.rrq_timeout,
        retries=args.retries,
        duplicate_rrq=args.duplicate_rrq,
        duplicate_rrq_delay=args.duplicate_rrq_delay,
        linger=args.linger,
        rcvbuf=args.rcvbuf,
    )
    config = LoadConfig(args.server, spec, timing, args.concurrency, args.count)
    summary = run_coroutine(run_load(config), use_uvloop=not args.no_uvloop)
    output = summary.to_dict() | {"loop": loop_name(not args.no_uvloop), "server": list(args.server)}
    json.dump(output, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if summary.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
