"""harmony_aws.segments (compaction into segments, the segments manifest) and the reader's cold
start from segments: against moto in-process and moto's HTTP server, on the real sample images."""

from __future__ import annotations

import hashlib
import io
import json
import platform

import pytest
from botocore.response import StreamingBody

from harmony_aws import reader as reader_module
from harmony_aws.errors import S3ObjectChangedError, StorageError
from harmony_aws.layout import RECORDS_PREFIX, SEGMENTS_MANIFEST_KEY, SEGMENTS_PREFIX, record_key, shard_of
from harmony_aws.reader import IndexReader, release_freed_memory
from harmony_aws.s3 import Bucket
from harmony_aws.segments import Compactor, SegmentCache, read_folded, read_manifest
from harmony_aws.urls import ResultUrls
from harmony_image import SearchParams, extract_features
from tests.support import CATALOG_NAMES, QUERY_VARIANTS, all_keys, answers, as_older_manifest, record_writer


def reader(name, tmp_path, sub="cache", shard=None, ttl=0.0, **kw) -> IndexReader:
    b = Bucket(name)
    return IndexReader(b, ResultUrls(b, presign_seconds=900), ttl=ttl, cache_dir=tmp_path / sub, shard=shard, **kw)


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
    cold.wait_for_segments()
    assert len(list((tmp_path / "b").glob("*.seg"))) == 3
    segments = index.packed().blocks[:-1]  # the last: entries added one by one
    assert len(segments) == 3 and all(b.verification.mapped for b in segments)  # now read from local disk


def test_records_newer_than_the_segments_are_served_over_them(bucket, images, tmp_path):
    client, name = bucket
    Compactor(Bucket(name), segment_images=4).compact()
    writer = record_writer(Bucket(name))
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
    named = {k for s in manifest.segments for k in (s.key, s.shortlist_key, s.records_key)}
    assert set(all_keys(client, name, SEGMENTS_PREFIX)) == named  # the loser's files are gone
    index = reader(name, tmp_path).index()
    assert len(index) == 9


@pytest.mark.parametrize("damaged", ["head", "file"])
def test_damaged_or_replaced_segments_fall_back_to_the_records(bucket, tmp_path, damaged):
    """A segment's head or file overwritten with other bytes (its ETag no longer the manifest's):
    a replaced head is found by the cold start, a replaced file by the first read of it (here the
    background download); the reader then serves every record on its own."""
    client, name = bucket
    Compactor(Bucket(name), segment_images=4).compact()
    manifest = read_manifest(Bucket(name))
    assert manifest is not None
    ref = manifest.segments[0]
    key = ref.shortlist_key if damaged == "head" else ref.key
    client.put_object(Bucket=name, Key=key, Body=b"HIMGSEG\0 not really")
    r = reader(name, tmp_path)
    index = r.index()
    if damaged == "file":
        assert r.last_refresh["loaded"] == 0  # from the heads
        r.wait_for_segments()
        index = r.index()  # at once: a segment was found replaced
    assert len(index) == 9 and r.last_refresh["loaded"] == 9  # every record on its own
    assert r.status["complete"] is False and "segments" in r.status["error"]
    # a garbage manifest is refused the same way
    client.put_object(Bucket=name, Key=SEGMENTS_MANIFEST_KEY, Body=b'{"format": 1, "segments": 3}')
    r2 = reader(name, tmp_path, "other")
    assert len(r2.index()) == 9 and "not a segments manifest" in r2.status["error"]


def test_a_damaged_cached_segment_is_fetched_again(bucket, tmp_path):
    _, name = bucket
    Compactor(Bucket(name), segment_images=4).compact()
    first = reader(name, tmp_path)
    first.index()
    first.wait_for_segments()  # opened by ranges, downloaded whole in the background
    cached = sorted((tmp_path / "cache").glob("*.seg"))
    assert len(cached) == 3
    cached[0].write_bytes(cached[0].read_bytes()[:1000])  # truncated on disk
    r = reader(name, tmp_path)
    assert len(r.index()) == 9 and r.status["complete"] is False  # this refresh: from the records
    r2 = reader(name, tmp_path)
    assert len(r2.index()) == 9 and r2.status == {"complete": True, "missing": 0}  # read from S3 again
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
    writer = record_writer(Bucket(name))
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
    writer = record_writer(Bucket(name))
    client.delete_object(Bucket=name, Key="catalog/brick.jpg")
    writer.reconcile("catalog/brick.jpg")
    second = Compactor(Bucket(name), segment_images=100, grace_seconds=0).compact()
    assert second.won and second.kept == 0 and second.deleted == 0
    # a reader that read generation 1 just before: its segment is still there to be read
    assert SegmentCache(Bucket(name), tmp_path / "late").open(gen1.segments[0]).keys
    third = Compactor(Bucket(name), segment_images=100, grace_seconds=0).compact()
    assert third.won and third.kept == 1 and third.deleted == 3  # gen 1's segment, its head and record list
    assert gen1.segments[0].key not in all_keys(client, name, SEGMENTS_PREFIX)


# ------------------------------------------------------------------ segments read by ranged GETs
class GetSpy:
    """Wraps a client's get_object: records (key, Range) of every GET; ``answer`` may rewrite
    the answer of a ranged GET of a segment (a misbehaving server)."""

    def __init__(self, client, answer=None) -> None:
        self.get_object, self.answer = client.get_object, answer
        self.calls: list[tuple[str, str | None, str | None]] = []

    def __call__(self, **kw):
        self.calls.append((kw["Key"], kw.get("Range"), kw.get("IfMatch")))
        r = self.get_object(**kw)
        if self.answer is not None and kw.get("Range") and kw["Key"].endswith(".seg"):
            r = self.answer(kw, r)
        return r

    def ranges(self) -> list[tuple[str, int, int]]:
        """(key, start, stop) of the ranged GETs of segments."""
        out = []
        for key, rng, _ in self.calls:
            if key.endswith(".seg") and rng:
                a, b = rng.removeprefix("bytes=").split("-")
                out.append((key, int(a), int(b) + 1))
        return out


def spied(r: IndexReader, monkeypatch, answer=None) -> GetSpy:
    spy = GetSpy(r.bucket.client, answer)
    monkeypatch.setattr(r.bucket.client, "get_object", spy)
    return spy


def test_a_cold_reader_reads_header_and_shortlist_tier_and_answers_as_whole_files(
    bucket, images, tmp_path, monkeypatch
):
    """One GET (If-Match) per segment of its head, the header and shortlist tier; verification rows
    by ranged GETs of the file (If-Match) for default; seed needs every row and waits for the whole
    files. Both answer as segments downloaded whole, top-5 for default and seed, scores exactly.
    Manifests written before heads: one ranged GET of each file's start instead."""
    _, name = bucket
    Compactor(Bucket(name), segment_images=4).compact()
    manifest = read_manifest(Bucket(name))
    assert manifest is not None and all(0 < s.shortlist_bytes < s.bytes / 5 for s in manifest.segments)
    downloaded = reader(name, tmp_path, "whole", ranged=False)
    want = answers(downloaded.index(), images)

    cold = reader(name, tmp_path, "r", background=False)
    spy = spied(cold, monkeypatch)
    index = cold.index()
    assert cold.status == {"complete": True, "missing": 0} and len(index) == 9
    loaded = sorted(c for c in spy.calls if c[0].endswith((".head", ".seg")))  # and each one's .json
    assert loaded == sorted((s.shortlist_key, None, s.shortlist_etag) for s in manifest.segments)
    assert not list((tmp_path / "r").glob("*.seg"))
    default_query = extract_features(images[QUERY_VARIANTS[0]])
    first = index.search(default_query, SearchParams(k=5))
    rows = spy.ranges()
    shortlist_end = {s.key: s.shortlist_bytes for s in manifest.segments}
    assert rows and all(shortlist_end[key] <= a for key, a, _ in rows)  # verification rows
    segment_gets = {(key, rng is not None, if_match) for key, rng, if_match in spy.calls if key.endswith(".seg")}
    assert segment_gets <= {(s.key, True, s.etag) for s in manifest.segments}  # ranged: no whole file yet
    assert first == downloaded.index().search(default_query, SearchParams(k=5))
    assert answers(index, images) == want  # seed's answers download the files whole: then mapped
    assert len(list((tmp_path / "r").glob("*.seg"))) == 3

    # a manifest written before heads: a ranged GET of each file's start, as long as the manifest says
    without_heads(name)
    older = reader(name, tmp_path, "older", background=False)
    spy = spied(older, monkeypatch)
    index = older.index()
    assert sorted(spy.ranges()) == sorted((s.key, 0, s.shortlist_bytes) for s in manifest.segments)
    assert answers(index, images) == want and older.status == {"complete": True, "missing": 0}
    # ... and before it gave the shortlist tier's length: the first read is a guess
    body = json.loads(Bucket(name).read(SEGMENTS_MANIFEST_KEY, max_bytes=1 << 20)[0])
    for s in body["segments"]:
        del s["shortlist_bytes"]
    Bucket(name).put(SEGMENTS_MANIFEST_KEY, json.dumps(body).encode(), content_type="application/json")
    oldest = reader(name, tmp_path, "oldest")
    assert answers(oldest.index(), images) == want and oldest.status == {"complete": True, "missing": 0}


def without_heads(name: str) -> None:
    """Rewrite the segments manifest as code before segment heads wrote it."""
    body = json.loads(Bucket(name).read(SEGMENTS_MANIFEST_KEY, max_bytes=1 << 20)[0])
    for s in body["segments"]:
        del s["shortlist_key"], s["shortlist_etag"]
    Bucket(name).put(SEGMENTS_MANIFEST_KEY, json.dumps(body).encode(), content_type="application/json")


def _misbehaving(how: str):
    def answer(kw, r):
        a, b = (int(x) for x in kw["Range"].removeprefix("bytes=").split("-"))
        data = r["Body"].read()
        if how == "short":
            data = data[:-1]
        elif how == "shifted":  # the bytes after those asked for, honestly labelled
            r["ContentRange"] = f"bytes {a + 1}-{b + 1}/{r['ContentRange'].split('/')[1]}"
        r["Body"] = StreamingBody(io.BytesIO(data), len(data))
        r["ContentLength"] = len(data)
        return r

    return answer


@pytest.mark.parametrize("how", ["short", "shifted"])
def test_a_wrong_range_is_never_taken(bucket, images, tmp_path, monkeypatch, how):
    """A server answering ranged GETs with fewer bytes or another range: a cold load by ranges (a
    manifest without heads) falls back to the records (flagged); a query that needs verification
    rows fails with a clear error — never an answer from wrong bytes — and succeeds once the
    server heals."""
    _, name = bucket
    Compactor(Bucket(name), segment_images=4).compact()
    want = answers(reader(name, tmp_path, "want").index(), images)
    without_heads(name)
    r = reader(name, tmp_path, "bad", background=False)
    spy = spied(r, monkeypatch, _misbehaving(how))
    index = r.index()
    assert len(index) == 9 and r.last_refresh["loaded"] == 9 and "segments" in r.status["error"]
    assert answers(index, images) == want  # the records

    ok = reader(name, tmp_path, "ok", background=False)
    index = ok.index()  # opened while the server behaved
    assert ok.status == {"complete": True, "missing": 0}
    spy = spied(ok, monkeypatch, _misbehaving(how))
    query = extract_features(images[QUERY_VARIANTS[0]])
    with pytest.raises(StorageError, match=r"range|bytes"):
        index.search(query, SearchParams(k=5))
    assert len(spy.calls) >= 3  # asked again before giving up
    spy.answer = None
    assert [(x.key, x.score) for x in index.search(query, SearchParams(k=5))] == want[0]


def test_a_segment_replaced_while_in_use_is_detected_and_the_records_served(bucket, images, tmp_path):
    client, name = bucket
    Compactor(Bucket(name), segment_images=100).compact()
    manifest = read_manifest(Bucket(name))
    assert manifest is not None and len(manifest.segments) == 1
    want = answers(reader(name, tmp_path, "want").index(), images)
    r = reader(name, tmp_path, background=False, ttl=1e9)
    index = r.index()
    assert r.status == {"complete": True, "missing": 0} and r.last_refresh["loaded"] == 0
    ref = manifest.segments[0]
    data = bytearray(client.get_object(Bucket=name, Key=ref.key)["Body"].read())
    data[-1] ^= 0xFF  # the same length, other bytes: another ETag
    client.put_object(Bucket=name, Key=ref.key, Body=bytes(data))
    query = extract_features(images[QUERY_VARIANTS[0]])
    with pytest.raises(S3ObjectChangedError, match="changed"):
        index.search(query, SearchParams(k=5))
    again = r.index()  # at once, not after the TTL: the records, flagged
    assert again is not index and r.last_refresh["loaded"] == 9 and "segments" in r.status["error"]
    assert answers(again, images) == want


def test_a_server_that_ignores_if_match_is_caught_by_the_etag(bucket, images, tmp_path, monkeypatch):
    """An answer from another version of the segment (its ETag), If-Match notwithstanding: the
    query fails as the segment having changed, and the next index() serves the records."""
    _, name = bucket
    Compactor(Bucket(name), segment_images=100).compact()
    want = answers(reader(name, tmp_path, "want").index(), images)
    r = reader(name, tmp_path, background=False, ttl=1e9)
    index = r.index()
    assert r.status == {"complete": True, "missing": 0}

    def other_version(kw, answer):
        answer["ETag"] = '"0123456789abcdef0123456789abcdef"'
        return answer

    spy = spied(r, monkeypatch, other_version)
    with pytest.raises(S3ObjectChangedError, match="changed"):
        index.search(extract_features(images[QUERY_VARIANTS[0]]), SearchParams(k=5))
    assert len(spy.calls) == 1  # not asked again: a changed object is not a broken answer
    again = r.index()  # at once; the segment still answers as another version: the records
    assert again is not index and r.last_refresh["loaded"] == 9 and "segments" in r.status["error"]
    assert answers(again, images) == want
    spy.answer = None
    healed = r.index(force=True)
    assert r.status == {"complete": True, "missing": 0} and r.last_refresh["segment_records"] == 9
    assert answers(healed, images) == want


def test_the_record_listing_split_into_ranges_lists_every_record_once(bucket, images, tmp_path, monkeypatch):
    """A reader that knows enough records (here: any) lists them in ranges at once, cut at keys it
    knows (the cold one: after loading the segments); what it serves is what one listing gives."""
    client, name = bucket
    b = Bucket(name)
    whole = b.etags(RECORDS_PREFIX)
    keys = sorted(whole)
    for splits in ([keys[0]], keys[2:7:2], [keys[-1], keys[3], keys[3]], [RECORDS_PREFIX + "~"], [RECORDS_PREFIX]):
        assert b.etags(RECORDS_PREFIX, splits=splits) == whole
    Compactor(b, segment_images=4).compact()
    as_older_manifest(client, name)  # a manifest with a journal cursor is read with no record listing
    monkeypatch.setattr(reader_module, "LIST_SPLIT_MIN", 1)
    monkeypatch.setattr(reader_module, "LIST_RANGES", 4)
    listed: list[list[str]] = []
    etags = Bucket.etags

    def spy(self, prefix, *, splits=()):
        listed.append(list(splits))
        return etags(self, prefix, splits=splits)

    monkeypatch.setattr(Bucket, "etags", spy)
    r = reader(name, tmp_path, background=False)
    index = r.index()
    assert len(listed[-1]) == 3 and r.last_refresh["loaded"] == 0 and len(index) == 9
    client.put_object(Bucket=name, Key="catalog/new/rocket.jpg", Body=images["rocket.jpg"])
    record_writer(b).reconcile("catalog/new/rocket.jpg")
    index = r.index()
    assert len(listed[-1]) == 3 and r.last_refresh["loaded"] == 1 and "catalog/new/rocket.jpg" in index
    assert r.status == {"complete": True, "missing": 0}


def test_a_reader_gives_back_the_memory_a_load_freed(bucket, images, tmp_path, monkeypatch):
    """After a refresh that loaded segments or records the C heap's freed pages go back to the
    system (a cold shard's resident memory was more than twice its shortlist tier without it);
    a refresh that loads nothing does not; the catalog keys of the folded records are the
    segment's own strings (one per image, not two)."""
    client, name = bucket
    b = Bucket(name)
    Compactor(b, segment_images=4).compact()
    assert release_freed_memory() is (platform.libc_ver()[0] == "glibc")
    calls: list[int] = []

    def release() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(reader_module, "release_freed_memory", release)
    r = reader(name, tmp_path, background=False)
    index = r.index()
    assert len(calls) == 1 and len(index) == 9
    r.index(force=True)
    assert len(calls) == 1 and r.last_refresh["loaded"] == 0
    client.put_object(Bucket=name, Key="catalog/new/rocket.jpg", Body=images["rocket.jpg"])
    record_writer(b).reconcile("catalog/new/rocket.jpg")
    r.index(force=True)
    assert len(calls) == 2 and r.last_refresh["loaded"] == 1
    manifest = read_manifest(b)
    assert manifest is not None
    for ref in manifest.segments:
        segment = SegmentCache(b, tmp_path / "other", background=False).open(ref)
        folded = read_folded(b, ref, keys=segment.keys)
        assert folded == read_folded(b, ref) and len(folded) == len(segment)
        held = {id(k) for k in segment.keys}
        assert all(id(key) in held for _, key in folded.values())


def _resident(path) -> float:
    """The fraction of ``path``'s pages in the page cache (mincore(2) over a mapping of it)."""
    import ctypes
    import mmap

    import numpy as np

    size = path.stat().st_size
    with open(path, "rb") as f:
        mapped = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
    pages = -(-size // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * pages)()
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mincore(ctypes.c_void_p(mapped.ctypes.data), ctypes.c_size_t(size), vec) == 0, ctypes.get_errno()
    return sum(v & 1 for v in vec) / pages


@pytest.mark.skipif(platform.system() != "Linux", reason="mincore(2) and posix_fadvise(2) as Linux has them")
def test_a_cached_segment_is_read_into_the_page_cache_when_opened(bucket, tmp_path):
    """A segment file on local disk whose pages the kernel dropped is read back into memory when a
    reader opens it (in the background): its queries' verification rows then come from memory."""
    import os
    import time

    _, name = bucket
    Compactor(Bucket(name), segment_images=4).compact()
    reader(name, tmp_path, ranged=False).index()  # downloaded whole before use
    cached = sorted((tmp_path / "cache").glob("*.seg"))
    assert len(cached) == 3
    for path in cached:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    if max(_resident(p) for p in cached) > 0.5:
        pytest.skip("this file system keeps the files in memory (the kernel did not drop their pages)")
    later = reader(name, tmp_path, ranged=False)
    assert len(later.index()) == 9 and later.last_refresh["loaded"] == 0  # from the cached files
    deadline = time.monotonic() + 10
    while min(_resident(p) for p in cached) < 1.0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [_resident(p) for p in cached] == [1.0] * 3


def test_readers_of_two_shards_keep_their_files_apart(bucket, images, tmp_path, monkeypatch):
    """Each reader keeps its segment files in a folder of its own by default (a reader removes the
    files its segments no longer name: in a shared folder one shard's load removed the other's)."""
    _, name = bucket
    monkeypatch.setattr(reader_module, "SEGMENT_CACHE", tmp_path / "segments")
    Compactor(Bucket(name), segment_images=4, shards=2).compact()
    b = Bucket(name)
    readers = [IndexReader(b, ResultUrls(b, presign_seconds=900), shard=(i, 2), ranged=False) for i in range(2)]
    for r in readers:
        r.index()
    folders = sorted((tmp_path / "segments").iterdir())
    assert [f.name for f in folders] == [f"{name}-shard-0-of-2", f"{name}-shard-1-of-2"]
    manifest = read_manifest(b)
    assert manifest is not None
    for i, folder in enumerate(folders):
        want = {s.etag.strip('"') + ".seg" for s in manifest.of_shard(i)}
        assert want and {p.name for p in folder.glob("*.seg")} == want
    assert IndexReader(b, ResultUrls(b, presign_seconds=900)).segments.folder == tmp_path / "segments" / name
