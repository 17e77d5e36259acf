"""Serve from an HTTP origin: each RRQ for NAME becomes ``GET <prefix><NAME>`` (TFTP offload).

The origin decides what each machine gets (a per-machine iPXE script, a 404 for unknown machines)
from the request's context, sent as ``X-TFTP-*`` headers (``X-TFTP-IP``/``-Port``/``-File`` as in
tftp-http-proxy; docs/origin.md lists them all).  As for S3, everything is decided before the server
answers: the status (200 serve, 404/410 ERROR 1, 401/403 ERROR 2, anything else ERROR 0 with a
generic text) and the size (``Content-Length``; without it, up to ``buffer_max`` bytes are read to
learn it, and a longer body streams with tsize left out of the OACK).

Safety of the request line: each path segment is percent-encoded with nothing left "safe", so a
name can add no query, no fragment and no ``..``; the URL is then sent as already encoded.

Bodies up to ``buffer_max`` are read whole before answering, which lets them be cached by HTTP's
rules (httpcache.py); larger ones are streamed in order, never held.  Concurrent requests for one
name wait for the first one's answer and reuse it when the cache says they may (same Vary values,
storable, fresh); otherwise they ask the origin themselves, so a per-machine answer is never
served to another machine.

aiohttp is imported only when the source starts (a local server never loads it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from loguru import logger

from edgetftp import __version__
from edgetftp.sources.base import (
    UNKNOWN_SIZE,
    AccessDenied,
    Content,
    FileNotFound,
    MemoryContent,
    NullObserver,
    RequestContext,
    Source,
    SourceObserver,
    SourceUnavailable,
)
from edgetftp.sources.httpcache import CachedAnswer, HttpCache, ResponsePolicy, response_policy

MiB = 1 << 20
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRY_STATUSES = frozenset({502, 503, 504})
#: Pause before retrying a failed request, times the attempt number.
RETRY_BACKOFF = 0.1
#: After a failed revalidation, how long a stale copy is served before the origin is asked again.
STALE_RETRY_SECONDS = 1.0
#: Bytes asked of the HTTP stream at a time.
READ_CHUNK = 256 * 1024
#: An origin answer this recent makes /healthz true without a request.
HEALTH_FRESH_SECONDS = 10.0
#: Response headers a 304 may update in a stored answer.
RENEWED_HEADERS = ("Cache-Control", "Expires", "Date", "Age", "ETag", "Last-Modified", "Vary")

EMPTY = memoryview(b"")


class OriginFailure(SourceUnavailable):
    """The origin could not be reached, timed out, or answered 5xx: a stale copy may stand in."""


class OriginUnreachable(OriginFailure):
    """No answer at all (connection refused or reset, timeout): true for every client alike."""


# --- location, request line and headers ---


@dataclass(frozen=True, slots=True)
class OriginLocation:
    base: str
    """``scheme://authority/prefix/``, the prefix percent-encoded and ending with "/"."""

    def url_for(self, path: str) -> str:
        """The URL for a policy-checked path, each segment escaped so it stays one literal segment."""
        if not path or "\0" in path or "\\" in path:
            raise AccessDenied(f"refused path {path!r}")
        segments = path.split("/")
        if any(segment in ("", ".", "..") for segment in segments):
            raise AccessDenied(f"refused path {path!r}")
        return self.base + "/".join(quote(segment, safe="") for segment in segments)


def parse_origin_url(url: str) -> OriginLocation:
    """``https://boot.example/tftp`` -> base ``https://boot.example/tftp/``; raises ValueError."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"not an http(s):// URL: {url!r}")
    if not parts.hostname:
        raise ValueError(f"missing host in {url!r}")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError(f"an origin prefix takes no query or fragment: {url!r}")
    if parts.username or parts.password:
        raise ValueError("put credentials in --origin-header, not in the URL")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ValueError(f"bad port in {url!r}") from exc
    prefix = parts.path if parts.path.endswith("/") else parts.path + "/"
    return OriginLocation(f"{parts.scheme.lower()}://{parts.netloc}{prefix}")


def parse_header_line(line: str) -> tuple[str, str]:
    """``'Authorization: Bearer x'`` -> ``("Authorization", "Bearer x")``; raises ValueError."""
    name, sep, value = line.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        raise ValueError(f"expected 'Name: value', got {line.split(':')[0]!r}...")
    if any(not (33 <= ord(c) <= 126) or c in '()<>@,;:\\"/[]?={}' for c in name):
        raise ValueError(f"not a header name: {name!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"control character in the value of header {name}")
    return name, value


def header_safe(text: str) -> str:
    """Printable ASCII as is; anything else as percent-encoded UTF-8 (header values are ASCII)."""
    return "".join(c if 32 <= ord(c) <= 126 else quote(c, safe="") for c in text)


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def context_headers(context: RequestContext, region: str | None) -> dict[str, str]:
    """The ``X-TFTP-*`` headers describing one request (docs/origin.md)."""
    headers = {
        "X-TFTP-IP": context.client[0],
        "X-TFTP-Port": str(context.client[1]),
        "X-TFTP-File": header_safe(context.filename),
        "X-TFTP-Mode": context.mode,
        "X-TFTP-Options": header_safe(",".join(f"{k}={v}" for k, v in context.options.items())),
        "X-TFTP-Request-Id": context.request_id,
    }
    if context.listener is not None:
        headers["X-TFTP-Listener"] = format_address(context.listener)
    if region:
        headers["X-TFTP-Region"] = region
    return headers


def anonymous_context(path: str) -> RequestContext:
    """The context of a request made without one (``Source.open``): no client."""
    return RequestContext(client=("", 0), filename=path)


# --- options and the client ---


@dataclass(frozen=True, slots=True)
class OriginOptions:
    timeout: float = 5.0
    """Seconds for a connect, for the response headers, and between body chunks."""
    attempts: int = 2
    """Tries per request when the connection fails or the origin answers 502/503/504."""
    pool: int = 32
    """Connections to the origin at most."""
    buffer_max: int = 8 * MiB
    """Bodies up to this are read whole before answering (and may be cached); larger ones stream."""
    stale_if_error_max: float = 300.0
    """Seconds past expiry a cached answer may stand in for a failing origin, at most."""
    cross_host_redirects: bool = False
    max_redirects: int = 5
    static_headers: tuple[tuple[str, str], ...] = ()
    region: str | None = None

    @property
    def deadline(self) -> float:
        """Cap on one resolve: every attempt's headers plus reading a buffered body."""
        return self.attempts * (2 * self.timeout + RETRY_BACKOFF * self.attempts)


class OriginClient:
    """One long-lived aiohttp session: bounded connections, timeouts, retries, checked redirects."""

    def __init__(
        self,
        options: OriginOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
        observer: SourceObserver | None = None,
    ) -> None:
        self.options = options
        self.observer: SourceObserver = observer or NullObserver()
        self._clock = clock
        self._session: Any = None
        self._last_answer: float | None = None
        self.requests = 0

    async def start(self) -> None:
        if self._session is not None:
            return
        import aiohttp  # here, not at module level: local serving never pays for it

        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.options.timeout,
            sock_connect=self.options.timeout,
            sock_read=self.options.timeout,
        )
        connector = aiohttp.TCPConnector(limit=self.options.pool, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,  # a decoded body has no known length; encoded ones are refused
            headers={"User-Agent": f"edgetftp/{__version__}", "Accept-Encoding": "identity"},
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def get(self, url: str, headers: Mapping[str, str]) -> Any:
        """The response to GET ``url`` (headers read, body not), after redirects and retries.

        Raises OriginFailure when the origin cannot be reached or keeps failing, SourceUnavailable
        for a refused redirect.  The caller releases the response.
        """
        import aiohttp

        last: Exception | None = None
        for attempt in range(1, self.options.attempts + 1):
            try:
                response = await self._follow(url, headers)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.observer.store_call("GET", True)
                last = exc
            else:
                self.observer.store_call("GET", response.status >= 500)
                self._last_answer = self._clock()
                if response.status not in RETRY_STATUSES or attempt == self.options.attempts:
                    return response
                last = OriginFailure(f"GET {url}: HTTP {response.status} {response.reason}")
                response.release()
            if attempt < self.options.attempts:
                await asyncio.sleep(RETRY_BACKOFF * attempt)
        text = "timed out" if isinstance(last, TimeoutError) else f"{type(last).__name__}: {last}"
        failure = OriginFailure if isinstance(last, OriginFailure) else OriginUnreachable
        self.observer.source_error("unavailable")
        raise failure(f"GET {url}: {text} ({self.options.attempts} attempts)")

    async def _follow(self, url: str, headers: Mapping[str, str]) -> Any:
        from yarl import URL

        current = URL(url, encoded=True)
        start = current
        seen = {str(current)}
        send = dict(headers, **dict(self.options.static_headers))
        for _ in range(self.options.max_redirects + 1):
            self.requests += 1
            async with asyncio.timeout(self.options.timeout):
                response = await self._session.get(current, headers=send, allow_redirects=False)
            location = response.headers.get("Location")
            if response.status not in REDIRECT_STATUSES or not location:
                return response
            response.release()
            target = current.join(URL(location))
            if (target.scheme, target.host, target.port) != (start.scheme, start.host, start.port):
                if not self.options.cross_host_redirects:
                    raise SourceUnavailable(f"GET {url}: redirect to another host refused: {target}")
                send = {k: v for k, v in send.items() if k.lower() not in ("authorization", "cookie")}
            if str(target) in seen:
                raise SourceUnavailable(f"GET {url}: redirect loop at {target}")
            seen.add(str(target))
            current = target
        raise SourceUnavailable(f"GET {url}: more than {self.options.max_redirects} redirects")

    async def check(self, url: str) -> bool:
        """True if the origin answered recently, else after a HEAD of the prefix (any status < 500)."""
        if self._session is None:
            return False
        if self._last_answer is not None and self._clock() - self._last_answer < HEALTH_FRESH_SECONDS:
            return True
        try:
            async with asyncio.timeout(min(self.options.timeout, 2.0)):
                response = await self._session.head(url, headers=dict(self.options.static_headers))
                response.release()
        except Exception as exc:
            logger.warning("origin health check of {} failed: {!r}", url, exc)
            return False
        if response.status >= 500:
            logger.warning("origin health check of {}: HTTP {}", url, response.status)
            return False
        self._last_answer = self._clock()
        return True


# --- contents ---


async def read_body(response: Any, limit: int, timeout: float, where: str) -> bytes:
    """Up to ``limit`` bytes of the body (all of it when shorter).  A broken body raises OriginFailure."""
    body = bytearray()  # one growing buffer: never the chunks and their join at once
    while len(body) < limit:
        chunk = await _read_chunk(response, min(READ_CHUNK, limit - len(body)), timeout, where)
        if not chunk:
            break
        body += chunk
    return bytes(body)


async def _read_chunk(response: Any, limit: int, timeout: float, where: str) -> bytes:
    import aiohttp

    try:
        async with asyncio.timeout(timeout):
            return bytes(await response.content.read(limit))
    except (aiohttp.ClientError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        text = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        raise OriginFailure(f"{where}: body broke: {text}") from exc


class OriginStream(Content):
    """A body too large to hold, read in order from the open response (never rewound)."""

    def __init__(self, response: Any, prefix: bytes, size: int | None, timeout: float, where: str) -> None:
        self.size = UNKNOWN_SIZE if size is None else size
        self._known = size is not None
        self._response: Any = response
        self._pending = memoryview(prefix)  # what was read to learn the size; sliced without copies
        self._position = 0
        self._timeout = timeout
        self._where = where

    @property
    def tsize(self) -> int | None:
        return self.size if self._known else None

    async def read(self, offset: int, length: int) -> bytes:
        if offset != self._position:
            raise SourceUnavailable(f"{self._where}: read at {offset}, stream at {self._position}")
        wanted = min(length, self.size - self._position)
        parts, held = [], 0
        if self._pending:
            parts.append(bytes(self._pending[:wanted]))
            held = len(parts[0])
            self._pending = self._pending[held:]
        while held < wanted:
            if self._response is None:
                break
            chunk = await _read_chunk(
                self._response, min(READ_CHUNK, wanted - held), self._timeout, self._where
            )
            if not chunk:
                self._finished()
                break
            parts.append(chunk)
            held += len(chunk)
        self._position += held
        if self._known and self._position == self.size:
            self._finished()  # all of it read: the connection can serve another request
        if held < wanted and self._known:
            raise SourceUnavailable(f"{self._where}: body ended at byte {self._position} of {self.size}")
        return b"".join(parts)

    def _finished(self) -> None:
        if self._response is not None:
            self._response.release()
            self._response = None

    async def aclose(self) -> None:
        if self._response is not None:
            self._response.close()  # the unread rest of the body: drop the connection, read nothing more
            self._response = None


# --- the source ---


@dataclass(frozen=True, slots=True)
class _Shared:
    """What the first of several concurrent requests for a name leaves for the others."""

    failure: OriginUnreachable | None = None
    """The origin was unreachable: the others fail the same way instead of queueing behind it (an
    HTTP error status may be about one client only, so the others ask for themselves then)."""


class HttpSource(Source):
    """Files from an HTTP origin, cached by HTTP's rules."""

    def __init__(
        self,
        location: OriginLocation,
        client: OriginClient,
        cache: HttpCache,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description = location.base
        self.location = location
        self.client = client
        self.cache = cache
        self._clock = clock
        self._in_flight: dict[str, asyncio.Future[_Shared]] = {}

    @property
    def options(self) -> OriginOptions:
        return self.client.options

    async def start(self) -> None:
        await self.client.start()
        logger.info(
            "origin {} (timeout {}s x {} attempts, bodies up to {} KiB buffered, cache {} MiB)",
            self.description,
            self.options.timeout,
            self.options.attempts,
            self.options.buffer_max >> 10,
            self.cache.total_bytes >> 20,
        )

    async def open(self, path: str) -> Content:
        return await self.open_for(path, anonymous_context(path))

    def open_now(self, path: str) -> Content | None:
        return self.open_now_for(path, anonymous_context(path))

    def open_now_for(self, path: str, context: RequestContext) -> Content | None:
        """The answer while a stored one is fresh for this request (FileNotFound for a kept 404)."""
        url = self.location.url_for(path)
        answer = self.cache.lookup(url, self._headers(context))
        if answer is None or not answer.fresh(self._clock()):
            return None
        return self._from_cache(url, answer)

    async def open_for(self, path: str, context: RequestContext) -> Content:
        url = self.location.url_for(path)
        headers = self._headers(context)
        fresh = self.open_now_for(path, context)
        if fresh is not None:
            return fresh
        self.client.observer.cache_event("miss")
        try:
            async with asyncio.timeout(self.options.deadline):
                return await self._collapsed(url, headers)
        except TimeoutError:
            raise OriginUnreachable(f"GET {url}: no answer within {self.options.deadline:.0f}s") from None

    async def check(self) -> bool:
        return await self.client.check(self.location.base)

    async def aclose(self) -> None:
        self.cache.clear()
        await self.client.aclose()

    # --- request collapsing ---

    async def _collapsed(self, url: str, headers: Mapping[str, str]) -> Content:
        """Wait for a request for this name already under way and reuse its answer if allowed."""
        leader = self._in_flight.get(url)
        if leader is not None:
            shared = await asyncio.shield(leader)
            if shared.failure is not None:
                return self._stale_or_raise(url, self.cache.lookup(url, headers), shared.failure)
            answer = self.cache.lookup(url, headers)
            if answer is not None and answer.fresh(self._clock()):
                return self._from_cache(url, answer)
            return await self._fetch(url, headers)  # not reusable for this client: ask for it
        done: asyncio.Future[_Shared] = asyncio.get_running_loop().create_future()
        self._in_flight[url] = done
        shared = _Shared()
        try:
            return await self._fetch(url, headers)
        except OriginUnreachable as exc:
            shared = _Shared(failure=exc)
            raise
        finally:
            del self._in_flight[url]
            done.set_result(shared)

    # --- one request ---

    async def _fetch(self, url: str, headers: Mapping[str, str]) -> Content:
        stored = self.cache.lookup(url, headers)
        conditional = stored.conditional_headers() if stored is not None else {}
        try:
            response = await self.client.get(url, {**headers, **conditional})
        except OriginFailure as exc:
            return self._stale_or_raise(url, stored, exc)
        content: Content | None = None
        try:
            content = await self._answer(url, headers, stored, response)
            return content
        except OriginFailure as exc:
            return self._stale_or_raise(url, stored, exc)
        finally:
            if not isinstance(content, OriginStream):  # a stream owns its response; else we are done with it
                response.release()

    async def _answer(
        self, url: str, headers: Mapping[str, str], stored: CachedAnswer | None, response: Any
    ) -> Content:
        status = int(response.status)
        where = f"GET {url}"
        if status == 304 and stored is not None and stored.body is not None:
            renewed = {**stored.headers, **_picked(response.headers)}
            policy = self._policy(304, renewed)
            stored.renew(policy, renewed, self._clock())
            if not policy.storable:  # the origin no longer allows keeping it: serve it this once
                self.cache.forget(url, headers)
            self.cache.stats.revalidated += 1
            self.client.observer.cache_event("revalidated")
            return MemoryContent(stored.body)
        if status in (404, 410):
            policy = self._policy(status, response.headers)
            self.cache.store(url, headers, status, None, policy, _picked(response.headers))
            raise FileNotFound(f"{where}: HTTP {status}")
        if status in (401, 403):
            self.cache.forget(url, headers)
            raise AccessDenied(f"{where}: HTTP {status}")
        if status >= 500:
            raise OriginFailure(f"{where}: HTTP {status} {response.reason}")
        if status != 200:
            raise SourceUnavailable(f"{where}: unexpected HTTP {status} {response.reason}")
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise SourceUnavailable(f"{where}: Content-Encoding {encoding} although identity was asked")
        return await self._body(url, headers, response)

    async def _body(self, url: str, headers: Mapping[str, str], response: Any) -> Content:
        where = f"GET {url}"
        length = response.content_length
        timeout, limit = self.options.timeout, self.options.buffer_max
        if length is not None and length > limit:
            return OriginStream(response, b"", length, timeout, where)
        data = await read_body(response, limit + 1 if length is None else length, timeout, where)
        if length is not None and len(data) != length:
            raise OriginFailure(f"{where}: body ended at byte {len(data)} of Content-Length {length}")
        if len(data) > limit:  # no length and more than we buffer: stream the rest, without tsize
            return OriginStream(response, data, None, timeout, where)
        body = memoryview(data).toreadonly() if data else EMPTY
        policy = self._policy(200, response.headers)
        self.cache.store(url, headers, 200, body, policy, _picked(response.headers))
        return MemoryContent(body)

    # --- helpers ---

    def _headers(self, context: RequestContext) -> dict[str, str]:
        return context_headers(context, self.options.region)

    def _policy(self, status: int, headers: Mapping[str, str]) -> ResponsePolicy:
        return response_policy(status, headers, stale_if_error_max=self.options.stale_if_error_max)

    def _from_cache(self, url: str, answer: CachedAnswer) -> Content:
        if answer.body is None:
            self.cache.stats.negative_hits += 1
            self.client.observer.cache_event("negative-hit")
            raise FileNotFound(f"GET {url}: HTTP {answer.status} (cached)")
        self.cache.stats.hits += 1
        self.client.observer.cache_event("hit")
        return MemoryContent(answer.body)

    def _stale_or_raise(self, url: str, stored: CachedAnswer | None, error: OriginFailure) -> Content:
        now = self._clock()
        if stored is None or stored.body is None or not stored.usable_when_failing(now):
            logger.warning("origin failed: {}", error)
            raise error
        logger.warning("origin failed, serving the cached copy of {}: {}", url, error)
        self.cache.stats.stale_served += 1
        self.client.observer.cache_event("stale-served")
        stored.fresh_until = min(now + STALE_RETRY_SECONDS, stored.stale_until)
        return MemoryContent(stored.body)


def _picked(headers: Mapping[str, str]) -> dict[str, str]:
    """The response headers a stored answer keeps (for a later 304 and for its policy)."""
    return {name: headers[name] for name in RENEWED_HEADERS if name in headers}


def build_http_source(
    url: str,
    options: OriginOptions,
    *,
    cache_bytes: int,
    object_max: int,
    clock: Callable[[], float] = time.monotonic,
    observer: SourceObserver | None = None,
) -> HttpSource:
    """The origin source for ``url`` (one SOURCE layer).  Nothing touches the network yet."""
    client = OriginClient(options, clock=clock, observer=observer)
    cache = HttpCache(total_bytes=cache_bytes, object_max=object_max, clock=clock)
    return HttpSource(parse_origin_url(url), client, cache, clock=clock)


__all__ = [
    "HttpSource",
    "OriginClient",
    "OriginFailure",
    "OriginLocation",
    "OriginOptions",
    "OriginStream",
    "build_http_source",
    "context_headers",
    "parse_header_line",
    "parse_origin_url",
]
