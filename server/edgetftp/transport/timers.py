"""One heap of (deadline, token, item) and a single loop timer for its earliest entry.

Moving a deadline later costs nothing: the entry stays, and when it fires early the owner finds the
real deadline and queues it again.  Only an earlier deadline pushes a new entry (its token makes the
older one stale).  So an ACK, which moves the transfer's deadline later, costs no timer operation.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

TIMER_GRANULARITY = 0.01  # seconds: retransmission timers are coarse by nature; batch them
TIMER_SLACK = 0.1  # of the wait, at most TIMER_GRANULARITY: a pacing wait of 2 ms is not batched to 12


def wake_slack(wait: float) -> float:
    """How late a wake-up ``wait`` seconds away may come, so that nearby deadlines share it."""
    return min(TIMER_GRANULARITY, max(0.0, wait) * TIMER_SLACK)


class Timed(Protocol):
    """What the queue keeps on each item: its queued deadline and the token of its live entry."""

    timer_at: float
    timer_token: int
    closed: bool


T = TypeVar("T", bound=Timed)


class TimerQueue(Generic[T]):
    def __init__(self, loop: asyncio.AbstractEventLoop, on_due: Callable[[T, float], None]) -> None:
        self._loop = loop
        self._on_due = on_due
        self._heap: list[tuple[float, int, T]] = []
        self._tokens = itertools.count(1)
        self._wake: asyncio.TimerHandle | None = None
        self._wake_at = math.inf

    def __len__(self) -> int:
        return len(self._heap)

    def arm(self, item: T, deadline: float) -> None:
        """Make sure ``item`` is called back at ``deadline`` or earlier (later deadlines cost nothing)."""
        if deadline < item.timer_at:
            self.push(item, deadline)

    def push(self, item: T, deadline: float) -> None:
        item.timer_token = token = next(self._tokens)
        item.timer_at = deadline
        heapq.heappush(self._heap, (deadline, token, item))
        if deadline < self._wake_at:
            self._arm_wake(deadline)

    def close(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake, self._wake_at = None, math.inf
        self._heap.clear()

    def _arm_wake(self, deadline: float) -> None:
        if self._wake is not None:
            self._wake.cancel()
        self._wake_at = deadline
        loop = self._loop
        self._wake = loop.call_at(deadline + wake_slack(deadline - loop.time()), self._fire)

    def _fire(self) -> None:
        self._wake, self._wake_at = None, math.inf
        now = self._loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, token, item = heapq.heappop(heap)
            if item.closed or token != item.timer_token:
                continue  # stale: the item re-armed earlier, or ended
            item.timer_at = math.inf
            self._on_due(item, now)  # the owner re-arms (push) if the real deadline is later
        if heap and heap[0][0] < self._wake_at:
            self._arm_wake(heap[0][0])
