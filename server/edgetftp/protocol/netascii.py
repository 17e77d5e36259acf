"""netascii encoding (RFC 764 via RFC 1350): LF -> CR LF, CR -> CR NUL.

Each input byte maps to its output independently, so chunks can be encoded one at a time and a
CR LF pair split across two DATA blocks stays correct: blocks are cut from the encoded stream.
"""

from __future__ import annotations


def encode_netascii(data: bytes | memoryview) -> bytes:
    return bytes(data).replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
