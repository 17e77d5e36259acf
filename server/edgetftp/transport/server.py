"""The server: listeners in, sessions out.  It routes datagrams as protocol/demux.py decides and
admits requests as admission.py decides; the per-session work is session.py's.

Single-port mode (the default): every reply leaves from the listening socket the request came to,
and sessions are keyed by (listener, client address, port).  Per-transfer mode: each transfer gets
its own ephemeral socket, as in RFC 1350, and strangers writing to it get ERROR 5.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence

from edgetftp.netutil import Arrival
from edgetftp.protocol.budget import BudgetTable
from edgetftp.protocol.codes import ErrorCode
from edgetftp.protocol.demux import Route, route_listener_datagram
from edgetftp.protocol.errors import MalformedPacket
from edgetftp.protocol.events import Outcome, TransferEnded
from edgetftp.protocol.packets import ReadRequest, decode, encode_error
from edgetftp.protocol.transfer import ReadTransfer
from edgetftp.sources.base import RequestContext, Source
from edgetftp.transport.admission import Admission, Verdict, client_key
from edgetftp.transport.config import NullObserver, Observer, Peer, PortMode, ServerConfig
from edgetftp.transport.listener import Listener
from edgetftp.transport.sender import DatagramSender
from edgetftp.transport.session import Session, SessionDriver
from edgetftp.transport.transfer_sockets import TransferSockets

RECEIVE_BUFFER = 65536
BUSY = "Server busy, try again later"
_DELIVER = Route.DELIVER


class TftpServer:
    def __init__(self, config: ServerConfig, source: Source, observer: Observer | None = None) -> None:
        self.config = config
        self.source = source
        self.observer: Observer = observer or NullObserver()
        self._loop = asyncio.get_running_loop()
        self._view = memoryview(bytearray(RECEIVE_BUFFER))
        self._listeners: list[Listener] = []
        self._single_port = config.port_mode is PortMode.SINGLE
        self._repeat_window = config.transfer.timeout  # an identical RRQ within it is a retransmission
        self._admission = Admission(
            config.max_sessions, config.max_sessions_per_client, config.flood_refusals, config.flood_window
        )
        self._budgets = BudgetTable(config.client_rate, config.client_burst)
        self._sender = DatagramSender(self.observer)
        self._driver = SessionDriver(
            self._loop, self._sender, self.observer, config.open_timeout, self._finish
        )
        self._transfer_sockets = TransferSockets(
            self._loop, self._view, self._sender, self._driver, self.observer
        )
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, sockets: Sequence[socket.socket]) -> None:
        """Serve on already-bound UDP sockets (from netutil.bind_udp, or inherited), one listener each."""
        for sock in sockets:
            listener = Listener(len(self._listeners), sock, self._view, self.config.max_blksize)
            self._listeners.append(listener)
            self._loop.add_reader(sock.fileno(), listener.read_batch, self._on_datagram, self._on_read_error)

    @property
    def local_addresses(self) -> list[tuple[str, int]]:
        return [listener.address for listener in self._listeners]

    @property
    def serving(self) -> bool:
        return bool(self._listeners) and not self._draining

    @property
    def active_sessions(self) -> int:
        return self._admission.total

    def begin_drain(self) -> None:
        """Stop taking new requests; running transfers go on."""
        self._draining = True

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for running transfers, then abort the rest.  Returns how many."""
        self.begin_drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        remaining = self._all_sessions()
        now = self._loop.time()
        for session in remaining:
            session.transfer.abort(ErrorCode.NOT_DEFINED, "Server shutting down", now)
            self._driver.flush(session)
        return len(remaining)

    def close(self) -> None:
        for session in self._all_sessions():
            session.transfer.cancel(self._loop.time())
            self._driver.flush(session)
        self._driver.timers.close()
        for listener in self._listeners:
            self._loop.remove_reader(listener.endpoint.sock.fileno())
            listener.close()
        self._listeners.clear()

    def _all_sessions(self) -> list[Session]:
        return [session for listener in self._listeners for session in listener.sessions.values()]

    # --- receiving -------------------------------------------------------------------------------

    def _on_datagram(self, listener: Listener, data: memoryview, peer: Peer, arrival: Arrival) -> None:
        session = listener.sessions.get(peer)
        now = self._loop.time()
        route = route_listener_datagram(data, session, self._single_port, self._repeat_window, now)
        if route is _DELIVER and session is not None:  # the hot path: an ACK
            session.transfer.receive_datagram(data, now)
            self._driver.flush(session)
        elif route is Route.REPEATED_REQUEST and session is not None:
            session.transfer.request_repeated(now)
            self._driver.flush(session)
        elif route is Route.REPLACE or route is Route.NEW_REQUEST:
            self._on_new_request(listener, session, bytes(data), peer, arrival, now)
        elif route is Route.REFUSE_WRITE:
            self._answer(listener, peer, arrival, ErrorCode.ACCESS_VIOLATION, "Server is read-only")
            self.observer.request_refused(peer, "write-request")
        else:
            self.observer.datagram_dropped("no-session")  # late ACKs, junk, stray ERRORs

    def _on_read_error(self, where: str, exc: Exception | None) -> None:
        if exc is None:
            self.observer.datagram_dropped(where)
        else:
            self.observer.internal_error(where, exc)

    # --- requests --------------------------------------------------------------------------------

    def _on_new_request(
        self,
        listener: Listener,
        session: Session | None,
        request_bytes: bytes,
        peer: Peer,
        arrival: Arrival,
        now: float,
    ) -> None:
        """An RRQ that is not a retransmission: paced per client, then it replaces the client's
        session (the client moved on; dnsmasq does the same) and goes to admission."""
        if self._draining:
            self.observer.datagram_dropped("draining")
            return  # silence: the client retries, by then maybe against another instance
        key = client_key(peer[0], self.config.ipv6_prefix)
        pace = self._admission.allow_start(key, now, replacing=session is not None)
        if not self._admitted(pace, listener, peer, arrival):
            return
        if session is not None:
            session.transfer.cancel(now)
            self._driver.flush(session)
        if self._admitted(self._admission.consider(key, now), listener, peer, arrival):
            self._on_request(listener, key, request_bytes, peer, arrival, now)

    def _admitted(self, verdict: Verdict, listener: Listener, peer: Peer, arrival: Arrival) -> bool:
        """True to go on; else the refusal is counted, and answered only when it is a flood."""
        if verdict.admit:
            return True
        if verdict.answer:  # a flood, not a boot: see admission.py
            self._answer(listener, peer, arrival, ErrorCode.NOT_DEFINED, "Too many requests from you")
        self.observer.request_refused(peer, verdict.reason)
        return False

    def _on_request(
        self, listener: Listener, key: str, request_bytes: bytes, peer: Peer, arrival: Arrival, now: float
    ) -> None:
        try:
            request = decode(request_bytes)
        except MalformedPacket:
            self._answer(listener, peer, arrival, ErrorCode.ILLEGAL_OPERATION, "Malformed request")
            self.observer.request_refused(peer, "malformed")
            return
        assert isinstance(request, ReadRequest)
        endpoint = listener.endpoint if self._single_port else self._transfer_sockets.open(listener, arrival)
        if endpoint is None:
            self._answer(listener, peer, arrival, ErrorCode.NOT_DEFINED, BUSY)
            self.observer.request_refused(peer, "no-descriptors")
            return
        budget = self._budgets.for_client(key, now)
        cap = listener.blksize_cap(arrival, self.config.mtu)
        transfer = ReadTransfer(request, self.config.transfer, cap, now, budget=budget)
        ancillary = endpoint.reply_from(arrival)
        session = Session((listener.index, peer), key, request_bytes, transfer, endpoint, ancillary)
        self._register(listener, session)
        if not transfer.ended:
            try:
                context = request_context(request, peer, listener, arrival)
                self._driver.resolve(session, request, self.source, self.config.policy, context)
            except Exception as exc:  # a bug must end this session cleanly, never leave it dangling
                transfer.abort(ErrorCode.NOT_DEFINED, "Internal error", now, Outcome.CANCELLED, repr(exc))
                self.observer.internal_error("request", exc)
        self._driver.flush(session)

    def _answer(self, listener: Listener, peer: Peer, arrival: Arrival, code: int, message: str) -> None:
        endpoint = listener.endpoint
        self._sender.send_one(endpoint, encode_error(code, message), peer, endpoint.reply_from(arrival))

    # --- bookkeeping -----------------------------------------------------------------------------

    def _register(self, listener: Listener, session: Session) -> None:
        listener.sessions[session.peer] = session
        self._admission.opened(session.client_key)
        if session.endpoint is not listener.endpoint:
            self._transfer_sockets.watch(session)
        self._idle.clear()
        self.observer.sessions_changed(self._admission.total)

    def _finish(self, session: Session, event: TransferEnded) -> None:
        listener = self._listeners[session.key[0]]
        if listener.sessions.get(session.peer) is session:
            del listener.sessions[session.peer]
        self._admission.closed(session.client_key)
        idle_client = not self._admission.running(session.client_key)
        if idle_client and len(self._budgets) > 2 * self.config.max_sessions:
            self._budgets.prune(self._loop.time())  # bounded by recently active clients
        if session.endpoint is not listener.endpoint:
            self._transfer_sockets.release(session)
        if not self._admission.total:
            self._idle.set()
        self.observer.sessions_changed(self._admission.total)
        self.observer.transfer_ended(session.peer, event)


def request_context(request: ReadRequest, peer: Peer, listener: Listener, arrival: Arrival) -> RequestContext:
    """What a dynamic source (an HTTP origin) may answer by: the client, the name as asked, the
    address the request arrived at."""
    host, port = listener.address
    return RequestContext(
        client=peer,
        filename=request.filename,
        mode=request.mode,
        options=dict(request.options),
        listener=(arrival.local_ip or host, port),
    )
