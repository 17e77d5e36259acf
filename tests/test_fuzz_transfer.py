"""The read-transfer state machine under any sequence of client datagrams, timeouts and driver calls.

A hypothesis ``RuleBasedStateMachine`` drives ``ReadTransfer`` through ``fuzz.harness.CheckedTransfer``,
which checks after every call what must always hold (valid packets with the file's exact bytes, the
window, no amplification before the first ACK, one end event, a timer exactly while something is
outstanding, bounded memory, ``LocalProtocolError`` only for illegal driver calls).  At the end of
each run the client goes silent: the transfer must end within ``retries + 1`` timeouts.
"""

from __future__ import annotations

import pytest
from fuzz.harness import PATTERN, CheckedTransfer
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from edgetftp.protocol import (
    Data,
    ErrorCode,
    Outcome,
    ReadRequest,
    State,
    TransferConfig,
    decode,
)
from edgetftp.protocol.codes import Opcode
from edgetftp.protocol.packets import encode_error, encode_request

pytestmark = pytest.mark.unit

RARE = 12
OPTION_SETS = st.fixed_dictionaries(
    {},
    optional={
        "blksize": st.sampled_from(["8", "512", "1428", "65464", "7", "x"]),
        "windowsize": st.sampled_from(["1", "4", "16", "0"]),
        "tsize": st.just("0"),
        "timeout": st.sampled_from(["1", "3", "256"]),
    },
)


class TransferMachine(RuleBasedStateMachine):
    driver: CheckedTransfer

    @initialize(
        size=st.one_of(st.integers(0, 1100), st.integers(3000, 16_000)),
        options=OPTION_SETS,
        mode=st.sampled_from(["octet", "octet", "netascii", "octet", "mail"]),
        streamed=st.booleans(),
        found=st.sampled_from([True] * 7 + [False]),
        retries=st.integers(1, 5),
        anticipate=st.sampled_from([0, 4, 8]),
        read_ahead=st.integers(0, 4),
        max_blksize=st.sampled_from([512, 1468, 8192]),
        timeout=st.sampled_from([0.2, 1.0]),
    )
    def start(
        self,
        size: int,
        options: dict[str, str],
        mode: str,
        streamed: bool,
        found: bool,
        retries: int,
        anticipate: int,
        read_ahead: int,
        max_blksize: int,
        timeout: float,
    ) -> None:
        config = TransferConfig(
            timeout=timeout,
            max_timeout=timeout * 4,
            retries=retries,
            max_window=16,
            anticipate=anticipate,
            read_ahead=read_ahead,
        )
        request = ReadRequest("boot.efi", mode, options)
        self.driver = CheckedTransfer(request, config, max_blksize, PATTERN[:size], streamed)
        if self.driver.ended:
            return  # an unsupported mode is refused at once
        if found:
            self.driver.accept()
        else:
            self.driver.reject(ErrorCode.FILE_NOT_FOUND, "File not found")

    # --- the client ---

    @rule()
    def ack_everything_sent(self) -> None:
        self.driver.ack(self.driver.highest_sent & 0xFFFF)

    @rule(rounds=st.integers(1, 40))
    def client_keeps_up_for_a_while(self, rounds: int) -> None:
        for _ in range(rounds):
            if self.driver.streamed:
                self.driver.feed_wanted()
            self.driver.ack(self.driver.highest_sent & 0xFFFF)

    @rule(back=st.integers(0, 20))
    def ack_inside_the_window(self, back: int) -> None:
        self.driver.ack((self.driver.highest_sent - back) & 0xFFFF)

    @rule()
    def duplicate_ack(self) -> None:
        self.driver.ack(self.driver.acked & 0xFFFF)

    @rule(block=st.integers(0, 0xFFFF))
    def any_ack(self, block: int) -> None:
        self.driver.ack(block)

    # Rules that end a transfer are gated (one draw in RARE acts) so that runs get deep enough.

    @rule(gate=st.integers(0, RARE), code=st.integers(0, 9), text=st.text(max_size=40))
    def client_error(self, gate: int, code: int, text: str) -> None:
        if gate == 0:
            self.driver.receive(encode_error(code, text))

    @rule(gate=st.integers(0, RARE), junk=st.binary(max_size=80))
    def junk(self, gate: int, junk: bytes) -> None:
        if gate == 0:
            self.driver.receive(junk)

    @rule()
    def client_repeats_its_request(self) -> None:
        self.driver.request_repeated()

    @rule()
    def stray_request(self) -> None:
        self.driver.receive(encode_request(Opcode.RRQ, "other.efi", "octet"))

    # --- time ---

    @rule()
    def timer_fires(self) -> None:
        self.driver.fire_timer()

    @rule(seconds=st.floats(0, 20, allow_nan=False))
    def wake_up_at_any_time(self, seconds: float) -> None:
        self.driver.tick(seconds)

    @rule(seconds=st.floats(0, 2, allow_nan=False))
    def time_passes(self, seconds: float) -> None:
        self.driver.advance(seconds)

    # --- the driver ---

    @precondition(lambda self: self.driver.streamed)
    @rule(extra=st.integers(0, 5000))
    def feed_what_is_wanted(self, extra: int) -> None:
        self.driver.feed_wanted(extra)

    @precondition(lambda self: self.driver.transfer.snapshot().eof and not self.driver.ended)
    @rule(length=st.integers(0, 100))
    def feed_after_eof_is_refused(self, length: int) -> None:
        self.driver.feed(length)

    @precondition(lambda self: self.driver.transfer.state is not State.RESOLVING)
    @rule(found=st.booleans())
    def resolving_twice_is_refused(self, found: bool) -> None:
        if found:
            self.driver.accept()
        else:
            self.driver.reject(ErrorCode.FILE_NOT_FOUND, "File not found")

    @rule(gate=st.integers(0, RARE), silently=st.booleans())
    def driver_ends_it(self, gate: int, silently: bool) -> None:
        if gate == 0:
            self.driver.cancel() if silently else self.driver.abort()

    # --- beyond the per-call checks ---

    @invariant()
    def counters_are_sane(self) -> None:
        stats = self.driver.transfer.stats
        assert stats.bytes_sent <= len(self.driver.stream)
        assert stats.datagrams_sent >= len(self.driver.sent) - self.driver.errors_sent

    def teardown(self) -> None:
        if hasattr(self, "driver"):
            self.driver.run_out()  # a silent client: the transfer ends by itself
            event(f"outcome: {self.driver.events[0].outcome.value}")
            event(f"blocks sent: {min(self.driver.highest_sent, 20) // 10 * 10}+")


TransferMachine.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_transfer_state_machine = TransferMachine.TestCase


def test_a_completed_run_delivers_the_file() -> None:
    """The checked driver itself: a clean lock-step client gets the whole file and one COMPLETED."""
    data = PATTERN[:5000]
    driver = CheckedTransfer(ReadRequest("f", "octet", {}), TransferConfig(), 512, data, streamed=True)
    driver.accept()
    while not driver.ended:
        driver.feed_wanted()
        driver.ack(driver.highest_sent & 0xFFFF)
    payloads = [packet.payload for packet in map(decode, driver.sent) if isinstance(packet, Data)]
    assert b"".join(payloads) == data
    assert [event.outcome for event in driver.events] == [Outcome.COMPLETED]


def test_an_ack_beyond_a_rewound_window_resends_nothing_it_acknowledged() -> None:
    """A regression test (the stateful test found it): blocks 3..6 are in flight; the timer fires
    (a spurious timeout: the ACKs were only late) and
    resends block 3; then the client's ACK 5 arrives.  Blocks 2..5 are acknowledged: the next
    DATA must be 6 onwards, never 4 or 5 again."""
    data = PATTERN[: 512 * 20]
    driver = CheckedTransfer(ReadRequest("f", "octet", {}), TransferConfig(anticipate=4), 512, data, False)
    driver.accept()
    driver.ack(1)  # the initial window: 2, 3
    driver.ack(2)  # slow start: 4, 5, 6 (4 beyond the ACK: the cap)
    assert driver.highest_sent == 6
    driver.fire_timer()
    sent_before = len(driver.sent)
    driver.ack(5)
    resent = [p.block for p in map(decode, driver.sent[sent_before:]) if isinstance(p, Data)]
    assert resent and min(resent) == 6, resent
