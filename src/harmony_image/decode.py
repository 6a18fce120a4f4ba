"""Turn untrusted bytes into a BGR ``uint8`` image, refusing bad input before it costs memory.

The format is sniffed from magic bytes and the file's structure is walked before any pixel is
decoded, so that what OpenCV will allocate is known — and bounded — in advance:

* PNG: every chunk length must fit in the file (a 67-byte PNG whose IDAT claims 4 GB is
  refused), IHDR first and valid, the image data large enough to hold the pixels it claims,
  APNG frames inside the image;
* TIFF: every page (IFD) is read, none may state a tag twice (libtiff keeps the first of two, a
  naive reader the last), every page must fit the limits, and the strip or tile buffer the
  decoder allocates is counted;
* GIF: every frame must lie inside the logical screen; WebP: the bitstream's size must match the
  canvas, animation frames must lie inside it; BMP: uncompressed pixel rows must be in the file;
* JPEG: the frame header, its sampling factors (a progressive JPEG keeps every coefficient in
  memory) and the number of scans (each one walks the whole image again).

Two limits apply to the header's numbers: ``max_pixels`` (width x height, 40 MP by default) and
``max_decoded_bytes`` — the memory decoding takes at its peak, from the decoded array (width x
height x channels x bytes per sample): the decoder's own buffers beside it (TIFF strips/tiles,
JPEG coefficients), the copy OpenCV's Python binding makes of it (measured: every ``imdecode``
peaks at twice its array), and the 8-bit BGR array made from a 16-bit or float one.

OpenCV's own pixel limit (``OPENCV_IO_MAX_IMAGE_PIXELS``) is set to the same 40 MP as a second
guard; OpenCV reads it once, when its library is loaded, so this module sets it before its
``import cv2`` (see :data:`OPENCV_GUARD`). After decoding, the array's size must match the
header's, or the image is refused as corrupt.

Normalisation rules, applied to every format:

* JPEG: EXIF orientation applied (as ``cv2.imread`` does by default).
* Alpha (PNG, WebP, TIFF, GIF transparency): composited on white.
* 16-bit and float samples: scaled to 8 bits (in bands of rows: no full-size temporaries).
* Grayscale: expanded to three equal channels.
* GIF: first frame.
"""

from __future__ import annotations

import os
import re
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_DECODED_BYTES = 448 * 1024 * 1024

# OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS once, while its library loads (a static initialiser of
# imgcodecs), so it must be in the environment before the first `import cv2` of the process. An
# operator's own value is kept. True when this module set it in time (cv2 not loaded yet).
OPENCV_PIXELS_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"
OPENCV_GUARD = "cv2" not in sys.modules
os.environ.setdefault(OPENCV_PIXELS_ENV, str(DEFAULT_MAX_PIXELS))

import cv2  # noqa: E402 - after the environment variable above, on purpose
import numpy as np  # noqa: E402

from .errors import (  # noqa: E402
    CorruptImageError,
    EmptyImageError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedFormatError,
)

SUPPORTED_FORMATS = ("jpeg", "png", "webp", "bmp", "tiff", "gif")
MAX_TIFF_PAGES = 64
# Structure a real file never needs this much of; more only costs time (each is a step of a
# Python walk here) and log lines (libpng and libtiff print a warning per bad chunk or tag).
MAX_PNG_ANCILLARY_CHUNKS = 1024
MAX_JPEG_SEGMENTS = 1024  # marker segments before the first scan
MAX_GIF_BLOCKS = 100_000
MAX_WEBP_CHUNKS = 65_536
MAX_TIFF_TAGS = 4096  # per page
# A progressive JPEG scan walks the whole coefficient buffer: allow any file this many scans, and
# more only while scans x pixels stays under the budget (~2 s of decoding on one core).
JPEG_FREE_SCANS = 24
JPEG_SCAN_PIXEL_BUDGET = 1_000_000_000
# Deflate cannot expand 1 byte into more than ~1032; a PNG whose image data is smaller than
# this fraction of its pixels' size cannot hold them (truncated, or a header that lies).
_DEFLATE_MAX_RATIO = 1100
_BAND_PIXELS = 1 << 18  # rows converted to 8-bit BGR at a time
_BAND_WORK = _BAND_PIXELS * 4 * 8 * 3  # a band's temporaries at most (4 float64 channels, 3 arrays)


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, before any pixel is decoded.

    ``channels`` and ``sample_bytes`` describe the array OpenCV decodes to; ``decoded_bytes`` is
    the memory decoding is estimated to take at its peak (array, decoder buffers, 8-bit copy).
    """

    format: str
    width: int
    height: int
    channels: int = 3
    sample_bytes: int = 1
    decoded_bytes: int = 0


class _ShortError(Exception):
    """A read past the end of the data (the file is truncated)."""


def _u8(data: bytes, pos: int) -> int:
    if pos < 0 or pos >= len(data):
        raise _ShortError
    return data[pos]


def _unpack(fmt: str, data: bytes, pos: int) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    if pos < 0 or pos + size > len(data):
        raise _ShortError
    return struct.unpack_from(fmt, data, pos)


def sniff_format(data: bytes) -> str | None:
    """Return the format name for ``data`` from its magic bytes, or ``None`` if unknown.

    Formats that are images but not supported (AVIF, HEIC, JPEG 2000, SVG, ...) return a
    name that is not in :data:`SUPPORTED_FORMATS`.
    """
    head = bytes(data[:32])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM") and len(head) >= 18:
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "avif"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc", b"heim", b"heis"):
            return "heic"
    if head.startswith((b"\x00\x00\x00\x0cjP  ", b"\xffO\xffQ")):
        return "jpeg2000"
    stripped = head.lstrip()
    if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in bytes(data[:1024])):
        return "svg"
    return None


@dataclass(frozen=True)
class _Header:
    """What a format's inspector found: the size, the decoded array, the memory, and whether the
    file holds enough data for the pixels it claims (checked after the size limits)."""

    width: int
    height: int
    channels: int
    sample_bytes: int
    work_bytes: int = 0  # the decoder's own buffers at its peak, beside the decoded array
    data_short: str | None = None  # why the pixel data cannot be complete, if it cannot
    pages: tuple[_Header, ...] = ()  # TIFF: the pages after the first
    scan_offset: int | None = None  # JPEG: where the first scan's header is (None: not found)

    @property
    def array_bytes(self) -> int:
        return self.width * self.height * self.channels * self.sample_bytes

    @property
    def decoded_bytes(self) -> int:
        """The peak of decoding: the decoder's array beside its own buffers; then OpenCV's Python
        binding copies the array into a numpy one (cv::Mat -> ndarray: twice the array); then
        the 8-bit BGR result beside the array, unless the array already is that."""
        array = self.array_bytes
        convert = 0 if (self.sample_bytes == 1 and self.channels == 3) else self.width * self.height * 3 + _BAND_WORK
        return max(2 * array, array + self.work_bytes, array + convert)


def _inspect(data: bytes) -> tuple[str, _Header]:
    if len(data) == 0:
        raise EmptyImageError("the image is empty (0 bytes); send the file's contents")
    fmt = sniff_format(data)
    if fmt is None:
        raise NotAnImageError("the data is not an image: no JPEG, PNG, WebP, BMP, TIFF or GIF signature found")
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedFormatError(f"{fmt.upper()} images are not supported; send JPEG, PNG, WebP, BMP, TIFF or GIF")
    try:
        header = _INSPECTORS[fmt](data)
    except _ShortError:
        raise TruncatedImageError(f"the {fmt.upper()} file is truncated: its header or structure ends early") from None
    if header.width <= 0 or header.height <= 0:
        raise CorruptImageError(f"the {fmt.upper()} header gives an invalid size {header.width}x{header.height}")
    return fmt, header


def read_image_info(data: bytes) -> ImageInfo:
    """Read format, pixel dimensions and decoding cost from the file's structure, decoding no pixel.

    Raises
    ------
    EmptyImageError, NotAnImageError, UnsupportedFormatError, TruncatedImageError, CorruptImageError
    """
    fmt, h = _inspect(data)
    return ImageInfo(fmt, h.width, h.height, h.channels, h.sample_bytes, h.decoded_bytes)


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):,.0f} MB"


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> np.ndarray:
    """Decode image bytes into a BGR ``uint8`` array of shape (height, width, 3).

    Parameters
    ----------
    data : bytes
        The encoded file contents.
    max_pixels : int, optional
        Largest accepted width x height, checked on the header before decoding. Default
        40 megapixels.
    max_bytes : int, optional
        Largest accepted encoded size in bytes. Default 64 MiB.
    max_decoded_bytes : int, optional
        Most memory decoding may take at its peak, estimated from the header (see
        :class:`ImageInfo`). Default 448 MiB: an 8-bit 40 MP photo takes 240 MB, a 16-bit RGBA
        image up to 29 MP and a float64 RGBA one up to 7.3 MP are accepted.

    Raises
    ------
    ImageError
        A subclass naming the problem: empty, not an image, unsupported format, too large,
        truncated or corrupt.
    """
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"the file is {len(data):,} bytes; the limit is {max_bytes:,} bytes")
    fmt, header = _inspect(data)
    name = fmt.upper()
    pages = [header, *header.pages]
    for number, page in enumerate(pages, 1):
        where = f"page {number} of the TIFF" if number > 1 else "the image"
        width, height = page.width, page.height
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{where} is {width}x{height} = {width * height:,} pixels; "
                f"the limit is {max_pixels:,} pixels — send a smaller version"
            )
        if page.decoded_bytes > max_decoded_bytes:
            kind = f"{page.channels} channel{'s' if page.channels > 1 else ''} of {8 * page.sample_bytes}-bit samples"
            raise ImageTooLargeError(
                f"decoding {where} ({width}x{height} {name}, {kind}) takes about {_mb(page.decoded_bytes)} of "
                f"memory; the limit is {_mb(max_decoded_bytes)} — send a smaller or 8-bit version"
            )
    if header.data_short:
        raise TruncatedImageError(f"the {name} file is truncated: {header.data_short}")
    _check_complete(data, fmt, header)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR if fmt == "jpeg" else cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        if "CV_IO_MAX_IMAGE" in str(exc):
            raise ImageTooLargeError(
                f"the {name} decoder found an image larger than {OPENCV_PIXELS_ENV} allows"
            ) from None
        raise CorruptImageError(f"the {name} file could not be decoded: it is corrupt") from None
    if image is None or image.size == 0:
        raise CorruptImageError(f"the {name} file could not be decoded: it is corrupt or truncated")
    shape = tuple(image.shape[:2])
    if shape not in ((header.height, header.width), (header.width, header.height)):
        raise CorruptImageError(
            f"the {name} file decodes to {shape[1]}x{shape[0]} pixels, "
            f"not the {header.width}x{header.height} its header states"
        )
    return _to_bgr8(image)


# --------------------------------------------------------------------------- conversion
def _to_bgr8(image: np.ndarray) -> np.ndarray:
    """8-bit BGR of any decoded array, converted in bands of rows: the only full-size array made
    is the result (and none at all for an 8-bit BGR image)."""
    if image.ndim == 2:
        image = image[:, :, None]
    height, width, channels = image.shape
    if image.dtype == np.uint8 and channels == 3:
        return np.ascontiguousarray(image)
    scale: tuple[float, float] | None = None
    if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        lo, hi = float(image.min()), float(image.max())  # min-max scaling, as cv2.normalize
        scale = (lo, 255.0 / (hi - lo) if hi > lo else 0.0)
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, _BAND_PIXELS // max(1, width))
    for y in range(0, height, rows):
        out[y : y + rows] = _band_to_bgr8(_band_to_8bit(image[y : y + rows], scale))
    return out


def _band_to_8bit(band: np.ndarray, scale: tuple[float, float] | None) -> np.ndarray:
    if band.dtype == np.uint8:
        return band
    if band.dtype == np.uint16:
        return ((band.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if band.dtype in (np.float32, np.float64):
        with np.errstate(over="ignore", invalid="ignore"):  # inf * 255 is inf, then clipped
            clipped: np.ndarray = np.clip(np.nan_to_num(band) * 255.0 + 0.5, 0, 255)
        return clipped.astype(np.uint8)
    assert scale is not None
    lo, factor = scale
    return np.clip(np.rint((band.astype(np.float64) - lo) * factor), 0, 255).astype(np.uint8)


def _band_to_bgr8(band: np.ndarray) -> np.ndarray:
    channels = band.shape[2]
    if channels == 1:
        return np.repeat(band, 3, axis=2)
    if channels == 2:  # gray + alpha
        gray = _composite_on_white(band[:, :, :1], band[:, :, 1])
        return np.repeat(gray, 3, axis=2)
    if channels == 4:
        return _composite_on_white(band[:, :, :3], band[:, :, 3])
    return band[:, :, :3]


def _composite_on_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.uint16)[:, :, None]
    out = (color.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _check_complete(data: bytes, fmt: str, header: _Header) -> None:
    """Refuse files whose end marker is missing: decoders would return a half-grey image."""
    if fmt == "jpeg":
        sos = header.scan_offset
        if sos is None or data.rfind(b"\xff\xd9") < sos:
            raise TruncatedImageError("the JPEG file is truncated: its end-of-image marker is missing")


# --------------------------------------------------------------------------- PNG
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_MAX_CHUNK = 0x7FFFFFFF  # the PNG specification's limit of a chunk length


def _png(data: bytes) -> _Header:
    pos = 8
    width = height = depth = colour = 0
    idat = 0
    transparency = False
    seen_ihdr = seen_idat = False
    ancillary = 0
    while True:
        if pos + 8 > len(data):
            raise TruncatedImageError("the PNG file is truncated: its IEND chunk is missing")
        length, kind = struct.unpack_from(">I4s", data, pos)
        name = kind.decode("latin-1")
        if length > _MAX_CHUNK:
            raise CorruptImageError(
                f"the PNG chunk {name!r} claims {length:,} bytes, more than a PNG chunk may hold (2^31-1)"
            )
        end = pos + 12 + length
        if end > len(data):
            raise TruncatedImageError(
                f"the PNG file is truncated or lies: chunk {name!r} claims {length:,} bytes, "
                f"only {max(0, len(data) - pos - 12):,} follow"
            )
        body = data[pos + 8 : pos + 8 + length]
        if not seen_ihdr:
            if kind != b"IHDR" or length != 13:
                raise CorruptImageError("the PNG file does not start with its IHDR chunk")
            width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
            if depth not in _PNG_DEPTHS.get(colour, ()) or compression or filtering or interlace > 1:
                raise CorruptImageError(f"the PNG header is invalid (bit depth {depth}, colour type {colour})")
            seen_ihdr = True
        elif kind == b"IHDR":
            raise CorruptImageError("the PNG file has two IHDR chunks")
        elif kind == b"IDAT":
            idat += length
            seen_idat = True
        elif kind == b"tRNS":
            transparency = True
        elif kind == b"fcTL":
            if length < 26:
                raise CorruptImageError("the APNG frame control chunk is too short")
            _seq, fw, fh, fx, fy = struct.unpack_from(">IIIII", body)
            if fw == 0 or fh == 0 or fx + fw > width or fy + fh > height:
                raise CorruptImageError(
                    f"an APNG frame ({fw}x{fh} at {fx},{fy}) lies outside the {width}x{height} image"
                )
        elif kind == b"IEND":
            break
        elif kind not in (b"PLTE", b"fdAT"):
            ancillary += 1
            if ancillary > MAX_PNG_ANCILLARY_CHUNKS:
                raise CorruptImageError(f"the PNG file has more than {MAX_PNG_ANCILLARY_CHUNKS} ancillary chunks")
        pos = end
    if not seen_idat:
        raise TruncatedImageError("the PNG file has no image data (IDAT)")
    channels = _PNG_SAMPLES[colour]
    out_channels = 4 if (channels in (2, 4) or transparency) else (1 if channels == 1 and colour == 0 else 3)
    sample_bytes = 2 if depth == 16 else 1
    raw = height * (1 + (width * channels * depth + 7) // 8)
    short = None
    if idat * _DEFLATE_MAX_RATIO < raw:
        short = f"its image data ({idat:,} bytes) cannot hold {width}x{height} pixels ({raw:,} bytes)"
    return _Header(width, height, out_channels, sample_bytes, work_bytes=2 * raw // max(1, height), data_short=short)


# --------------------------------------------------------------------------- GIF
def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while True:
        size = _u8(data, pos)
        pos += 1 + size
        if size == 0:
            return pos


def _gif(data: bytes) -> _Header:
    width, height, flags = _unpack("<HHB", data, 6)
    pos = 13
    if flags & 0x80:
        pos += 3 << ((flags & 7) + 1)
    frames = 0
    for _ in range(MAX_GIF_BLOCKS):
        block = _u8(data, pos)
        if block == 0x3B:
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:
            left, top, fw, fh, fflags = _unpack("<HHHHB", data, pos + 1)
            if fw == 0 or fh == 0 or left + fw > width or top + fh > height:
                raise CorruptImageError(
                    f"a GIF frame ({fw}x{fh} at {left},{top}) lies outside its {width}x{height} screen"
                )
            pos += 10
            if fflags & 0x80:
                pos += 3 << ((fflags & 7) + 1)
            code_size = _u8(data, pos)
            if not 1 <= code_size <= 11:
                raise CorruptImageError(f"a GIF frame has an invalid LZW code size {code_size}")
            pos = _skip_sub_blocks(data, pos + 1)
            frames += 1
        else:
            raise CorruptImageError(f"the GIF file has an unknown block 0x{block:02x} at byte {pos}")
    else:
        raise CorruptImageError(f"the GIF file has more than {MAX_GIF_BLOCKS:,} blocks")
    if frames == 0:
        raise CorruptImageError("the GIF file has no image")
    # the decoder keeps a BGRA canvas, the previous one and an index buffer
    return _Header(width, height, 4, 1, work_bytes=width * height * 5)


# --------------------------------------------------------------------------- WebP
def _riff_chunks(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(fourcc, payload offset, payload size) of the RIFF chunks in data[start:end]."""
    pos = start
    for _ in range(MAX_WEBP_CHUNKS):
        if pos + 8 > end:
            return
        kind = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        if pos + 8 + size > end:
            raise TruncatedImageError(
                f"the WebP file is truncated or lies: chunk {kind.decode('latin-1')!r} claims {size:,} bytes"
            )
        yield kind, pos + 8, size
        pos += 8 + size + (size & 1)
    if pos + 8 <= end:
        raise CorruptImageError(f"the WebP file has more than {MAX_WEBP_CHUNKS:,} chunks")


def _webp_bitstream(data: bytes, kind: bytes, pos: int, size: int) -> tuple[int, int, bool]:
    """(width, height, has alpha) of a VP8 or VP8L bitstream."""
    if kind == b"VP8 ":
        if size < 10 or data[pos + 3 : pos + 6] != b"\x9d\x01\x2a" or data[pos] & 1:
            raise CorruptImageError("the WebP VP8 bitstream has no key frame header")
        w, h = struct.unpack_from("<HH", data, pos + 6)
        return w & 0x3FFF, h & 0x3FFF, False
    if size < 5 or data[pos] != 0x2F:
        raise CorruptImageError("the WebP VP8L bitstream has no signature")
    (bits,) = struct.unpack_from("<I", data, pos + 1)
    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool(bits >> 28 & 1)


def _webp(data: bytes) -> _Header:
    (riff_size,) = _unpack("<I", data, 4)
    end = 8 + riff_size
    if end > len(data):
        raise TruncatedImageError(
            f"the WebP file is truncated: RIFF states {riff_size + 8:,} bytes, {len(data):,} sent"
        )
    chunks = list(_riff_chunks(data, 12, end))
    if not chunks:
        raise _ShortError
    kind, pos, size = chunks[0]
    if kind in (b"VP8 ", b"VP8L"):
        width, height, alpha = _webp_bitstream(data, kind, pos, size)
        return _Header(width, height, 4 if alpha else 3, 1, work_bytes=2 * width * height)
    if kind != b"VP8X" or size < 10:
        raise CorruptImageError("the WebP file has no VP8, VP8L or VP8X chunk")
    flags = data[pos]
    width = int.from_bytes(data[pos + 4 : pos + 7], "little") + 1
    height = int.from_bytes(data[pos + 7 : pos + 10], "little") + 1
    images = 0
    for kind, pos, size in chunks[1:]:
        if kind == b"ANMF":
            if size < 16:
                raise CorruptImageError("a WebP animation frame is too short")
            fx = 2 * int.from_bytes(data[pos : pos + 3], "little")
            fy = 2 * int.from_bytes(data[pos + 3 : pos + 6], "little")
            fw = int.from_bytes(data[pos + 6 : pos + 9], "little") + 1
            fh = int.from_bytes(data[pos + 9 : pos + 12], "little") + 1
            if fx + fw > width or fy + fh > height:
                raise CorruptImageError(
                    f"a WebP animation frame ({fw}x{fh} at {fx},{fy}) lies outside its {width}x{height} canvas"
                )
            for sub, spos, ssize in _riff_chunks(data, pos + 16, pos + size):
                if sub in (b"VP8 ", b"VP8L"):
                    bw, bh, _alpha = _webp_bitstream(data, sub, spos, ssize)
                    if (bw, bh) != (fw, fh):
                        raise CorruptImageError(f"a WebP animation frame is {fw}x{fh} but its bitstream says {bw}x{bh}")
            images += 1
        elif kind in (b"VP8 ", b"VP8L"):
            bw, bh, _alpha = _webp_bitstream(data, kind, pos, size)
            if (bw, bh) != (width, height):
                raise CorruptImageError(f"the WebP canvas is {width}x{height} but its bitstream says {bw}x{bh}")
            images += 1
    if images == 0:
        raise CorruptImageError("the WebP file holds no image bitstream")
    animated = bool(flags & 0x02)
    # an animation is composed on BGRA canvases (the current and the previous one)
    return _Header(width, height, 4, 1, work_bytes=(2 * 4 if animated else 2) * width * height)


# --------------------------------------------------------------------------- BMP
def _bmp(data: bytes) -> _Header:
    (offset,) = _unpack("<I", data, 10)
    (header_size,) = _unpack("<I", data, 14)
    if header_size == 12:
        width, height, _planes, bits = _unpack("<HHHH", data, 18)
        compression = 0
    elif header_size >= 40:
        width, height, _planes, bits, compression = _unpack("<iiHHI", data, 18)
    else:
        raise CorruptImageError(f"the BMP file has an unknown header (size {header_size})")
    height = abs(height)
    if bits not in (1, 4, 8, 16, 24, 32):
        raise CorruptImageError(f"the BMP file has an invalid bit depth {bits}")
    short = None
    if compression in (0, 3, 6) and width > 0 and height > 0:  # uncompressed rows: they must be there
        stride = ((width * bits + 31) // 32) * 4
        need = offset + stride * (height - 1) + (width * bits + 7) // 8
        if need > len(data):
            short = f"its {width}x{height} pixels need {need:,} bytes, the file has {len(data):,}"
    return _Header(width, height, 4 if bits == 32 else 3, 1, work_bytes=width * 4, data_short=short)


# --------------------------------------------------------------------------- TIFF
_TIFF_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
_TIFF_TAG_NAMES = {
    256: "ImageWidth",
    257: "ImageLength",
    258: "BitsPerSample",
    259: "Compression",
    262: "PhotometricInterpretation",
    273: "StripOffsets",
    277: "SamplesPerPixel",
    278: "RowsPerStrip",
    279: "StripByteCounts",
    284: "PlanarConfiguration",
    322: "TileWidth",
    323: "TileLength",
    324: "TileOffsets",
    325: "TileByteCounts",
    339: "SampleFormat",
}


def _tiff(data: bytes) -> _Header:
    endian = "<" if data[:2] == b"II" else ">"
    (ifd,) = _unpack(endian + "I", data, 4)
    seen: set[int] = set()
    pages: list[_Header] = []
    while ifd:
        if ifd in seen:
            raise CorruptImageError("the TIFF file's pages form a loop")
        if len(pages) == MAX_TIFF_PAGES:
            raise CorruptImageError(f"the TIFF file has more than {MAX_TIFF_PAGES} pages")
        seen.add(ifd)
        page, ifd = _tiff_page(data, endian, ifd, len(pages) + 1)
        pages.append(page)
        if ifd + 2 > len(data):  # a next page that is not in the file: nothing can read it
            break
    if not pages:
        raise _ShortError
    first = pages[0]
    return _Header(
        first.width, first.height, first.channels, first.sample_bytes, first.work_bytes, pages=tuple(pages[1:])
    )


def _tiff_page(data: bytes, endian: str, ifd: int, number: int) -> tuple[_Header, int]:
    (count,) = _unpack(endian + "H", data, ifd)
    if count == 0 or count > MAX_TIFF_TAGS:
        raise CorruptImageError(f"page {number} of the TIFF file has {count:,} tags")
    tags: dict[int, tuple[int, int, int]] = {}  # tag -> (type, count, offset of the value)
    for i in range(count):
        tag, typ, n = _unpack(endian + "HHI", data, ifd + 2 + 12 * i)
        if tag in tags:
            label = _TIFF_TAG_NAMES.get(tag, f"tag {tag}")
            raise CorruptImageError(
                f"page {number} of the TIFF file states {label} twice: decoders disagree on which one counts"
            )
        field = ifd + 2 + 12 * i + 8
        size = _TIFF_TYPE_SIZES.get(typ, 0) * n
        if size > 4:
            (field,) = _unpack(endian + "I", data, field)
            if field + size > len(data):
                raise TruncatedImageError(
                    f"page {number} of the TIFF file points past its end ({_TIFF_TAG_NAMES.get(tag, tag)})"
                )
        tags[tag] = (typ, n, field)
    (next_ifd,) = _unpack(endian + "I", data, ifd + 2 + 12 * count)

    def values(tag: int, default: int | None = None) -> list[int]:
        if tag not in tags:
            if default is None:
                raise CorruptImageError(f"page {number} of the TIFF file does not state its {_TIFF_TAG_NAMES[tag]}")
            return [default]
        typ, n, at = tags[tag]
        code = {1: "B", 3: "H", 4: "I", 16: "Q"}.get(typ)
        if code is None or n == 0:
            raise CorruptImageError(f"page {number} of the TIFF file has an invalid {_TIFF_TAG_NAMES[tag]}")
        return list(_unpack(endian + code * min(n, 4), data, at))

    width, height = values(256)[0], values(257)[0]
    bps = values(258, 1)[0]
    spp = values(277, 1)[0]
    photometric = values(262, 1)[0]
    gray = photometric in (0, 1)
    if spp == 0 or spp > 4 or bps == 0 or bps > 64:
        raise CorruptImageError(f"page {number} of the TIFF file has {spp} samples of {bps} bits")
    if bps > 8 and (photometric > 2 or spp not in (1, 3, 4)):
        bps = 8  # what OpenCV reads such pages as
    sample_bytes = 1 if bps <= 8 else 2 if bps <= 16 else 4 if bps <= 32 else 8
    channels = 1 if gray else max(3, spp)
    if 322 in tags:
        tile_w, tile_h = values(322)[0], values(323)[0]
    else:
        rows = values(278, height)[0]
        tile_w, tile_h = width, height if rows in (0, 0xFFFFFFFF) else rows
    tile_w = tile_w or width
    # OpenCV reads 8-bit pages as RGBA tiles and others as they are, plus an unpacking buffer for
    # 10/12/14-bit samples
    per_pixel = 4 if sample_bytes == 1 else spp * sample_bytes
    work = tile_w * tile_h * per_pixel
    if bps < sample_bytes * 8 and sample_bytes > 1:
        work += tile_w * tile_h * spp * sample_bytes
    if values(274, 1)[0] in (5, 6, 7, 8):
        work += width * height * channels * sample_bytes  # the orientation fix transposes into a copy
    header = _Header(width, height, channels, sample_bytes, work_bytes=work)
    return header, next_ifd


# --------------------------------------------------------------------------- JPEG
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


_NOT_FILL = re.compile(rb"[^\xff]")


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int]]:
    """Yield (marker, offset of the segment's payload) up to and including the first SOS."""
    pos = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        pos = data.find(b"\xff", pos)  # bytes between segments are skipped, as libjpeg does
        if pos < 0:
            raise IndexError
        found = _NOT_FILL.search(data, pos)  # fill bytes (0xFF...) before the marker
        if found is None:
            raise IndexError
        pos = found.start()
        marker = data[pos]
        pos += 1
        if marker in (0x01, *range(0xD0, 0xD8)):
            continue
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        yield marker, pos
        if marker == 0xDA:
            return
        pos += length
    raise CorruptImageError(f"the JPEG file has more than {MAX_JPEG_SEGMENTS} marker segments before its image data")


def _jpeg_scans(data: bytes, first_sos: int) -> int:
    """Scans (SOS markers) in the file: markers outside the entropy-coded data, up to EOI."""
    scans = 1
    pos = first_sos
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return scans
        marker = data[pos + 1]
        if marker == 0x00 or marker == 0xFF or 0xD0 <= marker <= 0xD7:
            pos += 1 if marker == 0xFF else 2
            continue
        if marker == 0xD9:
            return scans
        if marker == 0xDA:
            scans += 1
        if pos + 4 > len(data):
            return scans
        (length,) = struct.unpack_from(">H", data, pos + 2)
        pos += 2 + length


def _jpeg(data: bytes) -> _Header:
    segments = _jpeg_segments(data)
    try:
        for marker, pos in segments:
            if marker in _SOF_MARKERS:
                _precision, height, width, ncomp = _unpack(">BHHB", data, pos + 2)
                if ncomp not in (1, 3, 4):
                    raise CorruptImageError(f"the JPEG frame has {ncomp} components")
                factors = [
                    (_u8(data, pos + 8 + 3 * i + 1) >> 4, _u8(data, pos + 8 + 3 * i + 1) & 15) for i in range(ncomp)
                ]
                if any(not (1 <= h <= 4 and 1 <= v <= 4) for h, v in factors):
                    raise CorruptImageError("the JPEG frame has invalid sampling factors")
                break
        else:  # the walk reached the first scan without a frame header
            raise CorruptImageError("the JPEG file has no frame header (SOF)")
    except (struct.error, IndexError):
        raise _ShortError from None
    try:  # the same walk, on to the first scan
        sos = next((p for m, p in segments if m == 0xDA), None)
    except (struct.error, IndexError):
        sos = None
    hmax, vmax = max(h for h, _v in factors), max(v for _h, v in factors)
    mcu_w, mcu_h = 8 * hmax, 8 * vmax
    mcus = -(-width // mcu_w) * -(-height // mcu_h)
    out = width * height * 3
    work = out  # EXIF orientation rotates into a second array
    if marker in _PROGRESSIVE:
        coefficients = sum(mcus * h * v * 64 * 2 for h, v in factors)  # every block's coefficients
        work = max(work, coefficients)
        if sos is not None:
            scans = _jpeg_scans(data, sos)
            allowed = max(JPEG_FREE_SCANS, JPEG_SCAN_PIXEL_BUDGET // max(1, width * height))
            if scans > allowed:
                raise CorruptImageError(
                    f"the progressive JPEG has {scans:,} scans; at {width}x{height} at most {allowed:,} are decoded"
                )
    return _Header(width, height, 3, 1, work_bytes=work, scan_offset=sos)


_INSPECTORS: dict[str, Callable[[bytes], _Header]] = {
    "jpeg": _jpeg,
    "png": _png,
    "gif": _gif,
    "bmp": _bmp,
    "webp": _webp,
    "tiff": _tiff,
}
