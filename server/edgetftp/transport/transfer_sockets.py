"""Per-transfer mode (RFC 1350 TIDs): each transfer's own ephemeral socket, opened on the address
the request came to, read until the transfer ends.  Strangers writing to it get ERROR 5.

Out of descriptors (EMFILE/ENFILE) or ports, the request is refused with ERROR 0 busy by the caller
and the observer hears of it once a minute at most: a flood must not log a line per datagram.
"""

from __future__ import annotations

import asyncio
import errno

from edgetftp import netutil
from edgetftp.netutil import Arrival
from edgetftp.protocol.codes import ErrorCode
from edgetftp.protocol.demux import Route, route_transfer_datagram
from edgetftp.protocol.packets import encode_error
from edgetftp.transport.config import Observer
from edgetftp.transport.listener import DATAGRAMS_PER_WAKEUP, Listener
from edgetftp.transport.sender import DatagramSender, Endpoint
from edgetftp.transport.session import Session, SessionDriver

TRANSFER_SOCKET_BUFFER = 256 * 1024
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
EXHAUSTION_LOG_INTERVAL = 60.0  # seconds between two "out of descriptors" reports
_UNKNOWN_TID = encode_error(ErrorCode.UNKNOWN_TID, "Unknown transfer ID")


class TransferSockets:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        view: memoryview,
        sender: DatagramSender,
        driver: SessionDriver,
        observer: Observer,
    ) -> None:
        self._loop = loop
        self._view = view  # the server's one receive buffer
        self._sender = sender
        self._driver = driver
        self._observer = observer
        self._exhausted_at = -EXHAUSTION_LOG_INTERVAL
        self._exhausted_since_report = 0

    def open(self, listener: Listener, arrival: Arrival) -> Endpoint | None:
        """A fresh socket on the address the request came to, or None (out of descriptors or ports)."""
        local_ip = arrival.local_ip or listener.local_ip
        try:
            sock = netutil.open_udp_socket(
                listener.family, (local_ip, 0), want_pktinfo=False, buffer_bytes=TRANSFER_SOCKET_BUFFER
            )
        except netutil.AddressError as exc:
            self._exhausted("descriptors" if exc.errno in OUT_OF_DESCRIPTORS else "ports", str(exc))
            return None
        return Endpoint(sock, uses_pktinfo=False)

    def watch(self, session: Session) -> None:
        self._loop.add_reader(session.endpoint.sock.fileno(), self._on_readable, session)

    def release(self, session: Session) -> None:
        self._loop.remove_reader(session.endpoint.sock.fileno())
        session.endpoint.sock.close()

    def _on_readable(self, session: Session) -> None:
        sock = session.endpoint.sock
        for _ in range(DATAGRAMS_PER_WAKEUP):
            try:
                size, address = sock.recvfrom_into(self._view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._observer.datagram_dropped("receive-error")
                continue
            if session.closed:
                return
            if route_transfer_datagram((address[0], address[1]) == session.peer) is Route.UNKNOWN_TID:
                self._sender.send_one(session.endpoint, _UNKNOWN_TID, address, [])
                self._observer.datagram_dropped("unknown-tid")
                continue
            try:
                self._driver.deliver(session, self._view[:size])
            except Exception as exc:  # a bug must cost one datagram, never the server
                self._observer.internal_error("datagram", exc)

    def _exhausted(self, what: str, detail: str) -> None:
        now = self._loop.time()
        if now - self._exhausted_at < EXHAUSTION_LOG_INTERVAL:
            self._exhausted_since_report += 1
            return
        self._observer.resource_exhausted(what, detail, self._exhausted_since_report)
        self._exhausted_at, self._exhausted_since_report = now, 0
