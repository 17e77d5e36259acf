"""Errors of the sans-IO core.  Each carries the TFTP error code a reply should use."""

from __future__ import annotations

from edgetftp.protocol.codes import ErrorCode


class ProtocolError(Exception):
    """Base class.  ``error_code`` is the TFTP ERROR code that answers it."""

    error_code: ErrorCode = ErrorCode.NOT_DEFINED


class MalformedPacket(ProtocolError):
    """The peer sent bytes that are not a TFTP packet (or not one we can parse)."""

    error_code = ErrorCode.ILLEGAL_OPERATION


class LocalProtocolError(ProtocolError):
    """The driver called the core in a way its state does not allow: a bug in the caller."""
