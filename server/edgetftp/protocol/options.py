"""Option negotiation (RFC 2347 blksize/2348, timeout+tsize/2349, windowsize/7440).

Pure function: the client's options and the server's limits in, what the server grants out.
Rules: only options the client asked for are acknowledged; unknown options are ignored; an
invalid value is never echoed (the option is ignored, or a too-large value is clamped into range).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464  # RFC 2348
MIN_TIMEOUT, MAX_TIMEOUT = 1, 255  # RFC 2349, seconds
MIN_WINDOW, MAX_WINDOW = 1, 65535  # RFC 7440


@dataclass(frozen=True, slots=True)
class Limits:
    """What the server allows for one transfer."""

    max_blksize: int  # already clamped to the path MTU by the transport
    max_window: int
    max_window_bytes: int | None = None  # windowsize x blksize at most (bounds what one ACK can draw)


@dataclass(frozen=True, slots=True)
class Negotiated:
    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: int | None = None  # seconds the client asked for, when granted
    oack: Mapping[str, str] = field(default_factory=dict)  # empty: answer with DATA 1, not an OACK


def negotiate(requested: Mapping[str, str], mode: str, size: int | None, limits: Limits) -> Negotiated:
    """Decide the options of one read transfer.  ``size`` is None when it is unknown."""
    oack: dict[str, str] = {}
    blksize = _blksize(requested.get("blksize"), limits.max_blksize)
    if blksize is not None:
        oack["blksize"] = str(blksize)
    timeout = _int_in_range(requested.get("timeout"), MIN_TIMEOUT, MAX_TIMEOUT)
    if timeout is not None:
        oack["timeout"] = str(timeout)
    # tsize counts octets; in netascii the size on the wire differs, so (like tftp-hpa and dnsmasq) omit it.
    if "tsize" in requested and mode == "octet" and size is not None:
        oack["tsize"] = str(size)
    window_cap = limits.max_window
    if limits.max_window_bytes is not None:
        window_cap = min(window_cap, max(1, limits.max_window_bytes // (blksize or DEFAULT_BLKSIZE)))
    windowsize = _windowsize(requested.get("windowsize"), window_cap)
    if windowsize is not None:
        oack["windowsize"] = str(windowsize)
    return Negotiated(
        blksize=blksize or DEFAULT_BLKSIZE,
        windowsize=windowsize or 1,
        timeout=timeout,
        oack=oack,
    )


def _parse_int(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    # ASCII digits only: str.isdigit() accepts "²", which int() refuses; length bounds int()'s work.
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        return None
    return int(text)


def _int_in_range(value: str | None, low: int, high: int) -> int | None:
    number = _parse_int(value)
    return number if number is not None and low <= number <= high else None


def _blksize(value: str | None, server_max: int) -> int | None:
    number = _parse_int(value)
    if number is None or number < MIN_BLKSIZE:
        return None
    return min(number, MAX_BLKSIZE, server_max)


def _windowsize(value: str | None, server_max: int) -> int | None:
    number = _parse_int(value)
    if number is None or number < MIN_WINDOW:
        return None
    return min(number, MAX_WINDOW, server_max)
