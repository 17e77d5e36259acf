"""Evidence from the wire: follow TFTP read transfers through the impairment proxy's tap.

``TransferLog`` is a tap for ``ImpairmentProxy(tap=...)``.  It sees every datagram as it reaches the
relay, before impairment, and rebuilds each read transfer from outside the client and the server:
the RRQ (file name, options), the negotiated block size (OACK), the first copy of every DATA block
the server sent, and whether the client ACKed the last (short) block.  A transfer is *complete* when
that final ACK reached the relay; its content is the reassembled blocks, so a test can compare the
sha256 with the file served.  Enough for files below 65535 blocks (no block-number rollover).

The tap runs on the proxy's thread; readers use ``transfers()`` (a locked copy) or ``wait_for``.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from dataclasses import dataclass, field

from bench.impairment import Addr, Direction

OP_RRQ, OP_WRQ, OP_DATA, OP_ACK, OP_ERROR, OP_OACK = 1, 2, 3, 4, 5, 6
DEFAULT_BLKSIZE = 512


@dataclass
class ObservedTransfer:
    client: Addr
    filename: str
    options: dict[str, str]
    started: float
    """time.monotonic() when the first RRQ reached the relay."""
    blksize: int = DEFAULT_BLKSIZE
    server_port: int | None = None
    """The port the server answered from (its TID); the upstream port for single-port servers."""
    oack: dict[str, str] | None = None
    blocks: dict[int, bytes] = field(default_factory=dict)
    data_datagrams: int = 0
    """DATA datagrams sent by the server, retransmissions and anticipated blocks included."""
    last_block: int | None = None
    final_ack_at: float | None = None
    errors: list[tuple[str, int, str]] = field(default_factory=list)
    """(who, code, message) for each ERROR seen: who is "client" or "server"."""

    @property
    def complete(self) -> bool:
        return self.final_ack_at is not None

    @property
    def duration(self) -> float | None:
        return None if self.final_ack_at is None else self.final_ack_at - self.started

    def content(self) -> bytes:
        count = self.last_block or max(self.blocks, default=0)
        return b"".join(self.blocks.get(n, b"") for n in range(1, count + 1))

    def sha256(self) -> str:
        return hashlib.sha256(self.content()).hexdigest()

    def copy(self) -> ObservedTransfer:
        clone = ObservedTransfer(**{**self.__dict__})
        clone.blocks = dict(self.blocks)
        clone.errors = list(self.errors)
        return clone


class TransferLog:
    """A proxy tap that rebuilds TFTP read transfers (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._current: dict[Addr, ObservedTransfer] = {}  # the latest transfer of each client address
        self._all: list[ObservedTransfer] = []

    def __call__(self, direction: Direction, data: bytes, client: Addr, server: Addr) -> None:
        if len(data) < 4:
            return
        opcode = struct.unpack_from("!H", data)[0]
        with self._lock:
            if direction is Direction.TO_SERVER:
                self._client_datagram(opcode, data, client)
            else:
                self._server_datagram(opcode, data, client, server)
            self._lock.notify_all()

    def _client_datagram(self, opcode: int, data: bytes, client: Addr) -> None:
        transfer = self._current.get(client)
        if opcode == OP_RRQ:
            filename, _mode, options = parse_request(data)
            if transfer is None or transfer.filename != filename or transfer.blocks or transfer.errors:
                transfer = ObservedTransfer(client, filename, options, time.monotonic())
                self._current[client] = transfer
                self._all.append(transfer)
        elif transfer is None:
            return
        elif opcode == OP_ACK:
            block = struct.unpack_from("!H", data, 2)[0]
            if transfer.last_block is not None and block == transfer.last_block and not transfer.complete:
                transfer.final_ack_at = time.monotonic()
        elif opcode == OP_ERROR:
            transfer.errors.append(("client", *parse_error(data)))

    def _server_datagram(self, opcode: int, data: bytes, client: Addr, server: Addr) -> None:
        transfer = self._current.get(client)
        if transfer is None:
            return
        transfer.server_port = server[1]
        if opcode == OP_OACK:
            transfer.oack = parse_options(data[2:])
            transfer.blksize = int(transfer.oack.get("blksize", DEFAULT_BLKSIZE))
        elif opcode == OP_DATA:
            block = struct.unpack_from("!H", data, 2)[0]
            payload = data[4:]
            transfer.data_datagrams += 1
            transfer.blocks.setdefault(block, payload)
            if len(payload) < transfer.blksize:
                transfer.last_block = block
        elif opcode == OP_ERROR:
            transfer.errors.append(("server", *parse_error(data)))

    def transfers(self) -> list[ObservedTransfer]:
        with self._lock:
            return [t.copy() for t in self._all]

    def find(self, filename: str) -> list[ObservedTransfer]:
        return [t for t in self.transfers() if t.filename.lstrip("/") == filename.lstrip("/")]

    def wait_for_complete(self, filename: str, timeout: float) -> ObservedTransfer | None:
        """Block until a transfer of ``filename`` is complete (final ACK seen); None on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                done = [t for t in self._all if t.filename.lstrip("/") == filename.lstrip("/") and t.complete]
                if done:
                    return done[-1].copy()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._lock.wait(remaining)


def parse_options(raw: bytes) -> dict[str, str]:
    parts = raw.split(b"\x00")
    pairs = zip(parts[0::2], parts[1::2], strict=False)
    return {k.decode(errors="replace").lower(): v.decode(errors="replace") for k, v in pairs if k}


def parse_request(data: bytes) -> tuple[str, str, dict[str, str]]:
    parts = data[2:].split(b"\x00", 2)
    filename = parts[0].decode(errors="replace")
    mode = parts[1].decode(errors="replace").lower() if len(parts) > 1 else ""
    options = parse_options(parts[2]) if len(parts) > 2 else {}
    return filename, mode, options


def parse_error(data: bytes) -> tuple[int, str]:
    code = struct.unpack_from("!H", data, 2)[0]
    return code, data[4:].split(b"\x00", 1)[0].decode(errors="replace")
