"""Region looks find a catalog image that fills only part of the query, crop looks a query that is
only part of a catalog image (issue 13): real photos of the sample catalog placed inside other
photos, as the benchmark's ``inset_third`` does, and cut down to a third at JPEG quality 40, as
its ``crop_third_q40`` does."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skimage_photos

from harmony_image import SearchIndex, SearchParams, extract_features, scoring
from harmony_image import regions as regions_module
from harmony_image.features import SEED_SIDE, thumbnail
from harmony_image.kernels import to_bfloat16
from harmony_image.regions import (
    QueryRegions,
    RegionThumbs,
    best_crops,
    best_looks,
    best_windows,
    coarse_thumbs,
    query_regions,
    refine,
    refine_crop,
    region_bounds,
    region_thumbs,
)
from harmony_image.scoring import (
    CROP_FLOOR,
    CROP_LOOK_FLOOR,
    REGION_FLOOR,
    REGION_MATCH_FLOOR,
    REGION_ROWS,
    SAME_IMAGE_THRESHOLD,
    best_rows,
)

AREA = 1 / 3


def _bgr(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def _jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def inset(photo: bytes, backdrop: bytes, *, at: tuple[float, float], mirror: bool = False) -> tuple[bytes, tuple]:
    """``photo`` filling a third of a picture whose rest is ``backdrop``, its top-left corner at
    ``at`` (fractions of the free room); the JPEG and the photo's box in the 256x256 frame."""
    img = _bgr(photo)
    img = np.ascontiguousarray(img[:, ::-1]) if mirror else img
    h, w = img.shape[:2]
    scale = (1 / AREA) ** 0.5
    ch, cw = round(h * scale), round(w * scale)
    canvas = cv2.resize(_bgr(backdrop), (cw, ch), interpolation=cv2.INTER_AREA)
    y, x = round(at[1] * (ch - h)), round(at[0] * (cw - w))
    canvas[y : y + h, x : x + w] = img
    box = (x * SEED_SIDE / cw, y * SEED_SIDE / ch, (x + w) * SEED_SIDE / cw, (y + h) * SEED_SIDE / ch)
    return _jpeg(canvas), box


def _overlap(a: tuple, b: tuple) -> float:
    """Intersection over union of two boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def backdrop() -> bytes:
    """A real photo that is not in the sample catalog (scikit-image's, bundled in its wheel)."""
    return _jpeg(cv2.cvtColor(skimage_photos.gravel(), cv2.COLOR_GRAY2BGR))


@pytest.fixture(scope="module")
def catalog(catalog_photos) -> dict[str, object]:
    return {name: extract_features(data, query=False) for name, data in catalog_photos.items()}


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("at", [(0.0, 0.0), (0.7, 0.4), (1.0, 1.0)])
def test_a_small_copy_is_located_and_its_detail_agrees(catalog_photos, catalog, at, mirror):
    query_bytes, box = inset(catalog_photos["rocket.jpg"], catalog_photos["brick.jpg"], at=at, mirror=mirror)
    query = extract_features(query_bytes)
    names = sorted(catalog)
    thumbs = region_thumbs(to_bfloat16(np.stack([catalog[n].thumb for n in names])))
    regions = query_regions(query.gray)
    looks, windows = best_windows(thumbs, regions)
    rocket = names.index("rocket.jpg")
    assert looks.argmax() == rocket, dict(zip(names, looks.round(3).tolist(), strict=True))
    match = refine(regions, int(windows[rocket]), catalog["rocket.jpg"].gray)
    assert match.mirrored == mirror
    assert _overlap(match.box, box) > 0.8, (match.box, box)
    assert match.correlation >= REGION_MATCH_FLOOR and match.detail >= REGION_FLOOR + 0.1, match
    for other in names:
        if other != "rocket.jpg":
            elsewhere = refine(regions, int(windows[names.index(other)]), catalog[other].gray)
            assert elsewhere.detail < REGION_FLOOR, (other, elsewhere)


@pytest.mark.parametrize("mirror", [False, True])
def test_default_scoring_finds_a_small_copy_as_a_copy(catalog_photos, backdrop, mirror):
    index = SearchIndex()
    for name, data in catalog_photos.items():
        index.add(name, extract_features(data, query=False))
    query_bytes, _ = inset(catalog_photos["rocket.jpg"], backdrop, at=(0.3, 0.6), mirror=mirror)
    top = index.search(extract_features(query_bytes), SearchParams(k=5))
    assert top[0].key == "rocket.jpg" and top[0].score >= SAME_IMAGE_THRESHOLD, top
    assert all(r.score < SAME_IMAGE_THRESHOLD for r in top[1:]), top


def test_region_looks_are_exact_integers_whatever_the_rows_around(catalog):
    """Shards and one index cut the same shortlist: a row's region look does not depend on the
    rows scored with it, and equals the int64 computation."""
    names = sorted(catalog)
    all_thumbs = region_thumbs(to_bfloat16(np.stack([catalog[n].thumb for n in names])))
    regions = query_regions(catalog["moon.jpg"].gray)
    together, _ = best_windows(all_thumbs, regions)
    for i, name in enumerate(names):
        alone, _ = best_windows(region_thumbs(to_bfloat16(catalog[name].thumb[None, :])), regions)
        assert alone[0] == together[i], name
    sums = all_thumbs.codes.astype(np.int64) @ regions.codes.astype(np.int64).T  # exact
    exact = (sums.astype(np.float32) * regions.inverse_norms).max(axis=1) * all_thumbs.inverse_norms
    np.testing.assert_array_equal(together, exact.astype(np.float32))


def test_a_flat_query_or_catalog_image_has_no_region_evidence(images, catalog):
    flat = extract_features(images["flat_gray.png"])
    regions = query_regions(flat.gray)
    assert not regions.inverse_norms.any()
    looks, windows = best_windows(region_thumbs(to_bfloat16(flat.thumb[None, :])), regions)
    assert looks[0] == 0.0
    match = refine(query_regions(catalog["moon.jpg"].gray), int(windows[0]), flat.gray)
    assert match.detail == 0.0 and match.correlation == 0.0


def heavy_crop(photo: bytes, *, at: tuple[float, float], mirror: bool = False) -> bytes:
    """A third of ``photo``'s area (the same shape), its top-left corner at ``at`` (fractions of
    the free room), at JPEG quality 40, as the benchmark's ``crop_third_q40``."""
    img = _bgr(photo)
    h, w = img.shape[:2]
    ch, cw = round(h * AREA**0.5), round(w * AREA**0.5)
    y, x = round(at[1] * (h - ch)), round(at[0] * (w - cw))
    part = img[y : y + ch, x : x + cw]
    part = np.ascontiguousarray(part[:, ::-1]) if mirror else part
    ok, buf = cv2.imencode(".jpg", part, [cv2.IMWRITE_JPEG_QUALITY, 40])
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("at", [(0.0, 0.0), (0.6, 0.3), (1.0, 1.0)])
def test_a_heavy_crop_is_found_by_its_crop_look_and_placed(catalog_photos, catalog, at, mirror):
    """The query slid over every catalog thumbnail looks most like the image it was cut from;
    placed in that image (in the right view) its detail agrees, placed in the others it does not."""
    query = extract_features(heavy_crop(catalog_photos["moon.jpg"], at=at, mirror=mirror))
    names = sorted(catalog)
    thumbs = region_thumbs(to_bfloat16(np.stack([catalog[n].thumb for n in names])))
    regions = query_regions(query.gray)
    looks, mirrored = best_crops(thumbs, regions)
    moon = names.index("moon.jpg")
    assert looks.argmax() == moon, dict(zip(names, looks.round(3).tolist(), strict=True))
    assert looks[moon] >= CROP_LOOK_FLOOR
    assert mirrored[moon] == mirror
    match = refine_crop(regions, mirror, catalog["moon.jpg"].gray)
    assert match.correlation >= REGION_MATCH_FLOOR and match.detail >= CROP_FLOOR + 0.1, match
    for other in names:
        if other != "moon.jpg":
            elsewhere = max((refine_crop(regions, m, catalog[other].gray) for m in (False, True)), key=_detail_of)
            assert elsewhere.detail < CROP_FLOOR or elsewhere.correlation < REGION_MATCH_FLOOR, (other, elsewhere)


def _detail_of(match) -> float:
    return float(match.detail)


@pytest.fixture(scope="module")
def colour_chart() -> bytes:
    """A smooth real photo (scikit-image's colour chart, bundled in its wheel): its heavy crops
    keep too few keypoints for the votes and the fits."""
    img = cv2.imread(str(Path(skimage_photos.__file__).parent / "color.png"), cv2.IMREAD_COLOR)
    assert img is not None
    return _jpeg(img)


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("at", [(0.8, 0.2), (0.5, 1.0)])
def test_default_scoring_finds_a_heavy_crop_of_a_smooth_photo_as_a_copy(catalog_photos, colour_chart, at, mirror):
    index = SearchIndex()
    for name, data in {**catalog_photos, "color.jpg": colour_chart}.items():
        index.add(name, extract_features(data, query=False))
    top = index.search(extract_features(heavy_crop(colour_chart, at=at, mirror=mirror)), SearchParams(k=5))
    assert top[0].key == "color.jpg" and top[0].score >= SAME_IMAGE_THRESHOLD, top
    assert all(r.score < SAME_IMAGE_THRESHOLD for r in top[1:]), top


# ------------------------------------------------------------------ region looks bounded, exact where they count


@pytest.fixture(scope="module")
def crop_thumbs(catalog_photos) -> RegionThumbs:
    """Region thumbnails of real pictures: 40 crops of each sample photo, at random places and
    sizes (a few hundred rows, more than :data:`FIRST_LOOKED`)."""
    rng = np.random.default_rng(5)
    thumbs = []
    for data in catalog_photos.values():
        gray = cv2.cvtColor(_bgr(data), cv2.COLOR_BGR2GRAY)
        h, w = gray.shape
        for _ in range(40):
            part = rng.uniform(0.3, 1.0)
            ch, cw = max(16, int(h * part)), max(16, int(w * part))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            small = cv2.resize(gray[y : y + ch, x : x + cw], (SEED_SIDE, SEED_SIDE), interpolation=cv2.INTER_AREA)
            thumbs.append(thumbnail(small))
    thumbs.append(thumbnail(np.full((SEED_SIDE, SEED_SIDE), 128, np.uint8)))  # flat
    return region_thumbs(to_bfloat16(np.stack(thumbs)))


def _queries(catalog, images) -> dict[str, QueryRegions]:
    flat = cv2.imdecode(np.frombuffer(images["flat_gray.png"], np.uint8), cv2.IMREAD_GRAYSCALE)
    noise = np.random.default_rng(3).integers(0, 256, (SEED_SIDE, SEED_SIDE), dtype=np.uint8)
    grays = {name: catalog[name].gray for name in sorted(catalog)[:4]}
    grays |= {"flat": cv2.resize(flat, (SEED_SIDE, SEED_SIDE)), "noise": noise}
    return {name: query_regions(gray) for name, gray in grays.items()}


def _exact(thumbs: RegionThumbs, query) -> np.ndarray:
    sums = thumbs.codes.astype(np.int64) @ query.codes.astype(np.int64).T
    return (sums.astype(np.float32) * query.inverse_norms).max(axis=1) * thumbs.inverse_norms


def test_region_bounds_are_never_below_the_look(crop_thumbs, catalog, images):
    """The coarse bound of every real thumbnail with every query's windows is at least its exact
    region look, and it leaves most rows out for photos of large shapes (not for the brick wall's
    texture or noise, whose windows vary within their 2x2 blocks as much as the bound allows)."""
    coarse = coarse_thumbs(crop_thumbs)
    assert coarse.codes.dtype == np.int8 and len(coarse) == len(crop_thumbs)
    for name, query in _queries(catalog, images).items():
        bounds, exact = region_bounds(coarse, query.groups), _exact(crop_thumbs, query)
        assert (bounds >= exact).all(), name
        if name in ("astronaut.jpg", "camera.jpg", "chelsea.jpg"):
            kth = np.sort(exact)[-REGION_ROWS]
            assert (bounds < kth).mean() > 0.8, name


@pytest.mark.parametrize("keep", [1, REGION_ROWS, 100, 10_000])
def test_best_looks_are_the_exact_best_and_leave_out_only_worse_rows(crop_thumbs, catalog, images, keep):
    coarse = coarse_thumbs(crop_thumbs)
    for name, query in _queries(catalog, images).items():
        exact = _exact(crop_thumbs, query)
        asked: list[np.ndarray] = []

        def looks_of(rows: np.ndarray, query=query, asked=asked) -> np.ndarray:
            asked.append(rows)
            return best_windows(RegionThumbs(crop_thumbs.codes[rows], crop_thumbs.inverse_norms[rows]), query)[0]

        looks = best_looks(region_bounds(coarse, query.groups), looks_of, keep)
        seen = ~np.isnan(looks)
        np.testing.assert_array_equal(looks[seen], exact[seen])
        kth = np.sort(exact)[-min(keep, len(exact))]
        assert (exact[~seen] < kth).all(), name
        assert sorted(best_rows(looks, keep).tolist()) == sorted(best_rows(exact, keep).tolist()), name
        assert len(np.concatenate(asked)) == seen.sum()  # each row looked at once


def test_best_looks_keep_every_row_that_ties_with_the_cut():
    """Two rows at 0.9 and 600 at 0.7 (more than the first look takes): the third best is 0.7,
    so every row at 0.7 is looked at (a tie at the cut is broken by position, not by chance)."""
    exact = np.array([0.5, 0.7, 0.7, 0.2, 0.7, 0.1] * 300 + [0.9, 0.9], dtype=np.float32)
    looks = best_looks(exact.astype(np.float64), lambda rows: exact[rows], 3)
    assert not np.isnan(looks[exact >= 0.7]).any()
    assert np.isnan(looks[exact < 0.7]).all()
    assert np.isnan(best_looks(exact, lambda rows: exact[rows], 0)).all()


def test_one_index_with_the_bound_gives_the_same_answers_as_without(catalog_photos, monkeypatch):
    """The first pass prunes region looks by their bound; the shortlist's region looks are all
    exact and its answers unchanged. Here the region looks shortlist 2 rows, and the bound is
    trusted from the fourth row on, so a small catalog prunes: the sample photos and a quarter of
    each at four places."""
    index = SearchIndex()
    for name, data in catalog_photos.items():
        index.add(name, extract_features(data, query=False))
        img = _bgr(data)
        h, w = img.shape[:2]
        for i, (fy, fx) in enumerate([(0, 0), (0.5, 0.5), (0, 0.5), (0.5, 0)]):
            y, x = int(fy * h / 2), int(fx * w / 2)
            index.add(f"{name}.quarter{i}", extract_features(_jpeg(img[y : y + h // 2, x : x + w // 2]), query=False))
    query = extract_features(inset(catalog_photos["rocket.jpg"], catalog_photos["chelsea.jpg"], at=(0.2, 0.6))[0])
    monkeypatch.setattr(scoring, "REGION_ROWS", 2)
    monkeypatch.setattr(regions_module, "FIRST_LOOKED", 10_000)  # every row looked at
    whole = index.search(query, SearchParams(k=5))
    pass_whole = index.first_pass(query, k=5)
    monkeypatch.setattr(regions_module, "FIRST_LOOKED", 3)
    regions = query_regions(query.gray)
    first = scoring.first_pass(query, scoring.mirrored(query, detail=False), index.packed(), regions=regions)
    assert np.isnan(first.regions).mean() > 0.5
    pruned = index.first_pass(query, k=5)
    assert pruned.keys == pass_whole.keys
    np.testing.assert_array_equal(pruned.first.regions, pass_whole.first.regions)
    assert index.search(query, SearchParams(k=5)) == whole
    packed, some = index.packed(), np.array([1, 7, 30])
    every = packed.region_looks_at(np.arange(len(packed)), regions)  # more than half: block by block
    np.testing.assert_array_equal(every[some], packed.region_looks_at(some, regions))  # gathered
    seen = ~np.isnan(first.regions)
    np.testing.assert_array_equal(every[seen], first.regions[seen])
