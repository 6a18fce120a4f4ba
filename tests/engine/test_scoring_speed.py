"""The speed work of issue 10 in default scoring, held to what it promised: k <= 6 verifies
exactly what it did before, larger k fewer rows than 4k and detail-verifies the best 6; the mirror image's features are
the same whether computed at once or in the background; stage times are reported."""

from __future__ import annotations

import numpy as np
import pytest

from harmony_image import SearchIndex, SearchParams, extract_features, scoring
from tests.support import QUERY_VARIANTS, image_bytes


@pytest.mark.parametrize("k", range(1, 7))
def test_k_up_to_6_shortlists_and_details_as_before(k):
    assert scoring.shortlist_size(k) == max(24, 4 * k) == 24
    assert scoring.DETAIL_CANDIDATES == max(6, k) == 6


def test_larger_k_verifies_fewer_rows_than_before():
    for k in (7, 10, 20, 50):
        assert scoring.shortlist_size(k) < max(24, 4 * k)
    assert scoring.shortlist_size(12) == 24 and scoring.shortlist_size(50) == 62


def test_mirror_detail_added_later_equals_mirror_at_once():
    query = extract_features(image_bytes(QUERY_VARIANTS[0]))
    at_once = scoring.mirrored(query)
    later = scoring.mirror_detail(scoring.mirrored(query, detail=False), query)
    for name in ("gray", "keypoints", "descriptors", "thumb", "detail_keypoints", "detail_descriptors"):
        assert np.array_equal(getattr(at_once, name), getattr(later, name)), name
    assert len(later.detail_descriptors) > 0


def test_stage_times_cover_a_default_search(catalog_photos):
    index = SearchIndex()
    for name, data in catalog_photos.items():
        index.add(name, extract_features(data, query=False))
    query = extract_features(image_bytes(QUERY_VARIANTS[0]))
    with scoring.stage_times() as times:
        index.search(query, SearchParams(k=5))
    for stage in ("mirror ORB", "thumbnails", "votes", "cross-check + 2-NN", "SSIM", "verify", "colour + calibrate"):
        assert times[stage] >= 0.0, stage
    with scoring.stage_times() as seed_times:
        index.search(query, SearchParams(k=5, scoring="seed"))
    assert list(seed_times) == ["seed: SSIM + cross-check"]
    assert scoring._stage_times.get() is None  # off outside the block
