"""A real S3 endpoint for tests: moto's HTTP server, behind a counting, fault-injecting reverse proxy.

The source under test talks to the proxy, never to moto directly, so request counts are measured at
the endpoint ("one GET for N clients" is observed, not reported by the code under test), and faults
(5xx, a hung response, a connection reset before or in the middle of a body, moto stopped) are real
TCP/HTTP events.  Test data is written straight to moto, so it does not show in the counts.
"""

from __future__ import annotations

import collections
import http.client
import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    # Nothing outside loopback: no instance-metadata probe, no shared files, no proxy.
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "NO_PROXY": "127.0.0.1,localhost,::1",
}
AWS_ENV_TO_CLEAR = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "trailer"}
)


@contextmanager
def dummy_aws_environment() -> Iterator[None]:
    """Dummy credentials from the default chain's first link (the environment), restored afterwards."""
    saved = {name: os.environ.get(name) for name in (*DUMMY_AWS_ENV, *AWS_ENV_TO_CLEAR)}
    os.environ.update(DUMMY_AWS_ENV)
    for name in AWS_ENV_TO_CLEAR:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class RecordingObserver:
    """A SourceObserver that keeps what a source reported, for assertions."""

    def __init__(self) -> None:
        self.cache: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[tuple[str, bool]] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.resident: list[int] = []

    def cache_event(self, kind: str) -> None:
        self.cache[kind] += 1

    def store_call(self, operation: str, failed: bool) -> None:
        self.calls[(operation, failed)] += 1

    def source_error(self, kind: str) -> None:
        self.errors[kind] += 1

    def resident_bytes(self, total: int) -> None:
        self.resident.append(total)


# --- moto ---


class MotoS3:
    """moto's S3 over real HTTP on 127.0.0.1; can be stopped and restarted on the same port (outages)."""

    def __init__(self) -> None:
        self.port = 0
        self._server: ThreadedMotoServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]
        self._server = server

    def stop(self) -> None:
        """Stop serving and close the listening socket, so connections are refused (not queued)."""
        if self._server is None:
            return
        self._server.stop()
        wsgi_server = self._server._server  # ThreadedMotoServer.stop() leaves the socket open
        if wsgi_server is not None:
            wsgi_server.server_close()
        self._server = None

    def client(self) -> Any:
        """A plain boto3 client straight to moto (test set-up; not counted by the proxy)."""
        return boto3.client("s3", endpoint_url=self.url, region_name=REGION)


# --- the counting, failing proxy ---


@dataclass(frozen=True, slots=True)
class SeenRequest:
    method: str
    path: str  # URL path, unquoted: "/bucket/prefix/key" (path-style)
    query: str
    range: str | None
    if_match: str | None


FaultKind = Literal["status", "delay", "reset", "truncate"]


@dataclass(slots=True)
class Fault:
    """What to do instead of (or to) the next matching responses."""

    kind: FaultKind
    status: int = 503  # "status": answer this instead of forwarding
    code: str = "InjectedFault"  # "status": the S3 error code in the answer's body
    seconds: float = 30.0  # "delay": hold the request this long before forwarding
    after_bytes: int = 0  # "truncate": body bytes sent before the connection ends early
    with_reset: bool = False  # "truncate": end it with a RST (unread data is lost) instead of a FIN
    methods: frozenset[str] = frozenset({"GET", "HEAD"})
    times: int | None = None  # how many requests it hits; None = until cleared
    hits: int = field(default=0)

    def matches(self, method: str) -> bool:
        return method in self.methods and (self.times is None or self.hits < self.times)


class CountingProxy:
    """A threaded HTTP/1.1 reverse proxy that counts requests by method and path, and injects faults."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._lock = threading.Lock()
        self._seen: list[SeenRequest] = []
        self._faults: list[Fault] = []
        self._wake = threading.Event()  # ends every injected delay at once (fault cleared, stop)
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._wake.set()
        self._server.shutdown()
        self._server.server_close()

    # --- counts ---

    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._seen)

    def count(self, method: str, path: str | None = None) -> int:
        """Requests seen with this method (and exactly this unquoted path, when given)."""
        return sum(1 for r in self.requests() if r.method == method and (path is None or r.path == path))

    def reset_counts(self) -> None:
        with self._lock:
            self._seen.clear()

    # --- faults ---

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
            self._wake.clear()
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._wake.set()

    def _record(self, request: SeenRequest) -> Fault | None:
        with self._lock:
            self._seen.append(request)
            for fault in self._faults:
                if fault.matches(request.method):
                    fault.hits += 1
                    return fault
        return None


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], proxy: CountingProxy):
        super().__init__(address, handler)
        self.proxy = proxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-request (a stopped server, a timeout) is normal here


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real S3 endpoint
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._proxy()

    def do_HEAD(self) -> None:
        self._proxy()

    def do_PUT(self) -> None:
        self._proxy()

    def do_POST(self) -> None:
        self._proxy()

    def do_DELETE(self) -> None:
        self._proxy()

    def _proxy(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        request_body = self.rfile.read(length) if length else None
        url = urlsplit(self.path)
        seen = SeenRequest(
            self.command,
            unquote(url.path),
            url.query,
            self.headers.get("Range"),
            self.headers.get("If-Match"),
        )
        fault = proxy._record(seen)
        if fault is not None and fault.kind == "reset":
            self._reset()
            return
        if fault is not None and fault.kind == "status":
            self._answer_status(fault.status, fault.code)
            return
        if fault is not None and fault.kind == "delay":
            proxy._wake.wait(fault.seconds)
        try:
            status, reason, headers, body = self._forward(request_body)
        except OSError:  # moto is stopped: the endpoint is down for the client too
            self._reset()
            return
        self.send_response(status, reason)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault is not None and fault.kind == "truncate":
            self.wfile.write(body[: fault.after_bytes])
            self.wfile.flush()
            if fault.with_reset:
                self._reset()
            self.close_connection = True  # a FIN before Content-Length bytes: a premature end of body
            return
        self.wfile.write(body)

    def _forward(self, body: bytes | None) -> tuple[int, str, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.proxy.upstream_port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            return response.status, response.reason, response.getheaders(), payload
        finally:
            upstream.close()

    def _answer_status(self, status: int, code: str) -> None:
        body = (
            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
            f"<Message>injected {status}</Message></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _reset(self) -> None:
        """Abort the TCP connection with a RST (SO_LINGER 0), as a crashed or unreachable endpoint would."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


# --- the whole endpoint ---


@dataclass
class S3Endpoint:
    """moto + the counting proxy in front of it; ``url`` is what the code under test is given."""

    moto: MotoS3
    proxy: CountingProxy

    @property
    def url(self) -> str:
        return self.proxy.url

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.moto.client().put_object(Bucket=bucket, Key=key, Body=data)

    def delete(self, bucket: str, key: str) -> None:
        self.moto.client().delete_object(Bucket=bucket, Key=key)

    def create_bucket(self, bucket: str) -> None:
        self.moto.client().create_bucket(Bucket=bucket)


@contextmanager
def s3_endpoint() -> Iterator[S3Endpoint]:
    """Start moto and the proxy in front of it; stop both (by their own handles) on exit."""
    with dummy_aws_environment():
        moto = MotoS3()
        moto.start()
        proxy = CountingProxy(moto.port)
        proxy.start()
        try:
            yield S3Endpoint(moto, proxy)
        finally:
            proxy.stop()
            moto.stop()
