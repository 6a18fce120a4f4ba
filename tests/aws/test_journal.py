"""The change journal (harmony_aws.journal): written by every record write and delete, its cursor
set by compaction, read by readers instead of a listing of every record — on the real sample
images, S3 through moto."""

from __future__ import annotations

import json
import threading

import pytest

from harmony_aws import journal, runtime, segments
from harmony_aws import records as records_mod
from harmony_aws.errors import S3ObjectNotFoundError, StorageError
from harmony_aws.layout import (
    JOURNAL_PREFIX,
    RECORDS_PREFIX,
    SEGMENTS_MANIFEST_KEY,
    catalog_key_of_record,
    record_key,
    shard_of,
)
from harmony_aws.reader import IndexReader
from harmony_aws.records import RecordWriter
from harmony_aws.s3 import Bucket
from harmony_aws.segments import Compactor, SegmentsManifest, read_manifest
from harmony_aws.urls import ResultUrls
from harmony_image import IndexFormatError, extract_features
from tests.support import (
    BUCKET,
    CATALOG_NAMES,
    ShiftedClock,
    all_keys,
    answers,
    as_older_manifest,
    put_catalog,
    record_writer,
)


def writer(name: str) -> RecordWriter:
    return record_writer(Bucket(name))


class Requests:
    """S3 calls a Bucket's client makes, by operation, with their parameters (botocore's events)."""

    def __init__(self, b: Bucket) -> None:
        self.calls: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        b.client.meta.events.register("before-parameter-build.s3", self._seen)

    def _seen(self, model, params, **_) -> None:
        with self._lock:
            self.calls.append((model.name, params))

    def count(self, operation: str) -> int:
        return sum(1 for op, _ in self.calls if op == operation)

    def clear(self) -> None:
        self.calls.clear()


def manifest_folders(b: Bucket) -> list[str]:
    """The journal folders an unsharded reader of the current manifest lists."""
    return journal.partitions(read_manifest(b).journal_counts(), None)


def reader(name, tmp_path, sub, **kw) -> tuple[IndexReader, Requests]:
    b = Bucket(name)
    return IndexReader(b, ResultUrls(b, presign_seconds=900), ttl=0.0, cache_dir=tmp_path / sub, **kw), Requests(b)


def change_the_catalog(client, name, images) -> None:
    """A replaced image, a deleted one, a new one, and one replaced by bytes that are no image."""
    client.put_object(Bucket=name, Key="catalog/camera.jpg", Body=images["coins.jpg"])
    client.delete_object(Bucket=name, Key="catalog/brick.jpg")
    client.put_object(Bucket=name, Key="catalog/new/rocket.jpg", Body=images["rocket.jpg"])
    client.put_object(Bucket=name, Key="catalog/moon.jpg", Body=b"<html>not an image</html>")
    w = writer(name)
    for key in ("catalog/camera.jpg", "catalog/brick.jpg", "catalog/new/rocket.jpg", "catalog/moon.jpg"):
        w.reconcile(key)


def test_entry_names_say_what_a_reader_needs():
    rk = record_key("catalog/shoes/" + "x" * 2000 + ".jpg")  # a hashed record name (.h.npz)
    folder = journal.partition(2, 3)
    assert folder == JOURNAL_PREFIX + "shard-2-of-3/"
    for action, etag in (("put", '"0123456789abcdef0123456789abcdef"'), ("put", '"abc-12"'), ("delete", None)):
        key = journal.entry_key(1_764_655_200.123456, rk, action, etag, folder=folder)
        assert key.startswith(folder + "20251202T060000123456Z-") and len(key) < 1024
        entry = journal.parse(key)
        assert entry == journal.Entry(key, rk, action, etag)
        assert abs(journal.cursor_time(entry.position) - 1_764_655_200.123456) < 1e-5
    # a cursor lies after every entry of an earlier microsecond and before every one of its own, in any folder
    t = 1_764_655_200.5
    for f in (folder, journal.partition(0, 1)):
        earlier, same = (journal.parse(journal.entry_key(x, rk, "put", '"a"', folder=f)) for x in (t - 1e-6, t))
        assert earlier.position < journal.cursor_at(t) < same.position
        assert (
            journal.start_in(f, journal.cursor_at(t)) < same.key
            and journal.start_in(f, journal.cursor_at(t)) > earlier.key
        )
    for bad in (
        JOURNAL_PREFIX + "x.put.-.a.npz",
        JOURNAL_PREFIX + "20251202T060000123456Z-0000000.put.a.b.npz",
        JOURNAL_PREFIX + "shard-2-of-2/20251202T060000123456Z-00000000.put.a.b.npz",  # no shard 2 of 2
        JOURNAL_PREFIX + "shard-01-of-2/20251202T060000123456Z-00000000.put.a.b.npz",
        JOURNAL_PREFIX + "shard-0-of-1/x/20251202T060000123456Z-00000000.put.a.b.npz",
    ):
        assert journal.parse(bad) is None, bad
    # entries of older code, directly under the journal, are still entries (compaction trims them)
    assert journal.parse(JOURNAL_PREFIX + "20251202T060000123456Z-00000000.put.a.b.npz") is not None
    with pytest.raises(ValueError):
        journal.entry_key(t, "catalog/x.jpg", "put", '"a"', folder=folder)
    with pytest.raises(ValueError):
        journal.entry_key(t, rk, "put", '"a"', folder="index/elsewhere/")


def test_an_entry_goes_to_its_shards_folder_and_a_shard_lists_only_its_own(bucket, images, tmp_path, monkeypatch):
    """Compacted in 3 shards: every change is noted in its catalog key's shard's folder, and a
    shard's reader lists that folder (plus, until the next compaction, the single folder writers
    used before the first manifest), never the other shards'."""
    client, name = bucket
    monkeypatch.setattr(journal, "CURSOR_MARGIN_SECONDS", 0)  # the catalog's first puts lie before the cursor
    b = Bucket(name)
    Compactor(b, shards=3, segment_images=4).compact()
    assert read_manifest(b).journal_counts() == (1, 3)  # its count, and its predecessor's (none: 1)
    assert b.head(SEGMENTS_MANIFEST_KEY).metadata[journal.SHARDS_METADATA] == "3"
    shards = [reader(name, tmp_path, f"s{i}", shard=(i, 3)) for i in range(3)]
    for r, _ in shards:
        r.index()
    change_the_catalog(client, name, images)
    changed = ("catalog/camera.jpg", "catalog/brick.jpg", "catalog/new/rocket.jpg", "catalog/moon.jpg")
    new_entries = [
        e for e in (journal.parse(k) for k in all_keys(client, name, JOURNAL_PREFIX)) if "shard-0-of-1/" not in e.key
    ]
    assert sorted(e.record_key for e in new_entries) == sorted(record_key(k) for k in changed)
    for e in new_entries:
        (key,) = (k for k in changed if record_key(k) == e.record_key)
        assert e.key.startswith(journal.partition(shard_of(key, 3), 3))
    for i, (r, s3) in enumerate(shards):
        s3.clear()
        r.index()
        listed = [p["Prefix"] for op, p in s3.calls if op == "ListObjectsV2"]
        assert sorted(set(listed)) == sorted([journal.partition(i, 3), journal.partition(0, 1)]), listed
        assert r.last_refresh["journal_entries"] == sum(shard_of(k, 3) == i for k in changed)
    # after the next compaction in 3 shards, a shard lists its own folder alone
    Compactor(b, shards=3, segment_images=4).compact()
    assert read_manifest(b).journal_counts() == (3,)
    r, s3 = shards[1]
    r.index()
    s3.clear()
    r.index()
    assert [p["Prefix"] for op, p in s3.calls if op == "ListObjectsV2"] == [journal.partition(1, 3)]


def test_a_first_bulk_load_is_journalled_by_the_deployments_shard_count(s3, images, tmp_path, monkeypatch):
    """Before the first compaction there is no manifest to read the shard count from: writers
    take the deployment's (HARMONY_SHARDS), so a new catalog's first bulk load is split by shard,
    and after the first compaction each shard's cold reader lists its own entries (and the empty
    folder of writers configured with one shard), not the whole load."""
    monkeypatch.setenv("HARMONY_SHARDS", "2")
    w = runtime.record_writer(BUCKET)
    assert w.journal_shards.get() == 2  # no manifest yet
    put_catalog(s3, BUCKET, images)
    for n in CATALOG_NAMES:
        w.reconcile("catalog/" + n)
    folders = {k.rsplit("/", 1)[0] + "/" for k in all_keys(s3, BUCKET, JOURNAL_PREFIX)}
    assert folders == {journal.partition(0, 2), journal.partition(1, 2)}
    assert runtime.compactor(BUCKET).compact().won
    assert read_manifest(Bucket(BUCKET)).journal_counts() == (1, 2)
    for i in range(2):
        r, calls = reader(BUCKET, tmp_path, f"s{i}", shard=(i, 2))
        own = sorted(f"catalog/{n}" for n in CATALOG_NAMES if shard_of(f"catalog/{n}", 2) == i)
        assert sorted(r.index().keys()) == own
        assert r.last_refresh["journal_entries"] == len(own)  # the load lies after the cursor: its own part
        assert r.last_refresh["segments_ms"] > 0  # a cold start read the manifest and its segments
        listed = {p["Prefix"] for op, p in calls.calls if op == "ListObjectsV2"}
        assert listed == {journal.partition(i, 2), journal.partition(0, 1)}


def test_a_writer_without_a_manifest_uses_the_deployments_count_until_one_is_published(s3):
    b = Bucket(BUCKET)
    w = writer(BUCKET)
    assert w.journal_shards.get() == 1
    assert record_writer(b, shards=4).journal_shards.get() == 4
    assert Compactor(b, shards=3, segment_images=4).compact().won
    assert record_writer(b, shards=4).journal_shards.get() == 3  # the published count wins
    with pytest.raises(ValueError, match="1 or more"):
        journal.WriterShards(b, unpublished=0)


def test_a_change_noted_under_the_old_shard_count_is_seen_under_the_new(bucket, images, tmp_path, monkeypatch):
    """The catalog goes from 1 shard to 2. A writer that read the count before the new manifest
    was published (it trusts it for WRITER_SHARDS_SECONDS) notes a change in the old folder:
    readers of the new manifest list it too, so every shard serves what the records say."""
    client, name = bucket
    monkeypatch.setattr(journal, "CURSOR_MARGIN_SECONDS", 0)
    b = Bucket(name)
    Compactor(b, segment_images=4).compact()
    stale = writer(name)
    assert stale.journal_shards.get() == 1  # read now, trusted for a minute
    Compactor(b, shards=2, segment_images=4).compact()
    assert writer(name).journal_shards.get() == 2  # a writer starting now reads the new count
    client.put_object(Bucket=name, Key="catalog/camera.jpg", Body=images["coins.jpg"])
    client.delete_object(Bucket=name, Key="catalog/brick.jpg")
    for key in ("catalog/camera.jpg", "catalog/brick.jpg"):
        stale.reconcile(key)
    assert all("/shard-0-of-1/" in k for k in all_keys(client, name, JOURNAL_PREFIX))
    shards = [reader(name, tmp_path, f"s{i}", shard=(i, 2))[0].index() for i in range(2)]
    reference = reader(name, tmp_path, "all", use_journal=False)[0].index()
    assert sorted([*shards[0].keys(), *shards[1].keys()]) == sorted(reference.keys())
    assert "catalog/brick.jpg" not in reference
    coins = extract_features(images["coins.jpg"]).sha256
    assert [s.get("catalog/camera.jpg").features.sha256 for s in shards if "catalog/camera.jpg" in s] == [coins]


def test_the_manifest_names_the_journals_shard_counts():
    m = SegmentsManifest(3, 4, (), "w", journal_cursor=journal.cursor_at(0), journal_shards=(2, 4))
    back = SegmentsManifest.from_bytes(m.to_bytes())
    assert back.journal_shards == (2, 4) and back.journal_counts() == (2, 4)
    assert SegmentsManifest(3, 4, ()).journal_counts() == (1, 4)  # older code's: written to one folder
    assert SegmentsManifest(3, 1, ()).journal_counts() == (1,)
    body = json.loads(m.to_bytes())
    body["journal_shards"] = [0]
    with pytest.raises(IndexFormatError, match="journal shard count"):
        SegmentsManifest.from_bytes(json.dumps(body).encode())


def test_a_refresh_and_a_cold_start_see_what_a_listing_of_every_record_sees(bucket, images, tmp_path):
    client, name = bucket
    Compactor(Bucket(name), segment_images=4).compact()
    manifest = read_manifest(Bucket(name))
    assert manifest is not None and manifest.journal_cursor and manifest.journal_cursor.startswith(JOURNAL_PREFIX)
    warm, warm_s3 = reader(name, tmp_path, "warm")
    warm.index()
    assert warm.last_refresh["journal_entries"] == len(CATALOG_NAMES)  # indexed within the cursor's margin
    assert warm.last_refresh["loaded"] == 0 and warm.last_refresh["read"] == 0  # each names what the segments hold
    assert 0 < warm.last_refresh["listing_ms"] < warm.last_refresh["ms"]  # the journal's LIST, part of the refresh
    change_the_catalog(client, name, images)
    warm_s3.clear()
    index = warm.index()
    listed = [p for op, p in warm_s3.calls if op == "ListObjectsV2"]
    assert [p["Prefix"] for p in listed] == [journal.partition(0, 1)]  # one LIST: the journal, not the records
    assert warm.last_refresh["loaded"] == 2 and warm.last_refresh["removed"] == 2  # camera, rocket; brick, moon
    everything, _ = reader(name, tmp_path, "all", use_journal=False)
    reference = everything.index()
    assert everything.last_refresh["journal_entries"] is None
    cold, _ = reader(name, tmp_path, "cold")
    for r, got in ((warm, index), (cold, cold.index())):
        assert sorted(got.keys()) == sorted(reference.keys())
        assert "catalog/brick.jpg" not in got and "catalog/moon.jpg" not in got and "catalog/new/rocket.jpg" in got
        assert got.get("catalog/camera.jpg").features.sha256 == reference.get("catalog/camera.jpg").features.sha256
        assert answers(got, images) == answers(reference, images)
        assert r.status == {"complete": True, "missing": 0}
    # sharded readers: each serves its part of the same
    shards = [reader(name, tmp_path, f"s{i}", shard=(i, 2))[0] for i in range(2)]
    Compactor(Bucket(name), shards=2, segment_images=4).compact()
    client.delete_object(Bucket=name, Key="catalog/coffee.jpg")
    writer(name).reconcile("catalog/coffee.jpg")
    keys = sorted([*shards[0].index().keys(), *shards[1].index().keys()])
    assert keys == sorted(everything.index().keys()) and "catalog/coffee.jpg" not in keys


def test_duplicated_and_reordered_entries_change_nothing(bucket, images, tmp_path):
    client, name = bucket
    b = Bucket(name)
    old_camera = b.head(record_key("catalog/camera.jpg"))
    Compactor(b, segment_images=4).compact()
    warm, _ = reader(name, tmp_path, "warm")
    warm.index()
    change_the_catalog(client, name, images)
    before = answers(warm.index(), images)
    keys = sorted(warm.index().keys())
    # the camera's first version noted after its second; the brick's delete and rocket's put noted again
    journal.note(b, catalog_key="catalog/camera.jpg", record_key=record_key("catalog/camera.jpg"), action="put",
                 etag=old_camera.etag, shards=1)  # fmt: skip
    journal.note(b, catalog_key="catalog/brick.jpg", record_key=record_key("catalog/brick.jpg"), action="delete",
                 etag=None, shards=1)  # fmt: skip
    rocket = b.head(record_key("catalog/new/rocket.jpg"))
    journal.note(b, catalog_key="catalog/new/rocket.jpg", record_key=record_key("catalog/new/rocket.jpg"),
                 action="put", etag=rocket.etag, shards=1)  # fmt: skip
    for r in (warm, reader(name, tmp_path, "cold")[0]):
        index = r.index()
        assert sorted(index.keys()) == keys and answers(index, images) == before
        assert index.get("catalog/camera.jpg").features.sha256 == extract_features(images["coins.jpg"]).sha256
    assert warm.last_refresh["loaded"] == 0 and warm.last_refresh["removed"] == 0
    assert warm.last_refresh["read"] == 2  # the camera and the brick read again (the rocket's is the one served)


def test_a_record_written_while_compaction_runs_is_seen(bucket, images, tmp_path, monkeypatch):
    """After the compaction listed the records an image is added; after it folded them, before
    it publishes, one is replaced and one deleted: the cursor (no margin here, so that only its
    place decides) lies before all three."""
    client, name = bucket
    monkeypatch.setattr(journal, "CURSOR_MARGIN_SECONDS", 0)
    b = Bucket(name)
    warm, _ = reader(name, tmp_path, "warm")
    warm.index()
    plan, publish = Compactor.plan, Compactor.publish

    def plan_then_add(self, report):
        out = plan(self, report)  # the records are listed
        client.put_object(Bucket=name, Key="catalog/new/rocket.jpg", Body=images["rocket.jpg"])
        writer(name).reconcile("catalog/new/rocket.jpg")
        return out

    def change_then_publish(self, manifest, *, if_match):
        client.put_object(Bucket=name, Key="catalog/chelsea.jpg", Body=images["coffee.jpg"])
        client.delete_object(Bucket=name, Key="catalog/astronaut.jpg")
        writer(name).reconcile("catalog/chelsea.jpg")
        writer(name).reconcile("catalog/astronaut.jpg")
        return publish(self, manifest, if_match=if_match)

    monkeypatch.setattr(Compactor, "plan", plan_then_add)
    monkeypatch.setattr(Compactor, "publish", change_then_publish)
    report = Compactor(b, segment_images=4).compact()
    assert report.won and report.records == len(CATALOG_NAMES)
    manifest = read_manifest(b)
    assert manifest is not None and manifest.journal_cursor is not None
    assert sum(s.images for s in manifest.segments) == len(CATALOG_NAMES)  # the old chelsea and astronaut
    cursor = manifest.journal_cursor
    folded = [e for e in journal.since(b, journal.cursor_at(0), manifest_folders(b)) if e.position <= cursor]
    assert len(folded) == len(CATALOG_NAMES)  # the catalog's puts before the cursor; the three changes after
    reference = reader(name, tmp_path, "all", use_journal=False)[0].index()
    coffee = extract_features(images["coffee.jpg"]).sha256
    for r in (warm, reader(name, tmp_path, "cold")[0]):
        index = r.index()
        assert r.last_refresh["journal_entries"] == 3
        assert "catalog/astronaut.jpg" not in index and index.get("catalog/chelsea.jpg").features.sha256 == coffee
        assert "catalog/new/rocket.jpg" in index
        assert sorted(index.keys()) == sorted(reference.keys())
        assert answers(index, images) == answers(reference, images)


def test_a_writer_whose_clock_lags_past_the_margin_is_late_by_one_compaction_never_lost(
    bucket, images, tmp_path, monkeypatch
):
    """An image added while the compaction runs, by a writer whose clock lags more than
    CURSOR_MARGIN_SECONDS: its entry sorts before the cursor, so a cold reader does not see it
    yet; the next compaction lists every record and folds it."""
    client, name = bucket
    b = Bucket(name)
    plan = Compactor.plan

    def plan_then_add_late(self, report):
        out = plan(self, report)  # the records are listed
        client.put_object(Bucket=name, Key="catalog/new/rocket.jpg", Body=images["rocket.jpg"])
        with monkeypatch.context() as m:
            m.setattr(journal, "time", ShiftedClock(-(journal.CURSOR_MARGIN_SECONDS + 60)))
            writer(name).reconcile("catalog/new/rocket.jpg")
        return out

    monkeypatch.setattr(Compactor, "plan", plan_then_add_late)
    assert Compactor(b, segment_images=4).compact().won
    cursor = read_manifest(b).journal_cursor
    assert cursor is not None
    entries = journal.since(b, journal.cursor_at(0), manifest_folders(b))
    late = [e for e in entries if catalog_key_of_record(e.record_key) == "catalog/new/rocket.jpg"]
    assert len(late) == 1 and late[0].position < cursor  # stamped before the cursor
    assert "catalog/new/rocket.jpg" not in reader(name, tmp_path, "stale")[0].index()

    monkeypatch.setattr(Compactor, "plan", plan)
    assert Compactor(b, segment_images=4).compact().won
    index = reader(name, tmp_path, "folded")[0].index()
    assert "catalog/new/rocket.jpg" in index
    assert sorted(index.keys()) == sorted(reader(name, tmp_path, "all", use_journal=False)[0].index().keys())


A_LONG_COMPACTION = journal.CURSOR_MARGIN_SECONDS + 60
"""Seconds between a compaction's listing of the records and its manifest, as a large catalog's
takes: the catalog's puts, a moment before the listing, then lie more than a margin back."""


def taking_long(monkeypatch, change=lambda: None) -> None:
    """Compactions made to take :data:`A_LONG_COMPACTION`: the compactor's clock moves on once
    its segments are written, after ``change`` (made to the catalog then)."""
    later = Compactor.later_cursor

    def change_then_move(self, manifest):
        change()
        monkeypatch.setattr(segments, "time", ShiftedClock(A_LONG_COMPACTION))
        return later(self, manifest)

    monkeypatch.setattr(Compactor, "later_cursor", change_then_move)


def test_a_manifest_names_a_cursor_past_the_entries_its_segments_fold(bucket, images, tmp_path, monkeypatch):
    """The catalog was indexed just before the compaction listed the records, within the cursor's
    margin. When it publishes, those entries are more than a margin old and each names the
    version a segment holds: the cursor moves past them, so a cold reader lists none of them and
    serves what a listing of every record serves."""
    _, name = bucket
    b = Bucket(name)
    taking_long(monkeypatch)
    report = Compactor(b, segment_images=4).compact()
    assert report.won and report.journal_skipped == len(CATALOG_NAMES)
    cursor = read_manifest(b).journal_cursor
    entries = list(journal.since(b, journal.cursor_at(0), manifest_folders(b)))
    assert cursor is not None and len(entries) == len(CATALOG_NAMES) and all(e.position < cursor for e in entries)
    cold, _ = reader(name, tmp_path, "cold")
    index = cold.index()
    assert cold.last_refresh["journal_entries"] == 0 and cold.last_refresh["read"] == 0
    reference = reader(name, tmp_path, "all", use_journal=False)[0].index()
    assert sorted(index.keys()) == sorted(reference.keys()) == sorted("catalog/" + n for n in CATALOG_NAMES)
    assert answers(index, images) == answers(reference, images)
    assert cold.status == {"complete": True, "missing": 0}


def test_the_cursor_stops_at_the_first_change_the_segments_do_not_hold(bucket, images, tmp_path, monkeypatch):
    """Once the segments are written an image is replaced and another deleted: the cursor moves
    past the catalog's puts and stops at the first of those two entries, which every reader
    then lists and reads."""
    client, name = bucket
    b = Bucket(name)

    def change() -> None:
        client.put_object(Bucket=name, Key="catalog/camera.jpg", Body=images["coins.jpg"])
        client.delete_object(Bucket=name, Key="catalog/brick.jpg")
        for key in ("catalog/camera.jpg", "catalog/brick.jpg"):
            writer(name).reconcile(key)

    taking_long(monkeypatch, change)
    report = Compactor(b, segment_images=4).compact()
    assert report.won and report.journal_skipped == len(CATALOG_NAMES)
    assert sum(s.images for s in read_manifest(b).segments) == len(CATALOG_NAMES)  # the old camera and brick
    cold, _ = reader(name, tmp_path, "cold")
    index = cold.index()
    assert cold.last_refresh["journal_entries"] == 2 and cold.last_refresh["read"] == 2
    assert cold.last_refresh["loaded"] == 1 and cold.last_refresh["removed"] == 1
    assert "catalog/brick.jpg" not in index
    assert index.get("catalog/camera.jpg").features.sha256 == extract_features(images["coins.jpg"]).sha256
    reference = reader(name, tmp_path, "all", use_journal=False)[0].index()
    assert sorted(index.keys()) == sorted(reference.keys())
    assert answers(index, images) == answers(reference, images)


def cannot_list(*args, **kwargs):
    raise StorageError("listing index/journal/ failed: injected")


def cannot_read(bucket, ref, **kwargs):
    raise S3ObjectNotFoundError(f"{ref.records_key} does not exist: injected")


@pytest.mark.parametrize(
    ("module", "attribute", "fault"), [(journal, "since", cannot_list), (segments, "read_folded", cannot_read)]
)
def test_a_journal_or_folded_list_that_cannot_be_read_leaves_the_cursor_where_the_records_were_listed(
    bucket, tmp_path, monkeypatch, module, attribute, fault
):
    """Moving the cursor is an optimisation: when the journal cannot be listed, or a segment's
    list of folded records cannot be read, the compaction still publishes, with the cursor a
    margin before its listing, and readers list from there."""
    _, name = bucket
    b = Bucket(name)
    taking_long(monkeypatch)
    with monkeypatch.context() as m:
        m.setattr(module, attribute, fault)
        report = Compactor(b, segment_images=4).compact()
    assert report.won and report.journal_skipped == 0
    cold, _ = reader(name, tmp_path, "cold")
    cold.index()
    assert cold.last_refresh["journal_entries"] == len(CATALOG_NAMES) and cold.last_refresh["read"] == 0


def test_a_manifest_without_a_cursor_is_read_by_listing_every_record(bucket, images, tmp_path):
    client, name = bucket
    Compactor(Bucket(name), segment_images=4).compact()
    as_older_manifest(client, name)
    r, s3 = reader(name, tmp_path, "older")
    index = r.index()
    assert r.last_refresh["journal_entries"] is None and len(index) == len(CATALOG_NAMES)
    assert [p["Prefix"] for op, p in s3.calls if op == "ListObjectsV2"] == [RECORDS_PREFIX]
    change_the_catalog(client, name, images)
    s3.clear()
    index = r.index()
    assert [p["Prefix"] for op, p in s3.calls if op == "ListObjectsV2"] == [RECORDS_PREFIX]
    assert r.last_refresh["loaded"] == 2 and r.last_refresh["removed"] == 2
    assert sorted(index.keys()) == sorted(reader(name, tmp_path, "all", use_journal=False)[0].index().keys())
    # the next compaction gives a cursor: the same reader follows the journal from there
    Compactor(Bucket(name), segment_images=4).compact()
    s3.clear()
    r.index()
    assert [p["Prefix"] for op, p in s3.calls if op == "ListObjectsV2"] == [journal.partition(0, 1)]


def test_a_refresh_lists_as_many_pages_whatever_the_catalog_size(s3, images, tmp_path, monkeypatch):
    """LIST pages of 2 keys here: a listing of every record grows with the catalog, a journal
    refresh after one change stays one page (no margin and no overlap: only the new entries)."""
    monkeypatch.setattr(journal, "CURSOR_MARGIN_SECONDS", 0)
    monkeypatch.setattr(journal, "OVERLAP_SECONDS", 0)
    put_catalog(s3, BUCKET, images)
    w = writer(BUCKET)
    for n in CATALOG_NAMES:
        w.reconcile("catalog/" + n)
    Compactor(Bucket(BUCKET), segment_images=4).compact()
    journal_reader, journal_s3 = reader(BUCKET, tmp_path, "journal")
    listing_reader, listing_s3 = reader(BUCKET, tmp_path, "listing", use_journal=False)
    for r in (journal_reader, listing_reader):
        r.bucket.client.meta.events.register(
            "provide-client-params.s3.ListObjectsV2", lambda params, **_: params.update(MaxKeys=2)
        )
    journal_reader.index(), listing_reader.index()
    pages: dict[str, list[int]] = {"journal": [], "listing": []}
    for step in range(3):
        for n in CATALOG_NAMES[:3]:  # the catalog grows by three copies of real images
            key = f"catalog/copies/{step}-{n}"
            s3.put_object(Bucket=BUCKET, Key=key, Body=images[n])
            w.reconcile(key)
        for counter in (journal_s3, listing_s3):
            counter.clear()
        s3.put_object(Bucket=BUCKET, Key="catalog/camera.jpg", Body=images[CATALOG_NAMES[step]])
        w.reconcile("catalog/camera.jpg")  # the one change since the last refresh
        journal_reader.index(), listing_reader.index()
        pages["journal"].append(journal_s3.count("ListObjectsV2"))
        pages["listing"].append(listing_s3.count("ListObjectsV2"))
        journal_s3.clear()
        journal_reader.index()  # nothing changed since: still one page, which is empty
        assert journal_s3.count("ListObjectsV2") == 1 and journal_reader.last_refresh["journal_entries"] == 0
        assert sorted(journal_reader.index().keys()) == sorted(listing_reader.index().keys())
    assert pages["journal"] == [2, 2, 2]  # three new copies and the change: 4 entries, 2 pages each time
    assert pages["listing"] == [6, 8, 9]  # 12, 15, 18 records (2 a page, the last page empty or not)


def test_a_journal_entry_that_failed_is_written_by_the_retry(s3, images, tmp_path, monkeypatch):
    """The record was written but its entry failed (the invocation fails, SQS gives the message
    back): the retry finds the record current and notes it again, so readers see the change."""
    put_catalog(s3, BUCKET, images)
    for n in CATALOG_NAMES:
        writer(BUCKET).reconcile("catalog/" + n)
    Compactor(Bucket(BUCKET), segment_images=4).compact()
    warm, _ = reader(BUCKET, tmp_path, "warm")
    warm.index()
    note = journal.note
    failures = [1]

    def failing(*a, **kw):
        if failures:
            failures.pop()
            raise StorageError("PUT index/journal/...: SlowDown after 6 retries")
        return note(*a, **kw)

    monkeypatch.setattr(records_mod.journal, "note", failing)
    s3.put_object(Bucket=BUCKET, Key="catalog/chelsea.jpg", Body=images["rocket.jpg"])
    with pytest.raises(StorageError):
        writer(BUCKET).reconcile("catalog/chelsea.jpg")
    assert warm.index().get("catalog/chelsea.jpg").features.sha256 != extract_features(images["rocket.jpg"]).sha256
    assert writer(BUCKET).reconcile("catalog/chelsea.jpg").action == "unchanged"  # the retry
    assert warm.index().get("catalog/chelsea.jpg").features.sha256 == extract_features(images["rocket.jpg"]).sha256


def test_compaction_trims_the_journal_before_the_cursor_it_replaces(bucket, images, tmp_path, monkeypatch):
    client, name = bucket
    monkeypatch.setattr(journal, "CURSOR_MARGIN_SECONDS", 0)
    b = Bucket(name)
    assert Compactor(b, segment_images=4).compact().journal_trimmed == 0  # no cursor before it
    first = read_manifest(b).journal_cursor
    assert first is not None
    warm, _ = reader(name, tmp_path, "warm")
    warm.index()
    change_the_catalog(client, name, images)
    entries = sorted(all_keys(client, name, JOURNAL_PREFIX))
    assert len(entries) == len(CATALOG_NAMES) + 4
    report = Compactor(b, segment_images=4).compact()
    assert report.won and report.journal_trimmed == len(CATALOG_NAMES)  # the puts before the first cursor
    assert sorted(all_keys(client, name, JOURNAL_PREFIX)) == [k for k in entries if journal.parse(k).position > first]
    cold = reader(name, tmp_path, "cold")[0].index()
    assert (
        sorted(warm.index().keys())
        == sorted(cold.keys())
        == sorted(reader(name, tmp_path, "all", use_journal=False)[0].index().keys())
    )


def test_a_record_named_by_a_hash_is_served_by_its_shard_alone(s3, images, tmp_path):
    """A key too long for a base64 record name: the entry's name does not give its shard, but its
    folder does (the writer knows the catalog key): only its shard reads it and serves it."""
    put_catalog(s3, BUCKET, images)
    for n in CATALOG_NAMES:
        writer(BUCKET).reconcile("catalog/" + n)
    Compactor(Bucket(BUCKET), shards=2, segment_images=4).compact()
    shards = [reader(BUCKET, tmp_path, f"s{i}", shard=(i, 2))[0] for i in range(2)]
    for s in shards:
        s.index()
    key = "catalog/long/" + "x" * 1000 + ".jpg"
    assert record_key(key).endswith(".h.npz")
    s3.put_object(Bucket=BUCKET, Key=key, Body=images["rocket.jpg"])
    assert writer(BUCKET).reconcile(key).action == "indexed"
    served = [key in s.index() for s in shards]
    assert sorted(served) == [False, True] and [s.last_refresh["read"] for s in shards] == [int(x) for x in served]
    s3.put_object(Bucket=BUCKET, Key="catalog/camera.jpg", Body=images["coins.jpg"])
    writer(BUCKET).reconcile("catalog/camera.jpg")  # another change: the hashed one is not read again
    for s in shards:
        s.index()
    assert sum(s.last_refresh["read"] for s in shards) == 1  # the camera, by its shard only
    s3.delete_object(Bucket=BUCKET, Key=key)
    writer(BUCKET).reconcile(key)
    assert not any(key in s.index() for s in shards)
