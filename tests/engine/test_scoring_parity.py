"""The engine's seed scoring against scikit-image and OpenCV, the seed's own tools — at every
kernel level this machine runs (tests/engine/test_kernel_levels.py has the awkward inputs)."""

from __future__ import annotations

import itertools
from typing import Any

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from harmony_image import SearchIndex, SearchParams, kernels
from harmony_image.features import extract_features, seed_gray, seed_orb
from harmony_image.kernels import DescriptorPack, cross_check_counts, ssim_scores
from harmony_image.ssim import SsimQuery
from tests.support import CATALOG_NAMES, QUERY_VARIANTS, image_bytes

RNG = np.random.default_rng(7)
LEVELS = [level for level in kernels.levels() if level != "numpy"]


_LEVEL_PARAMS: list[Any] = [*LEVELS] or [pytest.param("none", marks=pytest.mark.skip("C kernels not built"))]


@pytest.fixture(params=_LEVEL_PARAMS)
def level(request: pytest.FixtureRequest):
    with kernels.using(request.param):
        yield request.param


def _edge_cases() -> list[np.ndarray]:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    checker = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)
    return [
        np.zeros((256, 256), np.uint8),
        np.full((256, 256), 255, np.uint8),
        np.full((256, 256), 254, np.uint8),
        ramp,
        ramp.T.copy(),
        checker,
        RNG.integers(0, 256, (256, 256), dtype=np.uint8),
        RNG.integers(250, 256, (256, 256), dtype=np.uint8),
        RNG.integers(0, 6, (256, 256), dtype=np.uint8),
    ]


@pytest.fixture(scope="module")
def grays() -> list[np.ndarray]:
    photos = [
        seed_gray(cv2.imdecode(np.frombuffer(image_bytes(n), np.uint8), cv2.IMREAD_COLOR))
        for n in CATALOG_NAMES + QUERY_VARIANTS
    ]
    inverted = [255 - photos[0]]
    return photos + inverted + _edge_cases()


@pytest.fixture(scope="module")
def skimage_ssim(grays) -> np.ndarray:
    return np.array([[structural_similarity(query, other) for other in grays] for query in grays])


def test_ssim_matches_scikit_image_on_all_pairs(grays, skimage_ssim, level):
    stack = np.stack(grays)
    worst = max(float(np.abs(ssim_scores(query, stack) - skimage_ssim[i]).max()) for i, query in enumerate(grays))
    assert worst <= 1e-5, worst


def test_numpy_ssim_matches_scikit_image(grays, skimage_ssim):
    stack = np.stack(grays)
    for i in range(0, len(grays), 3):
        got = SsimQuery(grays[i], chunk=3).scores(stack)
        assert np.abs(got - skimage_ssim[i]).max() <= 1e-5


def test_ssim_of_identical_images_is_one(grays, level):
    for gray in grays:
        assert ssim_scores(gray, gray[None])[0] == pytest.approx(1.0, abs=1e-6)


def test_ssim_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="256, 256"):
        SsimQuery(np.zeros((10, 10), np.uint8))


@pytest.fixture(scope="module")
def orb_sets(grays) -> list[np.ndarray]:
    return [seed_orb(g)[1] for g in grays]


@pytest.fixture(scope="module")
def opencv_counts(orb_sets) -> list[list[int]]:
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    return [[len(matcher.match(q, d)) if len(q) and len(d) else 0 for d in orb_sets] for q in orb_sets]


def test_cross_check_counts_equal_opencv_matcher(orb_sets, opencv_counts, level):
    pack = DescriptorPack(orb_sets)
    for query, expected in zip(orb_sets, opencv_counts, strict=True):
        assert cross_check_counts(query, pack).tolist() == expected


def test_cross_check_handles_exact_complements_and_ties(level):
    """Distances of 256 (complements) and many equal distances: OpenCV's first-index rule."""
    base = RNG.integers(0, 256, (40, 32), dtype=np.uint8)
    catalog = [np.concatenate([~base[:10], base[:5], base[:5]]), ~base, np.repeat(base[:3], 4, axis=0)]
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    pack = DescriptorPack(catalog)
    for query in (base, ~base, np.repeat(base[:2], 3, axis=0)):
        assert cross_check_counts(query, pack).tolist() == [len(matcher.match(query, d)) for d in catalog]


def test_numpy_fallback_equals_compiled_kernel(grays, monkeypatch, level):
    descriptor_sets = [seed_orb(g)[1] for g in grays[:8]]
    pack = DescriptorPack(descriptor_sets)
    stack = np.stack(grays[:8])
    pairs = zip(descriptor_sets, grays, strict=False)
    compiled = [(cross_check_counts(d, pack), ssim_scores(g, stack)) for d, g in pairs]
    monkeypatch.setattr(kernels, "_kernels", None)
    for (counts, ssim), d, g in zip(compiled, descriptor_sets, grays, strict=False):
        assert np.array_equal(cross_check_counts(d, pack), counts)
        assert np.abs(ssim_scores(g, stack) - ssim).max() <= 1e-6


def test_features_are_the_seeds(catalog_photos):
    for _name, data in itertools.islice(catalog_photos.items(), 3):
        feats = extract_features(data)
        gray = cv2.cvtColor(
            cv2.resize(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), (256, 256)), cv2.COLOR_BGR2GRAY
        )
        assert np.array_equal(feats.gray, gray)
        kps, des = cv2.ORB.create().detectAndCompute(gray, None)
        assert np.array_equal(feats.descriptors, des)
        assert np.allclose(feats.keypoints, [kp.pt for kp in kps])


def _brute_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=2).sum(axis=2)


@pytest.mark.parametrize("impl", [*LEVELS, "numpy"])
def test_nearest_two_and_count_close_against_brute_force(grays, impl):
    with kernels.using(impl):
        _nearest_two_and_count_close_against_brute_force(grays)


def _nearest_two_and_count_close_against_brute_force(grays):
    sets = [seed_orb(g)[1] for g in grays[:6]] + [np.zeros((0, 32), np.uint8), seed_orb(grays[0])[1][:1]]
    pack = DescriptorPack(sets)
    query = sets[1]
    dist = [_brute_distances(query, d) if len(d) else None for d in sets]
    for threshold in (30, 64):
        expected = [int((dd.min(axis=1) <= threshold).sum()) if dd is not None else 0 for dd in dist]
        assert kernels.count_close(query, pack, threshold).tolist() == expected
    for j, d in enumerate(sets):
        idx, d1, d2 = kernels.nearest_two(query, pack.words(j))
        if dist[j] is None:
            assert (idx == -1).all()
            continue
        ordered = np.sort(dist[j], axis=1)
        assert np.array_equal(idx, dist[j].argmin(axis=1))
        assert np.array_equal(d1, ordered[:, 0])
        assert np.array_equal(d2, ordered[:, 1] if len(d) > 1 else np.full(len(query), 0xFFFF))


@pytest.fixture(scope="module")
def sample_index(catalog_photos) -> tuple[SearchIndex, list[bytes]]:
    index = SearchIndex()
    for name, data in catalog_photos.items():
        index.add(name, extract_features(data, query=False))
    queries = [image_bytes(name) for name in QUERY_VARIANTS]
    return index, queries


@pytest.mark.parametrize("scoring", ["seed", "default"])
def test_search_results_are_identical_at_every_level(sample_index, scoring):
    """Whole searches, not only the kernels: same keys and bit-identical scores at every level."""
    index, queries = sample_index
    features = [extract_features(q) for q in queries]
    by_level = {}
    for impl in LEVELS:
        with kernels.using(impl):
            by_level[impl] = [
                [(r.key, r.score, r.ssim, r.orb) for r in index.search(f, SearchParams(k=5, scoring=scoring))]
                for f in features
            ]
    for impl in LEVELS[1:]:
        assert by_level[impl] == by_level[LEVELS[0]], impl
