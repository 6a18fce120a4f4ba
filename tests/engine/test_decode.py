from __future__ import annotations

import struct

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
from tests.hostile import png_claiming
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
