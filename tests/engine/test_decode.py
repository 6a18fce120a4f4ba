from __future__ import annotations

import re
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from harmony_image import (
    CorruptImageError,
    EmptyImageError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedFormatError,
    decode_image,
    read_image_info,
)
from harmony_image import decode as decode_mod
from tests.hostile import (
    BITS_PER_SAMPLE,
    COMPRESSION,
    IMAGE_LENGTH,
    IMAGE_WIDTH,
    PNG_SIGNATURE,
    apng_frame_larger_than_image,
    blocks,
    bmp_claiming,
    encoded,
    gif_file,
    jpeg_many_scans,
    photo,
    png_1x1,
    png_chunk,
    png_claiming,
    png_ihdr,
    tiff_duplicate_tag,
    tiff_file,
    tiff_of,
    tiff_page,
    webp_animated,
    webp_canvas_disagrees,
)
from tests.support import image_bytes


@pytest.mark.parametrize(
    "name, fmt, size",
    [
        ("coffee.jpg", "jpeg", (320, 213)),
        ("coffee.webp", "webp", (320, 213)),
        ("coffee.bmp", "bmp", (96, 64)),
        ("coffee.tiff", "tiff", (96, 64)),
        ("coffee.gif", "gif", (64, 48)),
        ("coffee_16bit.png", "png", (96, 64)),
        ("camera_gray.png", "png", (320, 320)),
    ],
)
def test_every_supported_format_decodes_to_bgr8(name, fmt, size):
    data = image_bytes(name)
    info = read_image_info(data)
    assert (info.format, info.width, info.height) == (fmt, *size)
    image = decode_image(data)
    assert image.dtype == np.uint8 and image.shape == (size[1], size[0], 3)


def test_decoded_formats_agree_on_pixels():
    """The same picture as BMP, TIFF (lossless) and 16-bit PNG decodes to the same pixels."""
    bmp = decode_image(image_bytes("coffee.bmp")).astype(int)
    assert np.array_equal(decode_image(image_bytes("coffee.tiff")).astype(int), bmp)
    assert np.abs(decode_image(image_bytes("coffee_16bit.png")).astype(int) - bmp).max() == 0


def test_exif_orientation_is_applied():
    upright = decode_image(image_bytes("chelsea.jpg"))
    rotated_on_disk = decode_image(image_bytes("chelsea_exif_rotate_90.jpg"))
    assert rotated_on_disk.shape == upright.shape
    assert np.abs(rotated_on_disk.astype(int) - upright.astype(int)).mean() < 4


def test_alpha_is_composited_on_white():
    image = decode_image(image_bytes("rocket_alpha.png"))
    assert (image[:, :48] == 255).all()
    assert (image[:, 48:] != 255).any()


def test_grayscale_becomes_three_equal_channels():
    image = decode_image(image_bytes("camera_gray.png"))
    assert np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 1], image[:, :, 2])


def test_empty_bytes():
    with pytest.raises(EmptyImageError, match="empty"):
        decode_image(b"")


@pytest.mark.parametrize("data", [b"hello world, this is text", b"%PDF-1.7\n...", b"\x00" * 100, b'{"url": "x"}'])
def test_not_an_image(data):
    with pytest.raises(NotAnImageError, match="not an image"):
        decode_image(data)


def test_unsupported_formats_are_named():
    with pytest.raises(UnsupportedFormatError, match="SVG"):
        decode_image(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>')
    with pytest.raises(UnsupportedFormatError, match="HEIC"):
        decode_image(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")


def test_huge_header_is_refused_before_decoding():
    with pytest.raises(ImageTooLargeError, match="50000x50000"):
        decode_image(png_claiming(50_000, 50_000))


def test_pixel_cap_is_configurable():
    data = image_bytes("coffee.jpg")  # 320 x 213
    with pytest.raises(ImageTooLargeError, match="limit is 10,000 pixels"):
        decode_image(data, max_pixels=10_000)
    assert decode_image(data, max_pixels=320 * 213).shape == (213, 320, 3)


def test_huge_jpeg_header_is_refused():
    data = bytearray(image_bytes("coffee.jpg"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    with pytest.raises(ImageTooLargeError):
        decode_image(bytes(data))


@pytest.mark.parametrize("name", ["coffee.jpg", "coffee.webp", "camera_gray.png", "coffee.gif"])
def test_truncated_files(name):
    data = image_bytes(name)
    with pytest.raises((TruncatedImageError, CorruptImageError)):
        decode_image(data[: len(data) // 2])


def test_truncated_jpeg_names_the_problem():
    data = image_bytes("coffee.jpg")
    with pytest.raises(TruncatedImageError, match="truncated"):
        decode_image(data[:-500])
    with pytest.raises(TruncatedImageError):
        decode_image(data[:20])


def test_corrupt_body_with_valid_header():
    data = bytearray(image_bytes("camera_gray.png"))
    data[60:-12] = b"\x00" * (len(data) - 72)
    with pytest.raises(CorruptImageError):
        decode_image(bytes(data))


def test_tiny_and_flat_images_decode():
    assert decode_image(image_bytes("tiny_4x3.png")).shape == (3, 4, 3)
    assert decode_image(image_bytes("flat_gray.png")).shape == (64, 64, 3)


def test_round_trip_of_encoded_array():
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    _ok, png = cv2.imencode(".png", image)
    assert np.array_equal(decode_image(png.tobytes()), image)


# --------------------------------------------------------------------------- hostile structure
# (each class also runs in a subprocess with its memory and time measured:
# tests/engine/test_hostile_inputs.py)
@pytest.mark.parametrize(
    "data, error, message",
    [
        (png_1x1(idat_length=0xFFFFFFF0), CorruptImageError, "4,294,967,280 bytes"),
        (png_1x1(idat_length=0xFFFFFFFF), CorruptImageError, "2^31-1"),
        (png_1x1(idat_length=0x7FFFFFFF), TruncatedImageError, "claims 2,147,483,647 bytes"),
        (png_1x1(before_idat=png_chunk(b"tEXt", b"a\x00b", length=1000)), TruncatedImageError, "'tEXt'"),
        (png_1x1(idat_length=5), TruncatedImageError, "truncated or lies"),  # the walk lands mid-chunk
        (png_claiming(6000, 6000), TruncatedImageError, "cannot hold 6000x6000"),
        (PNG_SIGNATURE + png_chunk(b"IDAT", b"x") + png_ihdr(1, 1), CorruptImageError, "IHDR"),
        (png_1x1(before_idat=png_ihdr(1, 1)), CorruptImageError, "two IHDR"),
        (PNG_SIGNATURE + png_ihdr(1, 1, bit_depth=16, colour_type=3), CorruptImageError, "bit depth 16"),
        (png_1x1()[:-12], TruncatedImageError, "IEND"),
        (apng_frame_larger_than_image(2, 1), CorruptImageError, "APNG frame"),
    ],
)
def test_png_chunks_are_walked_before_decoding(data, error, message):
    with pytest.raises(error, match=re.escape(message)):
        decode_image(data)


def test_a_valid_1x1_png_decodes():
    assert decode_image(png_1x1()).tolist() == [[[128, 128, 128]]]


def test_png_chunk_walk_accepts_every_fixture(images):
    for name, data in images.items():
        if name.endswith(".png"):
            assert read_image_info(data).format == "png", name


@pytest.mark.parametrize("tag", [IMAGE_WIDTH, IMAGE_LENGTH, BITS_PER_SAMPLE, COMPRESSION])
def test_tiff_tag_stated_twice_is_refused(tag):
    data = tiff_duplicate_tag(tag, 10, 10, width=10, height=10)
    with pytest.raises(CorruptImageError, match="twice"):
        decode_image(data)


def test_tiff_without_duplicates_decodes_and_agrees_with_libtiff():
    image = photo(40, 30)
    decoded = decode_image(tiff_of(image))
    assert np.array_equal(decoded, image[:, :, ::-1])  # stored RGB, decoded BGR


def test_tiff_every_page_must_fit_the_limits():
    small = tiff_page(10, 10)
    with pytest.raises(ImageTooLargeError, match="page 2 of the TIFF is 30000x30000"):
        decode_image(tiff_file([small, tiff_page(30000, 30000, rows_per_strip=64, deflate=True)]))
    with pytest.raises(ImageTooLargeError, match="page 3"):
        decode_image(tiff_file([small, small, tiff_page(16, 16, tile=(16000, 16000), data=bytes(64))]))
    assert decode_image(tiff_file([small, small])).shape == (10, 10, 3)  # pages within the limits are fine


def test_tiff_page_chains_are_bounded():
    data = bytearray(tiff_file([tiff_page(10, 10)]))
    count = struct.unpack_from("<H", data, 8)[0]
    struct.pack_into("<I", data, 8 + 2 + 12 * count, 8)  # the next page is the first page again
    with pytest.raises(CorruptImageError, match="loop"):
        decode_image(bytes(data))
    with pytest.raises(CorruptImageError, match="more than 64 pages"):
        decode_image(tiff_file([tiff_page(2, 2)] * 65))


def test_tiff_strip_and_tile_buffers_count():
    """A 16x16 image in one 16000x16000 tile: the decoder's tile buffer is 1 GB."""
    data = tiff_file([tiff_page(16, 16, tile=(16000, 16000), data=bytes(64))])
    info = read_image_info(data)
    assert info.decoded_bytes >= 16000 * 16000 * 4
    with pytest.raises(ImageTooLargeError, match="MB of memory"):
        decode_image(data)


@pytest.mark.parametrize(
    "frames, message",
    [
        ([(0, 0, 6000, 6000)], "6000x6000 at 0,0"),
        ([(60000, 60000, 10, 10)], "at 60000,60000"),
        ([(0, 0, 10, 10), (5, 5, 10, 10)], "10x10 at 5,5"),
        ([(0, 0, 0, 10)], "0x10"),
    ],
)
def test_gif_frames_must_lie_inside_the_screen(frames, message):
    with pytest.raises(CorruptImageError, match=re.escape(message)):
        decode_image(gif_file((10, 10), frames))


def test_gif_blocks_are_walked():
    good = image_bytes("coffee.gif")
    assert read_image_info(good).format == "gif"
    with pytest.raises(CorruptImageError, match="unknown block"):
        decode_image(good[:-1] + b"\x99")
    with pytest.raises(TruncatedImageError):
        decode_image(good[:-1])


def test_webp_bitstream_must_match_the_canvas():
    with pytest.raises(CorruptImageError, match="16x16 but its bitstream says 16383x16383"):
        decode_image(webp_canvas_disagrees((16, 16), (16383, 16383)))
    with pytest.raises(CorruptImageError, match="outside its 16x16 canvas"):
        decode_image(webp_animated((16, 16), (0, 0, 16383, 16383)))
    with pytest.raises(CorruptImageError, match="outside its 16x16 canvas"):
        decode_image(webp_animated((16, 16), (10, 0, 16, 16)))
    data = image_bytes("coffee.webp")
    with pytest.raises(TruncatedImageError, match="RIFF states"):
        decode_image(data[:-10])


def test_bmp_rows_must_be_in_the_file():
    with pytest.raises(TruncatedImageError, match="6000x6000 pixels need"):
        decode_image(bmp_claiming(6000, 6000))
    assert decode_image(image_bytes("coffee.bmp")).shape == (64, 96, 3)


def test_decoded_bytes_are_capped_not_only_pixels():
    """6324x6324 is within 40 MP, but as float64 RGBA it decodes to 1.28 GB."""
    data = tiff_file([tiff_page(6324, 6324, spp=4, bps=64, sample_format=3, rows_per_strip=64, deflate=True)])
    info = read_image_info(data)
    assert (info.channels, info.sample_bytes) == (4, 8)
    assert info.decoded_bytes >= 2 * 6324 * 6324 * 32
    with pytest.raises(
        ImageTooLargeError, match=r"4 channels of 64-bit samples\) takes about 2,44\d MB of memory; the limit is 448 MB"
    ):
        decode_image(data)


def test_decoded_bytes_cap_is_configurable():
    data = encoded(".png", photo(200, 100, 4, np.uint16))
    info = read_image_info(data)
    assert info.decoded_bytes >= 2 * 200 * 100 * 8
    with pytest.raises(ImageTooLargeError, match="4 channels of 16-bit samples"):
        decode_image(data, max_decoded_bytes=info.decoded_bytes - 1)
    assert decode_image(data, max_decoded_bytes=info.decoded_bytes).shape == (100, 200, 3)


def test_progressive_jpeg_scans_are_bounded():
    data = jpeg_many_scans(2000, 2000, 5000)
    with pytest.raises(CorruptImageError, match="5,000 scans"):
        decode_image(data)
    normal = encoded(".jpg", photo(2000, 2000), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert decode_image(normal).shape == (2000, 2000, 3)


# --------------------------------------------------------------------------- high bit depth
def _reference_bgr8(image: np.ndarray) -> np.ndarray:
    """The conversion as one full-array expression (what the banded conversion must equal)."""
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            image = np.clip(np.nan_to_num(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 4:
        a = image[:, :, 3:].astype(np.uint16)
        return ((image[:, :, :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    return image[:, :, :3]


@pytest.mark.parametrize(
    "shape, dtype", [((900, 700, 4), np.uint16), ((900, 700, 3), np.float32), ((901, 600, 4), np.float64)]
)
def test_high_bit_depth_converts_in_bands_exactly(shape, dtype):
    """Taller than one band (2^18 pixels): the bands join up to the full-array result."""
    rng = np.random.default_rng(3)
    if dtype == np.uint16:
        image = rng.integers(0, 65535, shape, dtype=np.uint16)
    else:
        image = rng.uniform(-0.2, 1.2, shape).astype(dtype)
        image[0, 0, 0], image[5, 5, 1] = np.nan, np.inf
    got = decode_mod._to_bgr8(image)
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    assert np.array_equal(got, _reference_bgr8(image))


def test_float64_rgba_tiff_decodes_composited():
    image = blocks(96, 64, 4, np.float64)
    got = decode_image(tiff_of(image, rows_per_strip=16, deflate=True))
    rgb_to_bgr = _reference_bgr8(image)[:, :, ::-1]
    assert np.array_equal(got, rgb_to_bgr)


def test_array_that_disagrees_with_the_header_is_refused(monkeypatch):
    """The last guard: whatever the header reader missed, the decoded size must match it."""
    data = image_bytes("coffee.bmp")
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(CorruptImageError, match="decodes to 10x10 pixels, not the 96x64"):
        decode_image(data)


# --------------------------------------------------------------------------- OpenCV's own guard
def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"} | env
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=60, check=False
    )


def test_opencv_pixel_guard_is_set_before_opencv_loads():
    """harmony_image sets OPENCV_IO_MAX_IMAGE_PIXELS before its `import cv2`; OpenCV reads it only
    while loading, so a raw cv2.imdecode of a 41 MP header is refused by OpenCV itself."""
    code = (
        "import harmony_image, cv2, numpy as np, os; from tests.hostile import png_claiming\n"
        "print(harmony_image.decode.OPENCV_GUARD, os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'])\n"
        "try:\n    cv2.imdecode(np.frombuffer(png_claiming(6400, 6400), np.uint8), -1); print('decoded')\n"
        "except cv2.error as e:\n    print('refused' if 'CV_IO_MAX_IMAGE_PIXELS' in str(e) else e)\n"
    )
    out = _run(code).stdout.split()
    assert out == ["True", "40000000", "refused"]
    # loaded the other way round, OpenCV has read its default (2^30 pixels) already: no guard
    out = _run("import cv2\n" + code).stdout.split()
    assert out[:2] == ["False", "40000000"] and out[2] != "refused"


def test_opencv_guard_tripping_is_413():
    code = (
        "from harmony_image import decode_image, ImageTooLargeError\nfrom tests.support import image_bytes\n"
        "try:\n    decode_image(image_bytes('coffee.bmp'))\n"
        "except ImageTooLargeError as e:\n    print(e.status, e.message)\n"
    )
    out = _run(code, OPENCV_IO_MAX_IMAGE_PIXELS="1000").stdout
    assert out.startswith("413 ") and "OPENCV_IO_MAX_IMAGE_PIXELS" in out
