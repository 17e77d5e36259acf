"""A real HTTP origin on loopback for the origin-source tests: an aiohttp application in a thread.

It serves static answers the test puts in ``files``, generates a per-client iPXE script from the
``X-TFTP-*`` headers at ``/boot/boot.ipxe``, answers ``If-None-Match`` with 304, can be slowed down,
made to fail with a status, stopped and started again on the same port, and logs every request
(method, raw path as received on the wire, headers) so tests can count and inspect them.

``RawOrigin`` is a plain TCP server that sends canned bytes: the malformed answers (a body shorter
or longer than its Content-Length, a reset mid-body) that a correct HTTP server refuses to produce.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from edgetftp.sources.base import Source
from tests.serverproc import READY_PROBE_NAME

T = TypeVar("T")
MiB = 1 << 20


@dataclass(frozen=True)
class Logged:
    method: str
    raw_path: str
    headers: dict[str, str]


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def ipxe_script(headers: dict[str, str]) -> bytes:
    """The per-machine script the origin generates from the request's context."""
    return (
        "#!ipxe\n"
        f"echo booting {headers.get('X-TFTP-IP')}:{headers.get('X-TFTP-Port')}"
        f" region {headers.get('X-TFTP-Region', '-')} file {headers.get('X-TFTP-File')}\n"
        f"set request {headers.get('X-TFTP-Request-Id')}\n"
        "chain --autofree http://boot.example/${request}\n"
    ).encode()


class LoopThread:
    """An event loop running in a daemon thread; coroutines are submitted to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class OriginServer:
    """The test origin.  Everything a test sets (files, delay, fail_status) is read per request."""

    def __init__(self, thread: LoopThread, ssl_context: ssl.SSLContext | None = None) -> None:
        self.thread = thread
        self.ssl_context = ssl_context
        self.files: dict[str, Answer] = {}
        self.generated_headers: dict[str, str] = {"Cache-Control": "no-store"}
        self.generator: Callable[[dict[str, str]], bytes] = ipxe_script
        self.missing_headers: dict[str, str] = {}
        self.delay = 0.0
        self.fail_status: int | None = None
        self.requests: list[Logged] = []
        self.open_streams = 0
        self.streamed_bytes = 0
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.thread.call(self._start())

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def prefix(self, prefix: str = "/boot/") -> str:
        return self.url + prefix

    # --- control ---

    def stop(self) -> None:
        if self._runner is not None:
            self.thread.call(self._runner.cleanup())
            self._runner = None

    def start(self) -> None:
        if self._runner is None:
            self.thread.call(self._start())

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
        self.files.clear()
        self.generated_headers = {"Cache-Control": "no-store"}
        self.generator = ipxe_script
        self.missing_headers = {}
        self.delay, self.fail_status = 0.0, None

    def count(self, raw_path: str, method: str = "GET") -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.raw_path == raw_path and r.method == method)

    def logged(self) -> list[Logged]:
        """The requests the origin received, less the server-process helper's readiness probes."""
        with self._lock:
            return [request for request in self.requests if READY_PROBE_NAME not in request.raw_path]

    # --- serving ---

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True, ssl_context=self.ssl_context)
        await site.start()
        self._runner = runner
        if not self.port:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]  # aiohttp types _server as AbstractServer

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        headers = dict(request.headers)
        with self._lock:
            self.requests.append(Logged(request.method, request.raw_path, headers))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_status is not None:
            return web.Response(status=self.fail_status, text="origin says: internal detail 0xdeadbeef")
        path = request.raw_path
        if path.endswith("/boot.ipxe"):
            return web.Response(body=self.generator(headers), headers=self.generated_headers)
        if path.endswith("/huge.img") or path.endswith("/huge-chunked.img"):
            return await self._stream_huge(request, chunked=path.endswith("-chunked.img"))
        answer = self.files.get(path)
        if answer is None:
            return web.Response(status=404, text="no such thing", headers=self.missing_headers)
        etag = answer.headers.get("ETag")
        if etag and request.headers.get("If-None-Match") == etag:
            kept = {
                k: v for k, v in answer.headers.items() if k in ("ETag", "Cache-Control", "Expires", "Vary")
            }
            return web.Response(status=304, headers=kept)
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def _stream_huge(self, request: web.Request, *, chunked: bool) -> web.StreamResponse:
        """2 GiB of generated bytes, written as fast as the client reads (never held)."""
        size = 2 << 30
        response = web.StreamResponse(headers={"Cache-Control": "max-age=600"})
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = size
        await response.prepare(request)
        chunk = bytes(range(256)) * 256  # 64 KiB
        self.open_streams += 1
        try:
            sent = 0
            while sent < size:
                await response.write(chunk)
                sent += len(chunk)
                self.streamed_bytes = sent
        except (ConnectionError, asyncio.CancelledError):
            raise
        finally:
            self.open_streams -= 1
        return response


class RawOrigin:
    """A TCP server that answers every connection with the bytes ``responses[path]`` (then closes).

    A response given as a list of parts is sent part by part with ``pause`` seconds between, and
    ``RESET`` as a part aborts the connection (an RST) at that point.
    """

    RESET = b"<reset>"

    def __init__(self, thread: LoopThread) -> None:
        self.thread = thread
        self.responses: dict[str, list[bytes]] = {}
        self.pause = 0.05
        self.paths: list[str] = []
        self._server: asyncio.Server | None = None
        self.port = 0
        self.thread.call(self._start())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.paths.append(path)
            for part in self.responses.get(path, [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"]):
                if part == self.RESET:
                    writer.transport.abort()
                    return
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(self.pause)
            writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.transport.abort()

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


def make_test_ca(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A throw-away CA and a certificate for 127.0.0.1 it signed: (the CA file, the server context)."""
    ca_key, ca, key, csr, cert, ext = (
        str(directory / name)
        for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "ext.cnf")
    )
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_extensions = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]
    _openssl(
        "req",
        "-x509",
        *new_key,
        "-keyout",
        ca_key,
        "-out",
        ca,
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        *ca_extensions,
    )
    _openssl("req", *new_key, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    Path(ext).write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    signing = ["-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2", "-extfile", ext]
    _openssl("x509", "-req", "-in", csr, "-out", cert, *signing)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return Path(ca), context


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def running_origin() -> Iterator[tuple[OriginServer, RawOrigin]]:
    thread = LoopThread()
    origin = OriginServer(thread)
    raw = RawOrigin(thread)
    try:
        yield origin, raw
    finally:
        origin.stop()
        thread.call(_close_raw(raw))
        thread.stop()


async def _close_raw(raw: RawOrigin) -> None:
    raw.stop()


def response_bytes(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode() + body


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


def with_source(source: Source, scenario: Callable[[], Awaitable[T]]) -> T:
    """Run ``scenario`` with ``source`` started, and closed afterwards whatever happens."""

    async def wrapped() -> T:
        await source.start()
        try:
            return await scenario()
        finally:
            await source.aclose()

    return run(wrapped)
