"""Packet encode/decode: round trips, tolerance, and the invariant that junk raises only MalformedPacket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgetftp.protocol import (
    Ack,
    Data,
    Error,
    MalformedPacket,
    OptionAck,
    ReadRequest,
    WriteRequest,
    decode,
    encode,
)
from edgetftp.protocol.packets import Packet, encode_error

pytestmark = pytest.mark.unit

names = st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), min_size=1, max_size=40)
option_names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12).map(
    str.lower
)
option_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
options = st.dictionaries(option_names, option_values, max_size=5)
blocks = st.integers(0, 0xFFFF)

packets = st.one_of(
    st.builds(ReadRequest, names, st.sampled_from(["octet", "netascii", "mail"]), options),
    st.builds(WriteRequest, names, st.sampled_from(["octet", "netascii"]), options),
    st.builds(Data, blocks, st.binary(max_size=600)),
    st.builds(Ack, blocks),
    st.builds(
        Error, st.integers(0, 8), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
    ),
    st.builds(OptionAck, options),
)


@given(packets)
def test_encode_then_decode_is_identity(packet: Packet) -> None:
    assert decode(encode(packet)) == packet


@given(st.binary(max_size=700))
def test_decode_returns_a_packet_or_raises_malformed(datagram: bytes) -> None:
    try:
        packet = decode(datagram)
    except MalformedPacket:
        return
    assert isinstance(packet, ReadRequest | WriteRequest | Data | Ack | Error | OptionAck)


def test_option_names_are_case_insensitive_and_first_wins() -> None:
    datagram = b"\x00\x01boot.efi\x00OCTET\x00BlkSize\x001428\x00blksize\x00512\x00TSIZE\x000\x00"
    packet = decode(datagram)
    assert packet == ReadRequest("boot.efi", "octet", {"blksize": "1428", "tsize": "0"})


def test_trailing_nul_padding_from_pxe_roms_is_tolerated() -> None:
    assert decode(b"\x00\x01a\x00octet\x00\x00\x00\x00") == ReadRequest("a", "octet", {})


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x00",
        b"\x00\x01",
        b"\x00\x01name",
        b"\x00\x01name\x00",
        b"\x00\x04\x00",
        b"\x00\x09xx",
        b"\x00\x05\x00",
    ],
)
def test_truncated_or_unknown_packets_are_malformed(datagram: bytes) -> None:
    with pytest.raises(MalformedPacket):
        decode(datagram)


def test_error_text_is_bounded_and_has_no_nul() -> None:
    datagram = encode_error(0, "x\0y" * 500)
    assert datagram[4:].count(b"\0") == 1  # only the terminator
    assert len(datagram) <= 4 + 200 + 1
