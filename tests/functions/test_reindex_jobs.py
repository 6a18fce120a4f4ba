"""A planned reindex (harmony_aws.reindex_jobs) through IndexFunction, against moto's server (S3
and SQS): ``{"action": "reindex"}`` sends the catalog's keys in slices to a queue made as the
template makes ReindexQueue (its redrive after MAX_RECEIVES receives), each slice is handed to
the handler in the shape Lambda's SQS event source sends (events/sqs-reindex-slice.json), and
``{"action": "reindex_status"}`` reads the job back.

The catalog: the sample photos, a text file and a truncated JPEG (not images: skipped). Slices
of 3 keys here (100 deployed), so the 11 keys make 4 slices.
"""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any
from urllib.parse import quote, unquote

import pytest

from harmony_aws import reindex_jobs, runtime
from harmony_aws import s3 as s3mod
from harmony_aws.errors import BadRequestError, StorageError
from harmony_aws.jobs import BadJobIdError, JobNotFoundError
from harmony_aws.records import RecordWriter
from tests.faultproxy import FaultProxy
from tests.support import CATALOG_NAMES, all_keys, load_event, receive_all, sqs_delivery
from tests.support import deliver as deliver_message

slice_event = functools.partial(sqs_delivery, "sqs-reindex-slice.json")
deliver = functools.partial(deliver_message, event="sqs-reindex-slice.json")

SLICE = 3
NOT_IMAGES = ("catalog/zz/notes.txt", "catalog/zz/truncated.jpg")


@pytest.fixture
def catalog(s3_server: Any, images: dict[str, bytes]) -> dict[str, bytes]:
    objects = {"catalog/" + n: images[n] for n in CATALOG_NAMES}
    objects["catalog/zz/notes.txt"] = b"not a picture\n"
    objects["catalog/zz/truncated.jpg"] = images["chelsea.jpg"][:2000]
    for key, data in objects.items():
        s3_server.put_object(Bucket=s3_server.harmony_bucket, Key=key, Body=data)
    return objects


@pytest.fixture
def queue(s3_server: Any, moto_server_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """ReindexQueue and its dead-letter queue in moto, slices of :data:`SLICE` keys."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto_server_url)
    sqs = boto3.client("sqs", region_name="us-east-1")
    name = f"reindex-{uuid.uuid4().hex[:8]}"
    dlq = sqs.create_queue(QueueName=name + "-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(reindex_jobs.MAX_RECEIVES)}
    url = sqs.create_queue(
        QueueName=name, Attributes={"VisibilityTimeout": "60", "RedrivePolicy": json.dumps(redrive)}
    )["QueueUrl"]
    monkeypatch.setenv("HARMONY_REINDEX_QUEUE_URL", url)
    monkeypatch.setattr(reindex_jobs, "SLICE_KEYS", SLICE)
    monkeypatch.setattr(reindex_jobs, "INLINE_KEYS", SLICE)
    runtime.reset()
    return {"client": sqs, "url": url, "dlq": dlq}


def drain(index_fn: Any, ctx: Any, q: dict[str, Any]) -> None:
    while messages := receive_all(q):
        for m in messages:
            deliver(index_fn, ctx, q, m)


def records(s3: Any) -> set[str]:
    bucket = s3.harmony_bucket
    return {
        unquote(s3.head_object(Bucket=bucket, Key=rk)["Metadata"]["catalog-key"])
        for rk in all_keys(s3, bucket, "index/records/")
    }


def status(index_fn: Any, ctx: Any, job_id: str) -> dict[str, Any]:
    return dict(index_fn.lambda_handler({"action": "reindex_status", "id": job_id}, ctx))


def test_event_file_is_a_reindex_slice_the_template_delivers_to_index_function() -> None:
    from harmony_local.stack.template import load_template
    from tests.support import TEMPLATE

    ev = load_event("sqs-reindex-slice.json")
    body = json.loads(ev["Records"][0]["body"])
    assert set(body) == {"job", "slice", "keys"}
    template = load_template(TEMPLATE)
    assert template.delivers("IndexFunction", ev) and not template.delivers("DuplicatesFunction", ev)


def test_planned_reindex_indexes_every_image_and_counts_each_key_once(
    s3_server: Any, catalog: dict[str, bytes], queue: dict[str, Any], index_fn: Any, lambda_context: Any
) -> None:
    started = index_fn.lambda_handler({"action": "reindex"}, lambda_context)
    keys = sorted(catalog)
    assert started["queued"] is True and started["state"] == "queued", started
    assert (started["keys"], started["slices"], started["slices_done"]) == (len(keys), 4, 0)
    job_id = started["id"]

    messages = receive_all(queue)
    assert len(messages) == 4
    bodies = [json.loads(m["Body"]) for m in messages]
    assert sorted(k for b in bodies for k in b["keys"]) == keys  # every key in one slice
    assert all(len(b["keys"]) <= SLICE for b in bodies)

    # the first slice is delivered twice (at-least-once): it counts once
    first = messages[0]
    out = index_fn.lambda_handler(slice_event(first), lambda_context)
    assert out == {"batchItemFailures": []}
    again = index_fn.lambda_handler(slice_event(first), lambda_context)
    assert again == {"batchItemFailures": []}
    queue["client"].delete_message(QueueUrl=queue["url"], ReceiptHandle=first["ReceiptHandle"])
    running = status(index_fn, lambda_context, job_id)
    assert (running["state"], running["slices_done"]) == ("running", 1), running
    assert sum(running["counts"].values()) == len(bodies[0]["keys"]), running

    for m in messages[1:]:
        assert deliver(index_fn, lambda_context, queue, m) == {"batchItemFailures": []}
    done = status(index_fn, lambda_context, job_id)
    images = set(keys) - set(NOT_IMAGES)
    assert done["state"] == "done" and done["slices_done"] == done["slices"] == 4, done
    assert done["counts"] == {"indexed": len(images), "skipped": len(NOT_IMAGES)}, done
    summary = done["summary"]
    assert summary["complete"] is True and summary["failed"] == [] and summary["keys"] == len(keys)
    assert records(s3_server) == images

    # a slice delivered after the summary changes nothing
    assert index_fn.lambda_handler(slice_event(messages[2]), lambda_context) == {"batchItemFailures": []}
    assert status(index_fn, lambda_context, job_id) == done
    parts = all_keys(s3_server, s3_server.harmony_bucket, f"reports/reindex/{job_id}/parts/")
    assert len(parts) == 4


def test_a_failing_key_is_retried_alone_then_counted_failed(
    s3_server: Any,
    catalog: dict[str, bytes],
    queue: dict[str, Any],
    index_fn: Any,
    lambda_context: Any,
    moto_server_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every HEAD of one key is denied (S3 fault through tests/faultproxy.py): its slice is a
    batch item failure on each delivery, which reconciles only that key again (the others of
    the slice were saved as progress); on the last delivery the key is counted failed, the job
    ends, and the message goes on to the dead-letter queue."""
    bad = "catalog/coffee.jpg"
    calls: list[str] = []
    reconcile = RecordWriter.reconcile

    def spy(self: RecordWriter, key: str, **kw: Any) -> Any:
        calls.append(key)
        return reconcile(self, key, **kw)

    monkeypatch.setattr(RecordWriter, "reconcile", spy)
    monkeypatch.setattr(s3mod, "MAX_RETRIES", 0)
    with FaultProxy(moto_server_url) as proxy:
        proxy.fail("denied", quote(bad), method="HEAD")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        runtime.reset()
        job_id = index_fn.lambda_handler({"action": "reindex"}, lambda_context)["id"]
        messages = receive_all(queue)
        (bad_msg,) = [m for m in messages if bad in json.loads(m["Body"])["keys"]]
        bad_slice = json.loads(bad_msg["Body"])["keys"]
        for m in messages:
            out = deliver(index_fn, lambda_context, queue, m)
            want = [{"itemIdentifier": m["MessageId"]}] if m is bad_msg else []
            assert out == {"batchItemFailures": want}, out
        assert calls.count(bad) == 1 and all(calls.count(k) == 1 for k in bad_slice)
        assert status(index_fn, lambda_context, job_id)["state"] == "running"

        for receives in range(2, reindex_jobs.MAX_RECEIVES + 1):
            (m,) = receive_all(queue)
            assert m["Attributes"]["ApproximateReceiveCount"] == str(receives)
            out = deliver(index_fn, lambda_context, queue, m)
            assert out == {"batchItemFailures": [{"itemIdentifier": m["MessageId"]}]}
        # only the failing key was tried again, once per delivery
        assert calls.count(bad) == reindex_jobs.MAX_RECEIVES
        assert all(calls.count(k) == 1 for k in bad_slice if k != bad)
        assert receive_all(queue) == []  # moved to the dead-letter queue
        (dead,) = receive_all(queue, queue["dlq"])
        assert json.loads(dead["Body"])["keys"] == bad_slice

        done = status(index_fn, lambda_context, job_id)
    images = set(catalog) - set(NOT_IMAGES)
    assert done["state"] == "done", done
    assert done["counts"] == {"indexed": len(images) - 1, "skipped": len(NOT_IMAGES), "failed": 1}, done
    (failed,) = done["summary"]["failed"]
    assert failed["key"] == bad and ("AccessDenied" in failed["error"] or "403" in failed["error"]), failed
    assert done["summary"]["complete"] is False
    assert records(s3_server) == images - {bad}


def test_forced_reindex_recomputes_every_record(
    s3_server: Any, catalog: dict[str, bytes], queue: dict[str, Any], index_fn: Any, lambda_context: Any
) -> None:
    images = set(catalog) - set(NOT_IMAGES)
    counts = []
    for event in ({"action": "reindex"}, {"action": "reindex"}, {"action": "reindex", "force": True}):
        job_id = index_fn.lambda_handler(event, lambda_context)["id"]
        drain(index_fn, lambda_context, queue)
        done = status(index_fn, lambda_context, job_id)
        assert done["state"] == "done" and done["force"] is event.get("force", False), done
        counts.append(done["counts"])
    assert counts == [
        {"indexed": len(images), "skipped": 2},
        {"unchanged": len(images), "skipped": 2},  # nothing to do
        {"indexed": len(images), "skipped": 2},  # forced: every record recomputed
    ]
    assert records(s3_server) == images


def test_small_catalog_another_bucket_or_queued_false_reindex_in_the_call(
    s3_server: Any, images: dict[str, bytes], queue: dict[str, Any], index_fn: Any, lambda_context: Any
) -> None:
    bucket = s3_server.harmony_bucket
    for name in CATALOG_NAMES[:SLICE]:
        s3_server.put_object(Bucket=bucket, Key="catalog/" + name, Body=images[name])
    out = index_fn.lambda_handler({"action": "reindex"}, lambda_context)
    assert "queued" not in out and out["reindexed"] == {"indexed": SLICE} and out["complete"] is True, out
    s3_server.put_object(Bucket=bucket, Key="catalog/" + CATALOG_NAMES[SLICE], Body=images[CATALOG_NAMES[SLICE]])
    out = index_fn.lambda_handler({"action": "reindex", "queued": False}, lambda_context)
    assert "queued" not in out and out["reindexed"] == {"indexed": 1, "unchanged": SLICE}, out
    other = f"{bucket}-other"
    s3_server.create_bucket(Bucket=other)
    out = index_fn.lambda_handler({"action": "reindex", "bucket": other}, lambda_context)
    assert "queued" not in out and out["keys"] == 0 and out["complete"] is True, out
    assert receive_all(queue) == []  # nothing was sent
    planned = index_fn.lambda_handler({"action": "reindex", "queued": True}, lambda_context)
    assert planned["queued"] is True and planned["slices"] == 2, planned


def test_bad_reindex_requests_are_refused_with_their_reason(
    s3_server: Any, queue: dict[str, Any], index_fn: Any, lambda_context: Any
) -> None:
    with pytest.raises(BadRequestError, match='"queued" must be true or false'):
        index_fn.lambda_handler({"action": "reindex", "queued": "yes"}, lambda_context)
    with pytest.raises(BadRequestError, match='"force" must be true or false'):
        index_fn.lambda_handler({"action": "reindex", "force": "1"}, lambda_context)
    with pytest.raises(BadJobIdError):
        index_fn.lambda_handler({"action": "reindex_status", "id": "../reports"}, lambda_context)
    with pytest.raises(JobNotFoundError):
        index_fn.lambda_handler({"action": "reindex_status", "id": "20260101T000000Z-89abcdef"}, lambda_context)


def test_a_slice_of_an_unknown_job_is_dropped_and_a_foreign_body_fails(
    s3_server: Any, index_fn: Any, lambda_context: Any
) -> None:
    """events/sqs-reindex-slice.json names a job this bucket never had: nothing to retry. A body
    that is neither a slice nor an S3 notification is a batch item failure (dead letter)."""
    assert index_fn.lambda_handler(load_event("sqs-reindex-slice.json"), lambda_context) == {"batchItemFailures": []}
    assert all_keys(s3_server, s3_server.harmony_bucket) == {}
    ev = load_event("sqs-reindex-slice.json")
    ev["Records"].append({**ev["Records"][0], "messageId": "m-2", "body": json.dumps({"job": "x", "keys": "y"})})
    out = index_fn.lambda_handler(ev, lambda_context)
    assert out == {"batchItemFailures": [{"itemIdentifier": "m-2"}]}


def test_a_slice_out_of_time_comes_back_and_a_deleted_image_is_removed(
    s3_server: Any, catalog: dict[str, bytes], queue: dict[str, Any], index_fn: Any, lambda_context: Any
) -> None:
    """A delivery with no time left starts no key: the slice is reported failed (nothing counted)
    and its next delivery does the work. A catalog image deleted after it was indexed is still
    listed by its record, and the reindex removes the record."""
    import time

    from harmony_local.stack.lambdas import LambdaContext

    first = index_fn.lambda_handler({"action": "reindex"}, lambda_context)["id"]
    drain(index_fn, lambda_context, queue)
    assert status(index_fn, lambda_context, first)["state"] == "done"
    gone = "catalog/" + CATALOG_NAMES[0]
    s3_server.delete_object(Bucket=s3_server.harmony_bucket, Key=gone)

    job_id = index_fn.lambda_handler({"action": "reindex"}, lambda_context)["id"]
    messages = receive_all(queue)
    out = deliver(index_fn, LambdaContext("IndexFunction", deadline=time.time()), queue, messages[0])
    assert out == {"batchItemFailures": [{"itemIdentifier": messages[0]["MessageId"]}]}
    assert status(index_fn, lambda_context, job_id)["slices_done"] == 0
    for m in messages[1:]:
        deliver(index_fn, lambda_context, queue, m)
    drain(index_fn, lambda_context, queue)  # the first slice again, with time
    done = status(index_fn, lambda_context, job_id)
    images = set(catalog) - set(NOT_IMAGES)
    assert done["state"] == "done" and done["keys"] == len(catalog), done
    assert done["counts"] == {"removed": 1, "unchanged": len(images) - 1, "skipped": 2}, done
    assert records(s3_server) == images - {gone}


def test_a_reindex_whose_slices_cannot_be_sent_fails_and_says_why(
    s3_server: Any,
    catalog: dict[str, bytes],
    queue: dict[str, Any],
    index_fn: Any,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gone = queue["url"].rsplit("/", 1)[0] + "/no-such-queue"  # deleted, or a wrong URL in the settings
    monkeypatch.setenv("HARMONY_REINDEX_QUEUE_URL", gone)
    runtime.reset()
    with pytest.raises(StorageError, match=r"sending .* to SQS failed"):
        index_fn.lambda_handler({"action": "reindex"}, lambda_context)
    listed = s3_server.list_objects_v2(Bucket=s3_server.harmony_bucket, Prefix="reports/reindex/")["Contents"]
    failed = [o["Key"] for o in listed if o["Key"].endswith("/failed.json")]
    assert len(failed) == 1
    state = status(index_fn, lambda_context, failed[0].split("/")[2])
    assert state["state"] == "failed" and "enqueueing failed" in json.dumps(state), state
    assert receive_all(queue) == []  # nothing was sent to the real queue either
