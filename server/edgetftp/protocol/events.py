"""What a transfer reports to its driver (pulled with ``ReadTransfer.next_event()``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    COMPLETED = "completed"  # every block acknowledged (or only the final ACK never came)
    ABORTED = "aborted"  # the client sent an ERROR (UEFI tsize probes end this way)
    TIMED_OUT = "timeout"  # retransmissions exhausted
    REJECTED = "rejected"  # the server refused the request (not found, policy, mode)
    PROTOCOL_ERROR = "protocol-error"  # the client sent something illegal mid-transfer
    CANCELLED = "cancelled"  # the server ended it (shutdown, replaced by a new request)
    SOURCE_ERROR = "source-error"  # the file could not be read mid-transfer


@dataclass(slots=True)
class TransferStats:
    filename: str
    mode: str
    started: float
    ended: float | None = None
    blksize: int = 512
    windowsize: int = 1  # negotiated (RFC 7440); 1 for lock-step clients
    anticipate: int = 0  # blocks sent ahead of the last ACK for a client without windowsize
    size: int | None = None  # bytes of the file, when known
    bytes_sent: int = 0  # payload bytes of first transmissions (the file's bytes on the wire)
    datagrams_sent: int = 0
    retransmits: int = 0  # datagrams sent again after a timeout
    duplicate_acks: int = 0
    budget_waits: int = 0  # times the client address's send budget made the transfer wait
    pace_waits: int = 0  # times pacing held an anticipation window's next block for a moment
    final_ack_missing: bool = False

    @property
    def duration(self) -> float:
        return (self.ended if self.ended is not None else self.started) - self.started


@dataclass(frozen=True, slots=True)
class TransferEnded:
    """The transfer is over; the driver drops it."""

    outcome: Outcome
    stats: TransferStats
    error_code: int | None = None  # the TFTP error code sent or received, if any
    reason: str = ""  # for the log; never sent as-is when it came from a source
