"""Hostile image files, built byte by byte: headers that claim what the pixels are not.

Each builder returns complete files (valid chunk CRCs, markers) so that a decoder's checks, not a
parse error, are what must refuse them.
"""

from __future__ import annotations

import struct
import zlib


def png_chunk(tag: bytes, body: bytes, *, length: int | None = None) -> bytes:
    """One PNG chunk; ``length`` overrides the length field (a chunk length that lies)."""
    size = len(body) if length is None else length
    return struct.pack(">I", size) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with a few bytes of image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )
