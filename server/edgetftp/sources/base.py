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
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
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
        """One call to the backing store (an S3 API call, an origin GET), and whether it failed."""

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

    @property
    def tsize(self) -> int | None:
        """The size to announce (RFC 2349), or None when it is not known before the end.

        Content of unknown size sets ``size`` to UNKNOWN_SIZE and ends with a short read.
        """
        return self.size

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


#: ``Content.size`` of a stream whose length is learnt only at its end (an HTTP body without length).
UNKNOWN_SIZE = 2**63 - 1


def new_request_id() -> str:
    """A short random id that ties a TFTP request to the origin's logs."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who asked for a file and how: what a dynamic source (an HTTP origin) may answer by.

    Sources that serve static bytes ignore it.
    """

    client: tuple[str, int]
    """The client's address and port."""
    filename: str
    """The file name exactly as the RRQ carried it (before the path policy)."""
    mode: str = "octet"
    options: Mapping[str, str] = field(default_factory=dict)
    """The options the client asked for (name -> value, names in lower case)."""
    listener: tuple[str, int] | None = None
    """The server address and port the request arrived at, when known."""
    request_id: str = field(default_factory=new_request_id)


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

    async def open_for(self, path: str, context: RequestContext) -> Content:
        """``open`` for one request whose context may change the answer (an HTTP origin).

        The transport calls this (and ``open_now_for``); sources that serve the same bytes to
        everyone keep the default, which ignores the context.
        """
        return await self.open(path)

    def open_now_for(self, path: str, context: RequestContext) -> Content | None:
        """``open_now`` for one request (see ``open_for``)."""
        return self.open_now(path)

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
