"""Who may start a transfer now.  Pure (the caller passes ``now``), so it is tested on a fake clock.

A full server or a full per-client quota answers with silence, never an ERROR: PXE firmware that
receives an ERROR gives up and falls through to the next boot device, while an unanswered RRQ is
retried (PXE ROMs, UEFI, iPXE, atftp, tftp-hpa all do), and by then a slot may be free.  The
per-client quota keeps one address (a NAT, or a flooder) from taking every slot.  Only an address
whose refusals pass ``flood_refusals`` within ``flood_window`` seconds is answered with an ERROR
(one refusal in FLOOD_ANSWER_EVERY): see FLOOD_REFUSALS in config.py for why no boot comes near that.

New requests per client are paced too (``allow_start``), before any session is touched: at most
PACE_FACTOR x ``max_per_client`` per second in bursts as large (8,192/s with the defaults), and of
those, requests that replace one of the client's live sessions at most ``max_per_client`` per
second.  A rack boots well within that: PXELINUX's config search is ~10 quick misses per machine,
so 100 machines behind one NAT make ~1,000 requests in their first second or two, and a client
replaces its own session only when it restarts (once per retry timeout at most).  A flood of new
requests -- each would replace a session (ending one transfer, starting another) or build one --
is dropped before it costs that, so the server keeps up with the other clients' datagrams (a
server that falls behind lets the kernel drop them at random).

Clients are counted by key: the IPv4 address, or the IPv6 prefix (a /64 is one site: one host can
take any number of addresses in it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

MAX_TRACKED = 65_536  # addresses whose refusals are remembered (bounded whatever a spoofer sends)
PACE_FACTOR = 64  # new requests per second per client, in units of its quota of running transfers
FLOOD_ANSWER_EVERY = 100  # a flood gets an ERROR for one refusal in this many: answering each would
# double the flood's cost to the server (and reflect it at a spoofed address)


@dataclass(frozen=True, slots=True)
class Verdict:
    admit: bool
    reason: str = ""  # why not ("server-full", "client-full"), for the metrics
    answer: bool = False  # refused with an ERROR (a flooder) rather than silence


ADMIT = Verdict(True)


def client_key(ip: str, ipv6_prefix: int = 64) -> str:
    """``192.0.2.7`` -> itself; ``2001:db8::1:2`` -> ``2001:db8::/64`` (scope ids dropped)."""
    if ":" not in ip:
        return ip
    network = ipaddress.IPv6Network((ip.split("%")[0], ipv6_prefix), strict=False)
    return str(network)


class Pacer:
    """A token bucket of requests per client key; the table forgets refilled buckets when full."""

    def __init__(self, per_second: float) -> None:
        self._rate = per_second
        self._buckets: dict[str, tuple[float, float]] = {}  # client key -> (tokens, when)

    def allow(self, key: str, now: float) -> bool:
        tokens, when = self._buckets.get(key, (self._rate, now))
        tokens = min(self._rate, tokens + (now - when) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        if len(self._buckets) >= MAX_TRACKED and key not in self._buckets:
            self._forget_full(now)
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def _forget_full(self, now: float) -> None:
        """A bucket that has refilled is what a new client gets anyway."""
        rate = self._rate
        full = [k for k, (tokens, when) in self._buckets.items() if tokens + (now - when) * rate >= rate]
        for key in full:
            del self._buckets[key]


class Admission:
    def __init__(
        self, max_sessions: int, max_per_client: int, flood_refusals: int, flood_window: float
    ) -> None:
        self._max_sessions = max_sessions
        self._max_per_client = max_per_client
        self._starts = Pacer(float(PACE_FACTOR * max_per_client))
        self._replacements = Pacer(float(max_per_client))
        self._flood_refusals = flood_refusals
        self._flood_window = flood_window
        self._active: dict[str, int] = {}  # client key -> running transfers
        self._total = 0
        self._refusals: dict[str, tuple[float, int]] = {}  # client key -> (window start, count)

    @property
    def total(self) -> int:
        return self._total

    def running(self, key: str) -> int:
        return self._active.get(key, 0)

    def allow_start(self, key: str, now: float, replacing: bool = False) -> Verdict:
        """May ``key`` make one more new request now (``replacing`` one of its live sessions)?"""
        if (not replacing or self._replacements.allow(key, now)) and self._starts.allow(key, now):
            return ADMIT
        return Verdict(False, "client-pace", answer=self._count_refusal(key, now))

    def consider(self, key: str, now: float) -> Verdict:
        """May ``key`` start one more transfer?  (The caller then calls ``opened``.)"""
        if self._total >= self._max_sessions:
            reason = "server-full"
        elif self._active.get(key, 0) >= self._max_per_client:
            reason = "client-full"
        else:
            return ADMIT
        return Verdict(False, reason, answer=self._count_refusal(key, now))

    def opened(self, key: str) -> None:
        self._active[key] = self._active.get(key, 0) + 1
        self._total += 1

    def closed(self, key: str) -> None:
        remaining = self._active.get(key, 1) - 1
        if remaining > 0:
            self._active[key] = remaining
        else:
            self._active.pop(key, None)
        self._total -= 1

    def _count_refusal(self, key: str, now: float) -> bool:
        """Count one refusal in the key's current window; True once it is a flood."""
        started, count = self._refusals.get(key, (now, 0))
        if now - started >= self._flood_window:
            started, count = now, 0
        if key not in self._refusals and len(self._refusals) >= MAX_TRACKED:
            self._forget_old(now)
            if len(self._refusals) >= MAX_TRACKED:
                return False  # cannot track more addresses: stay silent (the safe answer)
        count += 1
        self._refusals[key] = (started, count)
        beyond = count - self._flood_refusals
        return beyond > 0 and beyond % FLOOD_ANSWER_EVERY == 1

    def _forget_old(self, now: float) -> None:
        expired = [k for k, (started, _) in self._refusals.items() if now - started >= self._flood_window]
        for key in expired:
            del self._refusals[key]
