"""The transport's settings as plain values, and what it reports (no pydantic: cli.py maps Settings here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from edgetftp.policy import PathPolicy
from edgetftp.protocol.events import TransferEnded
from edgetftp.protocol.transfer import TransferConfig

Peer = tuple[str, int]

# An address is flooding when its refused requests pass this many within FLOOD_WINDOW seconds; only
# then do refusals get an ERROR (which ends a PXE boot).  Why 10,000 per 10 s (1,000/s): firmware
# retries an unanswered RRQ after 1 s or more (PXE ROMs, UEFI, iPXE back off from ~1 s; atftp and
# tftp-hpa wait 5 s), so even 2,000 machines behind one NAT -- the default --max-sessions, more
# than a NAT'd rack holds -- refused at once and retrying every second stay under 2,000/s for a few
# seconds and then back off.  Sustaining 1,000 refusals per second for ten seconds is a script.
FLOOD_REFUSALS = 10_000
FLOOD_WINDOW = 10.0


class PortMode(StrEnum):
    """Where replies leave from."""

    SINGLE = "single"  # every reply from the listening socket (edge networks need this)
    PER_TRANSFER = "per-transfer"  # RFC 1350: a fresh ephemeral port (TID) per transfer


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the transport needs, as plain values (built from Settings in cli.py)."""

    port_mode: PortMode = PortMode.SINGLE
    mtu: int | None = None
    max_blksize: int = 65464
    transfer: TransferConfig = field(default_factory=TransferConfig)
    max_sessions: int = 2000
    max_sessions_per_client: int = 512
    client_rate: int = 0  # bytes per second per client (address or IPv6 prefix); 0: no limit
    client_burst: float = 1.0  # seconds of client_rate a client may receive at once
    ipv6_prefix: int = 64  # IPv6 clients share limits per prefix of this length (one site = one /64)
    flood_refusals: int = FLOOD_REFUSALS
    flood_window: float = FLOOD_WINDOW
    policy: PathPolicy = field(default_factory=PathPolicy)
    open_timeout: float = 10.0  # seconds a source may take to resolve a file or return a read


class Observer(Protocol):
    """What the transport reports (observability.py turns it into logs and metrics)."""

    def transfer_ended(self, peer: Peer, event: TransferEnded) -> None: ...
    def request_refused(self, peer: Peer, reason: str) -> None: ...
    def datagram_dropped(self, reason: str) -> None: ...
    def sessions_changed(self, active: int) -> None: ...
    def internal_error(self, where: str, exc: Exception) -> None: ...

    def resource_exhausted(self, what: str, detail: str, suppressed: int) -> None:
        """Out of descriptors or ports; called at most once a minute (``suppressed``: since the last)."""
        ...


class NullObserver:
    def transfer_ended(self, peer: Peer, event: TransferEnded) -> None:
        pass

    def request_refused(self, peer: Peer, reason: str) -> None:
        pass

    def datagram_dropped(self, reason: str) -> None:
        pass

    def sessions_changed(self, active: int) -> None:
        pass

    def internal_error(self, where: str, exc: Exception) -> None:
        pass

    def resource_exhausted(self, what: str, detail: str, suppressed: int) -> None:
        pass
