"""The asyncio driver: sockets, demultiplexing, admission, timers.  It decides no protocol.

One receive path (aioquic's shape): datagram -> ``ReadTransfer.receive_datagram`` -> send what it
queued -> re-arm its timer -> pop its end event.  Sockets are driven directly with ``add_reader``
and ``recvmsg_into`` into one reused buffer: asyncio's datagram transports cannot report the
address a request was sent to (needed to answer from it on a wildcard socket) nor the interface
(needed for its MTU), and reading several datagrams per wake-up saves a loop iteration each.

Single-port mode (the default): every reply leaves from the listening socket and sessions are
keyed by the client's (address, port).  Per-transfer mode: each transfer gets its own ephemeral
socket, as in RFC 1350, and strangers writing to it get ERROR 5.

Timers: one heap of (deadline, token, session) and a single loop timer for its earliest entry.
Moving a deadline later costs nothing (the entry is re-queued when it fires early); only an
earlier deadline pushes a new entry.  So an ACK costs no timer operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import itertools
import math
import socket
import struct
import sys
from dataclasses import dataclass, field
from typing import Protocol

from edgetftp import netutil
from edgetftp.netutil import Arrival
from edgetftp.policy import PathPolicy, PolicyError
from edgetftp.protocol.budget import BudgetTable
from edgetftp.protocol.codes import ErrorCode, Opcode
from edgetftp.protocol.errors import MalformedPacket
from edgetftp.protocol.events import Outcome, TransferEnded
from edgetftp.protocol.packets import ReadRequest, decode, encode_error
from edgetftp.protocol.transfer import ReadTransfer, TransferConfig
from edgetftp.settings import PortMode
from edgetftp.sources.base import Content, Source, SourceError

RECEIVE_BUFFER = 65536
UDP_SEGMENT = 103  # Linux UDP GSO (4.18+): one send, many datagrams of one size
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000  # a GSO send is one IP-sized super-packet
_GSO_SIZE = struct.Struct("=H")
DATAGRAMS_PER_WAKEUP = 64
SOCKET_BUFFER_BYTES = 4 * 2**20
TIMER_GRANULARITY = 0.01  # seconds: retransmission timers are coarse by nature; batch them
STREAM_READ_MIN = 64 * 1024

Peer = tuple[str, int]
_RRQ, _WRQ = int(Opcode.RRQ), int(Opcode.WRQ)  # plain ints: enum member lookups cost on the hot path


class Observer(Protocol):
    """What the transport reports (observability.py turns it into logs and metrics)."""

    def transfer_ended(self, peer: Peer, event: TransferEnded) -> None: ...
    def request_refused(self, peer: Peer, reason: str) -> None: ...
    def datagram_dropped(self, reason: str) -> None: ...
    def sessions_changed(self, active: int) -> None: ...
    def internal_error(self, where: str, exc: Exception) -> None: ...


class NullObserver:
    def transfer_ended(self, peer: Peer, event: TransferEnded) -> None:
        pass

    def request_refused(self, peer: Peer, reason: str) -> None:
        pass

    def datagram_dropped(self, reason: str) -> None:
        pass

    def sessions_changed(self, active: int) -> None:
        pass

    def internal_error(self, where: str, exc: Exception) -> None:
        pass


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the transport needs, as plain values (built from Settings in cli.py)."""

    host: str
    port: int
    port_mode: PortMode = PortMode.SINGLE
    mtu: int | None = None
    max_blksize: int = 65464
    transfer: TransferConfig = field(default_factory=TransferConfig)
    max_sessions: int = 2000
    max_sessions_per_client: int = 128
    client_rate: int = 0  # bytes per second per client address; 0: no limit
    policy: PathPolicy = field(default_factory=PathPolicy)
    open_timeout: float = 10.0  # seconds a source may take to resolve a file or return a read


class Endpoint:
    """A socket and the way replies leave it (from the request's local address on wildcards)."""

    __slots__ = ("family", "sock", "uses_pktinfo")

    def __init__(self, sock: socket.socket, uses_pktinfo: bool) -> None:
        self.sock = sock
        self.family = sock.family
        self.uses_pktinfo = uses_pktinfo


class Session:
    __slots__ = (
        "ancillary",
        "client_ip",
        "closed",
        "content",
        "endpoint",
        "offset",
        "peer",
        "reading",
        "request_bytes",
        "streaming",
        "tasks",
        "timer_at",
        "timer_token",
        "transfer",
    )

    def __init__(self, peer: Peer, request_bytes: bytes, transfer: ReadTransfer, endpoint: Endpoint) -> None:
        self.peer = peer
        self.client_ip = peer[0]
        self.request_bytes = request_bytes
        self.transfer = transfer
        self.endpoint = endpoint
        self.ancillary: list[tuple[int, int, bytes]] = []
        self.content: Content | None = None
        self.offset = 0  # bytes read from a streamed content so far
        self.streaming = False  # the content is read piece by piece (not resident)
        self.reading = False
        self.closed = False
        self.timer_at = math.inf
        self.timer_token = 0
        self.tasks: set[asyncio.Task[None]] = set()


class TftpServer:
    def __init__(self, config: ServerConfig, source: Source, observer: Observer | None = None) -> None:
        self.config = config
        self.source = source
        self.observer: Observer = observer or NullObserver()
        self._loop = asyncio.get_running_loop()
        self._sessions: dict[Peer, Session] = {}
        self._per_client: dict[str, int] = {}
        self._buffer = bytearray(RECEIVE_BUFFER)
        self._view = memoryview(self._buffer)
        self._listener: Endpoint | None = None
        self._bound_arrival = Arrival(None, None)  # what a socket bound to one address knows
        self._batch = 1  # datagrams to read on the next wake-up (see _on_listener_readable)
        self._single_port = config.port_mode is PortMode.SINGLE
        self._gso = sys.platform == "linux"  # turned off at the first refusal
        self._budgets = BudgetTable(config.client_rate)  # the core spends it before each DATA
        self._heap: list[tuple[float, int, Session]] = []
        self._tokens = itertools.count(1)
        self._wake: asyncio.TimerHandle | None = None
        self._wake_at = math.inf
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._background: set[asyncio.Task[None]] = set()  # strong references to detached tasks
        self.local_address: tuple[str, int] | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the listening socket.  Raises netutil.AddressError with one clear line."""
        family, address = netutil.resolve(self.config.host, self.config.port)
        wildcard = netutil.is_wildcard(address[0])
        sock = netutil.open_udp_socket(
            family, address, want_pktinfo=wildcard, buffer_bytes=SOCKET_BUFFER_BYTES
        )
        self._listener = Endpoint(sock, uses_pktinfo=wildcard)
        if not wildcard:
            self._bound_arrival = Arrival(None, netutil.ifindex_of_address(address[0]))
        name = sock.getsockname()
        self.local_address = (str(name[0]), int(name[1]))
        self._loop.add_reader(sock.fileno(), self._on_listener_readable)

    @property
    def serving(self) -> bool:
        return self._listener is not None and not self._draining

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    def begin_drain(self) -> None:
        """Stop taking new requests; running transfers go on."""
        self._draining = True

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for running transfers, then abort the rest.  Returns how many."""
        self.begin_drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        remaining = list(self._sessions.values())
        now = self._loop.time()
        for session in remaining:
            session.transfer.abort(ErrorCode.NOT_DEFINED, "Server shutting down", now)
            self._flush(session)
        return len(remaining)

    def close(self) -> None:
        for session in list(self._sessions.values()):
            session.transfer.cancel(self._loop.time())
            self._flush(session)
        if self._wake is not None:
            self._wake.cancel()
        if self._listener is not None:
            self._loop.remove_reader(self._listener.sock.fileno())
            self._listener.sock.close()
            self._listener = None

    # --- receiving -------------------------------------------------------------------------------

    def _on_listener_readable(self) -> None:
        """Read a batch of datagrams.  The batch adapts: a lock-step transfer brings one datagram
        per wake-up, and reading on until EAGAIN would cost a failed syscall and an exception for
        each; under load the batch grows so that one wake-up serves many datagrams."""
        listener = self._listener
        if listener is None:
            return
        sock, view, bound_arrival = listener.sock, self._view, self._bound_arrival
        batch = self._batch
        for count in range(batch):
            try:
                if listener.uses_pktinfo:
                    size, ancdata, _, address = sock.recvmsg_into((view,), netutil.ANCILLARY_SPACE)
                    arrival = netutil.parse_arrival(ancdata)
                else:
                    size, address = sock.recvfrom_into(view)
                    arrival = bound_arrival
            except (BlockingIOError, InterruptedError):
                self._batch = max(1, count)
                return
            except OSError:
                self.observer.datagram_dropped("receive-error")  # e.g. ICMP errors surfacing
                continue
            peer = address if len(address) == 2 else (address[0], address[1])
            try:
                self._on_listener_datagram(view[:size], peer, arrival)
            except Exception as exc:  # a bug must cost one datagram, never the server
                self.observer.internal_error("datagram", exc)
        self._batch = min(batch * 2, DATAGRAMS_PER_WAKEUP)

    def _on_listener_datagram(self, data: memoryview, peer: Peer, arrival: Arrival) -> None:
        session = self._sessions.get(peer)
        opcode = (data[0] << 8 | data[1]) if len(data) >= 2 else -1
        if session is not None:
            if opcode != _RRQ:
                if self._single_port:
                    session.transfer.receive_datagram(data, self._loop.time())
                    self._flush(session)
                    return
            elif bytes(data) == session.request_bytes and self._is_young(session):
                # The client resent its RRQ (our reply was lost, or the network reordered it).
                session.transfer.request_repeated(self._loop.time())
                self._flush(session)
                return
            else:
                self._replace(session)
        if opcode == _RRQ:
            self._on_request(bytes(data), peer, arrival)
        elif opcode == _WRQ:
            self._refuse(peer, arrival, ErrorCode.ACCESS_VIOLATION, "Server is read-only", "write-request")
        else:
            self.observer.datagram_dropped("no-session")  # late ACKs, junk, stray ERRORs

    def _on_session_readable(self, session: Session) -> None:
        """Per-transfer mode: datagrams on the transfer's own socket."""
        sock = session.endpoint.sock
        for _ in range(DATAGRAMS_PER_WAKEUP):
            try:
                size, address = sock.recvfrom_into(self._view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.observer.datagram_dropped("receive-error")
                continue
            if session.closed:
                return
            if (address[0], address[1]) != session.peer:
                self._send_raw(
                    session.endpoint, encode_error(ErrorCode.UNKNOWN_TID, "Unknown transfer ID"), address, []
                )
                self.observer.datagram_dropped("unknown-tid")
                continue
            try:
                session.transfer.receive_datagram(self._view[:size], self._loop.time())
                self._flush(session)
            except Exception as exc:  # a bug must cost one datagram, never the server
                self.observer.internal_error("datagram", exc)

    # --- requests --------------------------------------------------------------------------------

    def _on_request(self, request_bytes: bytes, peer: Peer, arrival: Arrival) -> None:
        if self._draining:
            self.observer.datagram_dropped("draining")
            return  # silence: the client retries, by then maybe against another instance
        if len(self._sessions) >= self.config.max_sessions:
            self._refuse(peer, arrival, ErrorCode.NOT_DEFINED, "Server busy, try again later", "server-full")
            return
        if self._per_client.get(peer[0], 0) >= self.config.max_sessions_per_client:
            self._refuse(peer, arrival, ErrorCode.NOT_DEFINED, "Too many transfers from you", "client-full")
            return
        try:
            request = decode(request_bytes)
        except MalformedPacket:
            self._refuse(peer, arrival, ErrorCode.ILLEGAL_OPERATION, "Malformed request", "malformed")
            return
        assert isinstance(request, ReadRequest)
        endpoint = self._endpoint_for(arrival)
        if endpoint is None:
            self._refuse(peer, arrival, ErrorCode.NOT_DEFINED, "Server busy, try again later", "no-port")
            return
        now = self._loop.time()
        budget = self._budgets.for_client(peer[0], now)
        transfer = ReadTransfer(request, self.config.transfer, self._blksize_cap(arrival), now, budget)
        session = Session(peer, request_bytes, transfer, endpoint)
        session.ancillary = _reply_from(endpoint, arrival)
        self._register(session)
        if endpoint is not self._listener:
            self._loop.add_reader(endpoint.sock.fileno(), self._on_session_readable, session)
        if not transfer.ended:
            try:
                self._resolve(session, request)
            except Exception as exc:  # a bug must end this session cleanly, never leave it dangling
                transfer.abort(ErrorCode.NOT_DEFINED, "Internal error", now, Outcome.CANCELLED, repr(exc))
                self.observer.internal_error("request", exc)
        self._flush(session)

    def _resolve(self, session: Session, request: ReadRequest) -> None:
        now = self._loop.time()
        try:
            path = self.config.policy.check(request.filename)
            content = self.source.open_now(path)
        except (PolicyError, SourceError) as exc:
            session.transfer.reject(exc.error_code, exc.public_message, now, str(exc))
            return
        if content is None:
            self._spawn(session, self._open_slowly(session, path))
        else:
            self._start(session, content)

    async def _open_slowly(self, session: Session, path: str) -> None:
        try:
            async with asyncio.timeout(self.config.open_timeout):
                content = await self.source.open(path)
        except (SourceError, TimeoutError) as exc:
            if not session.closed:
                error = exc if isinstance(exc, SourceError) else SourceError(f"open timed out: {path}")
                session.transfer.reject(error.error_code, error.public_message, self._loop.time(), str(error))
                self._flush(session)
            return
        if session.closed:
            await content.aclose()
            return
        self._start(session, content)
        self._flush(session)

    def _start(self, session: Session, content: Content) -> None:
        session.content = content
        now = self._loop.time()
        session.transfer.accept(content.size, now)
        if content.memory is not None:
            session.offset = content.size
            session.transfer.feed(content.memory, True, now)
        else:
            session.streaming = True

    def _is_young(self, session: Session) -> bool:
        """Within its first timeout a session's identical RRQ is a retransmission; later, a restart."""
        young = self._loop.time() - session.transfer.stats.started < self.config.transfer.timeout
        return young or not session.transfer.peer_confirmed

    def _replace(self, session: Session) -> None:
        """A different request from a live session's address: the client moved on (dnsmasq does this)."""
        session.transfer.cancel(self._loop.time())
        self._flush(session)

    # --- sending and timers ----------------------------------------------------------------------

    def _flush(self, session: Session) -> None:
        """Send what the transfer queued, re-arm its timer, handle its end, keep it fed."""
        transfer = session.transfer
        outgoing = transfer.datagrams_to_send()
        if len(outgoing) == 1 and not session.ancillary:  # the lock-step hot path
            try:
                session.endpoint.sock.sendto(outgoing[0], session.peer)
            except OSError:
                # A full buffer or an unreachable peer: the retransmission timer covers the loss.
                self.observer.datagram_dropped("send-error")
        elif outgoing:
            self._send_window(session.endpoint, outgoing, session.peer, session.ancillary)
        event = transfer.next_event()
        if event is not None:
            self._finish(session, event)
            return
        deadline = transfer.get_timer()
        if deadline is not None and deadline < session.timer_at:
            self._push_timer(session, deadline)
        if session.streaming and not session.reading and transfer.bytes_wanted() > 0:
            session.reading = True
            self._spawn(session, self._read_more(session))

    def _send_window(
        self, endpoint: Endpoint, outgoing: list[bytes], peer: Peer, ancillary: list[tuple[int, int, bytes]]
    ) -> None:
        """Send several datagrams to one peer: runs of equal size go out as one UDP GSO send."""
        index, count = 0, len(outgoing)
        while index < count:
            end = index + 1
            if self._gso:
                size = len(outgoing[index])
                limit = index + min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size)
                while end < count and end < limit and len(outgoing[end]) == size:
                    end += 1
                if end < count and end < limit and len(outgoing[end]) < size:
                    end += 1  # the window's short last block rides along as the tail segment
            if end - index > 1 and self._send_segmented(endpoint, outgoing[index:end], peer, ancillary):
                index = end
                continue
            for datagram in outgoing[index:end]:
                self._send_raw(endpoint, datagram, peer, ancillary)
            index = end

    def _send_segmented(
        self, endpoint: Endpoint, run: list[bytes], peer: Peer, ancillary: list[tuple[int, int, bytes]]
    ) -> bool:
        """One sendmsg for the whole run (UDP_SEGMENT); False when the kernel cannot, so the caller
        sends them one by one (and GSO stays off from then on)."""
        segment = (socket.SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(len(run[0])))
        try:
            endpoint.sock.sendmsg((b"".join(run),), [*ancillary, segment], 0, peer)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                self._gso = False
                return False
            self.observer.datagram_dropped("send-error")
        return True

    def _send_raw(
        self, endpoint: Endpoint, datagram: bytes, peer: Peer, ancillary: list[tuple[int, int, bytes]]
    ) -> None:
        try:
            if ancillary:
                endpoint.sock.sendmsg((datagram,), ancillary, 0, peer)
            else:
                endpoint.sock.sendto(datagram, peer)
        except OSError:
            # A full buffer or an unreachable peer: the retransmission timer covers the loss.
            self.observer.datagram_dropped("send-error")

    def _push_timer(self, session: Session, deadline: float) -> None:
        session.timer_token = token = next(self._tokens)
        session.timer_at = deadline
        heapq.heappush(self._heap, (deadline, token, session))
        if deadline < self._wake_at:
            self._arm_wake(deadline)

    def _arm_wake(self, deadline: float) -> None:
        if self._wake is not None:
            self._wake.cancel()
        self._wake_at = deadline
        self._wake = self._loop.call_at(deadline + TIMER_GRANULARITY, self._on_wake)

    def _on_wake(self) -> None:
        self._wake, self._wake_at = None, math.inf
        now = self._loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, token, session = heapq.heappop(heap)
            if session.closed or token != session.timer_token:
                continue  # a stale entry: the session re-armed earlier, or ended
            session.timer_at = math.inf
            deadline = session.transfer.get_timer()
            if deadline is None:
                continue
            if deadline > now:
                self._push_timer(session, deadline)  # the deadline moved later since it was queued
                continue
            try:
                session.transfer.handle_timer(now)
                self._flush(session)
            except Exception as exc:  # one broken session must not stop the timers
                self.observer.internal_error("timer", exc)
        if heap and heap[0][0] < self._wake_at:
            self._arm_wake(heap[0][0])

    # --- streamed sources ------------------------------------------------------------------------

    async def _read_more(self, session: Session) -> None:
        content = session.content
        transfer = session.transfer
        assert content is not None
        try:
            while not session.closed and (wanted := transfer.bytes_wanted()) > 0:
                length = max(wanted, STREAM_READ_MIN)
                async with asyncio.timeout(self.config.open_timeout):
                    chunk = await content.read(session.offset, length)
                if session.closed:
                    return
                session.offset += len(chunk)
                eof = len(chunk) < length or session.offset >= content.size
                transfer.feed(chunk, eof, self._loop.time())
                self._flush(session)
        except (SourceError, TimeoutError) as exc:
            if not session.closed:
                now = self._loop.time()
                detail = str(exc) or "read timed out"
                transfer.abort(ErrorCode.NOT_DEFINED, "Source unavailable", now, Outcome.SOURCE_ERROR, detail)
                self._flush(session)
        finally:
            session.reading = False

    # --- bookkeeping -----------------------------------------------------------------------------

    def _register(self, session: Session) -> None:
        self._sessions[session.peer] = session
        self._per_client[session.client_ip] = self._per_client.get(session.client_ip, 0) + 1
        self._idle.clear()
        self.observer.sessions_changed(len(self._sessions))

    def _finish(self, session: Session, event: TransferEnded) -> None:
        session.closed = True
        if self._sessions.get(session.peer) is session:
            del self._sessions[session.peer]
        remaining = self._per_client.get(session.client_ip, 1) - 1
        if remaining:
            self._per_client[session.client_ip] = remaining
        else:
            self._per_client.pop(session.client_ip, None)
            if len(self._budgets) > 2 * self.config.max_sessions:
                self._budgets.prune(self._loop.time())  # bounded by recently active addresses
        for task in session.tasks:
            task.cancel()
        content = session.content
        if content is not None and content.memory is None:
            self._spawn_detached(content.aclose())
        self._close_endpoint(session)
        if not self._sessions:
            self._idle.set()
        self.observer.sessions_changed(len(self._sessions))
        self.observer.transfer_ended(session.peer, event)

    def _spawn(self, session: Session, coroutine: object) -> None:
        task: asyncio.Task[None] = self._loop.create_task(coroutine)  # type: ignore[arg-type]
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)

    def _spawn_detached(self, coroutine: object) -> None:
        task: asyncio.Task[None] = self._loop.create_task(coroutine)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _refuse(self, peer: Peer, arrival: Arrival, code: int, message: str, reason: str) -> None:
        listener = self._listener
        if listener is not None:
            self._send_raw(listener, encode_error(code, message), peer, _reply_from(listener, arrival))
        self.observer.request_refused(peer, reason)

    # --- ports and MTU ---------------------------------------------------------------------------

    def _endpoint_for(self, arrival: Arrival) -> Endpoint | None:
        listener = self._listener
        assert listener is not None
        if self.config.port_mode is PortMode.SINGLE:
            return listener
        local_ip = arrival.local_ip or listener.sock.getsockname()[0]
        try:
            sock = netutil.open_udp_socket(
                listener.family, (local_ip, 0), want_pktinfo=False, buffer_bytes=256 * 1024
            )
        except netutil.AddressError:
            return None  # out of ports or descriptors: refuse this one, keep serving
        return Endpoint(sock, uses_pktinfo=False)

    def _close_endpoint(self, session: Session) -> None:
        endpoint = session.endpoint
        if endpoint is self._listener:
            return
        self._loop.remove_reader(endpoint.sock.fileno())
        endpoint.sock.close()

    def _blksize_cap(self, arrival: Arrival) -> int:
        cap = self.config.max_blksize
        family = self._listener.family if self._listener else socket.AF_INET
        mtu = netutil.interface_mtu(arrival.ifindex) if arrival.ifindex else None
        for limit in (mtu, self.config.mtu):
            if limit is not None:
                cap = min(cap, netutil.blksize_cap(limit, family))
        return max(cap, 8)


def _reply_from(endpoint: Endpoint, arrival: Arrival) -> list[tuple[int, int, bytes]]:
    """Ancillary data that makes a reply on a wildcard socket leave from the address it was asked on."""
    if endpoint.uses_pktinfo and arrival.local_ip is not None:
        return [netutil.source_address_cmsg(endpoint.family, arrival.local_ip)]
    return []
