"""protocol/demux.py on a fake clock: every route a datagram can take."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from edgetftp.protocol.codes import Opcode
from edgetftp.protocol.demux import Route, route_listener_datagram, route_transfer_datagram
from edgetftp.protocol.packets import encode_ack, encode_error, encode_request

pytestmark = pytest.mark.unit

REQUEST = encode_request(Opcode.RRQ, "boot.efi", "octet", {"blksize": "1428"})
OTHER_REQUEST = encode_request(Opcode.RRQ, "grub.cfg", "octet")
WRITE = encode_request(Opcode.WRQ, "boot.efi")
TIMEOUT = 1.0  # the repeat window: the configured first timeout


@dataclass
class FakeSession:
    request_bytes: bytes = REQUEST
    started: float = 100.0
    peer_confirmed: bool = False


def route(
    data: bytes | memoryview, session: FakeSession | None, now: float = 100.0, single_port: bool = True
) -> Route:
    return route_listener_datagram(data, session, single_port, TIMEOUT, now)


@pytest.mark.parametrize("datagram", [encode_ack(1), encode_error(8, "abort"), b"\x00\x03junk", b"", b"\x07"])
def test_single_port_everything_but_a_request_goes_to_the_session(datagram: bytes) -> None:
    assert route(datagram, FakeSession()) is Route.DELIVER


def test_per_transfer_mode_listener_strays_are_dropped() -> None:
    assert route(encode_ack(1), FakeSession(), single_port=False) is Route.DROP
    assert route(WRITE, FakeSession(), single_port=False) is Route.REFUSE_WRITE


def test_the_same_request_while_young_is_a_retransmission() -> None:
    confirmed = FakeSession(peer_confirmed=True)
    assert route(REQUEST, confirmed, now=100.5) is Route.REPEATED_REQUEST
    assert route(memoryview(REQUEST), confirmed, now=100.99) is Route.REPEATED_REQUEST


def test_the_same_request_after_the_first_timeout_restarts_an_acknowledged_session() -> None:
    assert route(REQUEST, FakeSession(peer_confirmed=True), now=101.0) is Route.REPLACE


def test_an_unacknowledged_session_is_never_restarted_by_its_own_request() -> None:
    """Until its first ACK the client may be resending its RRQ for as long as it likes."""
    assert route(REQUEST, FakeSession(peer_confirmed=False), now=160.0) is Route.REPEATED_REQUEST


def test_a_different_request_replaces_the_session() -> None:
    assert route(OTHER_REQUEST, FakeSession(), now=100.1) is Route.REPLACE
    assert route(OTHER_REQUEST, FakeSession(), single_port=False) is Route.REPLACE


def test_without_a_session() -> None:
    assert route(REQUEST, None) is Route.NEW_REQUEST
    assert route(b"\x00\x01", None) is Route.NEW_REQUEST  # malformed: admission, then ERROR 4
    assert route(WRITE, None) is Route.REFUSE_WRITE
    for stray in (encode_ack(0), encode_error(0, "x"), b"", b"\x00", b"\x00\x06blksize\x00512\x00"):
        assert route(stray, None) is Route.DROP


def test_transfer_socket() -> None:
    assert route_transfer_datagram(from_client=True) is Route.DELIVER
    assert route_transfer_datagram(from_client=False) is Route.UNKNOWN_TID
