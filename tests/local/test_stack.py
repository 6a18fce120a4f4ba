"""The local stack on the repository's template.yaml: the real handlers behind the HTTP server,
the sample catalog indexed through S3 -> IndexFunction, queries dropped in queries/ answered by
QueryDrop, results/ writes firing nothing."""

from __future__ import annotations

import json
import time
import uuid

from harmony_aws.layout import record_key
from tests.support import all_keys, image_bytes, request, request_json


def _search(stack, name: str, ctype: str = "image/jpeg", k: int = 5):
    return request_json(f"{stack.url}search?k={k}", image_bytes(name), method="POST", headers={"Content-Type": ctype})


def test_page_is_served_at_root(stack):
    route = stack.template.route_for("GET", "/")
    assert route is not None and route[0].function == "SearchFunction", (
        "template.yaml needs an Api event {Path: /, Method: get} on SearchFunction: the page is served there"
    )
    status, headers, body = request(stack.url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"Harmony-Image" in body and b"<script" in body
    assert b"http://" not in body.replace(b"http://www.w3.org", b"")  # nothing from another origin


def test_post_image_gets_top_5(stack):
    status, doc = _search(stack, "chelsea__hflip.jpg")
    assert status == 200, doc
    assert len(doc["results"]) == 5 and doc["catalog_size"] >= 9
    top = doc["results"][0]
    assert top["key"] == "catalog/chelsea.jpg" and top["score"] > 0.5
    assert set(top) == {"url", "key", "score", "ssim", "orb", "sha256"}
    assert set(doc["query"]) == {"sha256", "width", "height"} and doc["took_ms"] >= 0
    # the result URL (presigned GET of the embedded S3) serves the image
    status, _headers, body = request(top["url"])
    assert status == 200 and body[:2] == b"\xff\xd8"


def test_multipart_upload(stack):
    boundary = "harmonyBoundary" + uuid.uuid4().hex
    data = image_bytes("coffee__resize_half.png")
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, doc = request_json(
        f"{stack.url}search?k=3",
        body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 200, doc
    assert len(doc["results"]) == 3 and doc["results"][0]["key"] == "catalog/coffee.jpg"


def test_non_image_is_415_error_json(stack):
    status, doc = request_json(
        f"{stack.url}search", b"just some text, not a picture", method="POST", headers={"Content-Type": "text/plain"}
    )
    assert status == 415 and doc["error"]["code"] == "not_an_image" and doc["error"]["message"]


def test_private_url_is_refused(stack):
    status, doc = request_json(
        f"{stack.url}search",
        json.dumps({"url": stack.s3_endpoint + "/x.jpg"}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    assert status == 400 and doc["error"]["code"] == "url_refused"


def test_catalog_upload_is_indexed_and_searchable(stack):
    s3, bucket = stack.client(), stack.config.bucket
    key = f"catalog/added/{uuid.uuid4().hex[:8]} rocket.jpg"  # a space: S3 event keys are URL-encoded
    s3.put_object(Bucket=bucket, Key=key, Body=image_bytes("rocket__brighter.jpg"))
    stack.wait_idle(60)
    inv = [i for i in stack.invocations if ("ObjectCreated:Put", key) in i.s3_events]
    assert inv and inv[-1].function == "IndexFunction" and inv[-1].source.startswith("sqs IndexQueue ")
    assert inv[-1].ok and inv[-1].result == {"batchItemFailures": []}
    assert record_key(key) in all_keys(s3, bucket, "index/records/")
    # the SearchFunction picks it up (its warm index refreshes after HARMONY_INDEX_TTL_SECONDS)
    ttl = float(stack.template.functions["SearchFunction"].environment.get("HARMONY_INDEX_TTL_SECONDS") or 10)
    deadline = time.monotonic() + max(30.0, ttl + 10)
    while True:
        status, doc = _search(stack, "rocket__brighter.jpg", k=10)
        assert status == 200
        if key in [r["key"] for r in doc["results"]] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert doc["results"][0]["key"] == key
    # and a delete removes it
    s3.delete_object(Bucket=bucket, Key=key)
    stack.wait_idle(60)
    inv = [i for i in stack.invocations if ("ObjectRemoved:Delete", key) in i.s3_events]
    assert inv and inv[-1].function == "IndexFunction" and inv[-1].result == {"batchItemFailures": []}
    assert record_key(key) not in all_keys(s3, bucket, "index/records/")


def test_query_drop_writes_results_and_nothing_fires_on_results(stack):
    s3, bucket = stack.client(), stack.config.bucket
    name = f"drop-{uuid.uuid4().hex[:8]}.jpg"
    s3.put_object(Bucket=bucket, Key=f"queries/{name}", Body=image_bytes("chelsea__hflip.jpg"))
    stack.wait_idle(60)
    doc = json.loads(s3.get_object(Bucket=bucket, Key=f"results/{name}.json")["Body"].read())
    assert len(doc["results"]) == 5 and doc["results"][0]["key"] == "catalog/chelsea.jpg"
    assert doc["source"]["key"] == f"queries/{name}"
    fired = [i for i in stack.invocations if name in i.source]
    assert [(i.function, i.source.split()[1]) for i in fired] == [("QueryDropFunction", "ObjectCreated:Put")]
    assert not [i for i in stack.invocations if any(k.startswith(("results/", "index/")) for _, k in i.s3_events)]
    # a non-image dropped gets an error document, still under results/
    s3.put_object(Bucket=bucket, Key="queries/notes.txt", Body=b"hello")
    stack.wait_idle(60)
    err = json.loads(s3.get_object(Bucket=bucket, Key="results/notes.txt.json")["Body"].read())
    assert err["error"]["code"] == "not_an_image" and err["status"] == 415
