"""The sans-IO TFTP core: packets, option negotiation and the read-transfer state machine.

No networking, no asyncio, no clock: it is handed bytes and ``now`` and hands back bytes,
deadlines and events.  (tests/protocol/test_sans_io.py holds the package to that.)
"""

from edgetftp.protocol.codes import ErrorCode, Opcode
from edgetftp.protocol.errors import LocalProtocolError, MalformedPacket, ProtocolError
from edgetftp.protocol.events import Outcome, TransferEnded, TransferStats
from edgetftp.protocol.options import Limits, Negotiated, negotiate
from edgetftp.protocol.packets import (
    Ack,
    Data,
    Error,
    OptionAck,
    Packet,
    ReadRequest,
    WriteRequest,
    decode,
    encode,
)
from edgetftp.protocol.transfer import ReadTransfer, State, TransferConfig

__all__ = [
    "Ack",
    "Data",
    "Error",
    "ErrorCode",
    "Limits",
    "LocalProtocolError",
    "MalformedPacket",
    "Negotiated",
    "Opcode",
    "OptionAck",
    "Outcome",
    "Packet",
    "ProtocolError",
    "ReadRequest",
    "ReadTransfer",
    "State",
    "TransferConfig",
    "TransferEnded",
    "TransferStats",
    "WriteRequest",
    "decode",
    "encode",
    "negotiate",
]
