"""harmony_aws.fanout: shard requests (encoding, validation) and ShardFunction's answer, on the
real sample images; the fan-out itself through a Lambda Invoke API is in tests/local/test_shards.py."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from harmony_aws.errors import BadRequestError
from harmony_aws.fanout import answer_shard, decode_query, encode_query, parse_shard_request, shard_request
from harmony_aws.layout import shard_of
from harmony_aws.reader import IndexReader
from harmony_aws.records import RecordWriter
from harmony_aws.s3 import Bucket
from harmony_aws.segments import Compactor
from harmony_aws.urls import ResultUrls
from harmony_image import (
    DEFAULT_MAX_PIXELS,
    HarmonyError,
    SearchIndex,
    SearchParams,
    SearchResult,
    extract_features,
    merge_results,
)
from tests.support import BUCKET, CATALOG_NAMES, QUERY_VARIANTS, put_catalog


def test_a_query_survives_its_encoding(images):
    """Searching with the decoded query gives exactly what the original query gives."""
    index = SearchIndex()
    for n in CATALOG_NAMES:
        index.add(n, extract_features(images[n], query=False))
    for q in QUERY_VARIANTS[:4]:
        feats = extract_features(images[q])
        back = decode_query(encode_query(feats))
        assert back.detail_image is not None and np.array_equal(back.detail_image, feats.detail_image)
        for scoring in ("default", "seed"):
            p = SearchParams(k=5, scoring=scoring)
            assert index.search(back, p) == index.search(feats, p)


def _npy(a: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, a)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda r: r.update(shard=3), "0 <= shard < shards"),
        (lambda r: r.update(shards=0), "0 <= shard < shards"),
        (lambda r: r.update(shard="0"), "integers"),
        (lambda r: r.update(params={"k": 5, "evil": 1}), "only"),
        (lambda r: r.update(query="x"), "must be an object"),
        (lambda r: r["query"].update(features="!!not base64!!"), "not an encoded query"),
        (lambda r: r["query"].update(features=base64.b64encode(b"PK\x03\x04junk").decode()), "damaged"),
        (lambda r: r["query"].update(detail_image=_npy(np.zeros((4096, 4), np.uint8))), "at most"),
        (lambda r: r["query"].update(detail_image=_npy(np.zeros((64, 64), np.float64))), "2-D uint8"),
        (lambda r: r["query"].update(detail_image=base64.b64encode(b"\x93NUMPY junk").decode()), "not an encoded"),
    ],
)
def test_bad_shard_requests_are_refused_with_a_reason(images, change, says):
    request = shard_request(1, 2, extract_features(images["coffee__resize_half.png"]), SearchParams())
    change(request)
    with pytest.raises(BadRequestError, match=says):
        parse_shard_request(request)


def test_invalid_params_are_the_engines_422(images):
    request = shard_request(0, 1, extract_features(images["coffee__resize_half.png"]), SearchParams())
    request["params"]["k"] = 10_000
    with pytest.raises(HarmonyError) as err:
        parse_shard_request(request)
    assert err.value.status == 422


def test_shards_answer_their_part_and_merge_into_the_whole(s3, images, tmp_path):
    """Three shard readers over one compacted bucket: each answers from its own keys only; the
    merged answers rank an exact copy first, as the unsharded index does."""
    put_catalog(s3, BUCKET, images)
    writer = RecordWriter(Bucket(BUCKET), max_pixels=DEFAULT_MAX_PIXELS, max_image_bytes=20 * 1024 * 1024)
    for n in CATALOG_NAMES:
        writer.reconcile("catalog/" + n)
    Compactor(Bucket(BUCKET), shards=3).compact()
    b = Bucket(BUCKET)
    readers = [
        IndexReader(b, ResultUrls(b, presign_seconds=60), ttl=60, cache_dir=tmp_path / str(i), shard=(i, 3))
        for i in range(3)
    ]
    whole = IndexReader(b, ResultUrls(b, presign_seconds=60), ttl=60, cache_dir=tmp_path / "all").index()
    for name in CATALOG_NAMES:
        feats = extract_features(images[name])
        answers = [answer_shard(shard_request(i, 3, feats, SearchParams(k=3)), r) for i, r in enumerate(readers)]
        assert sum(a["catalog_size"] for a in answers) == len(CATALOG_NAMES)
        for i, a in enumerate(answers):
            assert all(shard_of(r["key"], 3) == i for r in a["results"])
        merged = merge_results([[SearchResult(**r) for r in a["results"]] for a in answers], k=3)
        assert merged[0].key == "catalog/" + name and merged[0].score > 0.99
        assert merged[0] == whole.search(feats, SearchParams(k=3))[0]
    with pytest.raises(BadRequestError, match="serves shard"):
        answer_shard(shard_request(1, 3, feats, SearchParams()), readers[0])
