"""What one client address may be sent: a byte budget the transfer consults before each datagram.  Sans-IO.

TFTP has no handshake: in single-port mode block numbers and the server port are predictable, so
blind spoofed ACKs can drive a transfer at any address.  A budget per client address, shared by all
of that address's transfers, bounds what they can reflect.  The core asks ``take`` before queueing a
datagram; what it could not send it does not count as sent, and it asks again at ``ready_at``.

Interface contract (the transport creates budgets with ``BudgetTable.for_client``, the core spends them):
- ``SendBudget.take(size, now) -> bool``: spend ``size`` bytes if the budget has them.
- ``SendBudget.ready_at(size, now) -> float``: when ``size`` bytes will be there (``now`` if already).
- ``BudgetTable.for_client(key, now) -> SendBudget | None``: None when no limit is configured.
"""

from __future__ import annotations

import math

#: The shortest wait for the budget, in seconds (the drivers' timers are coarser than this anyway).
MIN_WAIT = 0.001
#: Bytes of slack for the bucket's floating-point arithmetic.
_SLOP = 1e-6


class SendBudget:
    """A token bucket of bytes (pure: the caller passes ``now``)."""

    __slots__ = ("_burst", "_rate", "_tokens", "_when")

    def __init__(self, bytes_per_second: float, burst_bytes: float, now: float) -> None:
        self._rate = bytes_per_second
        self._burst = burst_bytes
        self._tokens = burst_bytes
        self._when = now

    def _refill(self, now: float) -> None:
        if now > self._when:
            self._tokens = min(self._burst, self._tokens + (now - self._when) * self._rate)
            self._when = now

    def take(self, size: int, now: float) -> bool:
        # On the per-datagram path: the refill is inlined.
        tokens = self._tokens
        if now > self._when:
            tokens = min(self._burst, tokens + (now - self._when) * self._rate)
            self._when = now
        if tokens < size - _SLOP:
            self._tokens = tokens
            return False
        self._tokens = tokens - size
        return True

    def ready_at(self, size: int, now: float) -> float:
        """When ``take(size)`` succeeds: strictly later than ``now`` whenever it would fail now.

        (A wait of a rounding error comes back as ``now`` itself: a timer that fires at once, forever.
        200 clients behind one address sharing a budget found it.)
        """
        self._refill(now)
        missing = size - self._tokens
        if missing <= _SLOP:
            return now
        if self._rate <= 0:
            return math.inf
        return now + max(missing / self._rate, MIN_WAIT)

    def full_at(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= self._burst


class BudgetTable:
    """One budget per client key (an IPv4 address, an IPv6 /64), created on first use."""

    def __init__(self, bytes_per_second: float, burst_seconds: float = 1.0) -> None:
        self._rate = bytes_per_second
        self._burst = bytes_per_second * burst_seconds
        self._budgets: dict[str, SendBudget] = {}

    def for_client(self, key: str, now: float) -> SendBudget | None:
        if self._rate <= 0:
            return None
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = SendBudget(self._rate, self._burst, now)
        return budget

    def prune(self, now: float) -> None:
        """Drop the budgets that have refilled: a full bucket is what a new address gets anyway."""
        full = [key for key, budget in self._budgets.items() if budget.full_at(now)]
        for key in full:
            del self._budgets[key]

    def __len__(self) -> int:
        return len(self._budgets)
