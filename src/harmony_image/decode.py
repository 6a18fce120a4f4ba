"""Turn untrusted bytes into a BGR ``uint8`` image, refusing bad input before it costs memory.

The format is sniffed from magic bytes and the pixel dimensions are read from the file header,
so a file that claims 50,000 x 50,000 pixels is refused without allocating them. Decoding is
OpenCV's (``cv2.imdecode``). Normalisation rules, applied to every format:

* JPEG: EXIF orientation applied (as ``cv2.imread`` does by default).
* Alpha (PNG, WebP, TIFF, GIF transparency): composited on white.
* 16-bit and float samples: scaled to 8 bits.
* Grayscale: expanded to three equal channels.
* GIF: first frame.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import (
    CorruptImageError,
    EmptyImageError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedFormatError,
)

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

SUPPORTED_FORMATS = ("jpeg", "png", "webp", "bmp", "tiff", "gif")


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, before any pixel is decoded."""

    format: str
    width: int
    height: int


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


def read_image_info(data: bytes) -> ImageInfo:
    """Read format and pixel dimensions from the header without decoding pixels.

    Raises
    ------
    EmptyImageError, NotAnImageError, UnsupportedFormatError, TruncatedImageError
    """
    if len(data) == 0:
        raise EmptyImageError("the image is empty (0 bytes); send the file's contents")
    fmt = sniff_format(data)
    if fmt is None:
        raise NotAnImageError("the data is not an image: no JPEG, PNG, WebP, BMP, TIFF or GIF signature found")
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedFormatError(f"{fmt.upper()} images are not supported; send JPEG, PNG, WebP, BMP, TIFF or GIF")
    try:
        width, height = _HEADER_READERS[fmt](data)
    except (struct.error, IndexError) as exc:
        raise TruncatedImageError(f"the {fmt.upper()} header is incomplete: the file is truncated") from exc
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"the {fmt.upper()} header gives an invalid size {width}x{height}")
    return ImageInfo(fmt, width, height)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
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

    Raises
    ------
    ImageError
        A subclass naming the problem: empty, not an image, unsupported format, too large,
        truncated or corrupt.
    """
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"the file is {len(data):,} bytes; the limit is {max_bytes:,} bytes")
    info = read_image_info(data)
    if info.width * info.height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {info.width}x{info.height} = {info.width * info.height:,} pixels; "
            f"the limit is {max_pixels:,} pixels — send a smaller version"
        )
    _check_complete(data, info.format)
    buf = np.frombuffer(data, dtype=np.uint8)
    if info.format == "jpeg":
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    else:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise CorruptImageError(f"the {info.format.upper()} file could not be decoded: it is corrupt or truncated")
    return _to_bgr8(image)


def _to_bgr8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(np.nan_to_num(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, np.empty(image.shape, np.uint8), 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if channels == 2:  # gray + alpha
        gray, alpha = image[:, :, 0], image[:, :, 1]
        return cv2.cvtColor(_composite_on_white(gray[:, :, None], alpha)[:, :, 0], cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return _composite_on_white(image[:, :, :3], image[:, :, 3])
    return np.ascontiguousarray(image[:, :, :3])


def _composite_on_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.uint16)[:, :, None]
    out = (color.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _check_complete(data: bytes, fmt: str) -> None:
    """Refuse files whose end marker is missing: decoders would return a half-grey image."""
    if fmt == "jpeg":
        sos = _jpeg_scan_offset(data)
        if sos is None or data.rfind(b"\xff\xd9") < sos:
            raise TruncatedImageError("the JPEG file is truncated: its end-of-image marker is missing")
    elif fmt == "png" and data.rfind(b"IEND") == -1:
        raise TruncatedImageError("the PNG file is truncated: its IEND chunk is missing")
    elif fmt == "gif" and data.rfind(b"\x3b") < 13:
        raise TruncatedImageError("the GIF file is truncated: its trailer is missing")


# --- header readers: return (width, height); struct.error/IndexError mean "truncated" ---


def _png_size(data: bytes) -> tuple[int, int]:
    if data[12:16] != b"IHDR":
        raise CorruptImageError("the PNG file has no IHDR chunk")
    return struct.unpack(">II", data[16:24])


def _gif_size(data: bytes) -> tuple[int, int]:
    return struct.unpack("<HH", data[6:10])


def _bmp_size(data: bytes) -> tuple[int, int]:
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return width, abs(height)


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        if len(data) < 30:
            raise IndexError
        return width, height
    raise CorruptImageError("the WebP file has no VP8, VP8L or VP8X chunk")


def _tiff_size(data: bytes) -> tuple[int, int]:
    endian = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(endian + "I", data[4:8])
    (count,) = struct.unpack(endian + "H", data[ifd : ifd + 2])
    size = {}
    for i in range(count):
        entry = data[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        tag, typ = struct.unpack(endian + "HH", entry[:4])
        if tag in (256, 257):
            value = struct.unpack(endian + ("H" if typ == 3 else "I"), entry[8 : 10 if typ == 3 else 12])[0]
            size[tag] = value
    if 256 not in size or 257 not in size:
        raise CorruptImageError("the TIFF file does not state its width and height")
    return size[256], size[257]


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int]]:
    """Yield (marker, offset of the segment's payload) up to and including the first SOS."""
    pos = 2
    while True:
        while data[pos] != 0xFF:
            pos += 1
        while data[pos] == 0xFF:
            pos += 1
        marker = data[pos]
        pos += 1
        if marker in (0x01, *range(0xD0, 0xD8)):
            continue
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        yield marker, pos
        if marker == 0xDA:
            return
        pos += length


def _jpeg_size(data: bytes) -> tuple[int, int]:
    for marker, pos in _jpeg_segments(data):
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            return width, height
    raise CorruptImageError("the JPEG file has no frame header (SOF)")


def _jpeg_scan_offset(data: bytes) -> int | None:
    try:
        for marker, pos in _jpeg_segments(data):
            if marker == 0xDA:
                return pos
    except (struct.error, IndexError):
        return None
    return None


_HEADER_READERS = {
    "jpeg": _jpeg_size,
    "png": _png_size,
    "gif": _gif_size,
    "bmp": _bmp_size,
    "webp": _webp_size,
    "tiff": _tiff_size,
}
