"""Hypothesis over the decoder: real files of every format, mutated (bytes flipped, cut, inserted,
numbers in their headers replaced), hostile files with random parameters, random bytes behind
every signature. Each input decodes to a BGR uint8 image or raises an ImageError (a 4xx) —
never another exception (a 500), never an array of another size than the header's."""

from __future__ import annotations

import struct
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harmony_image import ImageError, decode_image, read_image_info
from tests.hostile import (
    IMAGE_LENGTH,
    IMAGE_WIDTH,
    ROWS_PER_STRIP,
    SAMPLES_PER_PIXEL,
    TIFF_LONG,
    TIFF_SHORT,
    TILE_WIDTH,
    TiffPage,
    apng_frame_larger_than_image,
    bmp_claiming,
    gif_file,
    png_1x1,
    png_chunk,
    tiff_file,
    tiff_page,
    webp_animated,
    webp_canvas_disagrees,
)
from tests.support import FIXTURES

SEEDS = {
    p.name: p.read_bytes()
    for p in sorted(FIXTURES.iterdir())
    if p.suffix in (".png", ".gif", ".bmp", ".tiff", ".webp", ".jpg")
}
SEEDS = {n: b for n, b in SEEDS.items() if len(b) < 60_000}  # the small ones: thousands of runs a minute
FUZZ = settings(
    max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
SLOWEST_SECONDS = 2.0


def check(data: bytes) -> None:
    t0 = time.perf_counter()
    try:
        image = decode_image(data)
    except ImageError as exc:
        assert 400 <= exc.status < 500 and exc.message
    else:
        info = read_image_info(data)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[:2] in ((info.height, info.width), (info.width, info.height))
    assert time.perf_counter() - t0 < SLOWEST_SECONDS


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "byte", "cut", "insert", "u16", "u32", "dup"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind in ("u16", "u32") and pos + 4 <= len(data):
            value = draw(st.sampled_from([0, 1, 2, 255, 256, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]))
            fmt = draw(st.sampled_from(["<", ">"])) + ("H" if kind == "u16" else "I")
            struct.pack_into(fmt, data, pos, value & (0xFFFF if kind == "u16" else 0xFFFFFFFF))
        elif kind == "dup" and len(data) > 8:
            end = draw(st.integers(pos, min(len(data), pos + 64)))
            data[end:end] = data[pos:end]
        if not data:
            break
    return bytes(data)


@FUZZ
@given(mutated())
def test_fuzz_mutated_real_files(data: bytes) -> None:
    check(data)


SIGNATURES = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM"]


@FUZZ
@given(st.sampled_from(SIGNATURES), st.binary(max_size=512))
def test_fuzz_random_bytes_behind_a_signature(magic: bytes, tail: bytes) -> None:
    check(magic + tail)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_webp_chunks(chunks: bytes) -> None:
    check(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks)


SIZES = st.integers(0, 70000)


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    """The builders of tests/hostile.py with random numbers."""
    kind = draw(st.sampled_from(["png", "apng", "gif", "webp", "anim", "bmp", "tiff", "tiff-tags"]))
    if kind == "png":
        chunk = png_chunk(
            draw(st.sampled_from([b"tEXt", b"IDAT", b"zTXt", b"IHDR", b"PLTE", b"tRNS"])),
            draw(st.binary(max_size=20)),
            length=draw(st.none() | st.integers(0, 0xFFFFFFFF)),
        )
        return png_1x1(before_idat=chunk, idat_length=draw(st.none() | st.integers(0, 0xFFFFFFFF)))
    if kind == "apng":
        return apng_frame_larger_than_image(draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)))
    if kind == "gif":
        frames = draw(
            st.lists(st.tuples(SIZES, SIZES, SIZES, SIZES).map(lambda t: tuple(v & 0xFFFF for v in t)), max_size=3)
        )
        return gif_file((draw(SIZES) & 0xFFFF, draw(SIZES) & 0xFFFF), frames)
    if kind == "webp":
        return webp_canvas_disagrees(
            (draw(st.integers(1, 2**24)), draw(st.integers(1, 2**24))),
            (draw(st.integers(1, 16384)), draw(st.integers(1, 16384))),
        )
    if kind == "anim":
        frame = (
            draw(st.integers(0, 2**24 - 1)) * 2,
            draw(st.integers(0, 2**24 - 1)) * 2,
            draw(st.integers(1, 16384)),
            draw(st.integers(1, 16384)),
        )
        return webp_animated((draw(st.integers(1, 2**24)), draw(st.integers(1, 2**24))), frame)
    if kind == "bmp":
        return bmp_claiming(
            draw(st.integers(-(2**31), 2**31 - 1)),
            draw(st.integers(-(2**31), 2**31 - 1)),
            bits=draw(st.sampled_from([0, 1, 4, 8, 16, 24, 32, 64])),
            pixel_bytes=draw(st.integers(0, 256)),
        )
    if kind == "tiff":
        w, h = draw(st.integers(1, 3000)), draw(st.integers(1, 3000))
        tile = draw(st.none() | st.tuples(st.integers(1, 70000), st.integers(1, 70000)))
        if tile is not None and -(-w // tile[0]) * -(-h // tile[1]) > 4096:
            tile = None
        page = tiff_page(
            w,
            h,
            spp=draw(st.sampled_from([1, 2, 3, 4])),
            bps=draw(st.sampled_from([1, 8, 16, 32, 64])),
            sample_format=draw(st.sampled_from([1, 2, 3])),
            data=draw(st.binary(max_size=256)),
            rows_per_strip=None if tile else draw(st.none() | st.integers(1, 70000)),
            tile=tile,
        )
        pages = draw(st.integers(1, 3))
        return tiff_file([page] * pages)
    # tiff-tags: a small valid page whose size, layout and sample tags get random values (repeats too)
    page = tiff_page(8, 8)
    entries = list(page.entries)
    for _ in range(draw(st.integers(1, 4))):
        tag = draw(
            st.sampled_from(
                [IMAGE_WIDTH, IMAGE_LENGTH, ROWS_PER_STRIP, SAMPLES_PER_PIXEL, TILE_WIDTH, 258, 259, 262, 284, 339, 274]
            )
        )
        value = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 16, 64, 65535, 70000, 2**31, 2**32 - 1]))
        typ = TIFF_SHORT if value < 65536 and draw(st.booleans()) else TIFF_LONG
        if draw(st.booleans()):
            entries = [e for e in entries if e[0] != tag]
        entries.append((tag, typ, [value]))
    entries.sort(key=lambda e: e[0])
    return tiff_file([TiffPage(entries, page.data)])


@FUZZ
@given(hostile())
def test_fuzz_hostile_builders(data: bytes) -> None:
    check(data)
