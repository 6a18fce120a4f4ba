"""GET /catalog and DELETE /catalog/{key+} on the local stack: the template's routes (the greedy
path parameter included) through the real HTTP server to the SearchFunction, over moto's S3."""

from __future__ import annotations

import time
import uuid
from urllib.parse import quote

from harmony_aws.layout import record_key
from tests.support import all_keys, image_bytes, request, request_json


def _search_keys(stack, name: str) -> list[str]:
    status, doc = request_json(
        f"{stack.url}search?k=10", image_bytes(name), method="POST", headers={"Content-Type": "image/jpeg"}
    )
    assert status == 200, doc
    return [r["key"] for r in doc["results"]]


def _until(pred, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_list_and_delete_through_the_http_server(stack):
    s3, bucket = stack.client(), stack.config.bucket
    folder = f"listdel-{uuid.uuid4().hex[:8]}"
    rel = f"{folder}/sub dir/rocket é.jpg"
    key = "catalog/" + rel
    s3.put_object(Bucket=bucket, Key=key, Body=image_bytes("rocket__brighter.jpg"))
    s3.put_object(Bucket=bucket, Key=f"catalog/{folder}/notes.bin", Body=b"not an image")
    stack.wait_idle(60)

    status, doc = request_json(f"{stack.url}catalog?prefix={quote(folder + '/')}&limit=1")
    assert status == 200, doc
    assert doc["count"] == 1 and doc["items"][0]["key"] == f"catalog/{folder}/notes.bin"
    assert doc["items"][0]["indexed"] is False and doc["next_cursor"]
    status, doc = request_json(f"{stack.url}catalog?prefix={quote(folder + '/')}&limit=1&cursor={doc['next_cursor']}")
    assert status == 200 and doc["next_cursor"] is None
    assert doc["items"] == [
        {
            "key": key,
            "name": rel,
            "size": len(image_bytes("rocket__brighter.jpg")),
            "last_modified": doc["items"][0]["last_modified"],
            "source_url": None,
            "url": doc["items"][0]["url"],  # presigned: checked below
            "indexed": True,
            "duplicate_of": None,
        }
    ]
    status, _, body = request(doc["items"][0]["url"])
    assert status == 200 and body == image_bytes("rocket__brighter.jpg")
    status, err = request_json(f"{stack.url}catalog?limit=5000")
    assert status == 422 and err["error"]["code"] == "validation_error"

    ttl = float(stack.template.functions["SearchFunction"].environment.get("HARMONY_INDEX_TTL_SECONDS") or 10)
    assert _until(lambda: key in _search_keys(stack, "rocket__brighter.jpg"), max(30.0, ttl + 10))

    status, out = request_json(f"{stack.url}catalog/{quote(rel, safe='/')}", method="DELETE")
    assert status == 200, out
    assert {k: v for k, v in out.items() if k != "record"} == {"deleted": key, "object": "deleted"}
    stack.wait_idle(60)
    removed = [i for i in stack.invocations if ("ObjectRemoved:Delete", key) in i.s3_events]
    assert removed and removed[-1].function == "IndexFunction", removed
    # The delete's own reconcile and the ObjectRemoved event (through IndexQueue) race: whichever
    # comes first removes the record, the other finds it gone (or both saw it and both deleted
    # it). Either way the record was there (searched above), is gone now, and nothing failed.
    assert out["record"] in ("removed", "absent"), out
    assert removed[-1].ok and removed[-1].result == {"batchItemFailures": []}, removed[-1]
    assert record_key(key) not in all_keys(s3, bucket, "index/records/")
    # the SearchFunction that answered the delete forgets it at once; any other within the TTL
    assert _until(lambda: key not in _search_keys(stack, "rocket__brighter.jpg"), ttl + 10)

    status, err = request_json(f"{stack.url}catalog/{quote(rel, safe='')}", method="DELETE")
    assert status == 404 and err["error"]["code"] == "key_not_found"
    status, err = request_json(f"{stack.url}catalog/..%2Findex%2Frecords%2Fx.npz", method="DELETE")
    assert status == 400 and err["error"]["code"] == "bad_key"
    s3.delete_object(Bucket=bucket, Key=f"catalog/{folder}/notes.bin")
    stack.wait_idle(60)
