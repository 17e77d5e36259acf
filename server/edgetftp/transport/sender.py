"""Sending datagrams: one at a time on the lock-step hot path, windows as UDP GSO super-packets.

A reply on a wildcard socket carries an IP_PKTINFO/IPV6_PKTINFO control message so that it leaves
from the address the request was sent to (embedded clients drop replies from another address).
A send that fails (full buffer, unreachable peer) is counted and otherwise ignored: the transfer's
retransmission timer covers the loss, as it would a loss on the path.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys

from edgetftp import netutil
from edgetftp.netutil import Arrival
from edgetftp.transport.config import Observer, Peer

UDP_SEGMENT = 103  # Linux UDP GSO (4.18+): one send, many datagrams of one size
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000  # a GSO send is one IP-sized super-packet
_GSO_SIZE = struct.Struct("=H")
_GSO_REFUSALS = (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP)

Ancillary = list[tuple[int, int, bytes]]


class Endpoint:
    """A socket and the way replies leave it (from the request's local address on wildcards)."""

    __slots__ = ("family", "sock", "uses_pktinfo")

    def __init__(self, sock: socket.socket, uses_pktinfo: bool) -> None:
        self.sock = sock
        self.family = sock.family
        self.uses_pktinfo = uses_pktinfo

    def reply_from(self, arrival: Arrival) -> Ancillary:
        """Control data that makes a reply leave from the address the request arrived on."""
        if self.uses_pktinfo and arrival.local_ip is not None:
            return [netutil.source_address_cmsg(self.family, arrival.local_ip)]
        return []


class DatagramSender:
    def __init__(self, observer: Observer) -> None:
        self._observer = observer
        self.gso = sys.platform == "linux"  # turned off at the kernel's first refusal

    def send(self, endpoint: Endpoint, outgoing: list[bytes], peer: Peer, ancillary: Ancillary) -> None:
        """Send what a transfer queued, in order."""
        if len(outgoing) == 1 and not ancillary:  # the lock-step hot path
            try:
                endpoint.sock.sendto(outgoing[0], peer)
            except OSError:
                self._observer.datagram_dropped("send-error")
        elif outgoing:
            self._send_window(endpoint, outgoing, peer, ancillary)

    def send_one(self, endpoint: Endpoint, datagram: bytes, peer: Peer, ancillary: Ancillary) -> None:
        try:
            if ancillary:
                endpoint.sock.sendmsg((datagram,), ancillary, 0, peer)
            else:
                endpoint.sock.sendto(datagram, peer)
        except OSError:
            self._observer.datagram_dropped("send-error")

    def _send_window(
        self, endpoint: Endpoint, outgoing: list[bytes], peer: Peer, ancillary: Ancillary
    ) -> None:
        """Runs of equal-sized datagrams go out as one GSO send; the rest one by one."""
        index, count = 0, len(outgoing)
        while index < count:
            end = self._run_end(outgoing, index) if self.gso else index + 1
            if end - index > 1 and self._send_segmented(endpoint, outgoing[index:end], peer, ancillary):
                index = end
                continue
            for datagram in outgoing[index:end]:
                self.send_one(endpoint, datagram, peer, ancillary)
            index = end

    @staticmethod
    def _run_end(outgoing: list[bytes], index: int) -> int:
        """The end of the run of equal sizes from ``index`` that fits one GSO send."""
        count, size = len(outgoing), len(outgoing[index])
        limit = index + min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size)
        end = index + 1
        while end < count and end < limit and len(outgoing[end]) == size:
            end += 1
        if end < count and end < limit and len(outgoing[end]) < size:
            end += 1  # the window's short last block rides along as the tail segment
        return end

    def _send_segmented(self, endpoint: Endpoint, run: list[bytes], peer: Peer, ancillary: Ancillary) -> bool:
        """One sendmsg for the whole run; False when the kernel cannot (GSO stays off from then on)."""
        segment = (socket.SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(len(run[0])))
        try:
            endpoint.sock.sendmsg((b"".join(run),), [*ancillary, segment], 0, peer)
        except OSError as exc:
            if exc.errno in _GSO_REFUSALS:
                self.gso = False
                return False
            self._observer.datagram_dropped("send-error")
        return True
