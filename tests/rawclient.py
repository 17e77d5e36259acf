"""A minimal blocking TFTP client over a real UDP socket, for tests that need to see every packet."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from edgetftp.protocol import Data, Error, OptionAck, Packet, decode
from edgetftp.protocol.codes import Opcode
from edgetftp.protocol.packets import encode_ack, encode_error, encode_request


@dataclass
class Fetch:
    data: bytes = b""
    oack: dict[str, str] | None = None
    error: Error | None = None
    reply_addresses: set[tuple[str, int]] = field(default_factory=set)
    blocks: int = 0


class RawClient:
    def __init__(self, server: tuple[str, int], timeout: float = 2.0, bind: str | None = None) -> None:
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.server = server
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self.sock.bind((bind or ("::1" if family == socket.AF_INET6 else "127.0.0.1"), 0))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, datagram: bytes, to: tuple[str, int] | None = None) -> None:
        self.sock.sendto(datagram, to or self.server)

    def rrq(self, filename: str, mode: str = "octet", **options: str | int) -> None:
        self.send(encode_request(Opcode.RRQ, filename, mode, {k: str(v) for k, v in options.items()}))

    def receive(self) -> tuple[Packet, tuple[str, int]]:
        datagram, address = self.sock.recvfrom(70000)
        return decode(datagram), (address[0], address[1])

    def receive_or_none(self, timeout: float) -> tuple[Packet, tuple[str, int]] | None:
        previous = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            return self.receive()
        except TimeoutError:
            return None
        finally:
            self.sock.settimeout(previous)

    def fetch(self, filename: str, mode: str = "octet", **options: str | int) -> Fetch:
        """A complete lock-step read (ACKs every block, windowed when windowsize is asked)."""
        self.rrq(filename, mode, **options)
        result = Fetch()
        expected, chunks = 1, []
        window = int(options.get("windowsize", 1))
        blksize = 512
        while True:
            packet, address = self.receive()
            result.reply_addresses.add(address)
            if isinstance(packet, Error):
                result.error = packet
                return result
            if isinstance(packet, OptionAck):
                result.oack = dict(packet.options)
                blksize = int(packet.options.get("blksize", 512))
                window = int(packet.options.get("windowsize", 1))
                self.send(encode_ack(0), address)
                continue
            assert isinstance(packet, Data), packet
            if packet.block != expected & 0xFFFF:
                continue  # duplicate or out of order: wait for the right one
            chunks.append(packet.payload)
            result.blocks += 1
            last = len(packet.payload) < blksize
            if last or result.blocks % window == 0:
                self.send(encode_ack(packet.block), address)
            if last:
                result.data = b"".join(chunks)
                return result
            expected += 1

    def abort(self, to: tuple[str, int], code: int = 8, message: str = "User aborted the transfer") -> None:
        self.send(encode_error(code, message), to)

    def ack(self, block: int, to: tuple[str, int]) -> None:
        self.send(encode_ack(block), to)
