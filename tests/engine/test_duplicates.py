"""The duplicate report's engine: edges, union-find, keepers, slices merged, on real photos with
planted copies made here with OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from harmony_image import InvalidParameterError, SearchIndex, extract_features
from harmony_image.duplicates import (
    Edge,
    Pair,
    choose_keeper,
    connected_groups,
    duplicate_groups,
    find_duplicates,
    find_edges,
    pairs_of,
)
from harmony_image.scoring import SAME_IMAGE_THRESHOLD


def jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def planted(catalog_photos: dict[str, bytes]) -> dict[str, bytes]:
    """The sample catalog plus copies: identical bytes under another key, a half-size re-encode,
    a crop, a mirror image (these have originals) — the other photos have none."""
    chelsea = cv2.imdecode(np.frombuffer(catalog_photos["chelsea.jpg"], np.uint8), cv2.IMREAD_COLOR)
    rocket = cv2.imdecode(np.frombuffer(catalog_photos["rocket.jpg"], np.uint8), cv2.IMREAD_COLOR)
    astronaut = cv2.imdecode(np.frombuffer(catalog_photos["astronaut.jpg"], np.uint8), cv2.IMREAD_COLOR)
    h, w = rocket.shape[:2]
    return {
        **catalog_photos,
        "copies/coffee-same.jpg": catalog_photos["coffee.jpg"],
        "copies/chelsea-small.jpg": jpeg(cv2.resize(chelsea, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA), 70),
        "copies/rocket-crop.jpg": jpeg(rocket[h // 10 : h - h // 5, w // 8 : w - w // 10], 85),
        "copies/astronaut-mirror.jpg": jpeg(np.ascontiguousarray(astronaut[:, ::-1]), 90),
    }


EXPECTED = [
    ["astronaut.jpg", "copies/astronaut-mirror.jpg"],
    ["chelsea.jpg", "copies/chelsea-small.jpg"],
    ["coffee.jpg", "copies/coffee-same.jpg"],
    ["copies/rocket-crop.jpg", "rocket.jpg"],
]


@pytest.fixture(scope="module")
def files(catalog_photos) -> dict[str, bytes]:
    return planted(catalog_photos)


@pytest.fixture(scope="module")
def index(files) -> SearchIndex:
    idx = SearchIndex()
    for key, data in files.items():
        idx.add(key, extract_features(data, query=False))  # as catalogs store them
    return idx


@pytest.fixture(scope="module")
def edges(index) -> list[Edge]:
    return find_edges(index)


def test_planted_copies_are_grouped_and_nothing_else(index):
    report = find_duplicates(index)
    assert sorted(sorted(m.key for m in g.members) for g in report.groups) == EXPECTED
    assert report.images == len(index) == 13
    assert report.took_s > 0
    for group in report.groups:
        assert group.members[0].key == group.keep and group.members[0].score == 1.0
        assert all(p.score >= SAME_IMAGE_THRESHOLD for p in group.pairs)
        # every pair here is direct, so each member scores as a copy of its keeper
        assert all(m.score >= SAME_IMAGE_THRESHOLD for m in group.members)


def test_identical_content_is_an_edge_of_one_both_ways(edges, index):
    assert Edge("copies/coffee-same.jpg", "coffee.jpg", 1.0) in edges
    assert Edge("coffee.jpg", "copies/coffee-same.jpg", 1.0) in edges
    assert Pair("coffee.jpg", "copies/coffee-same.jpg", 1.0) in pairs_of(edges, mutual=True)
    pair = next(g for g in find_duplicates(index).groups if g.keep in ("coffee.jpg", "copies/coffee-same.jpg"))
    assert [m.score for m in pair.members] == [1.0, 1.0]
    assert pair.members[0].sha256 == pair.members[1].sha256


def test_edges_are_distinct_and_only_above_the_threshold(edges):
    assert all(e.a != e.b and SAME_IMAGE_THRESHOLD <= e.score <= 1.0 for e in edges)
    assert len({(e.a, e.b) for e in edges}) == len(edges)
    pairs = pairs_of(edges, mutual=False)
    assert pairs == sorted(pairs, key=lambda p: (p.a, p.b)) and all(p.a < p.b for p in pairs)
    # the identical copy never queries: coffee's content is queried once, by its first key
    assert not any(e.a == "copies/coffee-same.jpg" and e.b != "coffee.jpg" for e in edges)


def test_slices_merged_equal_the_whole(index, edges):
    keys = sorted(index.keys())
    slices = [keys[i::3] for i in range(3)]  # interleaved: a content's copies land in different slices
    parts = [find_edges(index, keys=s) for s in slices]
    merged = [e for part in parts for e in part]
    assert sorted(merged, key=repr) == sorted(edges, key=repr)  # each edge once, from its query's slice
    for mutual in (False, True):
        assert duplicate_groups(index, merged, mutual=mutual) == duplicate_groups(index, edges, mutual=mutual)


def test_union_find_joins_chains_and_keeps_components_apart():
    chain = [Pair("b", "c", 0.7), Pair("a", "b", 0.9), Pair("x", "y", 0.6), Pair("c", "d", 0.8)]
    assert connected_groups(chain) == [["a", "b", "c", "d"], ["x", "y"]]
    assert connected_groups([]) == []


def test_pairs_either_way_or_mutual():
    edges = [
        Edge("b", "a", 0.6),
        Edge("a", "b", 0.8),
        Edge("a", "b", 0.7),
        Edge.from_dict({"a": "c", "b": "a", "score": 1}),
    ]
    assert pairs_of(edges, mutual=False) == [Pair("a", "b", 0.8), Pair("a", "c", 1.0)]  # the better direction
    assert pairs_of(edges) == [Pair("a", "b", 0.6)]  # mutual: the score both directions reach
    assert [Edge.from_dict(e.to_dict()) for e in edges] == edges
    with pytest.raises(ValueError, match="twice"):
        pairs_of([Edge("a", "a", 1.0)])


def test_keeper_rules(index, edges):
    chelsea = ["chelsea.jpg", "copies/chelsea-small.jpg"]
    assert choose_keeper(index, chelsea, keep="largest") == "chelsea.jpg"  # the half-size copy has 1/4 the pixels
    assert choose_keeper(index, chelsea, keep="shortest") == "chelsea.jpg"
    older_copy = {"chelsea.jpg": 1_700_000_000.0, "copies/chelsea-small.jpg": 1_600_000_000.0}
    assert choose_keeper(index, chelsea, keep="oldest", timestamps=older_copy) == "copies/chelsea-small.jpg"
    # identical content ties on pixels: the shorter key wins
    assert choose_keeper(index, ["copies/coffee-same.jpg", "coffee.jpg"], keep="largest") == "coffee.jpg"

    groups = duplicate_groups(index, edges, keep="oldest", timestamps=dict.fromkeys(index.keys(), 0.0) | older_copy)
    group = next(g for g in groups if "chelsea.jpg" in {m.key for m in g.members})
    assert group.keep == group.members[0].key == "copies/chelsea-small.jpg"
    original = index.get("chelsea.jpg").features
    small = group.members[0]
    assert small.width == round(original.width / 2) and small.height == round(original.height / 2)


def test_bad_keep_rule_or_missing_timestamps_are_parameter_errors(index, edges):
    with pytest.raises(InvalidParameterError, match="keep must be one of largest, oldest, shortest"):
        duplicate_groups(index, edges, keep="newest")
    with pytest.raises(InvalidParameterError, match="timestamp for every key"):
        duplicate_groups(index, edges, keep="oldest", timestamps={"chelsea.jpg": 1.0})
    with pytest.raises(InvalidParameterError, match="min_score"):
        find_edges(index, keys=["moon.jpg"], min_score=1.5)
    with pytest.raises(InvalidParameterError, match="not in the index"):
        find_edges(index, keys=["nope.jpg"])


def test_pairs_either_way_find_the_same_planted_groups(index, edges):
    groups = duplicate_groups(index, edges, mutual=False)
    assert sorted(sorted(m.key for m in g.members) for g in groups) == EXPECTED


def test_min_score_one_leaves_only_identical_content(index):
    report = find_duplicates(index, min_score=1.0)
    assert [sorted(m.key for m in g.members) for g in report.groups] == [["coffee.jpg", "copies/coffee-same.jpg"]]


def test_progress_and_full_query_features(index, files, edges):
    seen: list[tuple[int, int]] = []
    keys = ["astronaut.jpg", "copies/astronaut-mirror.jpg", "moon.jpg"]
    got = find_edges(
        index,
        keys=keys,
        query_features=lambda key: extract_features(files[key]),  # with the detail image: mirror at 512 px
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert [(p.a, p.b) for p in pairs_of(got)] == [("astronaut.jpg", "copies/astronaut-mirror.jpg")]  # both ways
    assert {(e.a, e.b) for e in got} == {(e.a, e.b) for e in edges if e.a in keys}
