"""A listening socket: reads datagrams in adaptive batches into one shared buffer, and knows its MTU.

Sockets are driven directly with ``add_reader`` and ``recvmsg_into``: asyncio's datagram transports
cannot report the address a request was sent to (needed to answer from it on a wildcard socket)
nor the interface (needed for its MTU), and reading several datagrams per wake-up saves a loop
iteration each.  Several listeners (IPv4 and IPv6, say) share the server's one receive buffer: the
loop runs one callback at a time, and a datagram is handled before the next is read.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

from edgetftp import netutil
from edgetftp.netutil import Arrival
from edgetftp.transport.config import Peer
from edgetftp.transport.sender import Endpoint
from edgetftp.transport.session import Session

DATAGRAMS_PER_WAKEUP = 64
SOCKET_BUFFER_BYTES = 4 * 2**20

# (listener, datagram, client address, where it arrived): the server's demultiplexer
Dispatch = Callable[["Listener", memoryview, Peer, Arrival], None]


class Listener:
    """One listening socket and the sessions that arrived on it (keyed by client address)."""

    def __init__(self, index: int, sock: socket.socket, view: memoryview, max_blksize: int) -> None:
        sock.setblocking(False)
        local_ip = str(sock.getsockname()[0])
        wildcard = netutil.is_wildcard(local_ip)
        if wildcard:  # sockets handed over (socket activation) may not have it on yet
            netutil.enable_pktinfo(sock, sock.family)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):  # capped by rmem_max/wmem_max; smaller still works
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        self.index = index
        self.endpoint = Endpoint(sock, uses_pktinfo=wildcard)
        self.family = sock.family
        self.local_ip = local_ip
        self.sessions: dict[Peer, Session] = {}
        self._view = view
        self._max_blksize = max_blksize
        # a socket bound to one address knows its interface; a wildcard learns it per datagram
        self._bound_arrival = Arrival(None, None if wildcard else netutil.ifindex_of_address(local_ip))
        self._batch = 1  # datagrams to read on the next wake-up (see on_readable)

    @property
    def address(self) -> tuple[str, int]:
        name = self.endpoint.sock.getsockname()
        return (str(name[0]), int(name[1]))

    def read_batch(self, dispatch: Dispatch, on_error: Callable[[str, Exception | None], None]) -> None:
        """Read a batch of datagrams.  The batch adapts: a lock-step transfer brings one datagram
        per wake-up, and reading on until EAGAIN would cost a failed syscall and an exception for
        each; under load the batch grows so that one wake-up serves many datagrams."""
        endpoint, view, bound_arrival = self.endpoint, self._view, self._bound_arrival
        sock, uses_pktinfo = endpoint.sock, endpoint.uses_pktinfo
        batch = self._batch
        for count in range(batch):
            try:
                if uses_pktinfo:
                    size, ancdata, _, address = sock.recvmsg_into((view,), netutil.ANCILLARY_SPACE)
                    arrival = netutil.parse_arrival(ancdata)
                else:
                    size, address = sock.recvfrom_into(view)
                    arrival = bound_arrival
            except (BlockingIOError, InterruptedError):
                self._batch = max(1, count)
                return
            except OSError:
                on_error("receive-error", None)  # e.g. ICMP errors surfacing
                continue
            peer = address if len(address) == 2 else (address[0], address[1])
            try:
                dispatch(self, view[:size], peer, arrival)
            except Exception as exc:  # a bug must cost one datagram, never the server
                on_error("datagram", exc)
        self._batch = min(batch * 2, DATAGRAMS_PER_WAKEUP)

    def blksize_cap(self, arrival: Arrival, configured_mtu: int | None) -> int:
        """The largest blksize that fits the arrival interface's MTU (and the configured one)."""
        cap = self._max_blksize
        mtu = netutil.interface_mtu(arrival.ifindex) if arrival.ifindex else None
        for limit in (mtu, configured_mtu):
            if limit is not None:
                cap = min(cap, netutil.blksize_cap(limit, self.family))
        return max(cap, 8)

    def close(self) -> None:
        self.endpoint.sock.close()
