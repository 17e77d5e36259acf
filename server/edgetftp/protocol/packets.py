"""TFTP packets: bytes <-> frozen dataclasses.

``decode(datagram)`` returns a packet or raises ``MalformedPacket``; nothing else (a hypothesis
property holds it to that).  Encoders are free functions; the hot path (DATA out, ACK in) has
dedicated helpers that skip the dataclasses.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from edgetftp.protocol.codes import ErrorCode, Opcode
from edgetftp.protocol.errors import MalformedPacket

__all__ = [
    "Ack",
    "Data",
    "Error",
    "ErrorCode",
    "Opcode",
    "OptionAck",
    "Packet",
    "ReadRequest",
    "WriteRequest",
    "decode",
    "encode",
    "encode_ack",
    "encode_data",
    "encode_error",
    "encode_oack",
    "encode_request",
]

MAX_ERROR_MESSAGE = 200  # bytes; ERROR text is for humans and must stay far below any blksize
_OPCODE = struct.Struct("!H")
_OPCODE_BLOCK = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class _Request:
    filename: str  # UTF-8 with surrogate escapes for bytes that are not (the policy rejects those)
    mode: str  # lower case
    options: Mapping[str, str] = field(default_factory=dict)  # names lower case, first occurrence wins


@dataclass(frozen=True, slots=True)
class ReadRequest(_Request):
    pass


@dataclass(frozen=True, slots=True)
class WriteRequest(_Request):
    pass


@dataclass(frozen=True, slots=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    block: int


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class OptionAck:
    options: Mapping[str, str]


Packet = ReadRequest | WriteRequest | Data | Ack | Error | OptionAck


def decode(datagram: bytes) -> Packet:
    """Parse one datagram.  Raises MalformedPacket for anything that is not a TFTP packet."""
    if len(datagram) < 2:
        raise MalformedPacket("datagram shorter than an opcode")
    (opcode,) = _OPCODE.unpack_from(datagram)
    if opcode in (Opcode.RRQ, Opcode.WRQ):
        return _decode_request(opcode, datagram)
    if opcode in (Opcode.DATA, Opcode.ACK):
        if len(datagram) < 4:
            raise MalformedPacket("DATA/ACK shorter than 4 bytes")
        _, block = _OPCODE_BLOCK.unpack_from(datagram)
        if opcode == Opcode.ACK:
            return Ack(block)
        return Data(block, bytes(datagram[4:]))
    if opcode == Opcode.ERROR:
        if len(datagram) < 4:
            raise MalformedPacket("ERROR shorter than 4 bytes")
        _, code = _OPCODE_BLOCK.unpack_from(datagram)
        text = bytes(datagram[4:]).split(b"\0", 1)[0]
        return Error(code, text.decode("ascii", "replace"))
    if opcode == Opcode.OACK:
        fields = _split_fields(datagram, 2)
        return OptionAck(_pair_options(fields))
    raise MalformedPacket(f"unknown opcode {opcode}")


def _decode_request(opcode: int, datagram: bytes) -> ReadRequest | WriteRequest:
    fields = _split_fields(datagram, 2)
    if len(fields) < 2:
        raise MalformedPacket("request without filename and mode")
    filename = fields[0].decode("utf-8", "surrogateescape")
    mode = fields[1].decode("latin-1").lower()
    options = _pair_options(fields[2:])
    if opcode == Opcode.RRQ:
        return ReadRequest(filename, mode, options)
    return WriteRequest(filename, mode, options)


def _split_fields(datagram: bytes, start: int) -> list[bytes]:
    """NUL-terminated strings from ``start``.  Trailing NUL padding (some PXE ROMs) is tolerated."""
    body = bytes(datagram[start:])
    if not body:
        return []
    if not body.endswith(b"\0"):
        raise MalformedPacket("string field not NUL-terminated")
    return body[:-1].split(b"\0")  # padding yields empty names, which _pair_options skips


def _pair_options(fields: list[bytes]) -> dict[str, str]:
    """Option name/value pairs; names are case-insensitive (RFC 2347), the first occurrence wins."""
    options: dict[str, str] = {}
    for index in range(0, len(fields) - 1, 2):
        name = fields[index].decode("latin-1").lower()
        if name and name not in options:
            options[name] = fields[index + 1].decode("latin-1")
    return options


# --- encoders -------------------------------------------------------------------------------------


def encode_data(block: int, payload: bytes | memoryview) -> bytes:
    return _OPCODE_BLOCK.pack(Opcode.DATA, block & 0xFFFF) + payload


def encode_ack(block: int) -> bytes:
    return _OPCODE_BLOCK.pack(Opcode.ACK, block & 0xFFFF)


def encode_error(code: int, message: str) -> bytes:
    text = message.encode("ascii", "replace").replace(b"\0", b" ")[:MAX_ERROR_MESSAGE]
    return _OPCODE_BLOCK.pack(Opcode.ERROR, code) + text + b"\0"


def encode_oack(options: Mapping[str, str]) -> bytes:
    return _OPCODE.pack(Opcode.OACK) + _encode_pairs(options)


def encode_request(
    opcode: int, filename: str, mode: str = "octet", options: Mapping[str, str] | None = None
) -> bytes:
    name = filename.encode("utf-8", "surrogateescape")
    return _OPCODE.pack(opcode) + name + b"\0" + mode.encode("ascii") + b"\0" + _encode_pairs(options or {})


def _encode_pairs(options: Mapping[str, str]) -> bytes:
    return b"".join(
        name.encode("latin-1") + b"\0" + value.encode("latin-1") + b"\0" for name, value in options.items()
    )


def encode(packet: Packet) -> bytes:
    """Encode any packet (tests and tools; the server's hot path calls the helpers directly)."""
    if isinstance(packet, ReadRequest):
        return encode_request(Opcode.RRQ, packet.filename, packet.mode, packet.options)
    if isinstance(packet, WriteRequest):
        return encode_request(Opcode.WRQ, packet.filename, packet.mode, packet.options)
    if isinstance(packet, Data):
        return encode_data(packet.block, packet.payload)
    if isinstance(packet, Ack):
        return encode_ack(packet.block)
    if isinstance(packet, Error):
        return encode_error(packet.code, packet.message)
    return encode_oack(packet.options)
