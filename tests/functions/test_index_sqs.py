"""IndexFunction as IndexQueue's consumer: SQS batches whose messages are S3 event notifications
(events/sqs-*.json, the shape Lambda's SQS event source sends), against moto's server.

A message whose reconcile fails is reported alone in ``batchItemFailures`` (the others are
done and deleted by Lambda); duplicated messages are idempotent; S3's ``s3:TestEvent`` is
skipped; a batch in which every message failed fails the invocation (Lambda retries all of it).
"""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import quote, quote_plus, unquote

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from harmony_aws import runtime
from harmony_aws import s3 as s3mod
from tests.faultproxy import FaultProxy
from tests.support import all_keys, load_event, s3_event

RECORDS = "index/records/"


def sqs_event(*s3_events: dict[str, Any]) -> dict[str, Any]:
    """events/sqs-catalog-put-delete.json with one message per S3 event given (its body)."""
    template = load_event("sqs-catalog-put-delete.json")["Records"][0]
    ev: dict[str, Any] = {"Records": []}
    for i, body in enumerate(s3_events):
        rec = copy.deepcopy(template)
        rec["messageId"] = f"msg-{i}"
        rec["body"] = json.dumps(body)
        ev["Records"].append(rec)
    return ev


def records(client: Any, bucket: str) -> dict[str, str]:
    """catalog key -> source-etag of every record."""
    out = {}
    for rk in all_keys(client, bucket, RECORDS):
        meta = client.head_object(Bucket=bucket, Key=rk)["Metadata"]
        out[unquote(meta["catalog-key"])] = meta["source-etag"].strip('"')
    return out


def test_event_files_are_sqs_batches_of_s3_notifications():
    ev = load_event("sqs-catalog-put-delete.json")
    bodies = [json.loads(r["body"]) for r in ev["Records"]]
    assert {r["eventSource"] for r in ev["Records"]} == {"aws:sqs"}
    assert [b["Records"][0]["eventName"] for b in bodies] == ["ObjectCreated:Put", "ObjectRemoved:Delete"]
    assert json.loads(load_event("sqs-s3-test-event.json")["Records"][0]["body"])["Event"] == "s3:TestEvent"


def test_batch_put_and_delete_from_the_event_file(s3_server, images, index_fn, lambda_context):
    bucket = s3_server.harmony_bucket
    ev = load_event("sqs-catalog-put-delete.json")
    for rec in ev["Records"]:  # point the notifications at the test's bucket
        body = json.loads(rec["body"])
        body["Records"][0]["s3"]["bucket"]["name"] = bucket
        rec["body"] = json.dumps(body)
    s3_server.put_object(Bucket=bucket, Key="catalog/chelsea.jpg", Body=images["chelsea.jpg"])
    s3_server.put_object(Bucket=bucket, Key="catalog/old photo.jpg", Body=images["chelsea.jpg"])
    index_fn.lambda_handler(s3_event("s3-catalog-put.json", bucket, "catalog/old photo.jpg"), lambda_context)
    s3_server.delete_object(Bucket=bucket, Key="catalog/old photo.jpg")  # its message: the delete
    out = index_fn.lambda_handler(ev, lambda_context)
    assert out == {"batchItemFailures": []}
    assert set(records(s3_server, bucket)) == {"catalog/chelsea.jpg"}


def test_one_failing_record_is_reported_alone(s3_server, images, index_fn, lambda_context, monkeypatch):
    """S3 keeps failing for one key: only its message is a batch item failure, the others are indexed."""
    bucket = s3_server.harmony_bucket
    keys = ["catalog/a.jpg", "catalog/bad key.jpg", "catalog/c.jpg"]
    for k in keys:
        s3_server.put_object(Bucket=bucket, Key=k, Body=images["chelsea.jpg"])
    monkeypatch.setattr(s3mod, "MAX_RETRIES", 0)  # fail at once instead of after botocore's backoff
    with FaultProxy(str(s3_server.meta.endpoint_url)) as proxy:
        proxy.fail("error500", quote("catalog/bad key.jpg"))
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        runtime.reset()
        ev = sqs_event(*(s3_event("s3-catalog-put.json", bucket, k) for k in keys))
        out = index_fn.lambda_handler(ev, lambda_context)
        assert out == {"batchItemFailures": [{"itemIdentifier": "msg-1"}]}
        assert set(records(s3_server, bucket)) == {"catalog/a.jpg", "catalog/c.jpg"}
        # S3 recovers: the message comes back (after the visibility timeout) and is indexed
        proxy.heal()
        out = index_fn.lambda_handler(sqs_event(json.loads(ev["Records"][1]["body"])), lambda_context)
        assert out == {"batchItemFailures": []}
    assert set(records(s3_server, bucket)) == set(keys)


def test_a_batch_that_failed_whole_fails_the_invocation(s3_server, index_fn, lambda_context):
    """Every message failed: Powertools raises, Lambda retries the batch (nothing was done)."""
    ev = sqs_event({"not": "an S3 notification"})
    ev["Records"].append({**ev["Records"][0], "messageId": "msg-1", "body": "not JSON"})
    with pytest.raises(BatchProcessingError):
        index_fn.lambda_handler(ev, lambda_context)


def test_a_message_that_is_not_an_s3_event_is_a_failure_not_a_crash(s3_server, images, index_fn, lambda_context):
    bucket = s3_server.harmony_bucket
    s3_server.put_object(Bucket=bucket, Key="catalog/a.jpg", Body=images["chelsea.jpg"])
    ev = sqs_event(s3_event("s3-catalog-put.json", bucket, "catalog/a.jpg"), {"hello": "world"})
    out = index_fn.lambda_handler(ev, lambda_context)
    assert out == {"batchItemFailures": [{"itemIdentifier": "msg-1"}]}
    assert set(records(s3_server, bucket)) == {"catalog/a.jpg"}


def test_duplicated_messages_are_idempotent(s3_server, images, index_fn, lambda_context):
    """At-least-once: the same notification twice in a batch, and the batch delivered again."""
    bucket = s3_server.harmony_bucket
    key = "catalog/dir/é +x.jpg"
    s3_server.put_object(Bucket=bucket, Key=key, Body=images["chelsea.jpg"])
    put = s3_event("s3-catalog-put.json", bucket, key)
    assert put["Records"][0]["s3"]["object"]["key"] == quote_plus(key, safe="/")
    ev = sqs_event(put, put, put)
    for _ in range(2):
        assert index_fn.lambda_handler(copy.deepcopy(ev), lambda_context) == {"batchItemFailures": []}
        assert records(s3_server, bucket) == {key: s3_server.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')}
    assert len(all_keys(s3_server, bucket, RECORDS)) == 1
    s3_server.delete_object(Bucket=bucket, Key=key)
    dele = s3_event("s3-catalog-delete.json", bucket, key)
    for _ in range(2):
        assert index_fn.lambda_handler(sqs_event(dele, put, dele), lambda_context) == {"batchItemFailures": []}
        assert all_keys(s3_server, bucket, RECORDS) == {}


def test_s3_test_event_is_skipped(s3_server, index_fn, lambda_context):
    out = index_fn.lambda_handler(load_event("sqs-s3-test-event.json"), lambda_context)
    assert out == {"batchItemFailures": []}
    assert all_keys(s3_server, s3_server.harmony_bucket) == {}


def test_direct_reindex_still_works(s3_server, images, index_fn, lambda_context):
    bucket = s3_server.harmony_bucket
    s3_server.put_object(Bucket=bucket, Key="catalog/a.jpg", Body=images["chelsea.jpg"])
    out = index_fn.lambda_handler(load_event("index-reindex.json"), lambda_context)
    assert out["reindexed"] == {"indexed": 1} and out["complete"] is True
