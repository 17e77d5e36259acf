"""netascii encoding (RFC 764 via RFC 1350): LF -> CR LF, CR -> CR NUL.

Blocks are cut from the encoded stream, but a session never encodes more than the block it sends:
``netascii_block`` encodes one block from the raw bytes and says where the next one starts.  In the
encoded stream every CR begins a two-byte pair (an encoded CR or LF), so counting CRs tells how many
raw bytes a block consumed and whether its last byte split a pair (CR | NUL or CR | LF across two
blocks); the next block then starts one byte into that raw byte's pair.
"""

from __future__ import annotations

from typing import NamedTuple

_CR = 13


class NetasciiBlock(NamedTuple):
    """Where a block starts: a raw file offset, and 1 if its first byte is the second of a split pair."""

    raw: int
    skip: int


def encode_netascii(data: bytes | memoryview) -> bytes:
    return bytes(data).replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


def netascii_block(
    raw: memoryview, start: NetasciiBlock, blksize: int, eof: bool
) -> tuple[bytes, NetasciiBlock | None] | None:
    """Encode the block that starts at ``start``; ``raw`` holds the file from ``start.raw`` on.

    Returns (payload, where the next block starts), with None as the second item when this block is
    the last one (shorter than ``blksize``); or None when more raw bytes are needed first.
    """
    target = start.skip + blksize  # encoded bytes from start.raw to the end of this block
    if len(raw) < target and not eof:
        return None  # target raw bytes always encode to at least target bytes
    encoded = encode_netascii(raw[:target])
    payload = encoded[start.skip : target]
    if len(payload) < blksize:
        return payload, None
    # Raw bytes wholly in the block; a pair split at its end starts the next block, one byte in.
    consumed = target - encoded.count(b"\r", 0, target)
    split = 1 if encoded[target - 1] == _CR else 0
    return payload, NetasciiBlock(start.raw + consumed, split)
