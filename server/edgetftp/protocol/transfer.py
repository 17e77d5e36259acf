"""The read transfer: one RRQ answered, from negotiation to the last ACK.  Sans-IO.

Rules of this file:
1. No I/O and no clock.  Every method that depends on time takes ``now`` (seconds on the driver's
   monotonic clock); deadlines returned by ``get_timer()`` are absolute on that clock.
2. Mutate, then drain: after any call the driver sends ``datagrams_to_send()``, re-reads
   ``get_timer()`` and pops ``next_event()`` until it returns None.
3. The driver resolves the file, then calls ``accept(size)`` or ``reject(code, message)``; it
   supplies the bytes with ``feed(data, eof)`` whenever ``bytes_wanted()`` is positive (a resident
   file is fed whole, once, and sliced without copying -- in netascii too: blocks are encoded one
   at a time when sent, so a session never holds more than its window in encoded bytes).
4. ``accept(size)`` pins the size: bytes fed beyond it, or an end below it, end the transfer with
   ERROR 0 "File changed" (Outcome.SOURCE_ERROR), never a "completed" with the wrong bytes.

States: RESOLVING --accept--> OACK_SENT --ACK 0--> SENDING --last ACK--> ENDED
                   \\--accept (no options)------> SENDING
        any state --reject/abort/cancel/client ERROR/timeout/illegal packet--> ENDED

Block numbers on the wire are 16 bits and roll over to 0; inside, blocks are counted with
unbounded integers and an ACK's 16-bit number is mapped back below the highest block sent, so files
of any size work.

Sending: at most ``cwnd`` blocks beyond the last acknowledged one.  For an RFC 7440 client ``cwnd``
is the negotiated windowsize (its receiver only ACKs a whole window, so it is always sent whole).
For a lock-step client with anticipation on, ``cwnd`` starts at ``INITIAL_WINDOW`` and grows by slow
start (x3 per clean round trip) up to ``anticipate`` or the first loss, then by one block per clean
window (AIMD); a timeout halves it.  Once the shortest round trip is measured (and is at least
``PACING_MIN_RTT``), an anticipation window is paced (``_pace_rate``): a token bucket of blocks
fills at a multiple of cwnd per smoothed RTT, so slow start's bursts (three blocks per ACK, at the
client's own speed) do not pile up in the client's socket buffer or NIC ring.  Beyond
``UNPACED_WINDOW`` the window grows only while paced and while no queue shows in the round trip
(``_note_queueing``).  Duplicate ACKs
send nothing (Sorcerer's Apprentice) unless they are a receiver's own timeout (``_on_timeout_ack``);
only a timeout, or an RFC 7440 gap ACK, resends.

Reflection (TFTP has no handshake; see docs/hardening.md): until the client's first ACK only the
first reply is sent, and only the client's repeated RRQ brings it again (``request_repeated``), but
for an OACK that grants a timeout (RFC 2349: the client asked for retransmissions at that interval)
and is no larger than its request, which our timer also resends late in the schedule
(``OACK_RESEND_AFTER``): curl re-ACKs a lost ACK 0 only after 72 s, or on a new OACK.  A
stalled RFC 7440 window is resent whole once by our timer (then, for a proven client, the next
window once, in case the receiver's ACK was lost), then only for the receiver's own timeout re-ACK;
a stalled anticipation window is resent halved once, then the first unacknowledged block alone, at
most ``retries`` times per stall.  Every DATA is paid from the client address's ``SendBudget``
first; a refused one is neither queued nor counted, and the timer is set to when the budget
allows it.  The silence tolerated before giving up is capped by ``max_silence`` whatever timeout
the client negotiated, and is shorter before the first ACK (``retransmission_schedule`` computes
both; tests derive their bounds from it).
"""

from __future__ import annotations

import math
import struct
from collections import deque
from dataclasses import dataclass
from enum import Enum, auto

from edgetftp.protocol.budget import SendBudget
from edgetftp.protocol.codes import ErrorCode, Opcode
from edgetftp.protocol.errors import LocalProtocolError, MalformedPacket
from edgetftp.protocol.events import Outcome, TransferEnded, TransferStats
from edgetftp.protocol.netascii import NetasciiBlock, netascii_block
from edgetftp.protocol.options import Limits, negotiate
from edgetftp.protocol.packets import (
    Ack,
    Error,
    ReadRequest,
    decode,
    encode_error,
    encode_oack,
    encode_request,
)

SUPPORTED_MODES = frozenset({"octet", "netascii"})
TIMING_INTERVAL = 8  # blocks between two round-trip samples
CEILING_RECOVERY = 4  # clean windows (of the full size) before a lowered window ceiling rises by one
CEILING_EVIDENCE = 2  # a repeated loss lowers the ceiling only within this many windows of clean blocks
INITIAL_WINDOW = 2  # blocks beyond the first ACK for a lock-step client: an unproven address
STALL_RESEND_SPAN = 4  # blocks from the first unacknowledged one in a stall's later resends
UNPROVEN_RESENDS = 1  # timeout resends per stall until a second ACK has made progress
OACK_RESEND_AFTER = 6.0  # seconds before our timer resends an unanswered OACK: past atftp's 5 s re-ACK
WINDOWED_RESENDS = 1  # timeout resends per stall of an RFC 7440 window; then the receiver's re-ACKs
WINDOWED_PROBES = 1  # then, once proven, the next window per stall: the receiver's ACK may be lost
PLAUSIBLE_RTT_FRACTION = 0.5  # an ACK for the initial window sooner than this x the first RTT is blind
SLOW_START_GAIN = 2  # blocks added to the window per block acknowledged in slow start
ANTICIPATION_MAX_BYTES = 2**20  # in flight for a lock-step client at most (socket buffers, NIC rings)
PACING_GAIN_SLOW_START = 3.0  # x the window per round trip: slow start triples it
PACING_GAIN = 1.25  # x the window per round trip above ssthresh: headroom over the ACK clock
PACING_QUANTUM = 0.002  # seconds of the pacing rate that may leave back to back (the loop's timers)
PACING_MIN_BURST = 4  # blocks that may always leave back to back
PACING_MIN_RTT = 0.005  # below this round trip a window leaves faster than a timer could spread it
PACING_MIN_WAIT = 0.001  # seconds: the shortest wait for the pace (the drivers' timers are coarser)
_NOT_PACED = (0.0, math.inf)  # the pace and the bucket of an unpaced fill: no limit, no cost
UNPACED_WINDOW = 64  # the most an anticipation window grows to while it is not paced
HYSTART_DELAY_MIN = 0.004  # a round trip this much above the shortest ends slow start beyond 64 blocks
HYSTART_DELAY_MAX = 0.016  # (an eighth of the shortest, clamped to these, as Linux's HyStart does)
FILE_CHANGED = "File changed"
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
    """Server-side knobs of every transfer (the per-transfer blksize cap comes separately).

    The defaults are the server's production defaults (settings.py); tests that need another mode
    (lock-step: ``anticipate=0``) say so.
    """

    timeout: float = 1.0  # first retransmission timeout when the client does not negotiate one
    max_timeout: float = 4.0  # cap after exponential backoff
    min_timeout: float = 0.2  # floor of the timeout measured from round trips (like TCP's 200 ms)
    retries: int = 5  # retransmissions per stall (and first replies per repeated RRQ) at most
    max_window: int = 64  # largest RFC 7440 windowsize granted
    anticipate: int = 256  # most blocks sent ahead for clients without windowsize (0 = lock-step)
    read_ahead: int = 32  # blocks buffered beyond the window when the file is streamed
    max_silence: float = 30.0  # seconds of client silence before giving up, whatever its timeout
    max_window_bytes: int = 128 * 1024  # bytes of a negotiated (RFC 7440) window, at most


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a stalled transfer resends (seconds after its last progress) and when it gives up."""

    resends: tuple[float, ...]
    give_up: float


def retransmission_schedule(
    config: TransferConfig,
    client_timeout: float | None = None,
    confirmed: bool = True,
    first_rto: float | None = None,
    proven: bool = True,
    windowed: bool = False,
) -> Schedule:
    """The server's retransmission schedule after the last progress.  Pure; tests use it as their bound.

    ``client_timeout`` is the RFC 2349 timeout the client negotiated (it sets the interval, never the
    silence beyond ``max_silence``); ``confirmed`` False is a client that never ACKed (a shorter
    patience, and resends of an OACK only, from ``OACK_RESEND_AFTER`` on); ``first_rto`` is the
    measured timeout (default: the configured one); ``proven`` False is a client with a single ACK
    so far (``UNPROVEN_RESENDS`` resends at most); ``windowed`` is a client that negotiated
    windowsize (``WINDOWED_RESENDS``).
    """
    base = float(client_timeout) if client_timeout is not None else config.timeout
    ceiling = max(config.max_timeout, base)
    give_up = min(config.max_silence, _backoff_total(base, ceiling, config.retries + 1))
    if not confirmed:
        # Nothing proves the address is real: the server's own schedule, never the client's timeout.
        expiries = _backoff_times(config.timeout, config.max_timeout, config.retries + 1)
        patience = min(give_up, expiries[-1])
        late = [at for at in expiries[: config.retries] if OACK_RESEND_AFTER <= at < patience]
        return Schedule(tuple(late), patience)
    rto, at = first_rto if first_rto is not None else base, 0.0
    resends: list[float] = []
    limit = _resend_limit(config.retries, proven, windowed)
    while len(resends) < limit:
        at += rto
        if at >= give_up:
            break
        resends.append(at)
        rto = min(rto * 2, ceiling)
    return Schedule(tuple(resends), give_up)


def _resend_limit(retries: int, proven: bool, windowed: bool) -> int:
    """Timer resends per stall.  An RFC 7440 receiver gets its window once (and, once proven, the
    next window once: ``_probe_next_window``), then only for its own timeout re-ACK: it keeps (atftp:
    ignores) blocks it holds, and each block resent to it restarts its timer, so our later
    single-block resends kept it silent until we gave up."""
    if windowed:
        return min(retries, WINDOWED_RESENDS + (WINDOWED_PROBES if proven else 0))
    return retries if proven else min(retries, UNPROVEN_RESENDS)


def _request_size(request: ReadRequest) -> int:
    """The request's size on the wire, as decoded (a tsize answer can make an OACK larger)."""
    return len(encode_request(Opcode.RRQ, request.filename, request.mode, request.options))


def _backoff_total(first: float, ceiling: float, steps: int) -> float:
    return _backoff_times(first, ceiling, steps)[-1]


def _backoff_times(first: float, ceiling: float, steps: int) -> list[float]:
    """When each of ``steps`` timeouts expires, the first lasting ``first``, each next twice as long."""
    rto, at, times = first, 0.0, []
    for _ in range(steps):
        at += rto
        times.append(at)
        rto = min(rto * 2, ceiling)
    return times


@dataclass(frozen=True, slots=True)
class TransferSnapshot:
    """A read-only view of a transfer's progress, for tests and the fuzz harness."""

    state: State
    blksize: int
    acked: int  # highest block acknowledged
    highest_sent: int
    last_block: int | None  # known once the end of the file has been encoded
    window: int  # blocks allowed beyond the last ACK now
    window_cap: int  # the most ``window`` may grow to
    windowed: bool  # RFC 7440: the window is the negotiated windowsize (and a stall may probe the next)
    window_ceiling: int  # ``window_cap`` lowered by losses that repeat at one size (a small ring)
    peer_confirmed: bool
    eof: bool
    fed: int  # raw bytes fed
    buffered: int  # bytes of the file the transfer holds (a view of a resident file counts whole)
    retries: int  # retransmissions in the current stall
    deadline: float | None
    waiting_to_send: bool  # the deadline is the budget's or the pace's: a block is held, not lost


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
        self._waiting_to_send = False  # the deadline is the budget's or the pace's, not a timeout
        self._pace_tokens = float(PACING_MIN_BURST)  # blocks that may leave now (see _pace_rate)
        self._paced = False  # an anticipation window with a measured round trip of PACING_MIN_RTT or more
        self._growth_limit = 1  # the window cap, or UNPACED_WINDOW below it while not paced
        self._pace_at = now  # when the tokens were last counted
        # negotiated
        self._blksize = 512
        self._window = 1  # the cap of cwnd: the negotiated windowsize, or the anticipation limit
        self._cwnd = 1  # blocks allowed beyond the last ACK now
        self._ssthresh = 1  # slow start below it, +1 per clean window above it
        self._cwnd_ceiling = 1  # lowered when losses repeat at one size; recovers after clean runs
        self._loss_cwnd = 0  # the window size at the last timeout
        self._clean_since_loss = 0  # blocks acknowledged since the last timeout
        self._clean_acks = 0  # blocks acknowledged since the window last grew (above ssthresh)
        self._go_back_on_ack = False  # RFC 7440: an ACK inside the window reports a gap
        self._probed_from: int | None = None  # the first block of a stall's probe (_probe_next_window)
        self._base_rto = config.timeout
        self._max_rto = config.max_timeout
        self._rto = config.timeout
        self._settled_rto = config.timeout  # the timeout after progress: measured, or the base
        self._srtt: float | None = None  # smoothed round-trip time (RFC 6298)
        self._min_rtt = float("inf")  # the shortest sample: the path's round trip without queues
        self._flat_at_cap = False  # the last sample, taken at UNPACED_WINDOW or more, showed no queue
        self._rttvar = 0.0
        self._timed_block: int | None = None  # the block whose round trip is being timed (0: the OACK)
        self._timed_at = 0.0
        self._next_timed = 0  # the first block that may be timed next
        self._oack = b""
        # progress, counted in blocks from 1 (unbounded)
        self._acked = 0  # highest block the client acknowledged
        self._next = 1  # next block to send
        self._highest_sent = 0
        self._last_block: int | None = None  # known once the end of the file has been encoded
        self._peer_confirmed = False  # the client has ACKed: its address answers (or is spoofed well)
        self._proven = False  # a second ACK made progress, in plausible time after the first
        self._confirmed_at = now  # when the first ACK came (and the initial window left)
        self._resent_first = 0  # first replies resent (for repeated requests, or an OACK late)
        self._oack_resends: tuple[float, ...] = ()  # when our timer resends an unanswered OACK
        self._restarted = False  # the client went back to ACK 0 once (see _on_restart)
        self._first_sent_at = now
        self._window_sent_at = now  # when an RFC 7440 window was last sent from its start
        self._retries = 0  # retransmissions in the current stall
        self._patience = 0.0  # seconds of client silence before giving up (set by accept, first ACK)
        self._client_timeout: float | None = None
        self._last_heard = now  # progress or a duplicate ACK: patience counts from it
        # the file's bytes as fed (raw: netascii is encoded per block when sent)
        self._size: int | None = None  # pinned by accept()
        self._buffer = memoryview(b"")
        self._buffer_start = 0  # file offset of self._buffer[0]
        self._fed = 0  # file bytes received from the driver
        self._eof = False
        self._netascii = request.mode == "netascii"
        self._marks: dict[int, NetasciiBlock] = {}  # netascii: where each unacknowledged block starts
        if request.mode not in SUPPORTED_MODES:
            self._fail(Outcome.REJECTED, ErrorCode.ILLEGAL_OPERATION, "Unsupported mode", now)

    # --- driver API: resolution and data ------------------------------------------------------

    def accept(self, size: int | None, now: float) -> None:
        """The file exists and may be served; ``size`` in bytes (None if unknown), pinned from now on."""
        if self.state is not State.RESOLVING:
            raise LocalProtocolError(f"accept() in state {self.state.name}")
        config = self._config
        granted = negotiate(
            self.request.options,
            self.request.mode,
            size,
            Limits(self._max_blksize, config.max_window, config.max_window_bytes),
        )
        self._size = size
        self._blksize = granted.blksize
        if "windowsize" in granted.oack:
            self._window, self._go_back_on_ack = granted.windowsize, True
            self._cwnd = self._ssthresh = self._window
        elif config.anticipate > 0:
            by_bytes = max(1, ANTICIPATION_MAX_BYTES // granted.blksize)
            self._window = self._ssthresh = min(config.anticipate, by_bytes)
            self._cwnd = min(INITIAL_WINDOW, self._window)
        self._cwnd_ceiling = self._window
        self._update_pacing()
        if granted.timeout is not None:
            self._client_timeout = self._base_rto = float(granted.timeout)
            self._max_rto = max(self._max_rto, self._base_rto)
        self._rto = self._settled_rto = self._base_rto
        unconfirmed = retransmission_schedule(config, self._client_timeout, confirmed=False)
        self._patience = unconfirmed.give_up
        self._last_heard = now
        self.stats.blksize, self.stats.size = self._blksize, size
        if self._go_back_on_ack:
            self.stats.windowsize = self._window
        else:
            self.stats.anticipate = self._window if self._window > 1 else 0
        self._first_sent_at = now
        if granted.oack:
            self._oack = encode_oack(granted.oack)
            if granted.timeout is not None and len(self._oack) <= _request_size(self.request):
                self._oack_resends = tuple(now + at for at in unconfirmed.resends)
            self.state = State.OACK_SENT
            self._send(self._oack)
            self._timed_block, self._timed_at = 0, now
            self._deadline = now + self._rto
        else:
            self.state = State.SENDING
            self._fill(now)

    def reject(self, code: int, message: str, now: float, detail: str = "") -> None:
        """Refuse the request before anything was sent: one ERROR, then the end.

        ``message`` goes to the client; ``detail`` (the real cause) only to the end event.
        """
        if self.state is not State.RESOLVING:
            raise LocalProtocolError(f"reject() in state {self.state.name}")
        self._fail(Outcome.REJECTED, code, message, now, detail)

    def feed(self, data: bytes | memoryview, eof: bool, now: float) -> None:
        """Append the next raw bytes of the file (netascii is encoded block by block when sent)."""
        if self.state is State.ENDED:
            return
        if self._eof:
            raise LocalProtocolError("feed() after eof")
        size = self._size
        fed = self._fed + len(data)
        if size is not None and (fed > size or (eof and fed < size)):
            change = f"grew beyond {size} bytes" if fed > size else f"ended at {fed} of {size} bytes"
            self._fail(
                Outcome.SOURCE_ERROR, ErrorCode.NOT_DEFINED, FILE_CHANGED, now, f"file changed: {change}"
            )
            return
        self._append(data)
        if eof:
            self._eof = True
            if not self._netascii:
                self._last_block = self._fed // self._blksize + 1
        if self.state is State.SENDING:
            self._fill(now)

    def bytes_wanted(self) -> int:
        """How many more file bytes the transfer would like buffered now (0: enough)."""
        if self._eof or self.state is not _SENDING:
            # Nothing before the client's ACK 0: a UEFI size probe (OACK, then ERROR 8) must not
            # start a stream it will never use (the S3 source fetches a held object on its own).
            return 0
        # In netascii a block holds at most blksize file bytes, so this is enough there too.  The
        # window in use, not its cap: a streamed file is held as far as it is being sent (for RFC
        # 7440, the next window too: a stall may probe it, _probe_next_window).
        ahead = self._cwnd + (self._window if self._go_back_on_ack else 0)
        target = (self._acked + ahead + self._config.read_ahead) * self._blksize
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
        deadline = self.get_timer()
        if deadline is None or now < deadline or self.state is State.ENDED:
            return
        give_up_at = self._last_heard + self._patience  # the same sum as in get_timer
        if now >= give_up_at:
            self._give_up(now)
            return
        if self._waiting_to_send:
            self._deadline = None
            self._fill(now)  # the budget has refilled: go on where it stopped
            return
        # Karn's rule, for the resends we withhold too: past our timeout the client may have resent
        # (curl re-ACKs after 5 s; a lost ACK 0 timed the OACK at 12 s and paced at 1 block per 4 s).
        self._forget_timing()
        if self._peer_confirmed and self._retries < self._resend_limit():
            self._deadline = None
            self._retransmit(now)  # its fill sets the wake-up: the pace (it was lost here) or the timeout
        elif self._peer_confirmed:
            self._deadline = give_up_at  # after the resends: silence, then the wake-up that gives up
        else:
            next_slot = self._resend_oack_late(now)
            self._deadline = give_up_at if next_slot is None else next_slot

    def _resend_oack_late(self, now: float) -> float | None:
        """Before the first ACK, resend an OACK at its late slots; when the next slot is, if any.

        Nothing else is resent here (no reflection): DATA 1 comes again only for the client's own
        repeated RRQ (request_repeated).  A client whose ACK 0 was lost waits for DATA 1 and may not
        re-ACK for long (curl: 72 s, after we gave up); a new OACK draws its ACK 0 at once.  Only an
        OACK that grants a timeout has slots (``accept``): a client that negotiates one asked for
        retransmissions (curl always does), and atftp 0.8, which aborts on a second OACK, does not
        by default; the slots also start past atftp's 5 s re-ACK.
        """
        slots = self._oack_resends
        due = sum(1 for at in slots if at <= now)
        if due:
            self._oack_resends = slots = slots[due:]
            self._resend_oack()
        return slots[0] if slots else None

    def request_repeated(self, now: float) -> None:
        """The client sent its RRQ again: our first reply was lost (or is late).

        Until the client has ACKed, this is the only way DATA 1 is sent again, and an OACK this way
        or late on our timer (``_resend_oack_late``): once per repeated request and at most
        ``retries`` times in all, so a spoofed request draws one reply per datagram the spoofer
        sends, and a few OACKs, never a stream of retransmissions.
        """
        if self._peer_confirmed or self._resent_first >= self._config.retries:
            return
        if now - self._first_sent_at < self._config.min_timeout:
            return  # a duplicate from the network, not the client's retransmission
        self._first_sent_at = now
        if self.state is _OACK_SENT:
            self._resend_oack()
        elif self.state is _SENDING and self._highest_sent == 1:
            self._resent_first += 1
            self._next = 1
            self._fill(now)

    def _resend_oack(self) -> None:
        if self.state is not _OACK_SENT or self._resent_first >= self._config.retries:
            return
        self._resent_first += 1
        self.stats.retransmits += 1
        self._forget_ambiguous_timing(0, 0)  # the OACK is timed as block 0
        self._send(self._oack)

    def get_timer(self) -> float | None:
        deadline = self._deadline
        if deadline is None:
            return None
        give_up_at = self._last_heard + self._patience  # a client's long timeout never outlasts it
        return deadline if deadline < give_up_at else give_up_at

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

    def snapshot(self) -> TransferSnapshot:
        return TransferSnapshot(
            state=self.state,
            blksize=self._blksize,
            acked=self._acked,
            highest_sent=self._highest_sent,
            last_block=self._last_block,
            window=self._cwnd if self._peer_confirmed else 1,
            window_cap=self._window,
            windowed=self._go_back_on_ack,
            window_ceiling=self._cwnd_ceiling,
            peer_confirmed=self._peer_confirmed,
            eof=self._eof,
            fed=self._fed,
            buffered=len(self._buffer),
            retries=self._retries,
            deadline=self._deadline,
            waiting_to_send=self._waiting_to_send,
        )

    # --- internals ------------------------------------------------------------------------------

    def _on_ack(self, wire_block: int, now: float) -> None:
        state = self.state
        if state is _SENDING:
            self._on_data_ack(wire_block, now)
        elif state is _OACK_SENT and wire_block == 0:
            self._confirm()
            self._confirmed_at = now
            self.state = _SENDING
            self._on_progress(0, now)
            self._deadline = None
            self._fill(now)

    def _on_early_or_growing_ack(self, acknowledged: int, now: float) -> None:
        if not self._peer_confirmed:
            self._confirm()  # the first ACK earns the initial window, no growth yet
            self._confirmed_at = now
            return
        if not self._proven:
            srtt = self._srtt
            if srtt is not None and now - self._confirmed_at < PLAUSIBLE_RTT_FRACTION * srtt:
                return  # sooner than the path's round trip allows: a blind ACK, not a receiver
            self._proven = True  # a plausible second ACK: growth, and resends up to ``retries``
        if self._cwnd < self._growth_limit:
            self._grow_window(acknowledged)

    def _confirm(self) -> None:
        """The first ACK: from now on the client's (capped) retransmission schedule applies."""
        self._peer_confirmed = True
        self._patience = retransmission_schedule(self._config, self._client_timeout).give_up

    def _on_data_ack(self, wire_block: int, now: float) -> None:
        """The hot path: one ACK in, usually one DATA out.  Kept flat on purpose."""
        highest = self._highest_sent
        block = highest - ((highest - wire_block) & 0xFFFF)  # unwrap the 16-bit block number
        acked = self._acked
        if block <= acked:
            if block == acked:
                self.stats.duplicate_acks += 1  # never answered: that is the Sorcerer's Apprentice bug
                # ... but the client is not silent: curl re-ACKs every 5 s, and counting only progress
                # ended transfers it was still asking for (2 in 1,000 simulated at 10% loss each way).
                self._last_heard = now
                if now - self._window_sent_at >= self._settled_rto and (
                    self._go_back_on_ack or self._retries >= self._resend_limit()
                ):
                    self._on_timeout_ack(now)  # ... except a receiver's timeout, past our own resends
            elif block == 0:
                self._on_restart(now)
            return  # else a stale (reordered) ACK
        if self._cwnd < self._growth_limit or not self._proven:
            self._on_early_or_growing_ack(block - acked, now)
        self._acked = block
        if self._marks:
            self._forget_marks(acked, block)
        self._on_progress(block, now)
        last = self._last_block
        if last is not None and block >= last:
            self._end(Outcome.COMPLETED, now)
            return
        # An ACK inside a stall's probed window is the receiver's count completing, not a gap: it
        # holds the probe's later blocks, so going back would send it duplicates, each answered by
        # another mid-window ACK (half a window per round trip, for good).
        probed_from = self._probed_from
        if probed_from is not None:
            self._probed_from = None
        if self._go_back_on_ack or self._next <= block:
            # RFC 7440: an ACK inside the window reports a gap, so resend from it.  Either way never
            # resend what is acknowledged (a late ACK can overtake a timeout's rewind).
            if self._next <= block or probed_from is None or block < probed_from:
                self._next = block + 1
            self._window_sent_at = now
        self._deadline = None
        self._fill(now)

    def _on_timeout_ack(self, now: float) -> None:
        """A receiver re-ACKs its last in-order block when it times out (RFC 7440 section 4; lock-step
        clients too): what followed was lost.  An RFC 7440 window is sent again; for a lock-step client
        this only happens once our own resends for the stall are used up, and sends one block.  A
        duplicate sooner than the settled timeout after our last send is the network's copy: nothing.
        Each such resend costs the sender an ACK, so a blind spoofer pays per datagram (and the budget)."""
        self._next = self._acked + 1
        self._deadline = None
        self._window_sent_at = now
        self._fill(now, whole_window=self._go_back_on_ack)

    def _on_restart(self, now: float) -> None:
        """ACK 0 after progress: the client went back to the OACK and expects block 1 again.

        curl does this when the network duplicates our OACK and the copy arrives late (it resets to
        block 0 and ACKs it).  Serve it from the start once, while the whole file is still held and
        block numbers cannot be mistaken; a merely late ACK 0 costs one client timeout, no more.
        Not in netascii: where each acknowledged block started is forgotten, so a stale ACK from
        before the restart would move to a block that cannot be encoded again.
        """
        if not self._oack or self._restarted or self._buffer_start != 0 or self._highest_sent >= 0x8000:
            return
        if self._netascii:
            return
        self._restarted = True
        self._acked, self._next = 0, 1
        self._deadline = None
        self._fill(now)

    def _resend_limit(self) -> int:
        return _resend_limit(self._config.retries, self._proven, self._go_back_on_ack)

    def _retransmit(self, now: float) -> None:
        """A timeout after the first ACK: resend from the first unacknowledged block, boundedly.

        An RFC 7440 window is resent whole once per stall (its receiver ACKs only a whole window),
        then probed (``_probe_next_window``).  An anticipation window is halved; a proven session's
        first resend is that halved window, each later one the first ``STALL_RESEND_SPAN`` blocks,
        and every one also the highest block sent (``_resend_highest``).  An unproven session's is
        the first unacknowledged block alone: its receiver re-ACKs on its own timeout if it is real
        (``_on_timeout_ack``).  So a window drawn by one blind ACK costs that window plus
        ``UNPROVEN_RESENDS`` blocks, and a stalled window later at most one more window plus
        ``retries`` x (``STALL_RESEND_SPAN`` + 1) blocks.
        """
        self._retries += 1
        self._rto = min(self._rto * 2, self._max_rto)
        self._window_sent_at = now
        self._next = self._acked + 1
        if self._go_back_on_ack:
            if self._retries > WINDOWED_RESENDS:
                self._probe_next_window(now)
            else:
                self._fill(now, whole_window=self._proven)
            return
        self._shrink_window()
        if not self._proven:
            self._fill(now, whole_window=False)
            return
        if self._retries == 1:
            self._fill(now)
        else:
            self._fill(now, limit=min(self._acked + STALL_RESEND_SPAN, self._flight_end()))
        self._resend_highest(now)

    def _flight_end(self) -> int:
        """The highest block sent that the window still covers (the highest sent is older after a
        restart from ACK 0)."""
        return min(self._highest_sent, self._acked + self._window)

    def _resend_highest(self, now: float) -> None:
        """Resend the highest block sent too, when the resend from the first unacknowledged block
        did not reach it.

        A lock-step client ignores blocks before its own (curl, tftp-hpa's client) and answers only
        a copy of its last block or the next one.  When the ACKs for everything it got were lost, it
        sits at our highest block, which resends from the first unacknowledged one never reach: at
        3% loss, two ACKs lost in a row stalled curl for good once a window was cut to 2 (7 in 40
        simulated 1 MiB transfers; curl re-ACKs every 72 s by default, after our 30 s of patience).
        ``STALL_RESEND_SPAN`` covers a client a few blocks ahead whose one answer was lost."""
        highest, resume = self._flight_end(), self._next
        if resume > highest or self._waiting_to_send:
            return  # already in the resend, or the pace or the budget holds the rest
        self._next = highest
        self._fill(now, limit=highest)
        self._next = resume  # an ACK of the first block goes on from here, not after the highest

    def _probe_next_window(self, now: float) -> None:
        """The window resent drew no ACK: send the next one, as if the window's ACK had come.

        atftp 0.8 ACKs when it has counted a whole window of in-order blocks since the last ACK it
        sent, and ignores duplicates after one extra ACK per gap.  When that extra ACK (for block L)
        is lost, the window resent from our last ACK is all duplicates or short of L + windowsize, so
        it waited its 5 s timeout (2 of 3 runs of 1 MiB at 3% loss, in a capture).  Blocks up to our
        highest + windowsize contain L + windowsize whatever L was, so it ACKs that one instead.
        """
        window_end = self._flight_end()
        self._next = self._probed_from = window_end + 1
        self._fill(now, limit=window_end + self._window)

    def _shrink_window(self) -> None:
        """A timeout while anticipating: the burst overran the path or the client's buffer.

        Halve it (and end slow start there) and resend the halved window once (dropping to one block
        and slow-starting again made busybox 3x slower at 1% loss; resending one block, +40%).  A loss
        at the same size as the last one, soon after it, means the client cannot take that burst (a
        small firmware ring): cap the window below it, so the transfer settles instead of losing again
        every few blocks.  Random loss also strikes at the size the window sits at, but after a long
        clean run; counting those ratcheted the cap down to lock-step for good (10 MiB at 1% loss each
        way: from 52 s with a window of 16 to over 150 s with 64).  A paced window never reaches the
        client as a burst, so there a repeated loss is no evidence of a small ring: at 3% loss each
        way losses came within two windows often enough to cap curl at lock-step, 0.1 s a block at
        100 ms (a model of curl: median 61 s for 1 MiB, 90th percentile 174 s; uncapped, 46 and 52).
        """
        repeated = self._cwnd == self._loss_cwnd and self._clean_since_loss < CEILING_EVIDENCE * self._cwnd
        if repeated and not self._paced:
            self._cwnd_ceiling = max(1, self._cwnd - 1)
        self._loss_cwnd = self._cwnd
        self._ssthresh = max(1, self._cwnd // 2)
        self._cwnd, self._clean_acks, self._clean_since_loss = self._ssthresh, 0, 0

    def _grow_window(self, acknowledged: int) -> None:
        """Slow start (``SLOW_START_GAIN`` more blocks per block acknowledged) up to ssthresh, then +1
        per clean window, up to the ceiling; the ceiling recovers after a long clean run.

        Beyond ``UNPACED_WINDOW`` only up to ``_growth_limit`` (``_update_pacing``): while paced, and
        once a round trip at that size came back flat.  Below ``PACING_MIN_RTT`` nothing spreads a
        window, and 64 blocks already fill such a path (64 x 1432 B per 5 ms is 147 Mbit/s), while 256
        blocks sent back to back overflowed a slow client's socket buffer on loopback."""
        ceiling = self._cwnd_ceiling
        growth_limit = self._growth_limit
        limit = ceiling if ceiling < growth_limit else growth_limit  # min(), without its call
        if self._cwnd < self._ssthresh:
            # x3 per round trip: 2 -> 64 in four round trips (doubling took 0.93 s for 1 MiB at 50 ms)
            self._cwnd = min(self._cwnd + SLOW_START_GAIN * acknowledged, self._ssthresh, limit)
        else:
            self._clean_acks += acknowledged
            if self._clean_acks >= self._cwnd and self._cwnd < limit:
                self._cwnd, self._clean_acks = self._cwnd + 1, 0
        self._clean_since_loss += acknowledged
        if self._clean_since_loss >= CEILING_RECOVERY * self._window and ceiling < self._window:
            self._cwnd_ceiling, self._clean_since_loss = ceiling + 1, 0

    def _on_progress(self, block: int, now: float) -> None:
        """An ACK moved the transfer forward: reset the retries and the backoff."""
        self._retries = 0
        self._last_heard = now
        timed = self._timed_block
        if timed is not None and block >= timed:
            self._timed_block = None
            self._sample_round_trip(now - self._timed_at)
        self._rto = self._settled_rto

    def _forget_ambiguous_timing(self, first: int, last: int) -> None:
        """Karn's rule: a block about to be sent again times nothing (its ACK may answer either copy).

        Without it a lost OACK, resent for the client's repeated RRQ seconds later, was one sample of
        seconds: the RTO stayed at the client's timeout for the whole transfer (5 s per loss for curl).
        """
        timed = self._timed_block
        if timed is not None and first <= timed <= last:
            self._forget_timing()

    def _forget_timing(self) -> None:
        """Drop the round trip being timed, and time the next new block instead of one
        ``TIMING_INTERVAL`` later: a stall every few blocks (curl at 10% loss) otherwise cancelled
        every sample, and the RTO stayed at curl's negotiated 5 s for the whole transfer."""
        self._timed_block = None
        self._next_timed = 0

    def _sample_round_trip(self, sample: float) -> None:
        """RFC 6298 smoothing; the timeout stays between the floor and the configured/negotiated one."""
        self._min_rtt = min(self._min_rtt, sample)
        self._note_queueing(sample)
        if self._srtt is None:
            self._srtt, self._rttvar = sample, sample / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - sample)
            self._srtt = 0.875 * self._srtt + 0.125 * sample
        measured = self._srtt + max(0.01, 4 * self._rttvar)
        self._settled_rto = min(self._base_rto, max(self._config.min_timeout, measured))
        self._update_pacing()

    def _note_queueing(self, sample: float) -> None:
        """HyStart's delay test: a round trip well above the shortest means a queue is filling (a busy
        server, a slow receiver).  The window grows beyond ``UNPACED_WINDOW`` only after a sample
        taken at that size or more came back flat, and slow start ends where a queue shows.

        A storm of 200 transfers on loopback grew windows of 256 that the load generator's sockets
        dropped (14,000-45,000 DATA out of order per run against 0-2,000 with a cap of 64); on a clean
        long path the round trip stays flat, and the window waits one round trip at 64, then triples.
        (One block is timed per round trip, so without the wait slow start jumped from 56 to 164
        before the first sample that could show the queue.)
        """
        rise = min(max(self._min_rtt / 8, HYSTART_DELAY_MIN), HYSTART_DELAY_MAX)
        queueing = sample > self._min_rtt + rise
        if queueing and UNPACED_WINDOW <= self._cwnd < self._ssthresh:
            self._ssthresh = self._cwnd
        self._flat_at_cap = not queueing and self._cwnd >= UNPACED_WINDOW

    def _update_pacing(self) -> None:
        """Whether the window is paced, and so how far it may grow: on a path whose shortest round trip
        is long.  Not the smoothed RTT: a busy server's queues lengthen that on loopback too, and a
        storm of 200 transfers then grew windows of 256 that the load generator's sockets dropped."""
        self._paced = self._min_rtt >= PACING_MIN_RTT and not self._go_back_on_ack and self._window > 1
        grows = self._paced and self._flat_at_cap
        self._growth_limit = self._window if grows else min(self._window, UNPACED_WINDOW)

    def _fill(self, now: float, whole_window: bool = True, limit: int | None = None) -> None:
        """Send blocks up to the window's edge (or ``limit``), as far as the fed data, the pace and
        the budget allow."""
        if self._netascii:
            self._fill_netascii(now, whole_window, limit)
            return
        self._waiting_to_send = False
        acked, block = self._acked, self._next
        if limit is None:
            limit = acked + (self._cwnd if self._peer_confirmed and whole_window else 1)
        last = self._last_block
        if last is not None and limit > last:
            limit = last
        blksize, fed, eof = self._blksize, self._fed, self._eof
        buffer, base, highest = self._buffer, self._buffer_start, self._highest_sent
        if block <= highest:
            self._forget_ambiguous_timing(block, limit)
        outgoing, budget = self._outgoing, self._budget
        rate, tokens = self._pace_start(now) if self._paced else _NOT_PACED
        window_end = limit
        if rate and block + int(tokens) <= limit:
            limit = block + int(tokens) - 1  # what the bucket holds; the rest waits for the pace
        start = (block - 1) * blksize
        sent = new_bytes = 0
        while block <= limit:
            end = start + blksize
            if end > fed:
                if not eof:
                    break  # the driver has not fed these bytes yet
                end = fed
            datagram = _pack_data_header(_DATA, block & 0xFFFF) + buffer[start - base : end - base]
            if budget is not None and not budget.take(len(datagram), now):
                self._wait_for_budget(budget, len(datagram), now)
                break
            outgoing.append(datagram)
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
        if rate:  # unpaced, nothing is counted (no debt when pacing starts)
            self._paced_fill_sent(rate, tokens - sent, block, limit, window_end, now)
        if sent:  # _account, inlined on the hot path
            stats = self.stats
            stats.retransmits += sent - (highest - self._highest_sent)
            stats.bytes_sent += new_bytes
            stats.datagrams_sent += sent
            self._next, self._highest_sent = block, highest
            if not self._waiting_to_send:
                self._deadline = now + self._rto
        elif self._deadline is None and highest > acked:
            self._deadline = now + self._rto

    def _fill_netascii(self, now: float, whole_window: bool, limit: int | None) -> None:
        """``_fill`` for netascii: each block is encoded from the raw bytes when it is sent."""
        self._waiting_to_send = False
        acked, block, highest = self._acked, self._next, self._highest_sent
        if limit is None:
            limit = acked + (self._cwnd if self._peer_confirmed and whole_window else 1)
        budget = self._budget
        if block <= highest:
            self._forget_ambiguous_timing(block, limit)
        rate, tokens = self._pace_start(now) if self._paced else _NOT_PACED
        window_end = limit
        if rate and block + int(tokens) <= limit:
            limit = block + int(tokens) - 1
        sent = new_bytes = 0
        while block <= limit and (self._last_block is None or block <= self._last_block):
            payload = self._encode_block(block)
            if payload is None:
                break  # the driver has not fed these bytes yet
            datagram = _pack_data_header(_DATA, block & 0xFFFF) + payload
            if budget is not None and not budget.take(len(datagram), now):
                self._wait_for_budget(budget, len(datagram), now)
                break
            self._outgoing.append(datagram)
            if block > highest:
                if self._timed_block is None and block >= self._next_timed:
                    self._timed_block, self._timed_at = block, now
                    self._next_timed = block + TIMING_INTERVAL
                highest = block
                new_bytes += len(payload)
            block += 1
            sent += 1
        if rate:
            self._paced_fill_sent(rate, tokens - sent, block, limit, window_end, now)
        self._account(sent, block, highest, new_bytes, now)

    def _encode_block(self, block: int) -> bytes | None:
        """The netascii payload of ``block``, or None until enough raw bytes are fed."""
        mark = self._marks.get(block)
        if mark is None:
            if block != 1:
                raise LocalProtocolError(f"netascii block {block} has no start")  # a bug, never input
            mark = self._marks[1] = NetasciiBlock(0, 0)
        base = self._buffer_start
        encoded = netascii_block(self._buffer[mark.raw - base :], mark, self._blksize, self._eof)
        if encoded is None:
            return None
        payload, following = encoded
        if following is None:
            self._last_block = block
        else:
            self._marks[block + 1] = following
        return payload

    def _forget_marks(self, old_acked: int, new_acked: int) -> None:
        marks = self._marks
        for acknowledged in range(old_acked + 1, new_acked + 1):
            marks.pop(acknowledged, None)

    def _wait_for_budget(self, budget: SendBudget, size: int, now: float) -> None:
        self._waiting_to_send = True
        self.stats.budget_waits += 1
        self._deadline = budget.ready_at(size, now)

    def _pace_rate(self) -> float:
        """Blocks per second an anticipation window may leave at; 0: not paced.

        Without pacing, each ACK in slow start released three blocks at once, as fast as the client
        had ACKed: the bursts piled up in its socket buffer.  A window above 64 blocks then overflowed
        curl's and busybox's (25-106 drops per 1 MiB, measured at the client sockets), so the window
        stayed at 64 and 512-byte clients needed 32 round trips for 1 MiB.  An RFC 7440 window is
        never paced: its receiver ACKs only the whole window, so spreading it would delay that ACK.
        """
        srtt = self._srtt
        if not self._paced or srtt is None:
            return 0.0
        gain = PACING_GAIN_SLOW_START if self._cwnd < self._ssthresh else PACING_GAIN
        return gain * self._cwnd / srtt

    def _pace_start(self, now: float) -> tuple[float, float]:
        """The pace (blocks per second; 0: not paced) and the bucket's blocks at ``now``: it fills
        at that rate and holds ``PACING_QUANTUM`` of it."""
        rate = self._pace_rate()
        if not rate:
            return _NOT_PACED
        tokens = self._pace_tokens + (now - self._pace_at) * rate
        self._pace_at = now
        return rate, min(tokens, max(PACING_MIN_BURST, rate * PACING_QUANTUM))

    def _paced_fill_sent(
        self, rate: float, tokens: float, block: int, limit: int, window_end: int, now: float
    ) -> None:
        """After a paced fill: keep what is left in the bucket, and if the bucket (not the window,
        the data or the budget) stopped the fill at ``limit``, wake up for the rest of the window."""
        self._pace_tokens = tokens
        if block > limit and limit < window_end:
            self._wait_for_pace(rate, tokens, window_end - block + 1, now)

    def _wait_for_pace(self, rate: float, tokens: float, left: int, now: float) -> None:
        """Sleep until a small burst may leave (a wake-up per block would cost more than it spreads),
        or the ``left`` blocks the window still has room for, if fewer: a window cut to one block by
        losses waited for four, up to 3.2 round trips at 1.25 x one block per round trip."""
        self._waiting_to_send = True
        self.stats.pace_waits += 1
        wanted = min(PACING_MIN_BURST, left) + 1e-6  # a hair more: rounding left 1.999... at the wake
        self._deadline = now + max((wanted - tokens) / rate, PACING_MIN_WAIT)

    def _account(self, sent: int, block: int, highest: int, new_bytes: int, now: float) -> None:
        if sent:
            stats = self.stats
            stats.retransmits += sent - (highest - self._highest_sent)
            stats.bytes_sent += new_bytes
            stats.datagrams_sent += sent
            self._next, self._highest_sent = block, highest
            if not self._waiting_to_send:
                self._deadline = now + self._rto
        elif self._deadline is None and highest > self._acked:
            self._deadline = now + self._rto

    def _retained_from(self) -> int:
        """The file offset from which bytes may still be (re)sent: the first unacknowledged block's."""
        if self._netascii:
            mark = self._marks.get(self._acked + 1)
            return mark.raw if mark is not None else self._buffer_start
        return self._acked * self._blksize

    def _append(self, chunk: bytes | memoryview) -> None:
        if not self._buffer:
            self._buffer, self._buffer_start = memoryview(chunk), self._fed  # zero-copy (whole files)
        else:
            keep_from = max(self._buffer_start, self._retained_from())
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
            silence = now - self._last_heard
            self._end(Outcome.TIMED_OUT, now, reason=f"no answer for {silence:.1f} s")

    def _fail(self, outcome: Outcome, code: int, message: str, now: float, detail: str = "") -> None:
        self._send(encode_error(code, message))
        self._end(outcome, now, error_code=code, reason=detail or message)

    def _end(self, outcome: Outcome, now: float, error_code: int | None = None, reason: str = "") -> None:
        self.state = State.ENDED
        self._deadline = None
        self._buffer = memoryview(b"")  # release the file's bytes promptly
        self._marks.clear()
        self.stats.ended = now
        self._events.append(TransferEnded(outcome, self.stats, error_code, reason))

    def _send(self, datagram: bytes) -> None:
        self._outgoing.append(datagram)
        self.stats.datagrams_sent += 1
