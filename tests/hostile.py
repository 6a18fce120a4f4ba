"""Hostile image files, built byte by byte: headers that claim what the pixels are not.

Each builder returns complete files (valid chunk CRCs, markers, IFDs) so that a decoder's checks,
not a parse error, are what must refuse them. :data:`CASES` lists one or more files of every
class the engine must refuse (or answer) cheaply, with the answer expected; the tests
(tests/engine/test_hostile_inputs.py) and the reliability table (``python -m
benchmarks.reliability``, docs/RELIABILITY.md) both run them.

Builders are deterministic (fixed seeds) and need only numpy, OpenCV and the standard library.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# --------------------------------------------------------------------------- PNG


def png_chunk(tag: bytes, body: bytes, *, length: int | None = None) -> bytes:
    """One PNG chunk; ``length`` overrides the length field (a chunk length that lies)."""
    size = len(body) if length is None else length
    return struct.pack(">I", size) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_ihdr(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))


def png_claiming(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with a few bytes of image data."""
    return (
        PNG_SIGNATURE
        + png_ihdr(width, height, bit_depth=bit_depth, colour_type=colour_type)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def png_1x1(*, idat_length: int | None = None, before_idat: bytes = b"") -> bytes:
    """A valid 1x1 RGB PNG (67 bytes); ``idat_length`` makes its IDAT length field lie."""
    scanline = zlib.compress(b"\x00\x80\x80\x80")
    return (
        PNG_SIGNATURE
        + png_ihdr(1, 1)
        + before_idat
        + png_chunk(b"IDAT", scanline, length=idat_length)
        + png_chunk(b"IEND", b"")
    )


def apng_frame_larger_than_image(frame_width: int, frame_height: int) -> bytes:
    """An APNG (1x1 default image) whose first animation frame (fcTL) claims a larger size."""
    actl = png_chunk(b"acTL", struct.pack(">II", 1, 0))
    fctl = png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, frame_width, frame_height, 0, 0, 1, 10, 0, 0))
    return png_1x1(before_idat=actl + fctl)


def encoded(ext: str, image: np.ndarray, params: Sequence[int] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok, ext
    return buf.tobytes()


def photo(width: int, height: int, channels: int = 3, dtype: type = np.uint8, *, seed: int = 0) -> np.ndarray:
    """A smooth picture with some texture: drawn at most 512 px wide, scaled up (so that a 40 MP
    picture is cheap to make), compresses well and has keypoints."""
    rng = np.random.default_rng(seed)
    sw, sh = min(width, 512), min(height, 512)
    y, x = np.mgrid[0:sh, 0:sw].astype(np.float32)
    base = 0.5 + 0.25 * np.sin(x / max(sw, 1) * 9.0) + 0.25 * np.cos(y / max(sh, 1) * 7.0)
    planes = [base * (0.6 + 0.4 * c / max(channels, 1)) for c in range(channels)]
    small = np.clip(np.stack(planes, axis=-1) + rng.normal(0, 0.08, (sh, sw, channels)), 0, 1).astype(np.float32)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR) if (sw, sh) != (width, height) else small
    img = img.reshape(height, width, channels)
    if np.issubdtype(dtype, np.floating):
        return img.astype(dtype)
    return (img * np.iinfo(dtype).max).astype(dtype)


def blocks(width: int, height: int, channels: int = 3, dtype: type = np.uint8, *, cell: int = 48) -> np.ndarray:
    """Flat blocks of 8 levels per channel (corners for keypoints, long runs for deflate): a large
    16-bit or float picture that still fits in a few MB."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 8, (-(-height // cell), -(-width // cell), channels)).astype(np.float64) / 7
    img = np.repeat(np.repeat(small, cell, axis=0), cell, axis=1)[:height, :width]
    if np.issubdtype(dtype, np.floating):
        return img.astype(dtype)
    return (img * np.iinfo(dtype).max).astype(dtype)


# --------------------------------------------------------------------------- TIFF
TIFF_SHORT, TIFF_LONG = 3, 4
IMAGE_WIDTH, IMAGE_LENGTH, BITS_PER_SAMPLE, COMPRESSION, PHOTOMETRIC = 256, 257, 258, 259, 262
STRIP_OFFSETS, SAMPLES_PER_PIXEL, ROWS_PER_STRIP, STRIP_BYTE_COUNTS = 273, 277, 278, 279
PLANAR_CONFIG, TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS = 284, 322, 323, 324, 325
EXTRA_SAMPLES, SAMPLE_FORMAT = 338, 339

Entry = tuple[int, int, Sequence[int]]  # (tag, type, values)


@dataclass
class TiffPage:
    """One IFD of an uncompressed TIFF. ``entries`` are written in the given order (duplicates
    and all); offsets to ``data`` are filled in for the StripOffsets/TileOffsets tags."""

    entries: list[Entry]
    data: bytes


def tiff_page(
    width: int,
    height: int,
    *,
    spp: int = 3,
    bps: int = 8,
    sample_format: int = 1,
    data: bytes | None = None,
    rows_per_strip: int | None = None,
    tile: tuple[int, int] | None = None,
    deflate: bool = False,
    extra: Sequence[Entry] = (),
) -> TiffPage:
    """The IFD of a chunky image. Every strip (or tile) points at the same ``data``: by default
    the zero bytes of one strip/tile (capped at 4 MB uncompressed), zlib-compressed with
    ``deflate`` — so a small file can hold a large, fully decodable image."""
    sample_bytes = max(1, bps // 8)
    if data is None:
        if tile is not None:
            size = tile[0] * tile[1] * spp * sample_bytes
        else:
            size = width * (rows_per_strip or height) * spp * sample_bytes
        data = zlib.compress(bytes(size), 9) if deflate else bytes(min(size, 1 << 22))
    photometric = 1 if spp in (1, 2) else 2
    entries: list[Entry] = [
        (IMAGE_WIDTH, TIFF_LONG, [width]),
        (IMAGE_LENGTH, TIFF_LONG, [height]),
        (BITS_PER_SAMPLE, TIFF_SHORT, [bps] * spp),
        (COMPRESSION, TIFF_SHORT, [8 if deflate else 1]),
        (PHOTOMETRIC, TIFF_SHORT, [photometric]),
        (SAMPLES_PER_PIXEL, TIFF_SHORT, [spp]),
        (PLANAR_CONFIG, TIFF_SHORT, [1]),
        (SAMPLE_FORMAT, TIFF_SHORT, [sample_format] * spp),
    ]
    if spp in (2, 4):
        entries.append((EXTRA_SAMPLES, TIFF_SHORT, [2]))  # unassociated alpha
    if tile is None:
        strips = -(-height // (rows_per_strip or height))
        entries += [
            (STRIP_OFFSETS, TIFF_LONG, [0] * strips),
            (ROWS_PER_STRIP, TIFF_LONG, [rows_per_strip or height]),
            (STRIP_BYTE_COUNTS, TIFF_LONG, [len(data)] * strips),
        ]
    else:
        tiles = -(-width // tile[0]) * -(-height // tile[1])
        entries += [
            (TILE_WIDTH, TIFF_LONG, [tile[0]]),
            (TILE_LENGTH, TIFF_LONG, [tile[1]]),
            (TILE_OFFSETS, TIFF_LONG, [0] * tiles),
            (TILE_BYTE_COUNTS, TIFF_LONG, [len(data)] * tiles),
        ]
    entries += list(extra)
    entries.sort(key=lambda e: e[0])
    return TiffPage(entries, data)


def tiff_file(pages: Sequence[TiffPage]) -> bytes:
    """Little-endian TIFF of ``pages`` (each IFD followed by its out-of-line values and data)."""
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for i, page in enumerate(pages):
        ifd = len(out)
        n = len(page.entries)
        values_at = ifd + 2 + 12 * n + 4
        blobs = bytearray()
        encoded_values: list[bytes] = []
        for _tag, typ, values in page.entries:
            fmt = "<" + ("H" if typ == TIFF_SHORT else "I") * len(values)
            encoded_values.append(struct.pack(fmt, *values))
        data_at = values_at + sum(len(v) for v in encoded_values if len(v) > 4)
        data_at += data_at % 2
        table = bytearray(struct.pack("<H", n))
        for (tag, typ, values), raw in zip(page.entries, encoded_values, strict=True):
            if tag in (STRIP_OFFSETS, TILE_OFFSETS):  # offsets into page.data
                raw = struct.pack("<" + "I" * len(values), *(data_at + v for v in values))
            if len(raw) <= 4:
                field = raw.ljust(4, b"\x00")
            else:
                field = struct.pack("<I", values_at + len(blobs))
                blobs += raw
            table += struct.pack("<HHI", tag, typ, len(values)) + field
        next_ifd = 0
        body = bytes(table) + b"\x00\x00\x00\x00" + bytes(blobs)
        body += b"\x00" * (data_at - ifd - len(body)) + page.data
        if i + 1 < len(pages):
            next_ifd = ifd + len(body) + (len(body) % 2)
        body = body[: 2 + 12 * n] + struct.pack("<I", next_ifd) + body[2 + 12 * n + 4 :]
        out += body
        if len(out) % 2:
            out += b"\x00"
    return bytes(out)


def tiff_duplicate_tag(tag: int, first: int, second: int, *, width: int = 30000, height: int = 30000) -> bytes:
    """A deflated TIFF of ``width`` x ``height`` zero pixels whose IFD holds ``tag`` (ImageWidth
    or ImageLength) twice: ``first``, then ``second``. libtiff keeps the first of two."""
    page = tiff_page(width, height, rows_per_strip=64, deflate=True)
    entries = [e for e in page.entries if e[0] != tag]
    entries += [(tag, TIFF_LONG, [first]), (tag, TIFF_LONG, [second])]
    entries.sort(key=lambda e: e[0])  # stable: first stays first
    return tiff_file([TiffPage(entries, page.data)])


def tiff_of(image: np.ndarray, *, rows_per_strip: int | None = None, deflate: bool = False) -> bytes:
    """A TIFF of ``image`` (h, w[, c]) with its real pixels (channel order as given), one strip
    per ``rows_per_strip`` rows, each deflated with ``deflate``."""
    h, w = image.shape[:2]
    spp = 1 if image.ndim == 2 else image.shape[2]
    kind = image.dtype.kind
    fmt = 3 if kind == "f" else 2 if kind == "i" else 1
    rows = rows_per_strip or h
    strips = [image[y : y + rows].tobytes() for y in range(0, h, rows)]
    if deflate:
        strips = [zlib.compress(s, 6) for s in strips]
    page = tiff_page(
        w,
        h,
        spp=spp,
        bps=image.dtype.itemsize * 8,
        sample_format=fmt,
        data=b"".join(strips),
        rows_per_strip=rows,
        deflate=deflate,
    )
    offsets, counts, at = [], [], 0
    for s in strips:
        offsets.append(at)
        counts.append(len(s))
        at += len(s)
    entries = [
        (tag, typ, counts if tag == STRIP_BYTE_COUNTS else offsets if tag == STRIP_OFFSETS else values)
        for tag, typ, values in page.entries
    ]
    return tiff_file([TiffPage(entries, page.data)])


# --------------------------------------------------------------------------- GIF


def gif_file(screen: tuple[int, int], frames: Sequence[tuple[int, int, int, int]]) -> bytes:
    """A GIF with a 2-colour global palette and frames (left, top, width, height), each one LZW
    code stream of a single pixel value (short for its size: the decoder pads)."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", screen[0], screen[1], 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff")
    for left, top, width, height in frames:
        out += b"\x2c" + struct.pack("<HHHHB", left, top, width, height, 0)
        out += b"\x02\x02\x44\x01\x00"  # min code size 2; clear, 0, end
    out += b"\x3b"
    return bytes(out)


# --------------------------------------------------------------------------- WebP


def riff_chunk(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) % 2 else b"")


def webp_file(chunks: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def vp8l_chunk(width: int, height: int) -> bytes:
    """The VP8L chunk of a real lossless WebP of ``width`` x ``height``."""
    data = encoded(".webp", photo(width, height), [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert data[12:16] == b"VP8L", data[:16]
    (size,) = struct.unpack("<I", data[16:20])
    return data[12 : 20 + size + size % 2]


def vp8l_with_size(chunk: bytes, width: int, height: int) -> bytes:
    """A VP8L chunk whose bitstream header claims ``width`` x ``height`` (the data stays)."""
    (bits,) = struct.unpack("<I", chunk[9:13])
    bits = (bits & ~0xFFFFFFF) | ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
    return chunk[:9] + struct.pack("<I", bits) + chunk[13:]


def vp8x_chunk(width: int, height: int, *, flags: int = 0) -> bytes:
    return riff_chunk(
        b"VP8X", bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    )


def webp_canvas_disagrees(canvas: tuple[int, int], bitstream: tuple[int, int]) -> bytes:
    """VP8X canvas of one size, the image bitstream claiming another."""
    return webp_file(vp8x_chunk(*canvas) + vp8l_with_size(vp8l_chunk(16, 16), *bitstream))


def webp_animated(canvas: tuple[int, int], frame: tuple[int, int, int, int]) -> bytes:
    """An animated WebP (VP8X + ANIM + one ANMF) whose frame is (x, y, width, height); x and y are
    stored halved, as the format does."""
    x, y, w, h = frame
    image = vp8l_with_size(vp8l_chunk(16, 16), w, h)
    anmf = (
        (x // 2).to_bytes(3, "little")
        + (y // 2).to_bytes(3, "little")
        + (w - 1).to_bytes(3, "little")
        + (h - 1).to_bytes(3, "little")
        + (100).to_bytes(3, "little")
        + b"\x00"
        + image
    )
    anim = riff_chunk(b"ANIM", b"\xff\xff\xff\xff" + b"\x00\x00")
    return webp_file(vp8x_chunk(*canvas, flags=0x02) + anim + riff_chunk(b"ANMF", anmf))


# --------------------------------------------------------------------------- BMP


def bmp_claiming(width: int, height: int, *, bits: int = 24, pixel_bytes: int = 64) -> bytes:
    """A BMP whose header claims ``width`` x ``height`` with only ``pixel_bytes`` of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0, 2835, 2835, 0, 0)
    offset = 14 + len(info)
    body = bytes(pixel_bytes)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + info + body


# --------------------------------------------------------------------------- JPEG


def jpeg_progressive(width: int, height: int, *, quality: int = 90) -> bytes:
    return encoded(".jpg", photo(width, height), [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_PROGRESSIVE, 1])


def jpeg_many_scans(width: int, height: int, scans: int) -> bytes:
    """A progressive JPEG of a flat picture with its last (refinement) scan repeated until it has
    ``scans`` scans: each scan is a few bytes, yet makes the decoder walk the whole coefficient
    buffer again (a CPU bomb)."""
    flat = np.full((height, width, 3), 128, np.uint8)
    data = encoded(".jpg", flat, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    last = data.rfind(b"\xff\xda")
    end = data.rfind(b"\xff\xd9")
    have = data.count(b"\xff\xda")
    return data[:end] + data[last:end] * max(0, scans - have) + b"\xff\xd9"


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One hostile (or merely awkward) input and the answer the API must give to it."""

    klass: str
    name: str
    build: Callable[[], bytes]
    status: int
    code: str | None  # None: a 200 answer
    note: str = ""


def _banner_png() -> bytes:
    return encoded(".png", photo(1000, 2))


def _tall_tiff() -> bytes:
    return tiff_of(photo(100_000, 1)[:, :, ::-1].copy())


_FLOOD = 6_000_000 - 1_000  # just under the 6 MB payload limit


def _jpeg_segment_flood() -> bytes:
    jpeg = encoded(".jpg", photo(64, 48))
    return jpeg[:2] + b"\xff\xe1\x00\x02" * (_FLOOD // 4) + jpeg[2:]


def _gif_block_flood() -> bytes:
    gif = gif_file((10, 10), [(0, 0, 10, 10)])
    return gif[:19] + b"\x21\xfe\x00" * (_FLOOD // 3) + gif[19:]


def _webp_chunk_flood() -> bytes:
    return webp_file(vp8x_chunk(16, 16) + b"EXIF\x00\x00\x00\x00" * (_FLOOD // 8))


CASES: tuple[Case, ...] = (
    Case(
        "png chunk length lies",
        "png_idat_len_4gb",
        lambda: png_1x1(idat_length=0xFFFFFFF0),
        422,
        "corrupt_image",
        "a valid 1x1 PNG whose IDAT length field says 4,294,967,280",
    ),
    Case(
        "png chunk length lies",
        "png_idat_len_7fffffff",
        lambda: png_1x1(idat_length=0x7FFFFFFF),
        422,
        "truncated_image",
        "the same, 2^31-1: within the PNG limit, beyond the file",
    ),
    Case(
        "png chunk length lies",
        "png_idat_len_ffffffff",
        lambda: png_1x1(idat_length=0xFFFFFFFF),
        422,
        "corrupt_image",
        "the same, 2^32-1",
    ),
    Case(
        "png chunk length lies",
        "png_text_len_7fffffff",
        lambda: png_1x1(before_idat=png_chunk(b"tEXt", b"a\x00b", length=0x7FFFFFFF)),
        422,
        "truncated_image",
        "an ancillary chunk before IDAT",
    ),
    Case(
        "png chunk length lies",
        "png_6000x6000_64_bytes",
        lambda: png_claiming(6000, 6000),
        422,
        "truncated_image",
        "36 MP claimed, 64 bytes of pixels",
    ),
    Case(
        "repeated tiff tags",
        "tiff_dup_width_30000_10",
        lambda: tiff_duplicate_tag(IMAGE_WIDTH, 30000, 10),
        422,
        "corrupt_image",
        "ImageWidth 30000 then 10",
    ),
    Case(
        "repeated tiff tags",
        "tiff_dup_width_10_30000",
        lambda: tiff_duplicate_tag(IMAGE_WIDTH, 10, 30000),
        422,
        "corrupt_image",
        "ImageWidth 10 then 30000",
    ),
    Case(
        "repeated tiff tags",
        "tiff_dup_length_10_30000",
        lambda: tiff_duplicate_tag(IMAGE_LENGTH, 10, 30000),
        422,
        "corrupt_image",
        "ImageLength 10 then 30000",
    ),
    Case(
        "header vs decoder",
        "tiff_page2_30000x30000",
        lambda: tiff_file([tiff_page(10, 10), tiff_page(30000, 30000, rows_per_strip=64, deflate=True)]),
        413,
        "image_too_large",
        "page 1 10x10, page 2 30000x30000",
    ),
    Case(
        "header vs decoder",
        "tiff_tile_16000x16000",
        lambda: tiff_file([tiff_page(16, 16, tile=(16000, 16000), data=bytes(64))]),
        413,
        "image_too_large",
        "16x16 image in 16000x16000 tiles (1 GB tile buffer)",
    ),
    Case(
        "header vs decoder",
        "apng_fctl_30000x30000",
        lambda: apng_frame_larger_than_image(30000, 30000),
        422,
        "corrupt_image",
        "1x1 APNG, first frame 30000x30000",
    ),
    Case(
        "header vs decoder",
        "webp_canvas_16_bitstream_16383",
        lambda: webp_canvas_disagrees((16, 16), (16383, 16383)),
        422,
        "corrupt_image",
        "VP8X canvas 16x16, VP8L bitstream 16383x16383",
    ),
    Case(
        "frames larger than the screen",
        "gif_frame_6000_on_10x10",
        lambda: gif_file((10, 10), [(0, 0, 6000, 6000)]),
        422,
        "corrupt_image",
        "a 6000x6000 frame on a 10x10 screen",
    ),
    Case(
        "frames larger than the screen",
        "gif_frame_offset_60000",
        lambda: gif_file((10, 10), [(60000, 60000, 10, 10)]),
        422,
        "corrupt_image",
        "a 10x10 frame at 60000,60000",
    ),
    Case(
        "frames larger than the screen",
        "webp_anmf_16383_on_16x16",
        lambda: webp_animated((16, 16), (0, 0, 16383, 16383)),
        422,
        "corrupt_image",
        "an animation frame of 16383x16383 on a 16x16 canvas",
    ),
    Case(
        "decoded bytes",
        "tiff_float64_rgba_6324",
        lambda: tiff_file([tiff_page(6324, 6324, spp=4, bps=64, sample_format=3, rows_per_strip=64, deflate=True)]),
        413,
        "image_too_large",
        "40 MP float64 RGBA: 1.28 GB decoded",
    ),
    Case(
        "decoded bytes",
        "tiff_float64_rgba_2700",
        lambda: tiff_of(blocks(2700, 2700, 4, np.float64), rows_per_strip=64, deflate=True),
        200,
        None,
        "float64 RGBA, about the largest accepted (233 MB array)",
    ),
    Case(
        "decoded bytes",
        "png_16bit_rgba_5400x5400",
        lambda: encoded(".png", blocks(5400, 5400, 4, np.uint16)),
        200,
        None,
        "16-bit RGBA, about the largest accepted (233 MB array)",
    ),
    Case(
        "decoded bytes",
        "bmp_6000x6000_64_bytes",
        lambda: bmp_claiming(6000, 6000),
        422,
        "truncated_image",
        "36 MP claimed, 64 bytes of pixels",
    ),
    Case(
        "decoded bytes",
        "jpeg_7300x5400_progressive",
        lambda: jpeg_progressive(7300, 5400, quality=70),
        200,
        None,
        "39 MP, the largest accepted",
    ),
    Case(
        "cpu",
        "jpeg_progressive_5000_scans",
        lambda: jpeg_many_scans(2000, 2000, 5000),
        422,
        "corrupt_image",
        "a progressive JPEG whose last scan is repeated to 5,000 scans",
    ),
    Case(
        "structure floods",
        "jpeg_1500000_app_segments",
        _jpeg_segment_flood,
        422,
        "corrupt_image",
        "1.5 million empty APP1 segments",
    ),
    Case(
        "structure floods",
        "png_500000_text_chunks",
        lambda: png_1x1(before_idat=png_chunk(b"tEXt", b"") * (_FLOOD // 12)),
        422,
        "corrupt_image",
        "libpng logs a warning for each",
    ),
    Case(
        "structure floods",
        "gif_2000000_comments",
        _gif_block_flood,
        422,
        "corrupt_image",
        "2 million empty comment extensions",
    ),
    Case(
        "structure floods",
        "webp_750000_chunks",
        _webp_chunk_flood,
        422,
        "corrupt_image",
        "750,000 empty chunks after VP8X",
    ),
    Case("banners", "png_1000x2", _banner_png, 200, None, "a 1000x2 banner"),
    Case("banners", "tiff_100000x1", _tall_tiff, 200, None, "a 100000x1 line"),
    Case("banners", "png_2x1000", lambda: encoded(".png", photo(2, 1000)), 200, None, "a 2x1000 column"),
)
