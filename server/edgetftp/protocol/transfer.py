"""The read transfer: one RRQ answered, from negotiation to the last ACK.  Sans-IO.

Rules of this file:
1. No I/O and no clock.  Every method that depends on time takes ``now`` (seconds on the driver's
   monotonic clock); deadlines returned by ``get_timer()`` are absolute on that clock.
2. Mutate, then drain: after any call the driver sends ``datagrams_to_send()``, re-reads
   ``get_timer()`` and pops ``next_event()`` until it returns None.
3. The driver resolves the file, then calls ``accept(size)`` or ``reject(code, message)``; it
   supplies the bytes with ``feed(data, eof)`` whenever ``bytes_wanted()`` is positive (a resident
   file is fed whole, once, and sliced without copying).

States: RESOLVING --accept--> OACK_SENT --ACK 0--> SENDING --last ACK--> ENDED
                   \\--accept (no options)------> SENDING
        any state --reject/abort/cancel/client ERROR/timeout/illegal packet--> ENDED

Block numbers on the wire are 16 bits and roll over to 0; inside, blocks are counted with
unbounded integers and an ACK's 16-bit number is mapped back below the highest block sent, so files
of any size work.  Sending: at most ``window`` blocks beyond the last acknowledged one.  ``window``
is the RFC 7440 windowsize when the client negotiated one (always sent whole), else the anticipation
setting (blocks sent ahead for lock-step clients; halved on a timeout, grown back on clean windows),
else 1.  Duplicate ACKs never send anything (Sorcerer's Apprentice): only a timeout, or an RFC 7440
gap ACK, resends, from the first unacknowledged block.  Until the client's first ACK proves its
address is real, only the first reply is sent, and it is resent only when the client repeats its
RRQ (``request_repeated``): a spoofed request draws one reply per datagram, never a stream.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from enum import Enum, auto

from edgetftp.protocol.budget import SendBudget
from edgetftp.protocol.codes import ErrorCode, Opcode
from edgetftp.protocol.errors import LocalProtocolError, MalformedPacket
from edgetftp.protocol.events import Outcome, TransferEnded, TransferStats
from edgetftp.protocol.netascii import encode_netascii
from edgetftp.protocol.options import Limits, negotiate
from edgetftp.protocol.packets import (
    Ack,
    Error,
    ReadRequest,
    decode,
    encode_error,
    encode_oack,
)

SUPPORTED_MODES = frozenset({"octet", "netascii"})
TIMING_INTERVAL = 8  # blocks between two round-trip samples
CEILING_RECOVERY = 4  # clean windows (of the full size) before a lowered window ceiling rises by one
_pack_data_header = struct.Struct("!HH").pack
_DATA, _ACK = int(Opcode.DATA), int(Opcode.ACK)


class State(Enum):
    RESOLVING = auto()  # the driver is looking the file up
    OACK_SENT = auto()  # waiting for ACK 0
    SENDING = auto()
    ENDED = auto()


_OACK_SENT, _SENDING, _ENDED = State.OACK_SENT, State.SENDING, State.ENDED


@dataclass(frozen=True, slots=True)
class TransferConfig:
    """Server-side knobs of every transfer (the per-transfer blksize cap comes separately)."""

    timeout: float = 1.0  # first retransmission timeout when the client does not negotiate one
    max_timeout: float = 4.0  # cap after exponential backoff
    min_timeout: float = 0.2  # floor of the timeout measured from round trips (like TCP's 200 ms)
    retries: int = 5  # retransmissions of the same data before giving up
    max_window: int = 64  # largest RFC 7440 windowsize granted
    anticipate: int = 0  # blocks sent ahead for clients without windowsize (0 = lock-step)
    read_ahead: int = 32  # blocks buffered beyond the window when the file is streamed


class ReadTransfer:
    """One read transfer.  See the module docstring for the driver contract."""

    def __init__(
        self,
        request: ReadRequest,
        config: TransferConfig,
        max_blksize: int,
        now: float,
        budget: SendBudget | None = None,
    ) -> None:
        self.request = request
        self._budget = budget  # the client address's byte budget, shared with its other transfers
        self._config = config
        self._max_blksize = max_blksize
        self.state = State.RESOLVING
        self.stats = TransferStats(filename=request.filename, mode=request.mode, started=now)
        self._outgoing: list[bytes] = []
        self._events: deque[TransferEnded] = deque()
        self._deadline: float | None = None
        # negotiated
        self._blksize = 512
        self._window = 1
        self._cwnd = 1  # blocks allowed beyond the last ACK now (AIMD under anticipation)
        self._cwnd_ceiling = 1  # lowered when losses repeat at one size; recovers after clean runs
        self._loss_cwnd = 0  # the window size at the last timeout
        self._clean_since_loss = 0  # blocks acknowledged since the last timeout
        self._clean_acks = 0  # blocks acknowledged since the window last grew or shrank
        self._go_back_on_ack = False  # RFC 7440: an ACK inside the window reports a gap
        self._base_rto = config.timeout
        self._max_rto = config.max_timeout
        self._rto = config.timeout
        self._settled_rto = config.timeout  # the timeout after progress: measured, or the base
        self._srtt: float | None = None  # smoothed round-trip time (RFC 6298)
        self._rttvar = 0.0
        self._timed_block: int | None = None  # the block whose round trip is being timed (0: the OACK)
        self._timed_at = 0.0
        self._next_timed = 0  # the first block that may be timed next
        self._oack = b""
        # progress, counted in blocks from 1 (unbounded)
        self._acked = 0  # highest block the client acknowledged
        self._next = 1  # next block to send
        self._highest_sent = 0
        self._last_block: int | None = None  # known once the end of the file has been fed
        self._peer_confirmed = False  # the client has ACKed: its address is not spoofed
        self._resent_first = 0  # first replies resent for repeated requests
        self._restarted = False  # the client went back to ACK 0 once (see _on_restart)
        self._first_sent_at = now
        self._retries = 0
        self._patience = 0.0  # seconds of client silence before giving up (set by accept)
        self._last_progress = now
        # the stream, as encoded for the wire (netascii expands it)
        self._buffer = memoryview(b"")
        self._buffer_start = 0  # stream offset of self._buffer[0]
        self._fed = 0  # stream bytes received from the driver
        self._eof = False
        if request.mode not in SUPPORTED_MODES:
            self._fail(Outcome.REJECTED, ErrorCode.ILLEGAL_OPERATION, "Unsupported mode", now)

    # --- driver API: resolution and data ------------------------------------------------------

    def accept(self, size: int | None, now: float) -> None:
        """The file exists and may be served; ``size`` in bytes (None if unknown)."""
        if self.state is not State.RESOLVING:
            raise LocalProtocolError(f"accept() in state {self.state.name}")
        granted = negotiate(
            self.request.options,
            self.request.mode,
            size,
            Limits(max_blksize=self._max_blksize, max_window=self._config.max_window),
        )
        self._blksize = granted.blksize
        if "windowsize" in granted.oack:
            self._window, self._go_back_on_ack = granted.windowsize, True
        elif self._config.anticipate > 0:
            self._window = min(self._config.anticipate, self._config.max_window)
        self._cwnd = self._cwnd_ceiling = self._window
        if granted.timeout is not None:
            self._base_rto = float(granted.timeout)
            self._max_rto = max(self._max_rto, self._base_rto)
        self._rto = self._settled_rto = self._base_rto
        self._patience = self._silence_allowed()
        self._last_progress = now
        self.stats.blksize, self.stats.size = self._blksize, size
        if self._go_back_on_ack:
            self.stats.windowsize = self._window
        else:
            self.stats.anticipate = self._window if self._window > 1 else 0
        if granted.oack:
            self._oack = encode_oack(granted.oack)
            self.state = State.OACK_SENT
            self._send(self._oack)
            self._first_sent_at = now
            self._timed_block, self._timed_at = 0, now
            self._deadline = now + self._rto
        else:
            self.state = State.SENDING
            self._first_sent_at = now
            self._fill(now)

    def reject(self, code: int, message: str, now: float, detail: str = "") -> None:
        """Refuse the request before anything was sent: one ERROR, then the end.

        ``message`` goes to the client; ``detail`` (the real cause) only to the end event.
        """
        if self.state is not State.RESOLVING:
            raise LocalProtocolError(f"reject() in state {self.state.name}")
        self._fail(Outcome.REJECTED, code, message, now, detail)

    def feed(self, data: bytes | memoryview, eof: bool, now: float) -> None:
        """Append the next bytes of the file (raw; netascii is encoded here)."""
        if self.state is State.ENDED:
            return
        if self._eof:
            raise LocalProtocolError("feed() after eof")
        chunk = encode_netascii(data) if self.request.mode == "netascii" else data
        self._append(chunk)
        if eof:
            self._eof = True
            self._last_block = self._fed // self._blksize + 1
        if self.state is State.SENDING:
            self._fill(now)

    def bytes_wanted(self) -> int:
        """How many more stream bytes the transfer would like buffered now (0: enough)."""
        if self._eof or self.state is not _SENDING:
            # Nothing before the client's ACK 0: a UEFI size probe (OACK, then ERROR 8) must not
            # start a download it will never use.
            return 0
        target = (self._acked + self._window + self._config.read_ahead) * self._blksize
        return max(0, target - self._fed)

    def abort(
        self, code: int, message: str, now: float, outcome: Outcome = Outcome.CANCELLED, detail: str = ""
    ) -> None:
        """End the transfer with an ERROR to the client (shutdown, source failure)."""
        if self.state is not State.ENDED:
            self._fail(outcome, code, message, now, detail)

    def cancel(self, now: float) -> None:
        """End the transfer silently (the client's new request replaced it)."""
        if self.state is not State.ENDED:
            self._end(Outcome.CANCELLED, now, reason="replaced by a new request")

    # --- driver API: network and time ---------------------------------------------------------

    def receive_datagram(self, data: bytes | memoryview, now: float) -> None:
        """A datagram from the client's address (the driver demultiplexes by address)."""
        if self.state is _ENDED:
            return
        if len(data) >= 4 and data[1] == _ACK and data[0] == 0:  # the hot path: no allocation
            self._on_ack((data[2] << 8) | data[3], now)
            return
        try:
            packet = decode(bytes(data))
        except MalformedPacket as exc:
            self._fail(
                Outcome.PROTOCOL_ERROR, ErrorCode.ILLEGAL_OPERATION, "Illegal TFTP operation", now, str(exc)
            )
            return
        if isinstance(packet, Ack):
            self._on_ack(packet.block, now)
        elif isinstance(packet, Error):
            # The client ended it: UEFI ends its tsize probe with code 8 (or 0).  No reply.
            self._end(Outcome.ABORTED, now, error_code=packet.code, reason=packet.message)
        elif isinstance(packet, ReadRequest):
            return  # the driver decides about requests; a stray one here is ignored
        else:
            detail = f"unexpected {type(packet).__name__}"
            self._fail(
                Outcome.PROTOCOL_ERROR, ErrorCode.ILLEGAL_OPERATION, "Illegal TFTP operation", now, detail
            )

    def handle_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline or self.state is State.ENDED:
            return
        self._retries += 1
        if self._retries > self._config.retries and now - self._last_progress >= self._patience:
            self._give_up(now)
            return
        self._rto = min(self._rto * 2, self._max_rto)
        self._timed_block = None  # Karn: a retransmitted packet's round trip is ambiguous
        # Before the first ACK nothing is resent here (no reflection): only the client's own repeated
        # RRQ brings the first reply again (request_repeated).
        if self._peer_confirmed:
            self._next = self._acked + 1  # go back to the first unacknowledged block
            if not self._go_back_on_ack:
                self._shrink_window()
            self._fill(now)
        self._deadline = now + self._rto

    def request_repeated(self, now: float) -> None:
        """The client sent its RRQ again: our first reply was lost (or is late).

        Until the client has ACKed, this is the only way the first reply (OACK or DATA 1) is sent
        again, once per repeated request and at most ``retries`` times: a spoofed RRQ then draws one
        reply per datagram the spoofer sends, never a stream of retransmissions.
        """
        if self._peer_confirmed or self._resent_first >= self._config.retries:
            return
        if now - self._first_sent_at < self._config.min_timeout:
            return  # a duplicate from the network, not the client's retransmission
        self._first_sent_at = now
        if self.state is _OACK_SENT:
            self._resent_first += 1
            self.stats.retransmits += 1
            self._send(self._oack)
        elif self.state is _SENDING and self._highest_sent == 1:
            self._resent_first += 1
            self._next = 1
            self._fill(now)

    def get_timer(self) -> float | None:
        return self._deadline

    def datagrams_to_send(self) -> list[bytes]:
        out, self._outgoing = self._outgoing, []
        return out

    def next_event(self) -> TransferEnded | None:
        return self._events.popleft() if self._events else None

    @property
    def ended(self) -> bool:
        return self.state is State.ENDED

    @property
    def peer_confirmed(self) -> bool:
        """True once the client has acknowledged something (its address answers)."""
        return self._peer_confirmed

    # --- internals ------------------------------------------------------------------------------

    def _on_ack(self, wire_block: int, now: float) -> None:
        state = self.state
        if state is _SENDING:
            self._on_data_ack(wire_block, now)
        elif state is _OACK_SENT and wire_block == 0:
            self._peer_confirmed = True
            self.state = _SENDING
            self._on_progress(0, now)
            self._deadline = None
            self._fill(now)

    def _on_data_ack(self, wire_block: int, now: float) -> None:
        """The hot path: one ACK in, usually one DATA out.  Kept flat on purpose."""
        highest = self._highest_sent
        block = highest - ((highest - wire_block) & 0xFFFF)  # unwrap the 16-bit block number
        if block <= self._acked:
            if block == self._acked:
                self.stats.duplicate_acks += 1  # never answered: that is the Sorcerer's Apprentice bug
            elif block == 0:
                self._on_restart(now)
            return  # else a stale (reordered) ACK
        if self._cwnd < self._window:
            self._grow_window(block - self._acked)
        self._peer_confirmed = True
        self._acked = block
        self._on_progress(block, now)
        last = self._last_block
        if last is not None and block >= last:
            self._end(Outcome.COMPLETED, now)
            return
        if self._go_back_on_ack or self._next <= block:
            # RFC 7440: an ACK inside the window reports a gap, so resend from it.  Either way never
            # resend what is acknowledged (a late ACK can overtake a timeout's rewind).
            self._next = block + 1
        self._deadline = None
        self._fill(now)

    def _on_restart(self, now: float) -> None:
        """ACK 0 after progress: the client went back to the OACK and expects block 1 again.

        curl does this when the network duplicates our OACK and the copy arrives late (it resets to
        block 0 and ACKs it).  Serve it from the start once, while the whole file is still held and
        block numbers cannot be mistaken; a merely late ACK 0 costs one client timeout, no more.
        """
        if not self._oack or self._restarted or self._buffer_start != 0 or self._highest_sent >= 0x8000:
            return
        self._restarted = True
        self._acked, self._next = 0, 1
        self._deadline = None
        self._fill(now)

    def _shrink_window(self) -> None:
        """A timeout while anticipating: the burst overran the path or the client's buffer.

        Halve it.  A loss at the same size as the last one means the client cannot take that burst
        (a small firmware ring, not random loss): cap the window below it, so the transfer settles
        instead of losing again every few blocks.  (An RFC 7440 receiver only ACKs a full window, so a
        negotiated window is always sent whole and is not shrunk here.)
        """
        if self._cwnd == self._loss_cwnd:
            self._cwnd_ceiling = max(1, self._cwnd - 1)
        self._loss_cwnd = self._cwnd
        self._cwnd, self._clean_acks, self._clean_since_loss = max(1, self._cwnd // 2), 0, 0

    def _grow_window(self, acknowledged: int) -> None:
        """+1 per clean window up to the ceiling; the ceiling itself recovers after a long clean run."""
        self._clean_acks += acknowledged
        self._clean_since_loss += acknowledged
        if self._clean_acks >= self._cwnd and self._cwnd < self._cwnd_ceiling:
            self._cwnd, self._clean_acks = self._cwnd + 1, 0
        if self._clean_since_loss >= CEILING_RECOVERY * self._window and self._cwnd_ceiling < self._window:
            self._cwnd_ceiling, self._clean_since_loss = self._cwnd_ceiling + 1, 0

    def _silence_allowed(self) -> float:
        """How long a client may stay silent: the whole retry schedule at the configured timeouts.

        Retransmissions follow the measured RTT and can be much faster than ``timeout``; giving up
        is not: a client that re-ACKs every few seconds (curl: 5 s) must not find the transfer gone.
        """
        rto, total = self._base_rto, 0.0
        for _ in range(self._config.retries + 1):
            total += rto
            rto = min(rto * 2, self._max_rto)
        return total

    def _on_progress(self, block: int, now: float) -> None:
        """An ACK moved the transfer forward: reset the retries and the backoff."""
        self._retries = 0
        self._last_progress = now
        timed = self._timed_block
        if timed is not None and block >= timed:
            self._timed_block = None
            self._sample_round_trip(now - self._timed_at)
        self._rto = self._settled_rto

    def _sample_round_trip(self, sample: float) -> None:
        """RFC 6298 smoothing; the timeout stays between the floor and the configured/negotiated one."""
        if self._srtt is None:
            self._srtt, self._rttvar = sample, sample / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - sample)
            self._srtt = 0.875 * self._srtt + 0.125 * sample
        measured = self._srtt + max(0.01, 4 * self._rttvar)
        self._settled_rto = min(self._base_rto, max(self._config.min_timeout, measured))

    def _fill(self, now: float) -> None:
        """Send blocks up to the window's edge, as far as the fed data allows."""
        acked, block = self._acked, self._next
        limit = acked + (self._cwnd if self._peer_confirmed else 1)
        last = self._last_block
        if last is not None and limit > last:
            limit = last
        blksize, fed, eof = self._blksize, self._fed, self._eof
        buffer, base, highest = self._buffer, self._buffer_start, self._highest_sent
        outgoing = self._outgoing
        start = (block - 1) * blksize
        sent = new_bytes = 0
        while block <= limit:
            end = start + blksize
            if end > fed:
                if not eof:
                    break  # the driver has not fed these bytes yet
                end = fed
            outgoing.append(_pack_data_header(_DATA, block & 0xFFFF) + buffer[start - base : end - base])
            if block > highest:
                if self._timed_block is None and block >= self._next_timed:
                    # One timed block per window is plenty for RFC 6298 and saves the hot path.
                    self._timed_block, self._timed_at = block, now
                    self._next_timed = block + TIMING_INTERVAL
                highest = block
                new_bytes += end - start
            block += 1
            sent += 1
            start += blksize
        if sent:
            stats = self.stats
            stats.retransmits += sent - (highest - self._highest_sent)
            stats.bytes_sent += new_bytes
            stats.datagrams_sent += sent
            self._next, self._highest_sent = block, highest
            self._deadline = now + self._rto
        elif self._deadline is None and highest > acked:
            self._deadline = now + self._rto

    def _append(self, chunk: bytes | memoryview) -> None:
        if not self._buffer:
            self._buffer, self._buffer_start = memoryview(chunk), self._fed  # zero-copy (whole files)
        else:
            # Keep only what may still be (re)sent: from the first unacknowledged block on.
            keep_from = max(self._buffer_start, self._acked * self._blksize)
            kept = self._buffer[keep_from - self._buffer_start :]
            self._buffer, self._buffer_start = memoryview(b"".join((kept, chunk))), keep_from
        self._fed += len(chunk)

    def _give_up(self, now: float) -> None:
        only_final_ack_missing = (
            self.state is State.SENDING
            and self._last_block is not None
            and self._highest_sent == self._last_block
            and self._acked == self._last_block - 1
        )
        if only_final_ack_missing:
            # Some clients never send the last ACK (dnsmasq notes it too): not a failure.
            self.stats.final_ack_missing = True
            self._end(Outcome.COMPLETED, now)
        else:
            self._end(Outcome.TIMED_OUT, now, reason=f"no answer after {self._config.retries} retries")

    def _fail(self, outcome: Outcome, code: int, message: str, now: float, detail: str = "") -> None:
        self._send(encode_error(code, message))
        self._end(outcome, now, error_code=code, reason=detail or message)

    def _end(self, outcome: Outcome, now: float, error_code: int | None = None, reason: str = "") -> None:
        self.state = State.ENDED
        self._deadline = None
        self._buffer = memoryview(b"")  # release the file's bytes promptly
        self.stats.ended = now
        self._events.append(TransferEnded(outcome, self.stats, error_code, reason))

    def _send(self, datagram: bytes) -> None:
        self._outgoing.append(datagram)
        self.stats.datagrams_sent += 1
