"""Who may start a transfer now.  Pure (the caller passes ``now``), so it is tested on a fake clock.

A full server or a full per-client quota answers with silence, never an ERROR: PXE firmware that
receives an ERROR gives up and falls through to the next boot device, while an unanswered RRQ is
retried (PXE ROMs, UEFI, iPXE, atftp, tftp-hpa all do), and by then a slot may be free.  The
per-client quota keeps one address (a NAT, or a flooder) from taking every slot.  Only an address
whose refusals pass ``flood_refusals`` within ``flood_window`` seconds is answered with an ERROR
(one refusal in FLOOD_ANSWER_EVERY): see FLOOD_REFUSALS in config.py for why no boot comes near that.

New requests per client are also paced (``allow_start``): at most ``max_per_client`` per second,
in bursts of as many.  A rack boots well within that (its requests are capped by the quota anyway),
but a flood of new requests -- each would replace a session or build one -- is dropped before it
costs a transfer, so the server keeps up with everyone else's datagrams (a server that falls
behind lets the kernel drop them at random, the victim's ACKs included).

Clients are counted by key: the IPv4 address, or the IPv6 prefix (a /64 is one site: one host can
take any number of addresses in it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

MAX_TRACKED = 65_536  # addresses whose refusals are remembered (bounded whatever a spoofer sends)
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


class Admission:
    def __init__(
        self, max_sessions: int, max_per_client: int, flood_refusals: int, flood_window: float
    ) -> None:
        self._max_sessions = max_sessions
        self._max_per_client = max_per_client
        self._flood_refusals = flood_refusals
        self._flood_window = flood_window
        self._active: dict[str, int] = {}  # client key -> running transfers
        self._total = 0
        self._refusals: dict[str, tuple[float, int]] = {}  # client key -> (window start, count)
        self._starts: dict[str, tuple[float, float]] = {}  # client key -> (tokens, when): new requests

    @property
    def total(self) -> int:
        return self._total

    def running(self, key: str) -> int:
        return self._active.get(key, 0)

    def allow_start(self, key: str, now: float) -> Verdict:
        """May ``key`` make one more new request now (its pace, before any session is touched)?"""
        rate = float(self._max_per_client)
        tokens, when = self._starts.get(key, (rate, now))
        tokens = min(rate, tokens + (now - when) * rate)
        if tokens < 1.0:
            self._starts[key] = (tokens, now)
            return Verdict(False, "client-pace", answer=self._count_refusal(key, now))
        if len(self._starts) >= MAX_TRACKED and key not in self._starts:
            self._forget_full_buckets(now)
        self._starts[key] = (tokens - 1.0, now)
        return ADMIT

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

    def _forget_full_buckets(self, now: float) -> None:
        """A bucket that has refilled is what a new client gets anyway: forget it."""
        rate = float(self._max_per_client)
        full = [k for k, (tokens, when) in self._starts.items() if tokens + (now - when) * rate >= rate]
        for key in full:
            del self._starts[key]

    def _forget_old(self, now: float) -> None:
        expired = [k for k, (started, _) in self._refusals.items() if now - started >= self._flood_window]
        for key in expired:
            del self._refusals[key]
