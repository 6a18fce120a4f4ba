"""POST /duplicates and GET /duplicates/{id} (functions/search/app.py) and the DuplicatesFunction
(functions/duplicates/app.py) over harmony_aws.duplicate_jobs, in moto (S3 and SQS): the job
fans out in SQS messages, each slice is handled from a real SQS event shape
(events/sqs-duplicates-slice.json), the last one merges the report.

The catalog: the sample photos plus planted copies — an exact copy of chelsea.jpg, coffee.jpg
re-encoded at JPEG quality 40, the fixture astronaut__jpeg_q20.jpg (astronaut.jpg at quality
20) — and a text file that is not an image."""

from __future__ import annotations

import functools
import json
from typing import Any

import cv2
import numpy as np
import pytest

from harmony_aws import duplicate_jobs, runtime
from harmony_aws.duplicate_jobs import MAX_RECEIVES, report_key
from tests.functions.test_search_function import api_event, call
from tests.support import (
    BUCKET,
    CATALOG_NAMES,
    TEMPLATE,
    all_keys,
    load_event,
    load_function,
    receive_all,
    sqs_delivery,
)
from tests.support import (
    deliver as deliver_message,
)

sqs_event = functools.partial(sqs_delivery, "sqs-duplicates-slice.json")
deliver = functools.partial(deliver_message, event="sqs-duplicates-slice.json")

SLICE_KEYS = 4  # 13 keys -> 4 slices
PLANTED = {
    "catalog/zz/chelsea-copy.jpg": "catalog/chelsea.jpg",
    "catalog/zz/coffee-q40.jpg": "catalog/coffee.jpg",
    "catalog/zz/astronaut-q20.jpg": "catalog/astronaut.jpg",
}


def recompressed(data: bytes, quality: int) -> bytes:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


@pytest.fixture
def duplicates_fn():
    mod = load_function("duplicates")
    mod.metrics.clear_metrics()
    return mod


@pytest.fixture
def queue(s3, monkeypatch) -> dict[str, Any]:
    """DuplicatesQueue and its dead-letter queue in moto, as the template makes them."""
    import boto3

    sqs = boto3.client("sqs", region_name="us-east-1")
    dlq = sqs.create_queue(QueueName="dups-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(
        QueueName="dups",
        Attributes={
            "VisibilityTimeout": "300",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVES)}),
        },
    )["QueueUrl"]
    monkeypatch.setenv("HARMONY_DUPLICATES_QUEUE_URL", url)
    monkeypatch.setattr(duplicate_jobs, "SLICE_KEYS", SLICE_KEYS)
    return {"client": sqs, "url": url, "dlq": dlq}


@pytest.fixture
def catalog(s3, images):
    """The sample catalog, the planted copies and a text file, indexed (the index's write path)."""
    objects = {"catalog/" + n: images[n] for n in CATALOG_NAMES}
    objects["catalog/zz/chelsea-copy.jpg"] = images["chelsea.jpg"]
    objects["catalog/zz/coffee-q40.jpg"] = recompressed(images["coffee.jpg"], 40)
    objects["catalog/zz/astronaut-q20.jpg"] = images["astronaut__jpeg_q20.jpg"]
    objects["catalog/zz/notes.txt"] = b"not a picture\n"
    writer = runtime.record_writer(BUCKET)
    for key, data in objects.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        writer.reconcile(key)
    return objects


def without_urls(report: dict[str, Any]) -> dict[str, Any]:
    """The report without its members' URLs (presigned URLs differ from one reading to the next)."""
    return {**report, "groups": [{**g, "members": [m | {"url": None} for m in g["members"]]} for g in report["groups"]]}


def start(search_fn, lambda_context, query=None) -> tuple[int, dict[str, Any], dict[str, Any]]:
    resp = search_fn.lambda_handler(api_event("POST", None, query=query, path="/duplicates"), lambda_context)
    return resp["statusCode"], resp["multiValueHeaders"] | resp.get("headers", {}), json.loads(resp["body"])


def get(search_fn, lambda_context, job_id: str) -> tuple[int, dict[str, Any]]:
    ev = api_event("GET", path=f"/duplicates/{job_id}")
    ev["resource"] = ev["requestContext"]["resourcePath"] = "/duplicates/{id}"
    ev["pathParameters"] = {"id": job_id}
    return call(search_fn, lambda_context, ev)


def test_planted_duplicates_are_found_and_nothing_else(s3, queue, catalog, search_fn, duplicates_fn, lambda_context):
    status, latest = get(search_fn, lambda_context, "latest")
    assert (status, latest) == (200, {"id": None, "state": None, "report": None})

    status, headers, job = start(search_fn, lambda_context)
    assert status == 202, job
    job_id = job["id"]
    assert headers["Location"] in (f"duplicates/{job_id}", [f"duplicates/{job_id}"])
    assert job["state"] == "queued" and job["keys"] == len(catalog) and job["slices"] == 4
    assert (job["min_score"], job["keep"], job["mutual"], job["slices_done"]) == (0.5, "largest", False, 0)

    messages = receive_all(queue)
    assert len(messages) == 4
    bodies = [json.loads(m["Body"]) for m in messages]
    assert sorted(k for b in bodies for k in b["keys"]) == sorted(catalog)  # every key in one slice
    messages.sort(key=lambda m: json.loads(m["Body"])["slice"])

    # slice 0, delivered twice (SQS is at-least-once): the second delivery adds nothing
    first = deliver(duplicates_fn, lambda_context, queue, messages[0])
    assert first == {"batchItemFailures": []}
    again = duplicates_fn.lambda_handler(sqs_event(messages[0]), lambda_context)
    assert again == {"batchItemFailures": []}
    status, running = get(search_fn, lambda_context, job_id)
    assert (status, running["state"], running["slices_done"]) == (200, "running", 1)
    for m in messages[1:]:
        deliver(duplicates_fn, lambda_context, queue, m)

    status, done = get(search_fn, lambda_context, job_id)
    assert status == 200 and done["state"] == "done" and done["slices_done"] == 4, done
    report = done["report"]
    assert report["id"] == job_id
    assert report["images"] == len(catalog) - 1  # the text file is no image: not in the index
    assert (report["queried"], report["skipped"]) == (len(catalog) - 1, 1)
    groups = {g["keep"]: g for g in report["groups"]}
    assert {k: sorted(m["key"] for m in g["members"]) for k, g in groups.items()} == {
        keep: sorted([keep, copy_key]) for copy_key, keep in PLANTED.items()
    }
    for g in report["groups"]:
        keeper, other = g["members"]  # keeper first
        assert keeper["key"] == g["keep"] and keeper["score"] == 1.0
        assert set(other) == {"key", "url", "score", "sha256", "width", "height"}
        assert 0.5 <= other["score"] <= 1.0
        assert (other["width"], other["height"]) == (keeper["width"], keeper["height"])
        assert [p["score"] for p in g["pairs"]] and all(p["score"] >= 0.5 for p in g["pairs"])
        assert "Signature=" in other["url"] and "Signature=" in keeper["url"]  # presigned when read
    exact = groups["catalog/chelsea.jpg"]["members"]
    assert exact[0]["sha256"] == exact[1]["sha256"] and exact[1]["score"] == 1.0
    assert groups["catalog/coffee.jpg"]["members"][1]["sha256"] != groups["catalog/coffee.jpg"]["members"][0]["sha256"]
    assert isinstance(report["took_s"], float) and report["took_s"] >= 0

    # one part per slice, whatever the deliveries; the report once; latest is this report
    keys = all_keys(s3, BUCKET, "reports/")
    assert sorted(k for k in keys if "/parts/" in k) == [f"reports/{job_id}/parts/{n:06d}.json" for n in range(4)]
    assert report_key(job_id) in keys and f"reports/{job_id}/failed.json" not in keys
    status, latest = get(search_fn, lambda_context, "latest")
    assert status == 200 and latest["id"] == job_id and without_urls(latest["report"]) == without_urls(report)

    # a late duplicate of a slice finds the job finished; the merge's conditional write keeps the report
    etag = s3.head_object(Bucket=BUCKET, Key=report_key(job_id))["ETag"]
    assert deliver(duplicates_fn, lambda_context, queue, messages[2]) == {"batchItemFailures": []}
    jobs = runtime.duplicate_jobs()
    job_doc = jobs._get_json(f"reports/{job_id}/job.json")
    assert job_doc["state"] == "done"
    parts = [jobs._get_json(k) or {} for k in keys if "/parts/" in k]
    assert jobs._merge(job_doc, jobs.index(), parts) is False
    assert s3.head_object(Bucket=BUCKET, Key=report_key(job_id))["ETag"] == etag

    # the listing says which key duplicates which
    status, listing = call(search_fn, lambda_context, api_event("GET", path="/catalog", query={"limit": "100"}))
    assert status == 200
    assert {it["key"]: it["duplicate_of"] for it in listing["items"] if it["duplicate_of"]} == PLANTED
    assert listing["duplicates_report"] == job_id


def test_a_slice_failing_on_its_last_delivery_fails_the_job(
    s3, queue, catalog, search_fn, duplicates_fn, lambda_context, monkeypatch
):
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    from harmony_aws.errors import StorageError

    def s3_down(*args, **kwargs):
        raise StorageError("GET s3://bucket/index/records/x.npz: SlowDown after 6 retries")

    status, _, job = start(search_fn, lambda_context)
    assert status == 202
    monkeypatch.setattr(duplicate_jobs, "find_edges", s3_down)
    msg = next(m for m in receive_all(queue) if json.loads(m["Body"])["slice"] == 1)
    for receives in range(1, MAX_RECEIVES + 1):
        msg["Attributes"]["ApproximateReceiveCount"] = str(receives)
        # the batch's only record failed: the invocation fails, SQS delivers the message again
        with pytest.raises(BatchProcessingError, match="SlowDown"):
            duplicates_fn.lambda_handler(sqs_event(msg), lambda_context)
        status, st = get(search_fn, lambda_context, job["id"])
        assert status == 200
        if receives < MAX_RECEIVES:
            assert st["state"] == "queued"  # retried by SQS: not failed yet
    assert st["state"] == "failed" and "slice 1" in st["error"] and "SlowDown" in st["error"]


def test_an_empty_catalog_is_done_at_once(s3, queue, search_fn, lambda_context):
    status, _, job = start(search_fn, lambda_context, {"keep": "shortest", "min_score": "0.7", "mutual": "true"})
    assert status == 202 and job["state"] == "done" and job["slices"] == 0
    assert job["report"]["groups"] == [] and job["report"]["images"] == 0
    assert (job["report"]["keep"], job["report"]["min_score"], job["report"]["mutual"]) == ("shortest", 0.7, True)
    assert receive_all(queue) == []


def test_a_slice_of_an_unknown_job_is_dropped(s3, queue, duplicates_fn, lambda_context):
    """events/sqs-duplicates-slice.json names a job this bucket never had: nothing to retry."""
    out = duplicates_fn.lambda_handler(load_event("sqs-duplicates-slice.json"), lambda_context)
    assert out == {"batchItemFailures": []}
    assert all_keys(s3, BUCKET, "reports/") == {}


def test_a_body_that_is_not_a_slice_fails(s3, queue, duplicates_fn, lambda_context):
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    ev = load_event("sqs-duplicates-slice.json")
    ev["Records"][0]["body"] = json.dumps({"job": "../../catalog/x", "slice": 0, "keys": []})
    with pytest.raises(BatchProcessingError, match="job id"):  # -> dead-letter queue, to be looked at
        duplicates_fn.lambda_handler(ev, lambda_context)


@pytest.mark.parametrize(
    ("job_id", "status", "code"),
    [
        ("20260101T000000Z-0123abcd", 404, "job_not_found"),
        ("..%2Fcatalog%2Fchelsea.jpg", 400, "bad_job_id"),
        ("20260101T000000Z-0123ABCD", 400, "bad_job_id"),
        ("x" * 300, 400, "bad_job_id"),
    ],
)
def test_unknown_or_malformed_ids(s3, queue, search_fn, lambda_context, job_id, status, code):
    got, out = get(search_fn, lambda_context, job_id)
    assert (got, out["error"]["code"]) == (status, code), out


@pytest.mark.parametrize(
    ("query", "field"),
    [({"keep": "newest"}, "keep"), ({"min_score": "1.5"}, "min_score"), ({"min_score": "x"}, "min_score")],
)
def test_bad_parameters_are_422(s3, queue, search_fn, lambda_context, query, field):
    status, _, out = start(search_fn, lambda_context, query)
    assert status == 422 and out["error"]["code"] == "validation_error" and field in out["error"]["message"]


def test_template_wires_the_queue():
    from harmony_local.stack.template import load_yaml

    doc = load_yaml(TEMPLATE)
    res = doc["Resources"]
    assert res["DuplicatesQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"] == MAX_RECEIVES
    # the queue holds a message back longer than the function may run on it
    assert (
        res["DuplicatesQueue"]["Properties"]["VisibilityTimeout"]
        >= 6 * res["DuplicatesFunction"]["Properties"]["Timeout"]
    )
    ev = res["DuplicatesFunction"]["Properties"]["Events"]["Slices"]
    assert ev["Type"] == "SQS" and ev["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # the event source never runs more slices than the function may: a throttled slice would
    # count a receive towards the dead-letter queue
    params = doc["Parameters"]
    reserved = res["DuplicatesFunction"]["Properties"]["ReservedConcurrentExecutions"]["Fn::If"][1]["Ref"]
    cap = ev["Properties"]["ScalingConfig"]["MaximumConcurrency"]["Ref"]
    assert params[cap]["Default"] <= params[reserved]["Default"]
    env = res["SearchFunction"]["Properties"]["Environment"]["Variables"]
    assert env["HARMONY_DUPLICATES_QUEUE_URL"] == {"Ref": "DuplicatesQueue"}
    assert "DELETE" in res["Api"]["Properties"]["Cors"]["AllowMethods"]
