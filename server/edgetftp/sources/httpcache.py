"""HTTP caching rules for the origin source (RFC 9111 as a shared cache, RFC 5861 stale-if-error).

The S3 edge cache (cache.py) trusts every object for one configured TTL.  An HTTP origin says for
itself how long each answer may be reused, and for whom, so its cache follows the response:

- **Storable**: ``no-store`` and ``private`` (we are a shared cache) are never kept; a 200 body is
  kept only when it is small enough; a 404/410 only when the origin gave it an explicit lifetime
  (negative caching by permission, never by default).
- **Freshness**: ``s-maxage``, else ``max-age``, else ``Expires`` - ``Date``; minus ``Age``.
  ``no-cache`` keeps the entry but makes every use a revalidation.  A response without an explicit
  lifetime but with a validator is kept for revalidation only (lifetime 0): no heuristic freshness,
  since origin answers are often generated per machine.
- **Revalidation**: a stale entry with an ``ETag`` or ``Last-Modified`` is revalidated with
  ``If-None-Match`` / ``If-Modified-Since``; a 304 refreshes it without a body.
- **Vary**: an entry remembers the values of the request headers its response varies by and is used
  only for a request with the same values (we send ``X-TFTP-IP``, so ``Vary: X-TFTP-IP`` keeps one
  entry per client address).  ``Vary: *`` is never stored.  Variants per name are bounded.
- **Stale-if-error**: when the origin fails (timeout, connection, 5xx), an expired entry may be
  served for ``stale-if-error`` seconds past its expiry (the directive, else the configured bound,
  never more than the bound); ``must-revalidate`` / ``proxy-revalidate`` forbid it.

Time is an injected monotonic clock; ``Date``/``Expires`` are only ever compared with each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import cachetools

#: Variants kept per name (one per client address under ``Vary: X-TFTP-IP``); the oldest go first.
MAX_VARIANTS = 256

#: Statuses that may be kept as "not found" when the origin allows it.
NEGATIVE_STATUSES = frozenset({404, 410})


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """``'max-age=60, private, s-maxage="5"'`` -> ``{"max-age": "60", "private": None, "s-maxage": "5"}``.

    Directive names are case-insensitive; the first occurrence wins.  Commas inside quoted values
    (``private="Set-Cookie, X"``) are not split on.
    """
    directives: dict[str, str | None] = {}
    for part in _split_outside_quotes(value or ""):
        name, sep, argument = part.partition("=")
        name = name.strip().lower()
        if name and name not in directives:
            directives[name] = argument.strip().strip('"') if sep else None
    return directives


def _split_outside_quotes(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _seconds(value: str | None) -> float | None:
    """A delta-seconds argument, or None when absent or malformed (a malformed one counts as absent)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(int(value.strip()))


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


@dataclass(frozen=True, slots=True)
class ResponsePolicy:
    """What the response headers allow a shared cache to do."""

    storable: bool
    lifetime: float
    """Seconds it is fresh from now (0: revalidate before every use)."""
    stale_if_error: float
    """Seconds past expiry it may stand in for a failing origin."""
    vary: tuple[str, ...]
    """Lower-case names of the request headers the response varies by."""


def response_policy(status: int, headers: Mapping[str, str], *, stale_if_error_max: float) -> ResponsePolicy:
    """Read Cache-Control, Expires, Age and Vary of a 200/304/404/410 response."""
    directives = parse_cache_control(headers.get("Cache-Control"))
    vary = _vary_names(headers.get("Vary"))
    explicit = _explicit_lifetime(directives, headers)
    has_validator = bool(headers.get("ETag") or headers.get("Last-Modified"))
    storable = (
        "no-store" not in directives
        and "private" not in directives
        and vary is not None
        and (explicit is not None or (has_validator and status not in NEGATIVE_STATUSES))
    )
    lifetime = 0.0
    if explicit is not None and "no-cache" not in directives:
        age = _seconds(headers.get("Age")) or 0.0
        lifetime = max(0.0, explicit - age)
    if status in NEGATIVE_STATUSES and lifetime <= 0:
        storable = False  # a "not found" is remembered only for as long as the origin says
    stale = 0.0
    if "must-revalidate" not in directives and "proxy-revalidate" not in directives:
        asked = _seconds(directives.get("stale-if-error"))
        stale = min(stale_if_error_max, asked if asked is not None else stale_if_error_max)
    return ResponsePolicy(storable, lifetime, stale, vary or ())


def _explicit_lifetime(directives: Mapping[str, str | None], headers: Mapping[str, str]) -> float | None:
    for name in ("s-maxage", "max-age"):
        if name in directives:
            return _seconds(directives[name]) or 0.0  # malformed: stale at once (RFC 9111 4.2.1)
    if "Expires" in headers:
        expires, date = _http_date(headers.get("Expires")), _http_date(headers.get("Date"))
        if expires is None:
            return 0.0  # an invalid Expires means "already expired"
        return max(0.0, expires - (date if date is not None else time.time()))
    return None


def _vary_names(value: str | None) -> tuple[str, ...] | None:
    """The header names of ``Vary``, lower case and sorted; None for ``Vary: *`` (never reusable)."""
    names = sorted({name.strip().lower() for name in (value or "").split(",") if name.strip()})
    if "*" in names:
        return None
    return tuple(names)


@dataclass(slots=True)
class CachedAnswer:
    """One stored response: a 200 with its body, or a remembered 404/410 (``body`` None)."""

    status: int
    body: memoryview | None
    vary: tuple[str, ...]
    vary_values: tuple[str | None, ...]
    etag: str | None
    last_modified: str | None
    fresh_until: float
    stale_until: float
    headers: dict[str, str] = field(default_factory=dict)
    """The response headers that decide its caching (Cache-Control, Expires, Date, Vary, validators)."""

    @property
    def size(self) -> int:
        return len(self.body) if self.body is not None else 0

    def fresh(self, now: float) -> bool:
        return now < self.fresh_until

    def usable_when_failing(self, now: float) -> bool:
        return now < self.stale_until

    def matches(self, request_headers: Mapping[str, str]) -> bool:
        return self.vary_values == _values(self.vary, request_headers)

    def conditional_headers(self) -> dict[str, str]:
        """Validators for a revalidation (a 200 only: a remembered miss is simply asked again)."""
        if self.status != 200:
            return {}
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers

    def renew(self, policy: ResponsePolicy, headers: Mapping[str, str], now: float) -> None:
        """Apply a 304: new lifetime, and the validators it carries."""
        self.fresh_until = now + policy.lifetime
        self.stale_until = self.fresh_until + policy.stale_if_error
        self.etag = headers.get("ETag") or self.etag
        self.last_modified = headers.get("Last-Modified") or self.last_modified
        self.headers = dict(headers)


def _values(names: tuple[str, ...], request_headers: Mapping[str, str]) -> tuple[str | None, ...]:
    lowered = {name.lower(): value for name, value in request_headers.items()}
    return tuple(lowered.get(name) for name in names)


@dataclass(slots=True)
class HttpCacheStats:
    hits: int = 0
    negative_hits: int = 0
    stored: int = 0
    revalidated: int = 0
    stale_served: int = 0
    evictions: int = 0


class _AnswersByName(cachetools.LRUCache[str, tuple[CachedAnswer, ...]]):
    """Each name's stored answers (newest first), LRU by name and bounded by their bodies' bytes."""

    def __init__(self, total_bytes: int, stats: HttpCacheStats) -> None:
        super().__init__(maxsize=total_bytes, getsizeof=_bytes_of)
        self._stats = stats

    def popitem(self) -> tuple[str, tuple[CachedAnswer, ...]]:
        """cachetools calls this to evict, least recently used first."""
        self._stats.evictions += 1
        return super().popitem()


def _bytes_of(answers: tuple[CachedAnswer, ...]) -> int:
    return sum(answer.size for answer in answers)


@dataclass(eq=False)
class HttpCache:
    """Stored origin answers by name and Vary values, bounded in bytes and in names (LRU)."""

    total_bytes: int
    """Bytes of bodies held at most; 0 keeps none (a remembered 404 costs no body)."""
    object_max: int | None = None
    """Largest body held (None: total_bytes)."""
    max_names: int = 65536
    clock: Callable[[], float] = time.monotonic
    stats: HttpCacheStats = field(default_factory=HttpCacheStats)

    def __post_init__(self) -> None:
        self._names = _AnswersByName(self.total_bytes, self.stats)

    @property
    def resident_bytes(self) -> int:
        return int(self._names.currsize)

    def lookup(self, name: str, request_headers: Mapping[str, str]) -> CachedAnswer | None:
        """The stored answer for this request (fresh or not), or None; a hit makes the name recent."""
        variants = self._names.get(name, ())
        return next((answer for answer in variants if answer.matches(request_headers)), None)

    def store(
        self,
        name: str,
        request_headers: Mapping[str, str],
        status: int,
        body: memoryview | None,
        policy: ResponsePolicy,
        response_headers: Mapping[str, str],
    ) -> CachedAnswer | None:
        """Keep a response if its policy allows it and it fits; returns the stored entry."""
        largest = self.total_bytes if self.object_max is None else min(self.object_max, self.total_bytes)
        if not policy.storable or (body is not None and len(body) > largest):
            self.forget(name, request_headers)
            return None
        now = self.clock()
        answer = CachedAnswer(
            status=status,
            body=body,
            vary=policy.vary,
            vary_values=_values(policy.vary, request_headers),
            etag=response_headers.get("ETag"),
            last_modified=response_headers.get("Last-Modified"),
            fresh_until=now + policy.lifetime,
            stale_until=now + policy.lifetime + policy.stale_if_error,
            headers=dict(response_headers),
        )
        # Other requests' variants stay only under the same Vary: a new Vary replaces them all (and
        # a response without one would shadow them for good).
        others = [
            old
            for old in self._names.pop(name, ())
            if old.vary == answer.vary and not old.matches(request_headers)
        ]
        variants = (answer, *others[: MAX_VARIANTS - 1])
        while _bytes_of(variants) > self.total_bytes:  # the oldest variants give way to the new one
            variants = variants[:-1]
        self._names[name] = variants
        while len(self._names) > self.max_names:
            self._names.popitem()
        self.stats.stored += 1
        return answer

    def forget(self, name: str, request_headers: Mapping[str, str]) -> None:
        """Drop the variant this request would use (the origin said something new about it)."""
        variants = self._names.pop(name, ())
        kept = tuple(answer for answer in variants if not answer.matches(request_headers))
        if kept:
            self._names[name] = kept

    def clear(self) -> None:
        self._names.clear()
