"""The edge cache in front of an object store: metadata, bodies, negative entries, single-flight.

A PXE storm is a thousand machines asking for the same few files within seconds.  The cache makes
that cost one HEAD and one GET per file, whatever the number of clients:

- **Metadata** (size, ETag) is remembered per key and trusted for ``ttl`` seconds; after that a HEAD
  revalidates it.  An unchanged ETag keeps the resident bytes; a changed one drops them.
- **Missing keys** are remembered for ``negative_ttl`` seconds, so a scanner cannot turn each of its
  requests into an S3 call.  The metadata table is an LRU bounded in entries for the same reason.
- **Bodies** of objects up to ``object_max`` bytes are kept in an LRU bounded by ``total_bytes``.  A
  body is fetched on the first *read*, not on resolve: a UEFI size probe (RRQ with tsize, then
  ERROR 8) therefore costs one HEAD at most and never a download.
- **Single-flight**: concurrent lookups of one key share one HEAD; concurrent reads of one object
  version share one GET.
- **Stale-if-error**: when a revalidation fails because the store is down, a resident copy keeps
  being served, and the store is asked again after ``STALE_RETRY_SECONDS``.

The cache knows nothing about S3: it talks to an ``ObjectStore`` (``head``, ``fetch``).  Time is
read from an injected clock, so tests can move it.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, Protocol, TypeVar

from loguru import logger

from edgetftp.observability import CACHE_HITS, CACHE_MISSES
from edgetftp.sources.base import AccessDenied, FileNotFound, SourceUnavailable

#: After a failed revalidation, how long a stale resident copy is served before the store is asked again.
STALE_RETRY_SECONDS = 1.0

#: Metadata entries (present or missing keys) remembered at most; bounds what a scanner can make us hold.
DEFAULT_MAX_ENTRIES = 65536

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a HEAD says about one version of an object."""

    size: int
    etag: str


class ObjectChanged(SourceUnavailable):
    """The object was replaced while it was being read (its ETag no longer matches)."""


class ObjectStore(Protocol):
    """The two calls the cache needs from a store."""

    async def head(self, key: str) -> ObjectInfo:
        """Size and ETag of ``key``.  Raises FileNotFound, AccessDenied, SourceUnavailable."""

    async def fetch(self, key: str, info: ObjectInfo) -> memoryview:
        """The whole body of the version ``info`` describes (read-only).  Raises ObjectChanged if replaced."""


@dataclass(frozen=True, slots=True)
class CacheLimits:
    total_bytes: int
    """Bytes of bodies held at most; 0 keeps no bodies."""
    object_max: int
    """Largest body held; larger objects are streamed by the caller."""
    ttl: float
    """Seconds metadata is trusted before a HEAD revalidates it."""
    negative_ttl: float
    """Seconds a missing key is remembered; 0 remembers none."""
    max_entries: int = DEFAULT_MAX_ENTRIES
    """Metadata entries held at most."""


@dataclass(frozen=True, slots=True)
class Resolved:
    """The answer to ``EdgeCache.resolve``: metadata, and the bytes when they are resident."""

    info: ObjectInfo
    body: memoryview | None


@dataclass(slots=True)
class CacheStats:
    """Counters for logs and metrics."""

    hits: int = 0
    negative_hits: int = 0
    lookups: int = 0
    revalidated_unchanged: int = 0
    stale_served: int = 0
    fetches: int = 0
    evictions: int = 0


@dataclass(slots=True)
class _Meta:
    info: ObjectInfo | None  # None: the key is known to be missing
    fresh_until: float


@dataclass(frozen=True, slots=True)
class _Body:
    etag: str
    data: memoryview


class SingleFlight(Generic[Key, Value]):
    """Concurrent ``run`` calls with the same key share one execution of the work.

    The work runs in its own task, so one impatient caller being cancelled does not cancel it for the
    others (each waits through ``asyncio.shield``).
    """

    def __init__(self) -> None:
        self._running: dict[Key, asyncio.Task[Value]] = {}

    async def run(self, key: Key, work: Callable[[], Awaitable[Value]]) -> Value:
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._running[key] = task
            task.add_done_callback(partial(self._finished, key))
        return await asyncio.shield(task)

    def in_flight(self) -> int:
        return len(self._running)

    def cancel_all(self) -> None:
        for task in self._running.values():
            task.cancel()

    def _finished(self, key: Key, task: asyncio.Task[Value]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # every waiter may have gone: mark the exception as retrieved


@dataclass(eq=False)
class EdgeCache:
    """Metadata and body cache with single-flight, negative entries and stale-if-error."""

    store: ObjectStore
    limits: CacheLimits
    clock: Callable[[], float] = time.monotonic
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self._meta: OrderedDict[str, _Meta] = OrderedDict()
        self._bodies: OrderedDict[str, _Body] = OrderedDict()
        self._body_bytes = 0
        self._lookups: SingleFlight[str, Resolved] = SingleFlight()
        self._fetches: SingleFlight[tuple[str, str], memoryview] = SingleFlight()

    @property
    def resident_bytes(self) -> int:
        return self._body_bytes

    def keeps_body(self, info: ObjectInfo) -> bool:
        """Whether the object is fetched whole and held (else the caller streams it)."""
        return self.limits.total_bytes > 0 and info.size <= self.limits.object_max

    def resolve_now(self, key: str) -> Resolved | None:
        """The answer from memory while it is fresh (FileNotFound for a remembered miss), else None."""
        meta = self._meta.get(key)
        if meta is None or self.clock() >= meta.fresh_until:
            return None
        CACHE_HITS.inc()
        self._meta.move_to_end(key)
        if meta.info is None:
            self.stats.negative_hits += 1
            raise FileNotFound(f"{key}: missing (remembered)")
        self.stats.hits += 1
        return self._resolved(key, meta.info)

    async def resolve(self, key: str) -> Resolved:
        """Metadata (and resident bytes) of ``key``: from memory while fresh, else from one shared HEAD."""
        fresh = self.resolve_now(key)
        if fresh is not None:
            return fresh
        CACHE_MISSES.inc()
        return await self._lookups.run(key, partial(self._lookup, key))

    async def body(self, key: str, info: ObjectInfo) -> memoryview:
        """The whole body of this version of ``key``: resident, or fetched once for all concurrent callers."""
        held = self._bodies.get(key)
        if held is not None and held.etag == info.etag:
            self._bodies.move_to_end(key)
            return held.data
        return await self._fetches.run((key, info.etag), partial(self._fetch, key, info))

    def invalidate(self, key: str) -> None:
        """Forget ``key`` (it changed under a reader); the next resolve asks the store again."""
        self._forget(key)

    def clear(self) -> None:
        """Forget everything and cancel shared work in flight (shutdown)."""
        self._lookups.cancel_all()
        self._fetches.cancel_all()
        self._meta.clear()
        self._bodies.clear()
        self._body_bytes = 0

    # --- the shared work ---

    async def _lookup(self, key: str) -> Resolved:
        stale = self._meta.get(key)
        self.stats.lookups += 1
        try:
            info = await self.store.head(key)
        except FileNotFound:
            self._forget(key)
            if self.limits.negative_ttl > 0:
                self._remember(key, _Meta(None, self.clock() + self.limits.negative_ttl))
            raise
        except AccessDenied:
            self._forget(key)
            raise
        except SourceUnavailable as exc:
            return self._serve_stale(key, stale, exc)
        if stale is not None and stale.info is not None and stale.info.etag == info.etag:
            self.stats.revalidated_unchanged += 1
        else:
            self._drop_body(key)
        self._remember(key, _Meta(info, self.clock() + self.limits.ttl))
        return self._resolved(key, info)

    def _serve_stale(self, key: str, stale: _Meta | None, error: SourceUnavailable) -> Resolved:
        held = self._bodies.get(key)
        if stale is None or stale.info is None or held is None or held.etag != stale.info.etag:
            raise error
        logger.warning("store unavailable, serving the cached copy of {}: {}", key, error)
        self.stats.stale_served += 1
        stale.fresh_until = self.clock() + STALE_RETRY_SECONDS
        return Resolved(stale.info, held.data)

    async def _fetch(self, key: str, info: ObjectInfo) -> memoryview:
        self.stats.fetches += 1
        try:
            data = await self.store.fetch(key, info)
        except (FileNotFound, ObjectChanged):
            self._forget(key)  # the next open starts again from a HEAD
            raise
        meta = self._meta.get(key)
        # Hold the bytes only while they are the version the metadata describes (a revalidation may
        # have seen a newer one during the download).
        if meta is not None and meta.info == info and self.keeps_body(info):
            self._hold_body(key, _Body(info.etag, data))
        return data

    # --- tables ---

    def _resolved(self, key: str, info: ObjectInfo) -> Resolved:
        held = self._bodies.get(key)
        if held is None or held.etag != info.etag:
            return Resolved(info, None)
        self._bodies.move_to_end(key)
        return Resolved(info, held.data)

    def _remember(self, key: str, meta: _Meta) -> None:
        self._meta[key] = meta
        self._meta.move_to_end(key)
        while len(self._meta) > self.limits.max_entries:
            oldest, _ = self._meta.popitem(last=False)
            self._drop_body(oldest)

    def _forget(self, key: str) -> None:
        self._meta.pop(key, None)
        self._drop_body(key)

    def _hold_body(self, key: str, body: _Body) -> None:
        self._drop_body(key)
        self._bodies[key] = body
        self._body_bytes += len(body.data)
        while self._body_bytes > self.limits.total_bytes and self._bodies:
            oldest, _ = next(iter(self._bodies.items()))
            self._drop_body(oldest)
            self.stats.evictions += 1

    def _drop_body(self, key: str) -> None:
        body = self._bodies.pop(key, None)
        if body is not None:
            self._body_bytes -= len(body.data)
