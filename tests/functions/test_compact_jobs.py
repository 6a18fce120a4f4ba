"""A planned compaction (harmony_aws.compact_jobs) through IndexFunction, against moto's server
(S3 and SQS): ``{"action": "compact"}`` plans one item per segment to fold and sends them to a
queue made as the template makes ReindexQueue (tests/functions/test_reindex_jobs.py's), each item
is handed to the handler in the shape Lambda's SQS event source sends
(events/sqs-compact-item.json), and ``{"action": "compact_status"}`` reads the job back.

The catalog: the 9 sample photos, indexed; 3 shards (2, 2 and 5 records) and segments of 2
records here (1,024 deployed), so a full compaction is 5 items, one shard's records in 3 of them.
"""

from __future__ import annotations

import functools
import json
from typing import Any
from urllib.parse import quote

import pytest

from harmony_aws import compact_jobs, runtime, segments
from harmony_aws import s3 as s3mod
from harmony_aws.errors import BadRequestError
from harmony_aws.jobs import BadJobIdError, JobNotFoundError
from harmony_aws.layout import RECORDS_PREFIX, SEGMENTS_MANIFEST_KEY, SEGMENTS_PREFIX, shard_of
from harmony_aws.s3 import Bucket
from harmony_aws.segments import Compactor, SegmentsManifest, files_of, read_folded, read_manifest
from tests.aws.test_journal import A_LONG_COMPACTION
from tests.aws.test_segments import answers, reader
from tests.faultproxy import FaultProxy
from tests.functions import test_reindex_jobs
from tests.support import (
    CATALOG_NAMES,
    ShiftedClock,
    all_keys,
    load_event,
    receive_all,
    record_writer,
    sqs_delivery,
)
from tests.support import (
    deliver as deliver_message,
)

SHARDS = 3
SEGMENT = 2
ITEMS = 5  # shards of 2, 2 and 5 records, 2 a segment


queue = test_reindex_jobs.queue  # the fixture: ReindexQueue and its dead-letter queue in moto
item_event = functools.partial(sqs_delivery, "sqs-compact-item.json")
deliver = functools.partial(deliver_message, event="sqs-compact-item.json")


@pytest.fixture
def sqs_queue(request: pytest.FixtureRequest) -> dict[str, Any]:
    """ReindexQueue (test_reindex_jobs's fixture ``queue``)."""
    return dict(request.getfixturevalue("queue"))


@pytest.fixture
def catalog(
    s3_server: Any,
    images: dict[str, bytes],
    sqs_queue: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """The sample photos indexed (a record each), IndexFunction's compactor of 3 shards and
    segments of :data:`SEGMENT`; at most :data:`SEGMENT` records to fold compact in the call."""
    bucket = s3_server.harmony_bucket
    writer = record_writer(Bucket(bucket))
    for n in CATALOG_NAMES:
        s3_server.put_object(Bucket=bucket, Key="catalog/" + n, Body=images[n])
        assert writer.reconcile("catalog/" + n).action == "indexed"
    monkeypatch.setenv("HARMONY_SHARDS", str(SHARDS))
    monkeypatch.setattr(
        runtime, "compactor", lambda name: Compactor(Bucket(name), shards=SHARDS, segment_images=SEGMENT)
    )
    monkeypatch.setattr(compact_jobs, "INLINE_RECORDS", SEGMENT)
    runtime.reset()
    return bucket


def status(index_fn: Any, ctx: Any, job_id: str) -> dict[str, Any]:
    return dict(index_fn.lambda_handler({"action": "compact_status", "id": job_id}, ctx))


def check_manifest(s3: Any, bucket: str) -> SegmentsManifest:
    """The published manifest: every record folded exactly once, at its current ETag, into a
    segment of its shard, and every file it names in the bucket."""
    manifest = read_manifest(Bucket(bucket))
    assert manifest is not None and manifest.shards == SHARDS
    listing = all_keys(s3, bucket, RECORDS_PREFIX)
    folded: dict[str, str] = {}
    for ref in manifest.segments:
        got = read_folded(Bucket(bucket), ref)
        assert len(got) == ref.images and not folded.keys() & got.keys()
        assert all(shard_of(key, SHARDS) == ref.shard for _, key in got.values())
        folded |= {rk: etag for rk, (etag, _) in got.items()}
    assert folded == listing
    assert set(files_of(manifest.segments)) <= set(all_keys(s3, bucket, SEGMENTS_PREFIX))
    return manifest


def test_event_file_is_a_compaction_item_the_template_delivers_to_index_function() -> None:
    from harmony_local.stack.template import load_template
    from tests.support import TEMPLATE

    ev = load_event("sqs-compact-item.json")
    body = json.loads(ev["Records"][0]["body"])
    assert set(body) == {"job", "kind", "item", "shard", "records"} and body["kind"] == "compact"
    template = load_template(TEMPLATE)
    assert template.delivers("IndexFunction", ev) and not template.delivers("DuplicatesFunction", ev)


def test_planned_compaction_publishes_every_record_once_as_the_one_call_does(
    s3_server: Any,
    catalog: str,
    sqs_queue: dict[str, Any],
    index_fn: Any,
    lambda_context: Any,
    images: dict[str, bytes],
    tmp_path: Any,
) -> None:
    started = index_fn.lambda_handler({"action": "compact"}, lambda_context)
    assert started["queued"] is True and started["planned"] is True and started["state"] == "queued", started
    assert (started["records"], started["todo"], started["items"], started["kept"]) == (9, 9, ITEMS, 0)
    job_id = started["id"]
    messages = receive_all(sqs_queue)
    assert len(messages) == ITEMS
    bodies = [json.loads(m["Body"]) for m in messages]
    assert sorted(rk for b in bodies for rk in b["records"]) == sorted(all_keys(s3_server, catalog, RECORDS_PREFIX))
    assert sorted(b["shard"] for b in bodies) == [0, 1, 2, 2, 2]

    # the first item delivered twice (at-least-once): one segment, one part
    first = messages[0]
    assert index_fn.lambda_handler(item_event(first), lambda_context) == {"batchItemFailures": []}
    segments = all_keys(s3_server, catalog, SEGMENTS_PREFIX)
    assert len(segments) == 3 and all(k.startswith(f"{SEGMENTS_PREFIX}{job_id}.") for k in segments)
    assert deliver(index_fn, lambda_context, sqs_queue, first) == {"batchItemFailures": []}
    assert all_keys(s3_server, catalog, SEGMENTS_PREFIX) == segments
    running = status(index_fn, lambda_context, job_id)
    assert (running["state"], running["items_done"]) == ("running", 1), running
    assert running["counts"] == {"folded": len(bodies[0]["records"]), "segments": 1, "rejected": 0}, running

    for m in messages[1:-1]:
        assert deliver(index_fn, lambda_context, sqs_queue, m) == {"batchItemFailures": []}
        assert s3_server.list_objects_v2(Bucket=catalog, Prefix=SEGMENTS_MANIFEST_KEY)["KeyCount"] == 0  # not yet
    assert deliver(index_fn, lambda_context, sqs_queue, messages[-1]) == {"batchItemFailures": []}
    done = status(index_fn, lambda_context, job_id)
    assert done["state"] == "done" and done["items_done"] == ITEMS, done
    assert done["counts"] == {"folded": 9, "segments": ITEMS, "rejected": 0}, done
    assert done["result"]["won"] is True and done["result"]["generation"] == 1, done
    planned = check_manifest(s3_server, catalog)
    assert planned.generation == 1 and planned.writer == job_id and len(planned.segments) == ITEMS

    # an item delivered after the result changes nothing
    assert index_fn.lambda_handler(item_event(messages[2]), lambda_context) == {"batchItemFailures": []}
    assert status(index_fn, lambda_context, job_id) == done and read_manifest(Bucket(catalog)) == planned

    cold = reader(catalog, tmp_path, "planned")
    from_planned = cold.index()
    assert cold.last_refresh["loaded"] == 0 and cold.last_refresh["segment_records"] == 9
    assert cold.status == {"complete": True, "missing": 0}
    assert planned.journal_cursor and cold.last_refresh["journal_entries"] == 9  # the journal from the plan's cursor

    # the one call over the same records (the manifest removed: it folds them all again)
    s3_server.delete_object(Bucket=catalog, Key=SEGMENTS_MANIFEST_KEY)
    one = index_fn.lambda_handler({"action": "compact", "queued": False}, lambda_context)
    assert "queued" not in one and one["won"] is True and one["written"] == ITEMS, one
    single = check_manifest(s3_server, catalog)
    layout = sorted((s.shard, s.images) for s in single.segments)
    assert layout == sorted((s.shard, s.images) for s in planned.segments)
    from_single = reader(catalog, tmp_path, "single").index()
    assert sorted(from_single.keys()) == sorted(from_planned.keys()) == sorted("catalog/" + n for n in CATALOG_NAMES)
    assert answers(from_planned, images) == answers(from_single, images)


def test_a_planned_compaction_names_a_cursor_past_the_entries_it_folded(
    s3_server: Any,
    catalog: str,
    sqs_queue: dict[str, Any],
    index_fn: Any,
    lambda_context: Any,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job's last item publishes more than a cursor margin after the catalog was indexed (the
    items took minutes, as a large catalog's do): its manifest's cursor lies past every entry,
    which names what a segment holds, so a cold reader lists none."""
    started = index_fn.lambda_handler({"action": "compact"}, lambda_context)
    assert started["planned"] is True, started
    monkeypatch.setattr(segments, "time", ShiftedClock(A_LONG_COMPACTION))
    for m in receive_all(sqs_queue):
        assert deliver(index_fn, lambda_context, sqs_queue, m) == {"batchItemFailures": []}
    done = status(index_fn, lambda_context, started["id"])
    assert done["result"]["won"] is True and done["result"]["journal_skipped"] == len(CATALOG_NAMES), done
    cold = reader(catalog, tmp_path, "cold")
    assert sorted(cold.index().keys()) == sorted("catalog/" + n for n in CATALOG_NAMES)
    assert cold.last_refresh["journal_entries"] == 0 and cold.last_refresh["segment_records"] == len(CATALOG_NAMES)


def test_a_failing_item_is_retried_alone_and_nothing_is_published_before_it_succeeds(
    s3_server: Any,
    catalog: str,
    sqs_queue: dict[str, Any],
    index_fn: Any,
    lambda_context: Any,
    moto_server_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twice, a GET of one record is denied (S3 fault through tests/faultproxy.py): its item is a
    batch item failure on those deliveries, the manifest is not published, the other items are
    folded once; its third delivery folds it and publishes every record."""
    folds: list[int] = []
    fold = Compactor.fold

    def spy(self: Compactor, shard: int, record_keys: Any, *a: Any, **kw: Any) -> Any:
        folds.append(shard)
        return fold(self, shard, record_keys, *a, **kw)

    monkeypatch.setattr(Compactor, "fold", spy)
    monkeypatch.setattr(s3mod, "MAX_RETRIES", 0)
    with FaultProxy(moto_server_url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        runtime.reset()
        job_id = index_fn.lambda_handler({"action": "compact"}, lambda_context)["id"]
        messages = receive_all(sqs_queue)
        bad_msg = next(m for m in messages if json.loads(m["Body"])["shard"] == 2)
        bad = json.loads(bad_msg["Body"])["records"][0]
        proxy.fail("denied", quote(bad, safe="/"), method="GET", times=2)
        for receives in (1, 2):
            for m in messages if receives == 1 else receive_all(sqs_queue):
                out = deliver(index_fn, lambda_context, sqs_queue, m)
                want = [{"itemIdentifier": m["MessageId"]}] if m["MessageId"] == bad_msg["MessageId"] else []
                assert out == {"batchItemFailures": want}, out
                assert m["Attributes"]["ApproximateReceiveCount"] == str(receives)
            assert read_manifest(Bucket(catalog)) is None
            running = status(index_fn, lambda_context, job_id)
            assert (running["state"], running["items_done"]) == ("running", ITEMS - 1), running
        assert len(folds) == ITEMS + 1  # each item once, the failing one again alone
        (m,) = receive_all(sqs_queue)
        assert deliver(index_fn, lambda_context, sqs_queue, m) == {"batchItemFailures": []}
        assert proxy.counts["denied"] == 2
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server_url)
    runtime.reset()
    done = status(index_fn, lambda_context, job_id)
    assert done["state"] == "done" and done["counts"]["folded"] == 9, done
    assert check_manifest(s3_server, catalog).writer == job_id


def test_an_item_failing_every_delivery_fails_the_job_and_nothing_is_published(
    s3_server: Any,
    catalog: str,
    sqs_queue: dict[str, Any],
    index_fn: Any,
    lambda_context: Any,
    moto_server_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(s3mod, "MAX_RETRIES", 0)
    with FaultProxy(moto_server_url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        runtime.reset()
        job_id = index_fn.lambda_handler({"action": "compact"}, lambda_context)["id"]
        messages = receive_all(sqs_queue)
        bad_msg = messages[-1]
        proxy.fail("denied", quote(json.loads(bad_msg["Body"])["records"][-1], safe="/"), method="GET")
        for m in messages:
            deliver(index_fn, lambda_context, sqs_queue, m)
        for receives in range(2, compact_jobs.MAX_RECEIVES + 1):
            (m,) = receive_all(sqs_queue)
            assert m["Attributes"]["ApproximateReceiveCount"] == str(receives)
            out = deliver(index_fn, lambda_context, sqs_queue, m)
            assert out == {"batchItemFailures": [{"itemIdentifier": m["MessageId"]}]}, out
        assert receive_all(sqs_queue) == []  # moved to the dead-letter queue
        (dead,) = receive_all(sqs_queue, sqs_queue["dlq"])
        assert dead["Body"] == bad_msg["Body"]
        failed = status(index_fn, lambda_context, job_id)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server_url)
    runtime.reset()
    assert failed["state"] == "failed" and failed["items_done"] == ITEMS - 1, failed
    assert "AccessDenied" in failed["error"] or "403" in failed["error"], failed
    assert read_manifest(Bucket(catalog)) is None
    # the next compaction is planned afresh (the failed job does not block it)
    again = index_fn.lambda_handler({"action": "compact"}, lambda_context)
    assert again["planned"] is True and again["id"] != job_id, again


def test_a_one_call_compaction_racing_the_job_never_corrupts_the_manifest(
    s3_server: Any,
    catalog: str,
    sqs_queue: dict[str, Any],
    index_fn: Any,
    lambda_context: Any,
    tmp_path: Any,
) -> None:
    """The one call publishes while the job runs: the job's conditional write fails, it gives up
    (state lost) and the manifest stays the one call's. Then the job publishes while a one call
    is about to: the one call gives up and removes only the files it wrote."""
    lost_id = index_fn.lambda_handler({"action": "compact"}, lambda_context)["id"]
    messages = receive_all(sqs_queue)
    deliver(index_fn, lambda_context, sqs_queue, messages[0])
    one = index_fn.lambda_handler({"action": "compact", "queued": False}, lambda_context)
    assert one["won"] is True and one["generation"] == 1, one
    for m in messages[1:]:
        assert deliver(index_fn, lambda_context, sqs_queue, m) == {"batchItemFailures": []}
    lost = status(index_fn, lambda_context, lost_id)
    assert lost["state"] == "lost" and lost["result"]["won"] is False and lost["items_done"] == ITEMS, lost
    manifest = check_manifest(s3_server, catalog)
    assert manifest.generation == 1 and manifest.writer != lost_id
    index = reader(catalog, tmp_path, "a")
    assert len(index.index()) == 9 and index.status == {"complete": True, "missing": 0}
    assert index.last_refresh["loaded"] == 0

    # the job wins a race with a one call that planned before it published
    s3_server.delete_object(Bucket=catalog, Key=SEGMENTS_MANIFEST_KEY)
    job_id = index_fn.lambda_handler({"action": "compact"}, lambda_context)["id"]
    compactor = Compactor(Bucket(catalog), shards=SHARDS, segment_images=SEGMENT)
    put_if = compactor.bucket.put_if
    files = [set(all_keys(s3_server, catalog, SEGMENTS_PREFIX))]

    def late_put_if(*args: Any, **kw: Any) -> Any:
        files.append(set(all_keys(s3_server, catalog, SEGMENTS_PREFIX)))  # with the one call's
        for m in receive_all(sqs_queue):
            deliver(index_fn, lambda_context, sqs_queue, m)  # the job publishes meanwhile
        return put_if(*args, **kw)

    compactor.bucket.put_if = late_put_if  # type: ignore[method-assign]
    report = compactor.compact()
    assert not report.won and report.written == ITEMS
    assert status(index_fn, lambda_context, job_id)["state"] == "done"
    manifest = check_manifest(s3_server, catalog)
    assert manifest.writer == job_id and manifest.generation == 1
    theirs = files[1] - files[0]
    assert len(theirs) == 3 * ITEMS and not theirs & set(all_keys(s3_server, catalog, SEGMENTS_PREFIX))
    index = reader(catalog, tmp_path, "b")
    assert len(index.index()) == 9 and index.status == {"complete": True, "missing": 0}


def test_small_compactions_run_in_the_call_and_a_running_job_is_not_planned_twice(
    s3_server: Any,
    catalog: str,
    sqs_queue: dict[str, Any],
    index_fn: Any,
    lambda_context: Any,
    images: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # no queue: the one call, whatever the size
    monkeypatch.delenv("HARMONY_REINDEX_QUEUE_URL")
    runtime.reset()
    full = index_fn.lambda_handler({"action": "compact"}, lambda_context)
    assert "queued" not in full and full["won"] is True and full["written"] == ITEMS, full
    # one image replaced: one record to fold, in the call (kept: the segments it is not in)
    monkeypatch.setenv("HARMONY_REINDEX_QUEUE_URL", sqs_queue["url"])
    runtime.reset()
    s3_server.put_object(Bucket=catalog, Key="catalog/coffee.jpg", Body=images["coins.jpg"])
    runtime.record_writer(catalog).reconcile("catalog/coffee.jpg")
    small = index_fn.lambda_handler({"action": "compact"}, lambda_context)
    assert "queued" not in small and small["won"] is True, small
    assert (small["kept"], small["written"], small["generation"]) == (ITEMS - 1, 1, 2), small
    check_manifest(s3_server, catalog)

    # a job planned (forced: one record to fold) is not planned again while it runs
    s3_server.put_object(Bucket=catalog, Key="catalog/moon.jpg", Body=images["rocket.jpg"])
    runtime.record_writer(catalog).reconcile("catalog/moon.jpg")
    job = index_fn.lambda_handler({"action": "compact", "queued": True}, lambda_context)
    assert job["planned"] is True and (job["items"], job["kept"]) == (1, ITEMS - 1), job
    again = index_fn.lambda_handler({"action": "compact"}, lambda_context)  # the schedule, an hour on
    assert again["planned"] is False and again["id"] == job["id"] and again["state"] == "queued", again
    assert len(receive_all(sqs_queue)) == 1  # planned once
    with pytest.raises(BadRequestError, match='"queued" must be true or false'):
        index_fn.lambda_handler({"action": "compact", "queued": "yes"}, lambda_context)
    with pytest.raises(BadJobIdError):
        index_fn.lambda_handler({"action": "compact_status", "id": "../reports"}, lambda_context)
    with pytest.raises(JobNotFoundError):
        index_fn.lambda_handler({"action": "compact_status", "id": "20260101T000000Z-89abcdef"}, lambda_context)


def test_two_overlapping_deliveries_of_an_item_leave_one_segment(
    s3_server: Any,
    catalog: str,
    sqs_queue: dict[str, Any],
    index_fn: Any,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second delivery writes the item's part while the first is about to: the first loses
    the part's conditional write and removes the segment it folded."""
    from harmony_aws.jobs import JobStore

    job_id = index_fn.lambda_handler({"action": "compact"}, lambda_context)["id"]
    first = receive_all(sqs_queue)[0]
    put_if_absent = JobStore.put_if_absent
    nested: list[dict[str, Any]] = []
    overlapping = [True]

    def overlapped(self: JobStore, key: str, doc: dict[str, Any]) -> bool:
        if "/parts/" in key and overlapping:
            overlapping.clear()
            nested.append(runtime.compaction_jobs(catalog).run_item(first["Body"]))  # a second invocation
        return put_if_absent(self, key, doc)

    monkeypatch.setattr(JobStore, "put_if_absent", overlapped)
    assert index_fn.lambda_handler(item_event(first), lambda_context) == {"batchItemFailures": []}
    assert [n["action"] for n in nested] == ["folded"]
    (part,) = all_keys(s3_server, catalog, f"reports/compact/{job_id}/parts/")
    doc = json.loads(s3_server.get_object(Bucket=catalog, Key=part)["Body"].read())
    segment = doc["segment"]
    assert set(all_keys(s3_server, catalog, SEGMENTS_PREFIX)) == {
        segment["key"],
        segment["shortlist_key"],
        segment["records_key"],
    }
    assert status(index_fn, lambda_context, job_id)["items_done"] == 1
