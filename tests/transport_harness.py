"""An in-process edgetftp transport on loopback: a real loop, real UDP sockets, a source in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from edgetftp.netutil import bind_udp
from edgetftp.protocol.events import TransferEnded
from edgetftp.sources.base import Content, FileNotFound, MemoryContent, Source
from edgetftp.transport import ServerConfig, TftpServer
from tests.rawclient import Fetch, RawClient

Peer = tuple[str, int]


class StreamedContent(Content):
    """A file read piece by piece, each read yielding to the loop (as a disk or S3 read would)."""

    def __init__(self, data: bytes) -> None:
        self.size = len(data)
        self._data = data
        self.reads: list[tuple[int, int]] = []

    async def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        await asyncio.sleep(0)
        return self._data[offset : offset + length]


class MemorySource(Source):
    """Files in memory; names in ``streamed`` are opened asynchronously and read piece by piece."""

    description = "memory"

    def __init__(self, files: dict[str, bytes], streamed: Sequence[str] = ()) -> None:
        self.files = files
        self.streamed = set(streamed)
        self.opened: list[StreamedContent] = []

    def open_now(self, path: str) -> Content | None:
        if path in self.streamed:
            return None
        if path not in self.files:
            raise FileNotFound(path)
        return MemoryContent(memoryview(self.files[path]))

    async def open(self, path: str) -> Content:
        await asyncio.sleep(0)
        if path not in self.files:
            raise FileNotFound(path)
        content = StreamedContent(self.files[path])
        self.opened.append(content)
        return content


@dataclass
class RecordingObserver:
    ended: list[tuple[Peer, TransferEnded]] = field(default_factory=list)
    refused: list[tuple[Peer, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    exhausted: list[tuple[str, str, int]] = field(default_factory=list)
    errors: list[tuple[str, Exception]] = field(default_factory=list)
    active: int = 0

    def transfer_ended(self, peer: Peer, event: TransferEnded) -> None:
        self.ended.append((peer, event))

    def request_refused(self, peer: Peer, reason: str) -> None:
        self.refused.append((peer, reason))

    def datagram_dropped(self, reason: str) -> None:
        self.dropped.append(reason)

    def sessions_changed(self, active: int) -> None:
        self.active = active

    def internal_error(self, where: str, exc: Exception) -> None:
        self.errors.append((where, exc))

    def resource_exhausted(self, what: str, detail: str, suppressed: int) -> None:
        self.exhausted.append((what, detail, suppressed))

    def outcomes(self) -> list[str]:
        return [event.outcome.value for _, event in self.ended]


@asynccontextmanager
async def running_server(
    source: Source, config: ServerConfig | None = None, hosts: Sequence[str] = ("127.0.0.1",)
) -> AsyncIterator[tuple[TftpServer, RecordingObserver]]:
    """A started server on a free port of each host; closed (and checked for bugs) on the way out."""
    observer = RecordingObserver()
    server = TftpServer(config or ServerConfig(), source, observer)
    sockets = []
    try:
        for host in hosts:
            sockets.append(bind_udp(host, 0))
        server.start(sockets)
        yield server, observer
    finally:
        server.close()
        for sock in sockets:
            sock.close()
    assert observer.errors == []


async def fetch(address: Peer, name: str, bind: str | None = None, **options: str | int) -> Fetch:
    """A complete read by the blocking test client, on a thread while the loop serves."""

    def run() -> Fetch:
        with RawClient(address, bind=bind) as client:
            return client.fetch(name, "octet", **options)

    return await asyncio.to_thread(run)


async def wait_until(condition: object, timeout: float = 5.0) -> None:
    """Poll ``condition()`` on the loop (the server needs the loop to make progress)."""
    assert callable(condition)
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)
