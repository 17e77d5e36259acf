"""Serve an S3 prefix read-only: ``s3://bucket/prefix/`` + the request path is the object key.

``open`` resolves size and ETag through the edge cache (one shared HEAD, or none while fresh) before
the server answers.  Then:

- an object whose bytes are resident comes back as ``MemoryContent`` (zero copies, shared);
- an object small enough to cache comes back as ``CachedObjectContent``: its first read fetches the
  whole object once for every concurrent transfer (single-flight), so a size probe never downloads;
- a larger object is streamed by ``ObjectReader``: one ranged GET from the current offset, read
  exactly, resumed with a new ``Range`` when the stream breaks, pinned to the ETag seen by the HEAD
  (``If-Match``) so a resumed stream cannot splice two versions.

aioboto3, botocore and aiohttp are imported only in ``S3Store.start`` and the helpers it calls, so
a server that serves a local directory never loads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from edgetftp.observability import S3_ERRORS, S3_REQUESTS
from edgetftp.sources.base import (
    AccessDenied,
    Content,
    FileNotFound,
    MemoryContent,
    Source,
    SourceError,
    SourceUnavailable,
)
from edgetftp.sources.cache import CacheLimits, EdgeCache, ObjectChanged, ObjectInfo, Resolved

if TYPE_CHECKING:
    from edgetftp.settings import Settings

#: S3 error codes (or bare HTTP statuses, which is all a HEAD gets) and what they mean for the client.
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidObjectState"})
CHANGED_CODES = frozenset({"PreconditionFailed", "412"})

#: Times a broken body stream is reopened (with Range from the current offset) without progress.
RESUME_ATTEMPTS = 3
#: Bytes asked of the HTTP stream at a time when fetching a whole object into memory.
FETCH_CHUNK = 1 << 20
#: A successful S3 answer this recent makes /healthz true without a request.
HEALTH_FRESH_SECONDS = 10.0
#: Upper bound on the time /healthz spends asking S3.
HEALTH_TIMEOUT = 2.0

EMPTY = memoryview(b"")


# --- location and keys ---


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str
    """Empty, or ends with "/": ``prefix`` never matches a sibling such as ``prefix-other/``."""

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key_for(self, path: str) -> str:
        """The object key for a policy-checked path, checked again: the prefix must hold whatever happens.

        Some HTTP stacks normalise ``.``/``..`` segments in the URL they send, which would move the
        request outside the prefix; backslashes and empty segments have no business here either.
        """
        if not path or "\\" in path or "\0" in path:
            raise AccessDenied(f"refused path {path!r}")
        if any(segment in ("", ".", "..") for segment in path.split("/")):
            raise AccessDenied(f"refused path {path!r}")
        return self.prefix + path


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket/boot/`` -> S3Location("bucket", "boot/"); ``s3://bucket`` serves the whole bucket."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "s3":
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"missing bucket name in {url!r}")
    prefix = prefix.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return S3Location(bucket, prefix)


# --- client options and error mapping ---


@dataclass(frozen=True, slots=True)
class S3Options:
    """How to reach S3; mirrors the S3 settings.  Credentials are never here: the default chain finds them."""

    region: str | None = None
    endpoint_url: str | None = None
    force_path_style: bool = False
    dualstack: bool = True
    accelerate: bool = False
    sign_request: bool = True
    debug_api: bool = False
    timeout: float = 5.0
    retries: int = 3
    pool: int = 64

    @property
    def call_deadline(self) -> float:
        """Cap on one call, retries included: botocore alone could take retries x (connect + read)."""
        return 2 * self.timeout

    @property
    def download_slots(self) -> int:
        """Connections body downloads may hold; the rest stay free so HEADs never queue behind streams."""
        return max(1, self.pool - max(1, self.pool // 4))


def botocore_config(options: S3Options) -> Any:
    """The botocore ``Config`` for these options (imports botocore)."""
    from botocore import UNSIGNED
    from botocore.config import Config

    s3: dict[str, Any] = {}
    if options.force_path_style:
        s3["addressing_style"] = "path"
    if options.accelerate:
        s3["use_accelerate_endpoint"] = True
    extra: dict[str, Any] = {}
    if not options.sign_request:
        extra["signature_version"] = UNSIGNED
    return Config(
        connect_timeout=options.timeout,
        read_timeout=options.timeout,
        retries={"mode": "standard", "total_max_attempts": options.retries},
        max_pool_connections=options.pool,
        use_dualstack_endpoint=options.dualstack and options.endpoint_url is None,
        s3=s3 or None,
        **extra,
    )


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError (duck-typed: botocore is imported lazily)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    if code:
        return str(code)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(status) if status else None


def map_error(exc: BaseException, where: str) -> SourceError:
    """Turn an S3/botocore/network failure into the SourceError the client sees; the text is for logs."""
    if isinstance(exc, SourceError):
        return exc
    code = _error_code(exc)
    detail = f"{where}: {type(exc).__name__}: {exc}"
    if code in NOT_FOUND_CODES:
        return FileNotFound(detail)
    if code in DENIED_CODES:
        return AccessDenied(detail)
    if code in CHANGED_CODES:
        return ObjectChanged(detail)
    if isinstance(exc, TimeoutError):
        return SourceUnavailable(f"{where}: timed out")
    return SourceUnavailable(detail)


def _is_answer(exc: BaseException) -> bool:
    """S3 answered (a 4xx about a key): it is up, even if this key is not there."""
    code = _error_code(exc)
    return code is not None and code in NOT_FOUND_CODES | DENIED_CODES | CHANGED_CODES


@functools.cache
def _stream_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this body stream broke; reopen it" (imports aiohttp and botocore)."""
    import aiohttp
    from botocore.exceptions import BotoCoreError

    return (OSError, TimeoutError, EOFError, aiohttp.ClientError, BotoCoreError)


# --- the store: one long-lived client ---


class _Download:
    """An open body stream and the download slot it holds until closed."""

    def __init__(self, body: Any, release: Callable[[], None]) -> None:
        self._body = body
        self._release: Callable[[], None] | None = release

    async def read(self, limit: int) -> bytes:
        chunk = await self._body.read(limit)
        return bytes(chunk)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken stream may raise; it is gone either way
            self._body.close()
        if self._release is not None:
            self._release()
            self._release = None


class S3Store:
    """The S3 calls edgetftp makes (HEAD, ranged GET, HEAD bucket), with timeouts and error mapping."""

    def __init__(
        self, bucket: str, options: S3Options, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.bucket = bucket
        self.options = options
        self._clock = clock
        self._client: Any = None
        self._exits = contextlib.AsyncExitStack()
        self._download_slots = asyncio.Semaphore(options.download_slots)
        self._last_answer: float | None = None

    async def start(self) -> None:
        if self._client is not None:
            return
        import aioboto3  # here, not at module level: local serving never pays for it

        session = aioboto3.Session(region_name=self.options.region)
        try:
            self._client = await self._exits.enter_async_context(
                session.client(
                    "s3", endpoint_url=self.options.endpoint_url, config=botocore_config(self.options)
                )
            )
        except Exception as exc:  # botocore rejects some combinations (accelerate + path style, ...)
            raise SourceUnavailable(f"cannot create the S3 client: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        self._client = None
        await self._exits.aclose()

    async def head(self, key: str) -> ObjectInfo:
        response = await self._call("head_object", key, Key=key)
        return ObjectInfo(size=int(response["ContentLength"]), etag=str(response.get("ETag", "")))

    async def fetch(self, key: str, info: ObjectInfo) -> memoryview:
        """The whole object, read into one buffer that is then shared read-only."""
        if info.size == 0:
            return EMPTY
        buffer = bytearray(info.size)
        reader = ObjectReader(self, key, info)
        try:
            await reader.readinto(memoryview(buffer))
        finally:
            reader.close()
        return memoryview(buffer).toreadonly()

    async def open_range(self, key: str, info: ObjectInfo, start: int) -> _Download:
        """A body stream of this version of ``key`` from byte ``start`` to the end."""
        await self._download_slots.acquire()
        try:
            params: dict[str, Any] = {"Key": key, "Range": f"bytes={start}-{info.size - 1}"}
            if info.etag:
                params["IfMatch"] = info.etag
            response = await self._call("get_object", key, **params)
            body = response["Body"]
            length = int(response.get("ContentLength", -1))
            etag = str(response.get("ETag", info.etag))
            if length != info.size - start or (info.etag and etag != info.etag):
                body.close()
                raise ObjectChanged(
                    f"{self._where(key)}: expected {info.size - start} bytes of {info.etag}, "
                    f"got {length} of {etag}"
                )
        except BaseException:
            self._download_slots.release()
            raise
        return _Download(body, self._download_slots.release)

    async def check(self) -> bool:
        """True if S3 answered recently, else after a HEAD on the bucket (a 403 still means "up")."""
        if self._client is None:
            return False
        if self._last_answer is not None and self._clock() - self._last_answer < HEALTH_FRESH_SECONDS:
            return True
        try:
            async with asyncio.timeout(min(self.options.timeout, HEALTH_TIMEOUT)):
                await self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if _error_code(exc) in DENIED_CODES:  # credentials allow GetObject but not ListBucket
                self._last_answer = self._clock()
                return True
            logger.warning("S3 health check of s3://{} failed: {}", self.bucket, map_error(exc, "HeadBucket"))
            return False
        self._last_answer = self._clock()
        return True

    async def _call(self, operation: str, key: str, **params: Any) -> dict[str, Any]:
        """One S3 call under the overall deadline, mapped errors, and a log line with --debug-api."""
        if self._client is None:
            raise SourceUnavailable("the S3 source is not started")
        started = time.perf_counter()
        S3_REQUESTS.labels(operation).inc()
        try:
            async with asyncio.timeout(self.options.call_deadline):
                response: dict[str, Any] = await getattr(self._client, operation)(
                    Bucket=self.bucket, **params
                )
        except Exception as exc:
            error = map_error(exc, f"{operation} {self._where(key)}")
            S3_ERRORS.labels(operation).inc()
            if _is_answer(exc):
                self._last_answer = self._clock()
            if self.options.debug_api:
                self._log_call(operation, key, params, f"failed: {error}", started)
            elif isinstance(error, SourceUnavailable):
                logger.warning("S3 {} failed: {}", operation, error)
            raise error from exc
        self._last_answer = self._clock()
        if self.options.debug_api:
            metadata = response.get("ResponseMetadata", {})
            outcome = f"{metadata.get('HTTPStatusCode')} ({metadata.get('RetryAttempts', 0)} retries)"
            self._log_call(operation, key, params, outcome, started)
        return response

    def _log_call(
        self, operation: str, key: str, params: dict[str, Any], outcome: str, started: float
    ) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        extra = f" Range={params['Range']}" if "Range" in params else ""
        logger.info("S3 {} {}{} -> {} in {:.1f} ms", operation, self._where(key), extra, outcome, elapsed_ms)

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


class ObjectReader:
    """Reads one version of an object sequentially, exactly, resuming a broken stream with Range.

    Memory stays bounded: one open HTTP stream (aiohttp pauses the socket when its buffer is full)
    and whatever the caller asks for at a time.
    """

    def __init__(self, store: S3Store, key: str, info: ObjectInfo) -> None:
        self.key = key
        self.info = info
        self.position = 0
        self._store = store
        self._stream: _Download | None = None

    def seek(self, offset: int) -> None:
        if offset != self.position:
            self.close()  # a new ranged GET from the new offset
            self.position = min(max(offset, 0), self.info.size)

    async def read(self, length: int) -> bytes:
        """Exactly ``length`` bytes, fewer only at the end of the object."""
        wanted = min(length, self.info.size - self.position)
        chunks = []
        while wanted > 0:
            chunk = await self._read_some(wanted)
            chunks.append(chunk)
            wanted -= len(chunk)
        return b"".join(chunks)

    async def readinto(self, buffer: memoryview) -> None:
        """Fill ``buffer`` completely from the current position."""
        filled = 0
        while filled < len(buffer):
            chunk = await self._read_some(min(len(buffer) - filled, FETCH_CHUNK))
            buffer[filled : filled + len(chunk)] = chunk
            filled += len(chunk)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    async def _read_some(self, limit: int) -> bytes:
        """At least one byte and at most ``limit`` (the caller never asks past the end)."""
        failures = 0
        while True:
            if self._stream is None:
                self._stream = await self._store.open_range(self.key, self.info, self.position)
            try:
                async with asyncio.timeout(self._store.options.timeout):
                    chunk = await self._stream.read(limit)
                if not chunk:
                    raise EOFError(f"stream ended at byte {self.position} of {self.info.size}")
            except _stream_errors() as exc:
                self.close()
                failures += 1
                where = f"s3://{self._store.bucket}/{self.key}"
                if failures > RESUME_ATTEMPTS:
                    raise SourceUnavailable(f"{where}: stream broke {failures} times: {exc!r}") from exc
                logger.info("S3 stream of {} broke at byte {}: {!r}; resuming", where, self.position, exc)
                continue
            self.position += len(chunk)
            return chunk


# --- contents ---


class CachedObjectContent(Content):
    """An object small enough to hold: the first read fetches it whole, once for all concurrent readers."""

    def __init__(self, cache: EdgeCache, key: str, info: ObjectInfo) -> None:
        self.size = info.size
        self._cache = cache
        self._key = key
        self._info = info
        self._data: memoryview | None = None

    async def read(self, offset: int, length: int) -> bytes:
        if self._data is None:
            self._data = await self._cache.body(self._key, self._info)
        return bytes(self._data[offset : offset + length])


class StreamedContent(Content):
    """An object too large to hold, streamed through ranged GETs."""

    def __init__(self, reader: ObjectReader, on_changed: Callable[[str], None]) -> None:
        self.size = reader.info.size
        self._reader = reader
        self._on_changed = on_changed

    async def read(self, offset: int, length: int) -> bytes:
        self._reader.seek(offset)
        try:
            return await self._reader.read(length)
        except (ObjectChanged, FileNotFound):
            self._on_changed(self._reader.key)
            raise

    async def aclose(self) -> None:
        self._reader.close()


# --- the source ---


class S3Source(Source):
    """Objects under an S3 prefix, behind the edge cache."""

    def __init__(self, location: S3Location, store: S3Store, cache: EdgeCache) -> None:
        self.description = location.url
        self.location = location
        self.store = store
        self.cache = cache

    async def start(self) -> None:
        await self.store.start()
        options = self.store.options
        logger.info(
            "serving {} (endpoint {}, cache {} MiB, objects up to {} MiB held)",
            self.description,
            options.endpoint_url or "AWS",
            self.cache.limits.total_bytes >> 20,
            self.cache.limits.object_max >> 20,
        )

    def open_now(self, path: str) -> Content | None:
        """The content while the cached metadata is fresh (no S3 call can be needed), else None."""
        key = self.location.key_for(path)
        resolved = self.cache.resolve_now(key)
        return None if resolved is None else self._content(key, resolved)

    async def open(self, path: str) -> Content:
        key = self.location.key_for(path)
        return self._content(key, await self.cache.resolve(key))

    def _content(self, key: str, resolved: Resolved) -> Content:
        if resolved.body is not None:
            return MemoryContent(resolved.body)
        if resolved.info.size == 0:
            return MemoryContent(EMPTY)
        if self.cache.keeps_body(resolved.info):
            return CachedObjectContent(self.cache, key, resolved.info)
        return StreamedContent(ObjectReader(self.store, key, resolved.info), self.cache.invalidate)

    async def check(self) -> bool:
        return await self.store.check()

    async def aclose(self) -> None:
        self.cache.clear()
        await self.store.aclose()


def s3_options_from_settings(settings: Settings) -> S3Options:
    return S3Options(
        region=settings.region,
        endpoint_url=settings.endpoint_url,
        force_path_style=settings.force_path_style,
        dualstack=settings.dualstack,
        accelerate=settings.accelerate,
        sign_request=settings.sign_request,
        debug_api=settings.debug_api,
        timeout=settings.s3_timeout,
        retries=settings.s3_retries,
        pool=settings.s3_pool,
    )


def s3_source_from_settings(settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> Source:
    """The S3 source for ``settings.source`` (``s3://bucket/prefix/``).  Nothing touches the network yet."""
    location = parse_s3_url(settings.source)
    store = S3Store(location.bucket, s3_options_from_settings(settings), clock=clock)
    limits = CacheLimits(
        total_bytes=settings.cache_bytes,
        object_max=settings.cache_object_max,
        ttl=settings.cache_ttl,
        negative_ttl=settings.negative_cache_ttl,
    )
    return S3Source(location, store, EdgeCache(store, limits, clock=clock))
