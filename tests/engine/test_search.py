from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from benchmarks import seed_method
from harmony_image import (
    ImageFeatures,
    IndexFormatError,
    InvalidParameterError,
    SearchIndex,
    SearchParams,
    extract_features,
)
from harmony_image.scoring import SAME_IMAGE_THRESHOLD
from tests.support import QUERY_VARIANTS, image_bytes


@pytest.fixture(scope="module")
def index(catalog_photos) -> SearchIndex:
    idx = SearchIndex()
    for name, data in catalog_photos.items():
        idx.add(name, extract_features(data))
    return idx


@pytest.mark.parametrize("query", [*QUERY_VARIANTS, "coffee.webp", "flat_gray.png", "tiny_4x3.png"])
def test_seed_scoring_equals_the_reference(index, catalog_photos, query):
    data = image_bytes(query)
    expected = seed_method.search(data, [(n, n, b) for n, b in catalog_photos.items()], k=5)
    got = index.search(extract_features(data), SearchParams(k=5, scoring="seed"))
    assert [r.key for r in got] == [r["key"] for r in expected]
    for r, e in zip(got, expected, strict=False):
        assert r.ssim == pytest.approx(e["ssim"], abs=1e-5)
        assert r.orb == pytest.approx(e["orb"], abs=1e-12)
        assert r.score == pytest.approx(e["score"], abs=1e-5)


@pytest.mark.parametrize("query", [*QUERY_VARIANTS, "coffee.webp"])
def test_a_seed_query_extracts_only_what_seed_scoring_reads(index, query):
    data = image_bytes(query)
    full, lean = extract_features(data), extract_features(data, scoring="seed")
    assert lean.seed_only and not full.seed_only
    assert (lean.gray == full.gray).all() and (lean.descriptors == full.descriptors).all()
    assert len(lean.detail_descriptors) == 0 < len(full.detail_descriptors) and lean.detail_image is None
    params = SearchParams(k=5, scoring="seed")
    assert index.search(lean, params) == index.search(full, params)
    back = ImageFeatures.from_bytes(lean.to_bytes())  # as SearchFunction sends it to shards
    assert back.seed_only and index.search(back, params) == index.search(full, params)


@pytest.mark.parametrize("query", [*QUERY_VARIANTS, "coffee.webp", "tiny_4x3.png"])
def test_a_query_gets_the_features_of_the_catalog_path(query):
    """A query's 512 px ORB runs on a worker beside the rest of its extraction; a catalog
    image's in line. Both give the same features."""
    data = image_bytes(query)
    as_query, in_line = extract_features(data), extract_features(data, query=False)
    for name in ("gray", "keypoints", "descriptors", "thumb", "detail_keypoints", "detail_descriptors", "colours"):
        assert np.array_equal(getattr(as_query, name), getattr(in_line, name)), name
    assert as_query.detail_image is not None and as_query.colour_cells is not None
    assert in_line.detail_image is None


def test_queries_extracted_at_once_each_get_their_own_features(catalog_photos):
    photos = list(catalog_photos.values())
    alone = [extract_features(data) for data in photos]
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(extract_features, photos * 2))
    for one, other in zip(alone * 2, together, strict=True):
        assert one.sha256 == other.sha256
        assert np.array_equal(one.detail_descriptors, other.detail_descriptors)
        assert np.array_equal(one.descriptors, other.descriptors)


def test_seed_only_features_are_refused_where_all_are_needed(index, catalog_photos):
    data = catalog_photos["chelsea.jpg"]
    lean = extract_features(data, scoring="seed")
    with pytest.raises(ValueError, match=r"extracted for seed scoring only.*scoring='default'"):
        index.search(lean, SearchParams(k=5))
    with pytest.raises(ValueError, match="query=False"):
        SearchIndex().add("chelsea.jpg", lean)
    with pytest.raises(ValueError, match="catalog image needs them all"):
        extract_features(data, query=False, scoring="seed")
    with pytest.raises(InvalidParameterError, match="scoring must be one of default, seed; got 'fast'"):
        extract_features(data, scoring="fast")
    assert not ImageFeatures.from_bytes(extract_features(data).to_bytes()).seed_only


def test_identical_bytes_score_one(index, catalog_photos):
    for name, data in catalog_photos.items():
        for scoring in ("seed", "default"):
            top = index.search(extract_features(data), SearchParams(k=1, scoring=scoring))[0]
            assert top.key == name
            assert top.score == pytest.approx(1.0, abs=1e-6)


def test_duplicates_are_dropped_before_the_cut(catalog_photos):
    """Three copies of one photo (same bytes twice, same URL once) still leave k distinct results."""
    idx = SearchIndex()
    for name, data in catalog_photos.items():
        idx.add(name, extract_features(data))
    coffee = catalog_photos["coffee.jpg"]
    idx.add("copies/coffee-again.jpg", extract_features(coffee))  # same content hash
    idx.add("copies/coffee-cdn.jpg", extract_features(image_bytes("coffee.webp")), url="coffee.jpg")  # same URL
    for scoring in ("seed", "default"):
        results = idx.search(extract_features(coffee), SearchParams(k=5, scoring=scoring))
        assert len(results) == 5
        assert len({r.url for r in results}) == 5
        assert len({r.sha256 for r in results}) == 5
        assert results[0].url == "coffee.jpg"


def test_fewer_distinct_images_than_k(catalog_photos):
    idx = SearchIndex()
    idx.add("a.jpg", extract_features(catalog_photos["coffee.jpg"]))
    idx.add("b.jpg", extract_features(catalog_photos["coffee.jpg"]))
    idx.add("c.jpg", extract_features(catalog_photos["moon.jpg"]))
    assert [r.key for r in idx.search(extract_features(catalog_photos["moon.jpg"]), SearchParams(k=5))] == [
        "c.jpg",
        "a.jpg",
    ]


def test_empty_index_returns_nothing(catalog_photos):
    assert SearchIndex().search(extract_features(catalog_photos["moon.jpg"])) == []


@pytest.mark.parametrize("query", QUERY_VARIANTS)
def test_default_scoring_finds_the_original(index, query):
    expected = query.split("__")[0] + ".jpg"
    assert index.search(extract_features(image_bytes(query)), SearchParams(k=1))[0].key == expected


def test_default_finds_mirrored_copy_that_seed_misses(index):
    query = extract_features(image_bytes("chelsea__hflip.jpg"))
    assert index.search(query, SearchParams(k=1, scoring="default"))[0].key == "chelsea.jpg"


def test_min_score_filters(index, catalog_photos):
    results = index.search(extract_features(catalog_photos["rocket.jpg"]), SearchParams(k=5, min_score=0.9))
    assert [r.key for r in results] == ["rocket.jpg"]


def test_add_replace_remove(index, catalog_photos):
    idx = SearchIndex()
    idx.add("x.jpg", extract_features(catalog_photos["moon.jpg"]))
    query_like = extract_features(catalog_photos["coins.jpg"])
    assert query_like.detail_image is not None  # queries keep it for mirrored matching
    idx.add("x.jpg", query_like)
    assert idx.get("x.jpg").features.detail_image is None  # entries do not hold it
    assert len(idx) == 1
    assert idx.search(extract_features(catalog_photos["coins.jpg"]), SearchParams(k=1))[0].score == pytest.approx(1.0)
    assert idx.remove("x.jpg") and not idx.remove("x.jpg")
    assert len(idx) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k must be"),
        ({"k": 51}, "k must be"),
        ({"k": 2.5}, "k must be"),
        ({"k": True}, "k must be"),
        ({"scoring": "fast"}, "scoring must be"),
        ({"min_score": 1.5}, "min_score must be"),
        ({"min_score": -0.1}, "min_score must be"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(InvalidParameterError, match=message) as err:
        SearchParams(**kwargs)
    assert err.value.status == 422 and err.value.code == "validation_error"


def test_record_round_trip(catalog_photos):
    feats = extract_features(catalog_photos["chelsea.jpg"])
    again = ImageFeatures.from_bytes(feats.to_bytes())
    assert again.sha256 == feats.sha256 and (again.width, again.height) == (320, 213)
    assert (again.gray == feats.gray).all() and (again.descriptors == feats.descriptors).all()


def test_damaged_record_asks_for_reindex(catalog_photos):
    record = extract_features(catalog_photos["chelsea.jpg"]).to_bytes()
    with pytest.raises(IndexFormatError, match="re-index"):
        ImageFeatures.from_bytes(record[: len(record) // 2])
    with pytest.raises(IndexFormatError, match="re-index"):
        ImageFeatures.from_bytes(b"not a record")


def test_a_load_failure_that_is_not_about_the_bytes_is_not_called_damage(catalog_photos, monkeypatch):
    record = extract_features(catalog_photos["chelsea.jpg"]).to_bytes()

    def failing_load(*args, **kwargs):
        raise SystemError("AST constructor recursion depth mismatch")

    monkeypatch.setattr(np, "load", failing_load)
    with pytest.raises(SystemError):  # not IndexFormatError: the caller tries the record again
        ImageFeatures.from_bytes(record)


def _recoloured(data: bytes, hue_shift: int) -> bytes:
    """The same photo in another colourway: hue rotated, lightness and saturation kept."""
    import cv2
    import numpy as np

    hsv = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2HSV)
    hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + hue_shift) % 180
    return cv2.imencode(".png", cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))[1].tobytes()


@pytest.mark.parametrize("photo", ["rocket.jpg", "coffee.jpg", "chelsea.jpg"])
def test_the_matching_colourway_ranks_first(catalog_photos, photo):
    """Grayscale evidence cannot tell colourways apart; colour does. The recoloured copy's key
    sorts first, so only the colour check puts the original on top; and a colourway is a
    look-alike, not a copy (issue 13: product shots in several colourways), so it ranks right
    after the original but below the copy threshold."""
    idx = SearchIndex()
    for name, data in catalog_photos.items():
        idx.add(name, extract_features(data))
    idx.add("0-recoloured.png", extract_features(_recoloured(catalog_photos[photo], 60)))
    results = idx.search(extract_features(catalog_photos[photo]), SearchParams(k=2))
    assert [r.key for r in results] == [photo, "0-recoloured.png"]
    assert results[0].score >= SAME_IMAGE_THRESHOLD > results[1].score
    gray_query = extract_features(image_bytes("camera_gray.png"))  # gray images: no colour opinion
    assert idx.search(gray_query, SearchParams(k=1))[0].key == "camera.jpg"
