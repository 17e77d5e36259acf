"""The edge cache in front of an object store: metadata, bodies, negative entries, single-flight.

A PXE storm is a thousand machines asking for the same few files within seconds.  The cache makes
that cost one HEAD and one GET per file, whatever the number of clients:

- **Metadata** (size, ETag) is remembered per key and trusted for ``ttl`` seconds; after that a HEAD
  revalidates it.  An unchanged ETag keeps the resident bytes; a changed one drops them.
- **Missing keys** are remembered for ``negative_ttl`` seconds, so a scanner cannot turn each of its
  requests into an S3 call.  The metadata table is an LRU bounded in entries for the same reason.
- **Bodies** of objects up to ``object_max`` bytes are kept in an LRU bounded by ``cache_bytes``.  A
  body is fetched on the first *read*, not on resolve: a UEFI size probe (RRQ with tsize, then
  ERROR 8) therefore costs one HEAD at most and never a download.
- **Single-flight**: concurrent lookups of one key share one HEAD; concurrent reads of one object
  version share one GET.
- **Stale-if-error**: when a revalidation fails because the store is down, a resident copy keeps
  being served, and the store is asked again after ``STALE_RETRY_SECONDS``.

- **Forbidden keys** (a 403 for a missing key, with GetObject-only credentials) are remembered like
  missing ones, for ``negative_ttl`` seconds.

The cache knows nothing about S3: it talks to an ``ObjectStore`` (``head``, ``fetch``).  Time is
read from an injected clock, so tests can move it.

``ResidentBuffers`` is the one LRU of file bytes, used by this cache and by the local source alike:
bounded by ``cache_bytes``, and a buffer it evicted while a transfer still holds it is found again
(a weak registry) instead of being read into a second copy.
"""

from __future__ import annotations

import asyncio
import mmap
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, Protocol, TypeVar

import cachetools
from loguru import logger

from edgetftp.sources.base import (
    AccessDenied,
    FileNotFound,
    NullObserver,
    SourceChanged,
    SourceObserver,
    SourceUnavailable,
)

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


class ObjectChanged(SourceChanged):
    """The object was replaced while it was being read (its ETag no longer matches)."""


class Buffer(mmap.mmap):
    """File bytes held in memory, in anonymous pages of their own.

    Anonymous mmap, not bytearray: ``bytearray(64 MiB)`` zero-fills under the GIL (110 ms here, a
    stall of the event loop even when the filling runs on a thread), while fresh anonymous pages
    cost nothing until written.  It can be weakly referenced, and every memoryview (and slice) of it
    keeps it alive, so the registry sees exactly what is still in use.  Freed (munmap) when the last
    reference goes.
    """

    nbytes: int

    def __new__(cls, size: int) -> Buffer:
        buffer = super().__new__(cls, -1, max(size, 1))  # a mapping cannot be empty
        buffer.nbytes = size
        return buffer

    def view(self) -> memoryview:
        """The bytes, read-only (what transfers share)."""
        return memoryview(self)[: self.nbytes].toreadonly()

    def writable(self) -> memoryview:
        """The bytes, for filling once before the buffer is shared."""
        return memoryview(self)[: self.nbytes]


def _buffer_size(buffer: Buffer) -> int:
    return buffer.nbytes


class ResidentBuffers(Generic[Key]):
    """The LRU of file bodies (bounded by ``cache_bytes``) plus a weak registry of every live buffer.

    ``get`` finds a buffer in the LRU or, if the LRU evicted it while a transfer still holds it, in
    the registry (and admits it again: it costs nothing more).  ``resident`` is what the process
    holds: the LRU plus the evicted-but-pinned buffers.  Used from the event loop thread only, except
    that buffers may die (and be subtracted) on any thread.
    """

    def __init__(self, cache_bytes: int, observer: SourceObserver | None = None) -> None:
        self.cache_bytes = cache_bytes
        self._observer = observer or NullObserver()
        self._lru: cachetools.LRUCache[Key, Buffer] = cachetools.LRUCache(
            maxsize=max(cache_bytes, 1), getsizeof=_buffer_size
        )
        self._live: weakref.WeakValueDictionary[Key, Buffer] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()  # buffers die on whatever thread drops the last reference
        self._resident = 0

    @property
    def cached(self) -> int:
        """Bytes held by the LRU itself."""
        return int(self._lru.currsize) if self.cache_bytes > 0 else 0

    @property
    def resident(self) -> int:
        """Bytes of every live buffer: the LRU plus buffers evicted but still pinned by transfers."""
        return self._resident

    def get(self, key: Key) -> Buffer | None:
        buffer = self._lru.get(key)
        if buffer is None:
            buffer = self._live.get(key)
            if buffer is not None:
                self._admit(key, buffer)
        return buffer

    def put(self, key: Key, buffer: Buffer) -> Buffer:
        """Hold ``buffer`` under ``key``; a live buffer already there wins (no second copy)."""
        held = self.get(key)
        if held is not None:
            return held
        self._live[key] = buffer
        with self._lock:
            self._resident += buffer.nbytes
            total = self._resident
        weakref.finalize(buffer, self._died, buffer.nbytes)
        self._observer.resident_bytes(total)
        self._admit(key, buffer)
        return buffer

    def discard(self, key: Key) -> None:
        """Stop caching ``key`` (a new version exists); transfers holding it keep their bytes."""
        self._lru.pop(key, None)
        self._live.pop(key, None)

    def clear(self) -> None:
        self._lru.clear()
        self._live.clear()

    def _admit(self, key: Key, buffer: Buffer) -> None:
        if self.cache_bytes <= 0 or buffer.nbytes > self.cache_bytes:
            return
        if key in self._lru:
            self._lru[key]  # a lookup marks it recently used
            return
        before = len(self._lru)
        self._lru[key] = buffer  # evicts least recently used entries to make room
        for _ in range(before + 1 - len(self._lru)):
            self._observer.cache_event("eviction")

    def _died(self, size: int) -> None:
        with self._lock:
            self._resident -= size
            total = self._resident
        self._observer.resident_bytes(total)


class ObjectStore(Protocol):
    """The two calls the cache needs from a store."""

    async def head(self, key: str) -> ObjectInfo:
        """Size and ETag of ``key``.  Raises FileNotFound, AccessDenied, SourceUnavailable."""

    async def fetch(self, key: str, info: ObjectInfo) -> Buffer:
        """The whole body of the version ``info`` describes (read-only).  Raises ObjectChanged if replaced."""


@dataclass(frozen=True, slots=True)
class CacheLimits:
    cache_bytes: int
    """Bytes of bodies held at most; 0 keeps no bodies."""
    object_max: int
    """Largest body held; larger objects are streamed by the caller."""
    ttl: float
    """Seconds metadata is trusted before a HEAD revalidates it."""
    negative_ttl: float
    """Seconds a missing (or forbidden) key is remembered; 0 remembers none."""
    max_entries: int = DEFAULT_MAX_ENTRIES
    """Metadata entries held at most."""


@dataclass(frozen=True, slots=True)
class Resolved:
    """The answer to ``EdgeCache.resolve``: metadata, and the bytes when they are resident."""

    info: ObjectInfo
    body: memoryview | None


@dataclass(slots=True)
class _Meta:
    info: ObjectInfo | None  # None: the key is known to be missing (or forbidden, see ``denied``)
    fresh_until: float
    denied: bool = False


class SingleFlight(Generic[Key, Value]):
    """Concurrent ``run`` calls with the same key share one execution of the work.

    The work runs in its own task, so one impatient caller being cancelled does not cancel it for the
    others (each waits through ``asyncio.shield``).
    """

    def __init__(self) -> None:
        self._running: dict[Key, asyncio.Task[Value]] = {}

    async def run(self, key: Key, work: Callable[[], Awaitable[Value]]) -> Value:
        return await asyncio.shield(self.start(key, work))

    def start(self, key: Key, work: Callable[[], Awaitable[Value]]) -> asyncio.Task[Value]:
        """The task doing ``work`` for ``key``: the one in flight, or a new one (nobody need wait)."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._running[key] = task
            task.add_done_callback(partial(self._finished, key))
        return task

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


_BodyKey = tuple[str, str]  # (object key, ETag)


@dataclass(eq=False)
class EdgeCache:
    """Metadata and body cache with single-flight, negative entries and stale-if-error."""

    store: ObjectStore
    limits: CacheLimits
    clock: Callable[[], float] = time.monotonic
    observer: SourceObserver = field(default_factory=NullObserver)

    def __post_init__(self) -> None:
        self._meta: cachetools.LRUCache[str, _Meta] = cachetools.LRUCache(maxsize=self.limits.max_entries)
        self.bodies: ResidentBuffers[_BodyKey] = ResidentBuffers(self.limits.cache_bytes, self.observer)
        self._lookups: SingleFlight[str, Resolved] = SingleFlight()
        self._fetches: SingleFlight[_BodyKey, memoryview] = SingleFlight()

    @property
    def resident_bytes(self) -> int:
        """Bytes of bodies held by the LRU (transfers may pin evicted ones too: ``bodies.resident``)."""
        return self.bodies.cached

    def keeps_body(self, info: ObjectInfo) -> bool:
        """Whether the object is fetched whole and held (else the caller streams it)."""
        return self.limits.cache_bytes > 0 and info.size <= self.limits.object_max

    def resolve_now(self, key: str) -> Resolved | None:
        """The answer from memory while it is fresh (FileNotFound for a remembered miss), else None."""
        meta = self._meta.get(key)
        if meta is None or self.clock() >= meta.fresh_until:
            return None
        if meta.info is None:
            self.observer.cache_event("negative-hit")
            if meta.denied:
                raise AccessDenied(f"{key}: forbidden (remembered)")
            raise FileNotFound(f"{key}: missing (remembered)")
        self.observer.cache_event("hit")
        return self._resolved(key, meta.info)

    async def resolve(self, key: str) -> Resolved:
        """Metadata (and resident bytes) of ``key``: from memory while fresh, else from one shared HEAD."""
        fresh = self.resolve_now(key)
        if fresh is not None:
            return fresh
        self.observer.cache_event("miss")
        return await self._lookups.run(key, partial(self._lookup, key))

    async def body(self, key: str, info: ObjectInfo) -> memoryview:
        """The whole body of this version of ``key``: resident, or fetched once for all concurrent callers."""
        held = self.bodies.get((key, info.etag))
        if held is not None:
            return held.view()
        return await self._fetches.run((key, info.etag), partial(self._fetch, key, info))

    def prefetch(self, key: str, info: ObjectInfo) -> None:
        """Start fetching the body unless it is held or on its way; ``body`` then joins the fetch."""
        if self.bodies.get((key, info.etag)) is None:
            self._fetches.start((key, info.etag), partial(self._fetch, key, info))

    def invalidate(self, key: str) -> None:
        """Forget ``key`` (it changed under a reader); the next resolve asks the store again."""
        self._forget(key)

    def clear(self) -> None:
        """Forget everything and cancel shared work in flight (shutdown)."""
        self._lookups.cancel_all()
        self._fetches.cancel_all()
        self._meta.clear()
        self.bodies.clear()

    # --- the shared work ---

    async def _lookup(self, key: str) -> Resolved:
        stale = self._meta.get(key)
        try:
            info = await self.store.head(key)
        except FileNotFound:
            self._remember_missing(key, denied=False)
            raise
        except AccessDenied:
            self._remember_missing(key, denied=True)
            raise
        except SourceUnavailable as exc:
            return self._serve_stale(key, stale, exc)
        if stale is not None and stale.info is not None:
            if stale.info.etag == info.etag:
                self.observer.cache_event("revalidated")
            else:
                self.bodies.discard((key, stale.info.etag))
        self._meta[key] = _Meta(info, self.clock() + self.limits.ttl)
        return self._resolved(key, info)

    def _remember_missing(self, key: str, *, denied: bool) -> None:
        self._forget(key)
        if self.limits.negative_ttl > 0:
            self._meta[key] = _Meta(None, self.clock() + self.limits.negative_ttl, denied)

    def _serve_stale(self, key: str, stale: _Meta | None, error: SourceUnavailable) -> Resolved:
        held = None if stale is None or stale.info is None else self.bodies.get((key, stale.info.etag))
        if stale is None or stale.info is None or held is None:
            raise error
        logger.warning("store unavailable, serving the cached copy of {}: {}", key, error)
        self.observer.cache_event("stale-served")
        stale.fresh_until = self.clock() + STALE_RETRY_SECONDS
        return Resolved(stale.info, held.view())

    async def _fetch(self, key: str, info: ObjectInfo) -> memoryview:
        self.observer.cache_event("fetch")
        try:
            data = await self.store.fetch(key, info)
        except (FileNotFound, ObjectChanged):
            self._forget(key)  # the next open starts again from a HEAD
            raise
        meta = self._meta.get(key)
        # Hold the bytes only while they are the version the metadata describes (a revalidation may
        # have seen a newer one during the download).
        if meta is not None and meta.info == info and self.keeps_body(info):
            return self.bodies.put((key, info.etag), data).view()
        return data.view()

    # --- tables ---

    def _resolved(self, key: str, info: ObjectInfo) -> Resolved:
        held = self.bodies.get((key, info.etag))
        return Resolved(info, None if held is None else held.view())

    def _forget(self, key: str) -> None:
        meta = self._meta.pop(key, None)
        if meta is not None and meta.info is not None:
            self.bodies.discard((key, meta.info.etag))
