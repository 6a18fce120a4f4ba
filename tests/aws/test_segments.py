"""harmony_aws.segments (compaction into segments, the segments manifest) and the reader's cold
start from segments: against moto in-process and moto's HTTP server, on the real sample images."""

from __future__ import annotations

import hashlib
import json

import pytest

from harmony_aws.layout import RECORDS_PREFIX, SEGMENTS_MANIFEST_KEY, SEGMENTS_PREFIX, record_key, shard_of
from harmony_aws.reader import IndexReader
from harmony_aws.records import RecordWriter
from harmony_aws.s3 import Bucket
from harmony_aws.segments import Compactor, SegmentCache, read_manifest
from harmony_aws.urls import ResultUrls
from harmony_image import DEFAULT_MAX_PIXELS, SearchParams, extract_features
from tests.support import BUCKET, CATALOG_NAMES, QUERY_VARIANTS, all_keys, put_catalog


@pytest.fixture(params=["mock_aws", "moto_server"])
def bucket(request, images):
    """(client, bucket name) with the sample catalog uploaded and indexed (one record each)."""
    if request.param == "mock_aws":
        client, name = request.getfixturevalue("s3"), BUCKET
    else:
        client = request.getfixturevalue("s3_server")
        name = client.harmony_bucket
    put_catalog(client, name, images)
    writer = RecordWriter(Bucket(name), max_pixels=DEFAULT_MAX_PIXELS, max_image_bytes=20 * 1024 * 1024)
    for n in CATALOG_NAMES:
        assert writer.reconcile("catalog/" + n).action == "indexed"
    return client, name


def reader(name, tmp_path, sub="cache", shard=None) -> IndexReader:
    b = Bucket(name)
    return IndexReader(b, ResultUrls(b, presign_seconds=900), ttl=0.0, cache_dir=tmp_path / sub, shard=shard)


def answers(index, images) -> list[list[tuple[str, float]]]:
    """Top-5 (key, score) of every query variant, both scorings."""
    out = []
    for q in QUERY_VARIANTS:
        feats = extract_features(images[q])
        for scoring in ("default", "seed"):
            out.append([(r.key, r.score) for r in index.search(feats, SearchParams(k=5, scoring=scoring))])
    return out


def test_cold_start_from_segments_serves_what_the_records_serve(bucket, images, tmp_path):
    _, name = bucket
    from_records = reader(name, tmp_path, "a").index()
    report = Compactor(Bucket(name), segment_images=4).compact()
    assert report.won and report.generation == 1 and report.records == len(CATALOG_NAMES)
    assert report.written == 3 and report.kept == 0  # 9 records, 4 per segment
    manifest = read_manifest(Bucket(name))
    assert manifest is not None and manifest.generation == 1 and sum(s.images for s in manifest.segments) == 9

    cold = reader(name, tmp_path, "b")
    index = cold.index()
    assert cold.last_refresh["loaded"] == 0 and cold.last_refresh["segment_records"] == 9
    assert cold.status == {"complete": True, "missing": 0}
    assert sorted(index.keys()) == sorted(from_records.keys())
    assert answers(index, images) == answers(from_records, images)
    assert len(list((tmp_path / "b").glob("*.seg"))) == 3


def test_records_newer_than_the_segments_are_served_over_them(bucket, images, tmp_path):
    client, name = bucket
    Compactor(Bucket(name), segment_images=4).compact()
    writer = RecordWriter(Bucket(name), max_pixels=DEFAULT_MAX_PIXELS, max_image_bytes=20 * 1024 * 1024)
    warm = reader(name, tmp_path)
    warm.index()
    # a replaced image, a deleted one and a new one after the compaction
    client.put_object(Bucket=name, Key="catalog/camera.jpg", Body=images["coins.jpg"])
    client.delete_object(Bucket=name, Key="catalog/brick.jpg")
    client.put_object(Bucket=name, Key="catalog/new/rocket.jpg", Body=images["rocket.jpg"])
    for key in ("catalog/camera.jpg", "catalog/brick.jpg", "catalog/new/rocket.jpg"):
        writer.reconcile(key)
    for r in (warm, reader(name, tmp_path, "cold")):  # warm refresh and a cold start see the same
        index = r.index()
        assert r.last_refresh["loaded"] == 2 and "catalog/brick.jpg" not in index
        assert r.status == {"complete": True, "missing": 0}
        assert sorted(index.keys()) == sorted(
            ["catalog/" + n for n in CATALOG_NAMES if n != "brick.jpg"] + ["catalog/new/rocket.jpg"]
        )
        coins = hashlib.sha256(images["coins.jpg"]).hexdigest()
        assert index.get("catalog/camera.jpg").features.sha256 == coins  # the new content
        top = index.search(extract_features(images["coins.jpg"]), SearchParams(k=2))
        assert top[0].sha256 == coins and top[0].score > 0.9

    # the next compaction keeps the untouched segment, rebuilds the others; readers follow
    again = Compactor(Bucket(name), segment_images=4).compact()
    assert again.won and again.generation == 2 and again.kept >= 1 and again.records == 9
    index = warm.index()
    assert warm.last_refresh["loaded"] == 0 and warm.last_refresh["segment_records"] == 9
    assert "catalog/brick.jpg" not in index and "catalog/new/rocket.jpg" in index


def test_two_compactors_one_manifest(bucket, tmp_path, monkeypatch):
    """The loser of a race (the manifest changed under it) publishes nothing and removes what
    it wrote; the winner's segments are what readers load."""
    client, name = bucket
    first = Compactor(Bucket(name), segment_images=4)
    second = Compactor(Bucket(name), segment_images=5)
    put_if = first.bucket.put_if
    outcome = {}

    def late_put_if(*args, **kw):
        outcome["second"] = second.compact()  # publishes while the first is about to
        return put_if(*args, **kw)

    monkeypatch.setattr(first.bucket, "put_if", late_put_if)
    lost = first.compact()
    assert outcome["second"].won and not lost.won and lost.written == 3
    manifest = read_manifest(Bucket(name))
    assert manifest is not None and manifest.generation == 1 and len(manifest.segments) == 2  # 5 + 4
    named = {k for s in manifest.segments for k in (s.key, s.records_key)}
    assert set(all_keys(client, name, SEGMENTS_PREFIX)) == named
    index = reader(name, tmp_path).index()
    assert len(index) == 9


def test_damaged_or_replaced_segments_fall_back_to_the_records(bucket, tmp_path):
    client, name = bucket
    Compactor(Bucket(name), segment_images=4).compact()
    manifest = read_manifest(Bucket(name))
    assert manifest is not None
    # one segment overwritten with other bytes: its ETag no longer matches the manifest
    client.put_object(Bucket=name, Key=manifest.segments[0].key, Body=b"HIMGSEG\0 not really")
    r = reader(name, tmp_path)
    index = r.index()
    assert len(index) == 9 and r.last_refresh["loaded"] == 9  # every record on its own
    assert r.status["complete"] is False and "segments" in r.status["error"]
    # a garbage manifest is refused the same way
    client.put_object(Bucket=name, Key=SEGMENTS_MANIFEST_KEY, Body=b'{"format": 1, "segments": 3}')
    r2 = reader(name, tmp_path, "other")
    assert len(r2.index()) == 9 and "not a segments manifest" in r2.status["error"]


def test_a_damaged_cached_segment_is_fetched_again(bucket, tmp_path):
    _, name = bucket
    Compactor(Bucket(name), segment_images=4).compact()
    reader(name, tmp_path).index()
    cached = sorted((tmp_path / "cache").glob("*.seg"))
    assert len(cached) == 3
    cached[0].write_bytes(cached[0].read_bytes()[:1000])  # truncated on disk
    r = reader(name, tmp_path)
    assert len(r.index()) == 9 and r.status["complete"] is False  # this refresh: from the records
    r2 = reader(name, tmp_path)
    assert len(r2.index()) == 9 and r2.status == {"complete": True, "missing": 0}  # downloaded again
    assert r2.last_refresh["loaded"] == 0


def test_shards_split_by_a_stable_hash(bucket):
    client, name = bucket
    report = Compactor(Bucket(name), shards=3, segment_images=100).compact()
    manifest = read_manifest(Bucket(name))
    assert report.won and manifest is not None and manifest.shards == 3
    for ref in manifest.segments:
        folded = json.loads(client.get_object(Bucket=name, Key=ref.records_key)["Body"].read())
        assert folded and all(shard_of(key, 3) == ref.shard for _, key in folded.values())
        assert all(rk == record_key(key) and rk.startswith(RECORDS_PREFIX) for rk, (_, key) in folded.items())
    assert shard_of("catalog/astronaut.jpg", 3) == shard_of("catalog/astronaut.jpg", 3)
    assert len({shard_of(f"catalog/{i}.jpg", 16) for i in range(200)}) == 16


def test_shard_readers_split_the_catalog(bucket, images, tmp_path):
    client, name = bucket
    Compactor(Bucket(name), shards=3, segment_images=100).compact()
    writer = RecordWriter(Bucket(name), max_pixels=DEFAULT_MAX_PIXELS, max_image_bytes=20 * 1024 * 1024)
    client.put_object(Bucket=name, Key="catalog/late.jpg", Body=images["rocket__brighter.jpg"])
    writer.reconcile("catalog/late.jpg")  # after the compaction: a record on its own
    readers = [reader(name, tmp_path, f"s{i}", shard=(i, 3)) for i in range(3)]
    held = [set(r.index().keys()) for r in readers]
    assert sum(len(h) for h in held) == 10 and set().union(*held) == {"catalog/" + n for n in CATALOG_NAMES} | {
        "catalog/late.jpg"
    }
    for i, h in enumerate(held):
        assert all(shard_of(k, 3) == i for k in h)
        assert readers[i].status == {"complete": True, "missing": 0}
    wrong = reader(name, tmp_path, "w", shard=(0, 2))
    assert len(wrong.index()) == len([k for k in held[0] | held[1] | held[2] if shard_of(k, 2) == 0])
    assert "compact again with 2 shards" in wrong.status["error"]


def test_superseded_segments_outlive_one_compaction(bucket, images, tmp_path):
    """A reader that read the previous manifest can still load its segments: they are deleted
    only by the compaction after the one that replaced them (and past the grace period)."""
    client, name = bucket
    first = Compactor(Bucket(name), segment_images=100, grace_seconds=0).compact()
    gen1 = read_manifest(Bucket(name))
    assert first.won and gen1 is not None and len(gen1.segments) == 1
    writer = RecordWriter(Bucket(name), max_pixels=DEFAULT_MAX_PIXELS, max_image_bytes=20 * 1024 * 1024)
    client.delete_object(Bucket=name, Key="catalog/brick.jpg")
    writer.reconcile("catalog/brick.jpg")
    second = Compactor(Bucket(name), segment_images=100, grace_seconds=0).compact()
    assert second.won and second.kept == 0 and second.deleted == 0
    # a reader that read generation 1 just before: its segment is still there to be read
    assert SegmentCache(Bucket(name), tmp_path / "late").open(gen1.segments[0]).keys
    third = Compactor(Bucket(name), segment_images=100, grace_seconds=0).compact()
    assert third.won and third.kept == 1 and third.deleted == 2  # gen 1's segment and its record list
    assert gen1.segments[0].key not in all_keys(client, name, SEGMENTS_PREFIX)
