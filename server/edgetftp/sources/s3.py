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
a server that serves a local directory never loads them.  This module knows nothing of Settings:
cli.py maps them to ``S3Options`` and ``CacheLimits`` and calls ``build_s3_source``.

Timeouts (one name each; docs/source-timeouts.md has the table):

- ``S3Options.timeout`` (``--s3-timeout``): botocore's connect and read timeouts, the wait for one
  chunk of a body stream, and the start-up/health probe.
- ``S3Options.call_deadline`` = 2 x timeout: one API call with botocore's retries included.
- ``RESUME_ATTEMPTS``: a broken body stream is reopened this many times without progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from edgetftp.sources.base import (
    AccessDenied,
    Content,
    FileNotFound,
    MemoryContent,
    NullObserver,
    Source,
    SourceError,
    SourceObserver,
    SourceStatus,
    SourceUnavailable,
)
from edgetftp.sources.cache import Buffer, CacheLimits, EdgeCache, ObjectChanged, ObjectInfo, Resolved

#: S3 error codes (or bare HTTP statuses, which is all a HEAD gets) and what they mean for the client.
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidObjectState"})
CHANGED_CODES = frozenset({"PreconditionFailed", "412"})
#: Error codes that say the credentials themselves are wrong (not merely without a permission).
BAD_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
)
NO_BUCKET_CODES = frozenset({"NoSuchBucket"})

#: Times a broken body stream is reopened (with Range from the current offset) without progress.
RESUME_ATTEMPTS = 3
#: Bytes asked of the HTTP stream at a time when fetching a whole object into memory.
FETCH_CHUNK = 1 << 20
#: A successful S3 answer this recent makes /healthz true without a request.
HEALTH_FRESH_SECONDS = 10.0

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
    """S3 answered about a key (404, 412): it is up, even if this key is not there.

    A 403 does not count: wrong credentials get a 403 for everything, and must not look healthy.
    """
    code = _error_code(exc)
    return code is not None and code in NOT_FOUND_CODES | CHANGED_CODES


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one cheap call (ListObjectsV2, MaxKeys=1, on the prefix) says about the bucket."""

    answered: bool
    """S3 answered at all (the endpoint is reachable)."""
    healthy: bool
    """Files can be served as far as this call tells."""
    fatal: bool
    """A configuration error the user must fix: no such bucket, credentials refused, none found."""
    detail: str


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
        self,
        bucket: str,
        options: S3Options,
        *,
        clock: Callable[[], float] = time.monotonic,
        observer: SourceObserver | None = None,
    ) -> None:
        self.bucket = bucket
        self.options = options
        self._clock = clock
        self._observer = observer or NullObserver()
        self._session: Any = None
        self._client: Any = None
        self._exits = contextlib.AsyncExitStack()
        self._download_slots = asyncio.Semaphore(options.download_slots)
        self._last_answer: float | None = None

    async def start(self) -> None:
        if self._client is not None:
            return
        import aioboto3  # here, not at module level: local serving never pays for it

        session = aioboto3.Session(region_name=self.options.region)
        self._session = session
        try:
            self._client = await self._exits.enter_async_context(
                session.client(
                    "s3", endpoint_url=self.options.endpoint_url, config=botocore_config(self.options)
                )
            )
        except Exception as exc:  # botocore rejects some combinations (accelerate + path style, ...)
            raise SourceUnavailable(f"cannot create the S3 client: {type(exc).__name__}: {exc}") from exc

    async def credentials_source(self) -> str | None:
        """Where the default chain found credentials ("env", "iam-role", ...), or None if nowhere."""
        if not self.options.sign_request:
            return "none needed (--no-sign-request)"
        if self._session is None:
            return None
        try:
            async with asyncio.timeout(self.options.timeout):
                credentials = await self._session.get_credentials()
        except Exception as exc:  # a broken profile or metadata endpoint: say so, as "not found"
            logger.warning("looking up S3 credentials failed: {}: {}", type(exc).__name__, exc)
            return None
        return None if credentials is None else str(getattr(credentials, "method", "found"))

    async def probe(self, prefix: str) -> ProbeResult:
        """One ListObjectsV2 (MaxKeys=1) on the prefix, bounded by ``options.timeout``."""
        if self._client is None:
            return ProbeResult(False, False, False, "the S3 client is not started")
        where = f"s3://{self.bucket}/{prefix}"
        try:
            async with asyncio.timeout(self.options.timeout):
                await self._client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        except Exception as exc:
            self._observer.store_call("list_objects_v2", True)
            result = _classify_probe_failure(exc, where, self.options.timeout)
            if result.answered and result.healthy:
                self._last_answer = self._clock()
            return result
        self._observer.store_call("list_objects_v2", False)
        self._last_answer = self._clock()
        return ProbeResult(True, True, False, f"{where} reachable")

    async def aclose(self) -> None:
        self._client = None
        await self._exits.aclose()

    async def head(self, key: str) -> ObjectInfo:
        response = await self._call("head_object", key, Key=key)
        return ObjectInfo(size=int(response["ContentLength"]), etag=str(response.get("ETag", "")))

    async def fetch(self, key: str, info: ObjectInfo) -> Buffer:
        """The whole object, read into one buffer that is then shared read-only."""
        buffer = Buffer(info.size)
        if info.size == 0:
            return buffer
        reader = ObjectReader(self, key, info)
        try:
            await reader.readinto(buffer.writable())
        finally:
            reader.close()
        return buffer

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
                self._observer.source_error("changed")
                raise ObjectChanged(
                    f"{self._where(key)}: expected {info.size - start} bytes of {info.etag}, "
                    f"got {length} of {etag}"
                )
        except BaseException:
            self._download_slots.release()
            raise
        return _Download(body, self._download_slots.release)

    async def check(self, prefix: str = "") -> bool:
        """True if S3 answered recently, else after one probe (see ``probe``)."""
        if self._client is None:
            return False
        if self._last_answer is not None and self._clock() - self._last_answer < HEALTH_FRESH_SECONDS:
            return True
        result = await self.probe(prefix)
        if not result.healthy:
            logger.warning("S3 health check failed: {}", result.detail)
        return result.healthy

    async def _call(self, operation: str, key: str, **params: Any) -> dict[str, Any]:
        """One S3 call under the overall deadline, mapped errors, and a log line with --debug-api."""
        if self._client is None:
            raise SourceUnavailable("the S3 source is not started")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.options.call_deadline):
                response: dict[str, Any] = await getattr(self._client, operation)(
                    Bucket=self.bucket, **params
                )
        except Exception as exc:
            error = map_error(exc, f"{operation} {self._where(key)}")
            self._observer.store_call(operation, True)
            if isinstance(error, SourceUnavailable):
                self._observer.source_error("changed" if isinstance(error, ObjectChanged) else "unavailable")
            if _is_answer(exc):
                self._last_answer = self._clock()
            if self.options.debug_api:
                self._log_call(operation, key, params, f"failed: {error}", started)
            elif isinstance(error, SourceUnavailable):
                logger.warning("S3 {} failed: {}", operation, error)
            raise error from exc
        self._observer.store_call(operation, False)
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
        """Create the client (an invalid endpoint or region fails here, with SourceUnavailable)."""
        await self.store.start()
        options = self.store.options
        logger.info(
            "S3 source {} (endpoint {}, cache {} MiB, objects up to {} MiB held)",
            self.description,
            options.endpoint_url or "AWS",
            self.cache.limits.cache_bytes >> 20,
            self.cache.limits.object_max >> 20,
        )

    async def first_contact(self) -> SourceStatus:
        """Credentials found or not, the bucket/prefix reachable or not: one log line each."""
        found = await self.store.credentials_source()
        if found is None:
            logger.error("S3 credentials: none found (environment, profile, instance role)")
            detail = "no S3 credentials found (set AWS_* or a role; --no-sign-request for a public bucket)"
            return SourceStatus(healthy=False, fatal=True, detail=detail)
        logger.info("S3 credentials: {}", found)
        result = await self.store.probe(self.location.prefix)
        log = logger.info if result.healthy else logger.error if result.fatal else logger.warning
        log("S3 bucket: {}", result.detail)
        return SourceStatus(healthy=result.healthy, fatal=result.fatal, detail=result.detail)

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
            # The GET starts with the OACK, so it runs during the client's round trip to ACK 0 and
            # the first DATA waits for one S3 round trip (the HEAD), not two.  A UEFI size probe
            # starts it too; the download that follows the probe joins or finds it.
            self.cache.prefetch(key, resolved.info)
            return CachedObjectContent(self.cache, key, resolved.info)
        return StreamedContent(ObjectReader(self.store, key, resolved.info), self.cache.invalidate)

    async def check(self) -> bool:
        return await self.store.check(self.location.prefix)

    async def aclose(self) -> None:
        self.cache.clear()
        await self.store.aclose()


def build_s3_source(
    url: str,
    options: S3Options,
    limits: CacheLimits,
    *,
    clock: Callable[[], float] = time.monotonic,
    observer: SourceObserver | None = None,
) -> S3Source:
    """The S3 source for ``url`` (``s3://bucket/prefix/``).  Nothing touches the network yet."""
    location = parse_s3_url(url)
    observer = observer or NullObserver()
    store = S3Store(location.bucket, options, clock=clock, observer=observer)
    return S3Source(location, store, EdgeCache(store, limits, clock=clock, observer=observer))


def _classify_probe_failure(exc: BaseException, where: str, timeout: float) -> ProbeResult:
    """What a failed ListObjectsV2 on the prefix means for start-up and /healthz."""
    code = _error_code(exc)
    name = type(exc).__name__
    if name == "NoCredentialsError":
        detail = "no S3 credentials found (--no-sign-request for a public bucket)"
        return ProbeResult(False, False, True, detail)
    if code in NO_BUCKET_CODES:
        return ProbeResult(True, False, True, f"{where}: the bucket does not exist")
    if code in BAD_CREDENTIAL_CODES:
        return ProbeResult(True, False, True, f"{where}: the credentials were refused ({code})")
    if code in DENIED_CODES:
        # GetObject-only credentials (which the README allows) cannot list: S3 is up, serving may work.
        return ProbeResult(True, True, False, f"{where}: reachable, listing denied ({code}; GetObject-only?)")
    if isinstance(exc, TimeoutError):
        return ProbeResult(False, False, False, f"{where}: unreachable (no answer within {timeout:g}s)")
    if code is not None:
        return ProbeResult(True, False, False, f"{where}: S3 answered {code}")
    return ProbeResult(False, False, False, f"{where}: unreachable ({name}: {exc})")
