"""A checked driver for ``ReadTransfer`` and a byte-driven fuzz entry point over the datagram path.

``CheckedTransfer`` drives one transfer the way ``transport.py`` does (call, then drain datagrams,
timer and events) and checks, after every call, what must hold whatever a client sends:

- every datagram the server emits is a valid TFTP packet; DATA carries exactly the file's bytes for
  its block number, never more than ``blksize`` of them, and only inside the window;
- no amplification: until the client has ACKed, one datagram per call at most, and in total the
  first reply plus ``retries`` retransmissions (plus one ERROR that ends it);
- at most one end event; once ended, no timer and no datagram ever again;
- liveness: a live transfer always has a timer, or is waiting for bytes from the driver;
- bounded memory: a streamed file is held only from the first unacknowledged block, up to the window
  plus the read-ahead (and the driver's last chunk), never the whole file;
- the only exception the core raises is ``LocalProtocolError``, and only for calls its state forbids.

``run_one(data)`` turns arbitrary bytes into a first datagram (raw, or an RRQ built from fuzzed
fields), runs it through ``decode`` and the path policy as the transport does, then into a transfer
that receives a fuzzed sequence of datagrams, timer firings, feeds and driver calls.  The only
exceptions allowed out of the datagram entry point are ``MalformedPacket`` (from ``decode``) and
``PolicyError`` (from the policy), both handled as the transport handles them.  Anything escaping
``run_one`` is a bug (atheris reports it as a crash).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from edgetftp.policy import PathPolicy, PolicyError
from edgetftp.protocol import (
    Data,
    Error,
    ErrorCode,
    LocalProtocolError,
    MalformedPacket,
    OptionAck,
    Outcome,
    ReadRequest,
    ReadTransfer,
    State,
    TransferConfig,
    TransferEnded,
    decode,
)
from edgetftp.protocol.codes import Opcode
from edgetftp.protocol.netascii import encode_netascii
from edgetftp.protocol.packets import encode_ack, encode_error, encode_request
from edgetftp.protocol.transfer import TransferSnapshot

T = TypeVar("T")


#: The bytes every fuzzed file is cut from: all 256 byte values, so netascii has CRs and LFs to expand.
PATTERN = bytes(range(256)) * 1024


#: Firings beyond ``retries`` that a fast (RTT-based) timeout may take to use up the patience.
EXTRA_FIRINGS = 64


def reach(snapshot: TransferSnapshot) -> int:
    """Blocks beyond the last ACK a confirmed transfer may send: its cap, or for an RFC 7440 window
    twice that (a stall probes the next window, ``ReadTransfer._probe_next_window``)."""
    return snapshot.window_cap * (2 if snapshot.windowed else 1)


class InvariantViolation(Exception):
    """A property of the transfer does not hold (not an AssertionError: ``python -O`` keeps it)."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise InvariantViolation(message)


class CheckedTransfer:
    """Drives one ReadTransfer like the transport and checks every invariant after each call."""

    def __init__(
        self,
        request: ReadRequest,
        config: TransferConfig,
        max_blksize: int,
        data: bytes,
        streamed: bool,
        now: float = 0.0,
    ) -> None:
        self.config = config
        self.data = data
        self.stream = encode_netascii(data) if request.mode == "netascii" else data
        self.expansion = 2 if request.mode == "netascii" else 1  # netascii at most doubles a byte
        self.streamed = streamed
        self.now = now
        self.fed = 0
        self.largest_chunk = 0
        self.events: list[TransferEnded] = []
        self.sent: list[bytes] = []
        self.unconfirmed_replies = 0  # datagrams sent before the client's first ACK
        self.errors_sent = 0
        self.timer_firings = 0
        self.transfer = ReadTransfer(request, config, max_blksize, now)
        self._after_call()

    # --- state, read-only ---

    @property
    def ended(self) -> bool:
        return self.transfer.ended

    @property
    def acked(self) -> int:
        return self.transfer.snapshot().acked

    @property
    def highest_sent(self) -> int:
        return self.transfer.snapshot().highest_sent

    @property
    def window(self) -> int:
        """How far beyond the last ACK a DATA may be."""
        snapshot = self.transfer.snapshot()
        return reach(snapshot) if snapshot.peer_confirmed else 1

    # --- driver calls (legal ones; illegal ones must raise LocalProtocolError) ---

    def accept(self) -> None:
        legal = self.transfer.state is State.RESOLVING
        self._call_checked(lambda: self.transfer.accept(len(self.data), self.now), legal=legal)
        if legal and not self.streamed:
            self.fed = len(self.data)
            self._call(lambda: self.transfer.feed(self.data, True, self.now))  # resident: fed whole, once

    def reject(self, code: int, message: str) -> None:
        self._call_checked(
            lambda: self.transfer.reject(code, message, self.now, "detail for the log"),
            legal=self.transfer.state is State.RESOLVING,
        )

    def feed(self, length: int) -> None:
        """Feed the next ``length`` bytes of the file (eof when they reach its end)."""
        chunk = self.data[self.fed : self.fed + length]
        eof = self.fed + len(chunk) >= len(self.data)
        legal = self.ended or not self.transfer.snapshot().eof
        if legal and not self.ended:
            self.fed += len(chunk)
            self.largest_chunk = max(self.largest_chunk, len(chunk))
        self._call_checked(lambda: self.transfer.feed(chunk, eof, self.now), legal=legal)

    def feed_wanted(self, extra: int = 0) -> None:
        """What the transport does: feed when ``bytes_wanted()`` is positive (it reads a bit more)."""
        wanted = self.transfer.bytes_wanted()
        if self.streamed and wanted > 0 and not self.transfer.snapshot().eof:
            self.feed(wanted + extra)

    def receive(self, datagram: bytes) -> None:
        self._call(lambda: self.transfer.receive_datagram(datagram, self.now))

    def request_repeated(self) -> None:
        """The client's RRQ again (the transport passes an identical, young request here)."""
        self._call(lambda: self.transfer.request_repeated(self.now))

    def ack(self, block: int) -> None:
        self.receive(encode_ack(block))

    def fire_timer(self) -> None:
        """Wake up at the deadline (or a little later), as the transport's timer does."""
        deadline = self.transfer.get_timer()
        if deadline is not None:
            self.advance(max(0.0, deadline - self.now))
        self.timer_firings += 1
        self._call(lambda: self.transfer.handle_timer(self.now))
        deadline = self.transfer.get_timer()
        require(deadline is None or deadline > self.now, f"timer {deadline} not after now {self.now}")

    def tick(self, seconds: float) -> None:
        """An early or late wake-up at an arbitrary time."""
        self.advance(seconds)
        self._call(lambda: self.transfer.handle_timer(self.now))

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    def abort(self) -> None:
        self._call(lambda: self.transfer.abort(ErrorCode.NOT_DEFINED, "Server shutting down", self.now))

    def cancel(self) -> None:
        self._call(lambda: self.transfer.cancel(self.now))

    def run_out(self) -> None:
        """Stop answering: the transfer must end within its patience (the configured retry schedule's
        total silence); retransmissions follow the RTT, so that can take more firings than ``retries``,
        but a bounded number (the timeout doubles up to its cap)."""
        for _ in range(self.config.retries + 2 + EXTRA_FIRINGS):
            if self.ended:
                break
            self.feed_wanted()
            if self.transfer.get_timer() is None:
                require(self.transfer.bytes_wanted() > 0, "a live transfer with no timer and no need")
                self.feed_wanted()
            self.fire_timer()
        require(self.ended, f"not ended after {self.config.retries + 1 + EXTRA_FIRINGS} unanswered timeouts")

    # --- checking ---

    def _call(self, action: Callable[[], None]) -> None:
        was_ended = self.ended
        action()
        self._after_call(was_ended)

    def _call_checked(self, action: Callable[[], None], legal: bool) -> None:
        if legal:
            self._call(action)
            return
        state = self.transfer.state
        try:
            action()
        except LocalProtocolError:
            pass
        else:
            raise InvariantViolation(f"an illegal call in state {state.name} did not raise")
        require(self.transfer.state is state, "an illegal call changed the state")
        self._after_call(self.ended)

    def _after_call(self, was_ended: bool = False) -> None:
        transfer = self.transfer
        out = transfer.datagrams_to_send()
        if was_ended:
            require(not out, "datagrams sent after the end")
        confirmed = transfer.peer_confirmed
        if not confirmed:
            require(len(out) <= 1, f"{len(out)} datagrams in one call before the client's first ACK")
            self.unconfirmed_replies += len(out)
            # the first reply, its retransmissions, and an ERROR that ends it
            require(
                self.unconfirmed_replies <= self.config.retries + 2,
                f"{self.unconfirmed_replies} datagrams before the client's first ACK",
            )
        else:
            require(len(out) <= max(1, transfer.snapshot().window_cap), f"{len(out)} datagrams in one call")
        for datagram in out:
            self._check_datagram(datagram)
        self.sent.extend(out)
        self._collect_events(was_ended)
        self._check_state()

    def _check_datagram(self, datagram: bytes) -> None:
        packet = decode(datagram)  # MalformedPacket here: the server emitted an invalid packet
        transfer = self.transfer
        if isinstance(packet, Data):
            blksize = transfer.stats.blksize
            highest = self.highest_sent
            block = highest - ((highest - packet.block) & 0xFFFF)
            expected = self.stream[(block - 1) * blksize : block * blksize]
            require(packet.payload == expected, f"DATA {block} does not carry the file's bytes")
            require(
                self.acked < block <= self.acked + self.window,
                f"DATA {block} outside the window ({self.acked}, {self.acked + self.window}]",
            )
            if len(packet.payload) < blksize:
                last = transfer.snapshot().last_block
                require(last == block, f"short DATA {block}, last is {last}")
        elif isinstance(packet, OptionAck):
            require(transfer.state is State.OACK_SENT, f"OACK in state {transfer.state.name}")
            require(
                set(packet.options) <= set(transfer.request.options), "OACK option the client did not ask for"
            )
        elif isinstance(packet, Error):
            self.errors_sent += 1
            require(self.errors_sent == 1, "more than one ERROR")
            require(transfer.ended, "an ERROR that did not end the transfer")
            require(len(packet.message) <= 200, "ERROR text too long")
        else:
            raise InvariantViolation(f"the server sent {type(packet).__name__}")

    def _collect_events(self, was_ended: bool) -> None:
        while (event := self.transfer.next_event()) is not None:
            self.events.append(event)
        require(len(self.events) <= 1, f"{len(self.events)} end events")
        require(self.ended == bool(self.events), "ended without an event, or an event while live")
        if self.events and not was_ended:
            self._check_end(self.events[0])

    def _check_end(self, event: TransferEnded) -> None:
        transfer = self.transfer
        if event.outcome is Outcome.COMPLETED:
            snapshot = transfer.snapshot()
            last = snapshot.last_block
            require(last is not None and snapshot.highest_sent == last, "completed before the last DATA")
            require(snapshot.acked == last or event.stats.final_ack_missing, "completed without the last ACK")
            require(event.stats.bytes_sent == len(self.stream), "completed with the wrong byte count")
        require(event.stats.bytes_sent <= len(self.stream), "more file bytes than the file has")
        require(event.stats.retransmits >= 0, "negative retransmits")

    def _check_state(self) -> None:
        transfer = self.transfer
        snapshot = transfer.snapshot()
        require(isinstance(transfer.state, State), "state is not a State")
        timer = transfer.get_timer()
        if transfer.ended:
            require(timer is None, "a timer after the end")
            require(snapshot.buffered == 0, "the file's bytes held after the end")
            return
        if transfer.state is State.RESOLVING:
            require(timer is None and not transfer.peer_confirmed, "RESOLVING with a timer or a peer")
            return
        outstanding = transfer.state is State.OACK_SENT or snapshot.highest_sent > snapshot.acked
        held = snapshot.waiting_to_send  # the pace (or the budget) holds the next block: a timer too
        require((timer is not None) == (outstanding or held), f"timer {timer} but outstanding={outstanding}")
        if not outstanding and not held:
            require(transfer.bytes_wanted() > 0, "stuck: nothing outstanding, nothing wanted")
        require(0 <= snapshot.acked <= snapshot.highest_sent, "acked beyond what was sent")
        # Retransmissions follow the RTT and stop after ``retries`` per stall; giving up follows the
        # configured schedule's total silence, capped by max_silence.
        require(snapshot.retries <= self.config.retries, "unbounded retries")
        if self.streamed:
            blksize = transfer.stats.blksize
            ahead = reach(snapshot) + self.config.read_ahead + 1
            bound = self.expansion * (ahead * blksize + self.largest_chunk)
            require(snapshot.buffered <= bound, f"buffer {snapshot.buffered} > bound {bound}")


# --- bytes in, a fuzzed scenario out ---------------------------------------------------------------


class ByteReader:
    """Consumes fuzz input as small decisions; an exhausted input reads as zeros."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def remaining(self) -> int:
        return len(self._data) - self._position

    def byte(self) -> int:
        if self._position >= len(self._data):
            return 0
        self._position += 1
        return self._data[self._position - 1]

    def u16(self) -> int:
        return self.byte() << 8 | self.byte()

    def flag(self) -> bool:
        return bool(self.byte() & 1)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.byte() % len(options)]

    def take(self, length: int) -> bytes:
        chunk = self._data[self._position : self._position + length]
        self._position += len(chunk)
        return chunk


NAMES = ("a.efi", "boot/x64/ipxe.efi", "\\Boot\\wdsnbp.com", "../etc/passwd", "a//b", "x\x7fy", "")
MODES = ("octet", "netascii", "NetASCII", "mail", "binary", "")
OPTION_NAMES = ("blksize", "tsize", "timeout", "windowsize", "BLKSIZE", "multicast", "utimeout")
OPTION_VALUES = ("0", "1", "8", "7", "512", "1468", "65464", "65465", "255", "256", "-1", " 12", "x", "")
BLKSIZE_CAPS = (8, 512, 1428, 1468, 8192, 65464)
MAX_STEPS = 96


def first_datagram(reader: ByteReader) -> bytes:
    """Raw bytes, or an RRQ assembled from fuzzed names, modes and options (to reach deep states)."""
    if reader.flag():
        return reader.take(reader.byte())
    name = reader.take(reader.byte() % 24).decode("utf-8", "surrogateescape") if reader.flag() else ""
    name = name or reader.choice(NAMES)
    options = {}
    for _ in range(reader.byte() % 5):
        value = reader.choice(OPTION_VALUES) if reader.flag() else str(reader.u16())
        options[reader.choice(OPTION_NAMES)] = value
    request = encode_request(Opcode.RRQ, name, "octet", options)
    mode = reader.choice(MODES)
    return request.replace(b"\0octet\0", b"\0" + mode.encode() + b"\0", 1)


def fuzzed_config(reader: ByteReader) -> TransferConfig:
    timeout = reader.choice((0.2, 0.5, 1.0, 3.0))
    return TransferConfig(
        timeout=timeout,
        max_timeout=timeout * reader.choice((1, 2, 4)),
        retries=1 + reader.byte() % 6,
        max_window=1 + reader.byte() % 64,
        anticipate=reader.byte() % 9,
        read_ahead=reader.byte() % 9,
    )


def ack_choice(reader: ByteReader, driver: CheckedTransfer) -> int:
    """ACKs that matter most: all sent, inside the window, stale, duplicate, or any 16-bit number."""
    kind = reader.byte() % 5
    if kind == 0:
        return driver.highest_sent
    if kind == 1:
        return driver.highest_sent - reader.byte() % 8
    if kind == 2:
        return driver.acked
    if kind == 3:
        return 0
    return reader.u16()


def step(reader: ByteReader, driver: CheckedTransfer) -> None:
    op = reader.byte() % 12
    if op in (0, 1, 2):
        driver.ack(ack_choice(reader, driver) & 0xFFFF)
    elif op == 3:
        driver.receive(reader.take(reader.byte()))
    elif op == 4:
        driver.receive(encode_error(reader.byte() % 10, "client says no"))
    elif op == 5:
        driver.fire_timer()
    elif op == 6:
        driver.tick(reader.byte() / 16)
    elif op == 7:
        driver.feed_wanted(extra=reader.byte() * 16)
    elif op == 8 and driver.transfer.snapshot().eof:
        driver.feed(reader.u16())  # illegal after eof: must raise LocalProtocolError, change nothing
    elif op in (8, 9):
        driver.advance(reader.byte() / 64)
    elif op == 10:
        resolve(driver, found=reader.flag())  # again: illegal, must raise LocalProtocolError
    elif reader.byte() % 8 == 0:  # rare: the driver ends it
        driver.abort() if reader.flag() else driver.cancel()
    elif reader.flag():
        driver.request_repeated()
    else:
        driver.receive(encode_request(Opcode.RRQ, "a.efi", "octet"))  # a stray request: ignored


def resolve(driver: CheckedTransfer, found: bool) -> None:
    if found:
        driver.accept()
    else:
        driver.reject(ErrorCode.FILE_NOT_FOUND, "File not found")


def run_one(data: bytes) -> None:
    """One fuzz input through the datagram entry point.  Raises only on a bug."""
    reader = ByteReader(data)
    datagram = first_datagram(reader)
    try:
        request = decode(datagram)
    except MalformedPacket:
        return  # the transport answers ERROR 4 "Malformed request"
    if not isinstance(request, ReadRequest):
        return  # WRQ: refused; anything else: no session, dropped
    size = reader.u16() * reader.choice((1, 1, 4))
    streamed = reader.flag()
    config = fuzzed_config(reader)
    driver = CheckedTransfer(request, config, reader.choice(BLKSIZE_CAPS), PATTERN[:size], streamed)
    policy = PathPolicy(extensions=reader.choice((frozenset(), frozenset({".efi", ".com"}))))
    if not driver.ended:
        try:
            policy.check(request.filename)
        except PolicyError as exc:
            driver.reject(exc.error_code, exc.public_message)
        else:
            driver.accept() if reader.byte() % 8 else driver.reject(
                ErrorCode.FILE_NOT_FOUND, "File not found"
            )
    for _ in range(MAX_STEPS):
        if not reader.remaining():
            break
        step(reader, driver)
    driver.run_out()
