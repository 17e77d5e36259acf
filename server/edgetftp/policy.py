"""Which requested names may be served: pure functions, no file system.

``normalize`` turns the name a client sent into a relative path made of checked segments, or
raises PolicyError.  The sources join those segments under their root or prefix; they never see a
name that could climb out of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetftp.protocol.codes import ErrorCode

MAX_NAME_BYTES = 512
MAX_SEGMENT_BYTES = 255  # NAME_MAX on Linux
MAX_SEGMENTS = 32


class PolicyError(Exception):
    """The name is refused.  ``str(self)`` says why (for the log); the client sees ``public_message``."""

    error_code = ErrorCode.ACCESS_VIOLATION
    public_message = "Access violation"


@dataclass(frozen=True, slots=True)
class PathPolicy:
    extensions: frozenset[str] = frozenset()  # lower-case, with the dot; empty allows every name

    def check(self, filename: str) -> str:
        """The normalised relative path for ``filename``, or PolicyError."""
        path = normalize(filename)
        if self.extensions and extension_of(path) not in self.extensions:
            raise PolicyError(f"extension not allowed: {path!r}")
        return path


def normalize(filename: str) -> str:
    """``\\Boot\\x64/wdsnbp.com`` -> ``Boot/x64/wdsnbp.com``.

    Backslashes become slashes (Windows and PXE ROMs send them) and leading slashes go (the root is
    the served directory).  Refused: empty names or segments, ``.`` and ``..``, control characters,
    NUL, bytes that are not UTF-8, overlong names.  Percent signs are literal: nothing is decoded.
    """
    if len(filename.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise PolicyError("name too long")
    for char in filename:
        code = ord(char)
        if code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF or 0x80 <= code <= 0x9F:
            raise PolicyError(f"control character or invalid UTF-8 in {filename!r}")
    segments = filename.replace("\\", "/").lstrip("/").split("/")
    if len(segments) > MAX_SEGMENTS:
        raise PolicyError("too many path segments")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise PolicyError(f"empty, '.' or '..' segment in {filename!r}")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise PolicyError("path segment too long")
    return "/".join(segments)


def extension_of(path: str) -> str:
    """``boot/undionly.kpxe`` -> ``.kpxe``; ``pxelinux.0`` -> ``.0``; no dot -> ``""``."""
    name = path.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


class ClientRateLimit:
    """A token bucket of bytes per client address (pure: the caller passes ``now``).

    It bounds what a spoofer can reflect at one victim: TFTP has no handshake, so in single-port
    mode blind ACKs with predictable block numbers can drive a transfer at any address.  A datagram
    over the budget is not sent; the transfer sees it as lost and backs off like on a congested path.
    """

    def __init__(self, bytes_per_second: float, burst_seconds: float = 1.0) -> None:
        self._rate = bytes_per_second
        self._burst = bytes_per_second * burst_seconds
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when)

    def allow(self, address: str, size: int, now: float) -> bool:
        tokens, when = self._buckets.get(address, (self._burst, now))
        tokens = min(self._burst, tokens + (now - when) * self._rate)
        if tokens < size:
            self._buckets[address] = (tokens, now)
            return False
        self._buckets[address] = (tokens - size, now)
        return True

    def prune(self, now: float) -> None:
        """Drop the buckets that have refilled: a full bucket is what a new address gets anyway."""
        full = [
            address
            for address, (tokens, when) in self._buckets.items()
            if tokens + (now - when) * self._rate >= self._burst
        ]
        for address in full:
            del self._buckets[address]

    def __len__(self) -> int:
        return len(self._buckets)
