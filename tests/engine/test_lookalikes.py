"""Colourways are look-alikes, not copies; a copy inside another picture is judged by its own
colours (issue 13). Real photos of the sample catalog, transformed as the benchmark does."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from benchmarks.datasets import COLOURWAY_HUE, RECOLOURED_HUE, hue_rotated
from harmony_image import SearchIndex, SearchParams, extract_features
from harmony_image.features import (
    COLOUR_GRID,
    COLOUR_SOURCE_SIDE,
    colour_grid,
    colour_signature,
    colour_source,
    region_colours,
)
from harmony_image.scoring import LOOKALIKE_AGREEMENT, SAME_IMAGE_THRESHOLD, colour_agreement

PHOTO = "astronaut.jpg"  # colourful: a blue suit, a red-white flag
COLOURWAY = "astronaut__colourway.jpg"
DEFAULT = SearchParams(k=5, scoring="default")


def _bgr(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def _jpeg(img: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def photo(catalog_photos) -> np.ndarray:
    img = _bgr(catalog_photos[PHOTO])
    assert colour_signature(img)[-1] > 0.2  # the test needs a colourful photo
    return img


@pytest.fixture(scope="module")
def index(catalog_photos, photo) -> SearchIndex:
    """The sample catalog and a colourway of the astronaut (the same picture, other colours)."""
    idx = SearchIndex()
    for name, data in catalog_photos.items():
        idx.add(name, extract_features(data, query=False))
    idx.add(COLOURWAY, extract_features(_jpeg(hue_rotated(photo, COLOURWAY_HUE), 92), query=False))
    return idx


def _search(index: SearchIndex, img: np.ndarray, quality: int = 85) -> dict[str, float]:
    return {r.key: r.score for r in index.search(extract_features(_jpeg(img, quality)), DEFAULT)}


def test_a_copy_finds_its_colourway_and_not_the_other(index, photo):
    scores = _search(index, photo, quality=50)
    assert max(scores, key=scores.__getitem__) == PHOTO
    assert scores[PHOTO] >= SAME_IMAGE_THRESHOLD
    assert scores.get(COLOURWAY, 0.0) < SAME_IMAGE_THRESHOLD

    scores = _search(index, cv2.resize(hue_rotated(photo, COLOURWAY_HUE), None, fx=0.5, fy=0.5), quality=50)
    assert max(scores, key=scores.__getitem__) == COLOURWAY
    assert scores[COLOURWAY] >= SAME_IMAGE_THRESHOLD
    assert scores.get(PHOTO, 0.0) < SAME_IMAGE_THRESHOLD


def test_a_colourway_not_in_the_catalog_is_not_a_copy_but_still_ranks_first(index, photo):
    scores = _search(index, hue_rotated(photo, RECOLOURED_HUE))
    assert max(scores.values()) < SAME_IMAGE_THRESHOLD
    # a look-alike: above images that share nothing with it
    assert max(scores, key=scores.__getitem__) in (PHOTO, COLOURWAY)


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda im: cv2.cvtColor(cv2.cvtColor(im, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR), id="grayscale"),
        pytest.param(
            lambda im: np.clip(im * np.float32([0.8, 0.95, 1.15]), 0, 255).astype(np.uint8), id="warm_colour_cast"
        ),
        pytest.param(lambda im: cv2.convertScaleAbs(im, alpha=1.2, beta=25), id="brighter"),
    ],
)
def test_copies_whose_colours_changed_a_little_or_went_gray_stay_copies(index, photo, transform):
    scores = _search(index, transform(photo))
    assert max(scores, key=scores.__getitem__) == PHOTO
    assert scores[PHOTO] >= SAME_IMAGE_THRESHOLD


def test_a_copy_inside_a_picture_of_other_colours_is_judged_by_its_own(index, photo, catalog_photos):
    """The astronaut filling a third of a picture whose rest is a scene of other colours (the
    coffee photo, turned green): over the whole picture the colours disagree as a colourway's
    would; where the copy lies, they agree."""
    backdrop = hue_rotated(_bgr(catalog_photos["coffee.jpg"]), COLOURWAY_HUE)
    h, w = photo.shape[:2]
    canvas = cv2.resize(backdrop, (round(w * 3**0.5), round(h * 3**0.5)))
    canvas[40 : 40 + h, 30 : 30 + w] = photo
    query = extract_features(_jpeg(canvas))
    whole = colour_signature(canvas)
    catalog = colour_signature(photo)
    assert np.minimum(whole[:-1], catalog[:-1]).sum() < LOOKALIKE_AGREEMENT  # the whole picture's are others
    scores = {r.key: r.score for r in index.search(query, DEFAULT)}
    assert max(scores, key=scores.__getitem__) == PHOTO
    assert scores[PHOTO] >= SAME_IMAGE_THRESHOLD


def test_region_colours_reads_the_cells_a_box_holds():
    img = np.zeros((128, 256, 3), np.uint8)
    img[:, :128] = (0, 0, 255)  # red left half (BGR)
    img[:, 128:] = (255, 0, 0)  # blue right half
    grid = colour_grid(img)
    assert grid.shape == (COLOUR_GRID, COLOUR_GRID, 13)
    left, right, whole = (region_colours(grid, box) for box in ((0, 0, 120, 256), (136, 0, 256, 256), (0, 0, 256, 256)))
    red, blue = 0, 240 * 12 // 360  # hue bins of red and blue
    assert left[red] == pytest.approx(1.0) and right[blue] == pytest.approx(1.0)
    assert whole[red] == pytest.approx(0.5) and whole[blue] == pytest.approx(0.5)
    assert left[-1] == pytest.approx(1.0)  # fully saturated
    # a box between cell centres still reads the nearest cell
    assert region_colours(grid, (0, 0, 10, 10))[red] == pytest.approx(1.0)


def test_colours_of_a_camera_size_photo_are_read_from_its_block_average(photo):
    """A 12 MP photo's colours come from a copy averaged in whole blocks (the fast area path)
    and agree with the full-size ones; an image already small is read as it is."""
    big = cv2.resize(photo, (4000, 3000), interpolation=cv2.INTER_CUBIC)
    source = colour_source(big)
    factor = 3000 // COLOUR_SOURCE_SIDE
    assert source.shape == (3000 // factor, 4000 // factor, 3)
    assert np.array_equal(source[0, 0], big[:factor, :factor].reshape(-1, 3).mean(axis=0).round().astype(np.uint8))
    agreement = colour_agreement(colour_signature(source)[None], colour_signature(big)[None])
    assert agreement[0] >= 0.99
    cells = colour_grid(source)
    full_cells = colour_grid(big)
    assert np.abs(cells - full_cells).max() <= 0.05 * full_cells.max()
    assert colour_source(photo) is photo  # 512 px: no whole factor of 2 fits
