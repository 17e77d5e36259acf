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
