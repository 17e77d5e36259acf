"""The interface every source implements, and the errors that map to TFTP error codes.

The transport calls ``Source.open(path)`` with a path that the policy has already normalised and
checked (``"pxelinux.cfg/default"``: no leading slash, no ``.``/``..`` segments, no backslashes).
``open`` resolves the file completely (exists, readable, size known) *before* the server answers,
because PXE clients break on errors that arrive after an OACK.  The ``Content`` it returns is either
resident (``memory`` is set: the whole file, shared between transfers, sliced without copying) or
streamed with ``read(offset, length)``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Protocol

from edgetftp.protocol.codes import ErrorCode


class SourceError(Exception):
    """A file cannot be served.  ``public_message`` is what the client sees; ``str(self)`` is logged."""

    error_code: ErrorCode = ErrorCode.NOT_DEFINED
    public_message: str = "Source unavailable"


class FileNotFound(SourceError):
    error_code = ErrorCode.FILE_NOT_FOUND
    public_message = "File not found"


class AccessDenied(SourceError):
    error_code = ErrorCode.ACCESS_VIOLATION
    public_message = "Access violation"


class SourceUnavailable(SourceError):
    """The backing store failed or timed out; the client gets a generic ERROR 0."""


class SourceChanged(SourceUnavailable):
    """The file changed while it was being served (truncated, overwritten, grown, a new ETag)."""

    public_message = "File changed"


class SourceObserver(Protocol):
    """What a source reports for metrics; cli.py wires it to Prometheus (sources never import it)."""

    def cache_event(self, kind: str) -> None:
        """One cache event: hit, miss, negative-hit, revalidated, stale-served, fetch, eviction."""

    def store_call(self, operation: str, failed: bool) -> None:
        """One call to the backing store (an S3 API call), and whether it failed."""

    def source_error(self, kind: str) -> None:
        """A failure of the store itself (unavailable, changed, denied-credentials), not of a request."""

    def resident_bytes(self, total: int) -> None:
        """File bytes held in memory now: the cache plus buffers still pinned by transfers."""


class NullObserver:
    """The observer of a source nobody watches (tests, tools)."""

    def cache_event(self, kind: str) -> None:
        pass

    def store_call(self, operation: str, failed: bool) -> None:
        pass

    def source_error(self, kind: str) -> None:
        pass

    def resident_bytes(self, total: int) -> None:
        pass


class Content(abc.ABC):
    """An opened file: its size, and a way to get its bytes."""

    size: int
    #: The whole file when it is held in memory (shared; never mutated), else None.
    memory: memoryview | None = None

    @abc.abstractmethod
    async def read(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes from ``offset``; fewer only at the end of the file.

        Raises SourceError when the store fails mid-file.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what ``open`` took (a stream, a file handle)."""


@dataclass(eq=False)
class MemoryContent(Content):
    """A file held in memory in full."""

    data: memoryview

    def __post_init__(self) -> None:
        self.size = len(self.data)
        self.memory = self.data

    async def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """What a source found at start-up (``Source.first_contact``)."""

    healthy: bool
    """It can serve now (drives /healthz from the first second)."""
    fatal: bool = False
    """A configuration error: the server refuses to start unless told to start anyway."""
    detail: str = ""
    """One line for the log (and for the exit message when fatal)."""


class Source(abc.ABC):
    """A read-only tree of files."""

    #: Where the files come from, for logs ("/srv/tftp", "s3://bucket/prefix/").
    description: str

    @abc.abstractmethod
    async def open(self, path: str) -> Content:
        """Resolve a policy-checked relative path.  Raises FileNotFound, AccessDenied, SourceUnavailable."""

    def open_now(self, path: str) -> Content | None:
        """Answer from memory without waiting, or None when ``open`` must be awaited.

        The transport tries this first so that cached files cost no task.  It may raise
        SourceError (a remembered "not found", say).
        """
        return None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Acquire long-lived resources (clients, pools) before the server takes requests."""

    async def first_contact(self) -> SourceStatus:
        """Check, once at start-up after ``start``, that the store can be reached (logs one line each)."""
        return SourceStatus(healthy=True)

    async def check(self) -> bool:
        """True while the source answers (for /healthz)."""
        return True

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release long-lived resources at shutdown."""
