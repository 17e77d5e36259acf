"""The timer queue and the datagram sender on their own: a real loop, real loopback sockets."""

from __future__ import annotations

import asyncio
import math
import socket
import struct
from dataclasses import dataclass, field

import pytest

from edgetftp import netutil
from edgetftp.netutil import Arrival
from edgetftp.transport.sender import DatagramSender, Endpoint
from edgetftp.transport.timers import TIMER_GRANULARITY, TimerQueue, wake_slack
from tests.transport_harness import RecordingObserver

pytestmark = pytest.mark.unit


@dataclass(eq=False)
class Item:
    name: str
    deadline: float  # what the owner would answer for get_timer()
    timer_at: float = math.inf
    timer_token: int = 0
    closed: bool = False
    fired: list[float] = field(default_factory=list)


def test_timers_fire_in_order_and_a_later_deadline_costs_nothing() -> None:
    async def body() -> list[str]:
        loop = asyncio.get_running_loop()
        order: list[str] = []

        def on_due(item: Item, now: float) -> None:
            if item.deadline > now:
                queue.push(item, item.deadline)  # moved later since it was queued: re-queue
                return
            order.append(item.name)

        queue: TimerQueue[Item] = TimerQueue(loop, on_due)
        start = loop.time()
        late, early, moved, gone = (
            Item(name, start + offset)
            for name, offset in [("late", 0.06), ("early", 0.02), ("moved", 0.01), ("gone", 0.03)]
        )
        for item in (late, early, moved, gone):
            queue.arm(item, item.deadline)
        assert len(queue) == 4
        moved.deadline = start + 0.08
        queue.arm(moved, moved.deadline)  # later than queued: no new entry (what an ACK does)
        assert len(queue) == 4
        queue.arm(late, start + 0.04)  # earlier: a new entry, the old one goes stale
        late.deadline = start + 0.04
        assert len(queue) == 5
        gone.closed = True  # a session that ended: its entry is skipped
        await asyncio.sleep(0.2)
        assert len(queue) == 0
        queue.close()
        return order

    assert asyncio.run(body()) == ["early", "late", "moved"]


def test_a_short_wait_is_not_batched_like_a_retransmission_timeout() -> None:
    """A pacing wait of 2 ms batched to the retransmission granularity would be 12 ms: the window
    would leave in a few bursts per round trip, which is what pacing is there to avoid."""
    assert wake_slack(0.002) <= 0.0002
    assert wake_slack(0.2) == TIMER_GRANULARITY  # a 200 ms timeout still shares its wake-up
    assert wake_slack(-0.001) == 0.0  # overdue: at once


def receiver(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(2)
    return sock


def received(sock: socket.socket, count: int) -> list[tuple[bytes, tuple[str, int]]]:
    return [sock.recvfrom(70000) for _ in range(count)]


def test_a_window_goes_out_as_gso_runs_with_its_short_tail_in_order() -> None:
    sender = DatagramSender(RecordingObserver())
    with receiver() as peer, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        window = [struct.pack("!HH", 3, block) + bytes([block]) * 1428 for block in range(1, 70)]
        window.append(struct.pack("!HH", 3, 70) + b"tail")
        sender.send(Endpoint(sock, uses_pktinfo=False), window, peer.getsockname(), [])
        got = received(peer, len(window))
    assert [datagram for datagram, _ in got] == window  # 64 + 5 + tail: split exactly at the sizes
    assert sender.gso  # the kernel took the segmented sends (Linux 4.18+)


def test_replies_leave_from_the_arrival_address_on_a_wildcard_socket() -> None:
    sender = DatagramSender(RecordingObserver())
    with receiver() as peer, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        netutil.enable_pktinfo(sock, socket.AF_INET)
        endpoint = Endpoint(sock, uses_pktinfo=True)
        ancillary = endpoint.reply_from(Arrival("127.0.0.9", None))
        sender.send(endpoint, [b"\x00\x03\x00\x01one"], peer.getsockname(), ancillary)  # one datagram
        sender.send(endpoint, [b"\x00\x03\x00\x01" + b"x" * 100] * 3, peer.getsockname(), ancillary)  # GSO
        sources = {address[0] for _, address in received(peer, 4)}
    assert sources == {"127.0.0.9"}


def test_a_failed_send_is_counted_not_raised() -> None:
    observer = RecordingObserver()
    sender = DatagramSender(observer)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = Endpoint(sock, uses_pktinfo=False)
        sender.send(endpoint, [b"x" * 70000], ("127.0.0.1", 9), [])  # too large for UDP
        sender.send(endpoint, [b"x" * 70000, b"y"], ("127.0.0.1", 9), [])
    assert observer.dropped.count("send-error") >= 2
