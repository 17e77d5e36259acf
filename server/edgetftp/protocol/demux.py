"""Where a datagram goes: to its session, to a new transfer, or nowhere.  Sans-IO.

The transport looks the session up by (listener, client address, port) and asks here what to do
with the datagram; it decides nothing about the protocol itself.  Rules:

- Single-port mode: anything but an RRQ from a session's address is the session's (ACKs, ERRORs,
  junk: the transfer judges them).  Per-transfer mode: the transfer's own socket carries those;
  on the listener they are strays.
- An RRQ identical to the session's own, while the session is young (within its first timeout) or
  has never been acknowledged, is the client retransmitting its request: the transfer resends its
  first reply (``ReadTransfer.request_repeated``).  Any other RRQ from that address replaces the
  session: the client gave up and moved on (dnsmasq does the same).
- A WRQ is refused (the server is read-only); anything else without a session is dropped.
- On a per-transfer socket, a datagram from anyone but the session's client gets ERROR 5.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import Protocol

from edgetftp.protocol.codes import Opcode

_RRQ, _WRQ = int(Opcode.RRQ), int(Opcode.WRQ)  # plain ints: enum lookups cost on the hot path


class Route(Enum):
    DELIVER = auto()  # to the session's transfer (receive_datagram)
    REPEATED_REQUEST = auto()  # the client resent its RRQ: transfer.request_repeated
    REPLACE = auto()  # end the session silently, then treat the datagram as a new request
    NEW_REQUEST = auto()  # an RRQ without a session: admission, then a new transfer
    REFUSE_WRITE = auto()  # ERROR 2 "Server is read-only"
    UNKNOWN_TID = auto()  # ERROR 5 "Unknown transfer ID" (per-transfer sockets only)
    DROP = auto()  # late ACKs, junk, stray ERRORs: no answer


_DELIVER = Route.DELIVER


class KnownSession(Protocol):
    """What the demultiplexer needs to know about a live session."""

    @property
    def request_bytes(self) -> bytes: ...

    @property
    def started(self) -> float: ...

    @property
    def peer_confirmed(self) -> bool: ...


def route_listener_datagram(
    data: bytes | memoryview,
    session: KnownSession | None,
    single_port: bool,
    repeat_window: float,
    now: float,
) -> Route:
    """Where a datagram that arrived on a listening socket goes.

    ``repeat_window``: how long after its start an identical RRQ still counts as a retransmission
    of a session that the client has already acknowledged (the configured first timeout).
    Positional arguments and the opcode read inline: this runs for every ACK.
    """
    opcode = (data[0] << 8 | data[1]) if len(data) >= 2 else -1
    if session is not None:
        if opcode != _RRQ:
            if single_port:
                return _DELIVER  # the hot path: ACKs in single-port mode
        elif is_repeated_request(data, session, repeat_window, now):
            return Route.REPEATED_REQUEST
        else:
            return Route.REPLACE
    if opcode == _RRQ:
        return Route.NEW_REQUEST
    if opcode == _WRQ:
        return Route.REFUSE_WRITE
    return Route.DROP


def is_repeated_request(
    data: bytes | memoryview, session: KnownSession, repeat_window: float, now: float
) -> bool:
    """The same RRQ again while the session is young (or never acknowledged): a retransmission."""
    if bytes(data) != session.request_bytes:
        return False
    return now - session.started < repeat_window or not session.peer_confirmed


def route_transfer_datagram(from_client: bool) -> Route:
    """Per-transfer mode: a datagram on a transfer's own socket."""
    return Route.DELIVER if from_client else Route.UNKNOWN_TID
