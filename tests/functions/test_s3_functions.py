"""IndexFunction and QueryDrop with the S3 events from events/*.json (moto in-process and server)."""

from __future__ import annotations

import json

from tests.support import BUCKET, CATALOG_NAMES, all_keys, load_event, put_catalog, s3_event


def test_index_put_then_delete_events(s3, images, index_fn, lambda_context):
    key = "catalog/old photo.jpg"  # events/s3-catalog-delete.json names catalog/old+photo.jpg (URL-encoded)
    s3.put_object(Bucket=BUCKET, Key=key, Body=images["chelsea.jpg"])
    out = index_fn.lambda_handler(s3_event("s3-catalog-put.json", BUCKET, key), lambda_context)
    assert out["results"][0]["action"] == "indexed" and out["results"][0]["key"] == key
    assert len(all_keys(s3, BUCKET, "index/records/")) == 1
    s3.delete_object(Bucket=BUCKET, Key=key)
    ev = load_event("s3-catalog-delete.json")  # unmodified key: decoding '+' must give the space
    ev["Records"][0]["s3"]["bucket"]["name"] = BUCKET
    out = index_fn.lambda_handler(ev, lambda_context)
    assert out["results"] == [{"key": key, "action": "removed", "detail": "", "rounds": 1}]
    assert all_keys(s3, BUCKET, "index/") == {}
    # delivered twice
    out = index_fn.lambda_handler(ev, lambda_context)
    assert out["results"][0]["action"] == "absent"


def test_index_event_for_missing_object_writes_nothing(s3, index_fn, lambda_context):
    out = index_fn.lambda_handler(s3_event("s3-catalog-put.json", BUCKET, "catalog/never-uploaded.jpg"), lambda_context)
    assert out["results"][0]["action"] == "absent"
    assert all_keys(s3, BUCKET) == {}


def test_index_duplicate_records_in_one_event(s3, images, index_fn, lambda_context):
    s3.put_object(Bucket=BUCKET, Key="catalog/chelsea.jpg", Body=images["chelsea.jpg"])
    ev = s3_event("s3-catalog-put.json", BUCKET)
    ev["Records"] = ev["Records"] * 3
    out = index_fn.lambda_handler(ev, lambda_context)
    assert [r["action"] for r in out["results"]] == ["indexed"]
    out = index_fn.lambda_handler(ev, lambda_context)
    assert [r["action"] for r in out["results"]] == ["unchanged"]


def test_index_non_image_writes_nothing(s3, index_fn, lambda_context):
    s3.put_object(Bucket=BUCKET, Key="catalog/chelsea.jpg", Body=b"GIF89a but truncated")
    out = index_fn.lambda_handler(s3_event("s3-catalog-put.json", BUCKET), lambda_context)
    assert out["results"][0]["action"] == "skipped"
    assert all_keys(s3, BUCKET, "index/") == {}


def test_query_drop_writes_results_once(s3, images, index_fn, query_drop_fn, lambda_context):
    put_catalog(s3, BUCKET, images)
    for n in CATALOG_NAMES:
        index_fn.lambda_handler(s3_event("s3-catalog-put.json", BUCKET, "catalog/" + n), lambda_context)
    s3.put_object(Bucket=BUCKET, Key="queries/chelsea-query.jpg", Body=images["chelsea__hflip.jpg"])
    ev = s3_event("s3-query-put.json", BUCKET)
    out = query_drop_fn.lambda_handler(ev, lambda_context)
    assert out["results"][0]["action"] == "answered"
    assert out["results"][0]["result_key"] == "results/chelsea-query.jpg.json"
    doc = json.loads(s3.get_object(Bucket=BUCKET, Key="results/chelsea-query.jpg.json")["Body"].read())
    assert set(doc) == {"query", "results", "catalog_size", "took_ms", "source"}
    assert doc["results"][0]["key"] == "catalog/chelsea.jpg"
    assert doc["source"]["key"] == "queries/chelsea-query.jpg"
    etag = s3.head_object(Bucket=BUCKET, Key="results/chelsea-query.jpg.json")["ETag"]
    # delivered again: nothing rewritten
    out = query_drop_fn.lambda_handler(ev, lambda_context)
    assert out["results"][0]["action"] == "unchanged"
    assert s3.head_object(Bucket=BUCKET, Key="results/chelsea-query.jpg.json")["ETag"] == etag
    # only results/ was written: nothing under catalog/ index/ queries/ changed
    assert set(all_keys(s3, BUCKET)) == (
        {f"catalog/{n}" for n in CATALOG_NAMES}
        | set(all_keys(s3, BUCKET, "index/"))
        | {"queries/chelsea-query.jpg", "results/chelsea-query.jpg.json"}
    )


def test_query_drop_bad_image_gets_error_document(s3, query_drop_fn, lambda_context):
    s3.put_object(Bucket=BUCKET, Key="queries/chelsea-query.jpg", Body=b"definitely not an image")
    out = query_drop_fn.lambda_handler(s3_event("s3-query-put.json", BUCKET), lambda_context)
    assert out["results"][0]["action"] == "failed"
    doc = json.loads(s3.get_object(Bucket=BUCKET, Key="results/chelsea-query.jpg.json")["Body"].read())
    assert doc["error"]["code"] == "not_an_image" and doc["status"] == 415


def test_query_drop_missing_object_and_foreign_prefix_write_nothing(s3, images, query_drop_fn, lambda_context):
    out = query_drop_fn.lambda_handler(s3_event("s3-query-put.json", BUCKET), lambda_context)
    assert out["results"][0]["action"] == "absent"
    # an event for results/ (a misconfigured trigger) must not loop
    s3.put_object(Bucket=BUCKET, Key="results/x.json", Body=b"{}")
    out = query_drop_fn.lambda_handler(s3_event("s3-query-put.json", BUCKET, "results/x.json"), lambda_context)
    assert out["results"][0]["action"] == "skipped"
    assert set(all_keys(s3, BUCKET)) == {"results/x.json"}


def test_s3_functions_against_moto_server(s3_server, images, index_fn, query_drop_fn, lambda_context):
    bucket = s3_server.harmony_bucket
    names = ["astronaut.jpg", "camera.jpg", "chelsea.jpg", "coffee.jpg"]
    put_catalog(s3_server, bucket, images, names=names)
    for n in names:
        index_fn.lambda_handler(s3_event("s3-catalog-put.json", bucket, "catalog/" + n), lambda_context)
    s3_server.put_object(Bucket=bucket, Key="queries/sub dir/q 1.png", Body=images["coffee__resize_half.png"])
    out = query_drop_fn.lambda_handler(s3_event("s3-query-put.json", bucket, "queries/sub dir/q 1.png"), lambda_context)
    assert out["results"][0]["action"] == "answered"
    doc = json.loads(s3_server.get_object(Bucket=bucket, Key="results/sub dir/q 1.png.json")["Body"].read())
    assert doc["results"][0]["key"] == "catalog/coffee.jpg"


def test_index_reindex_action_backfills(s3, images, index_fn, lambda_context):
    put_catalog(s3, BUCKET, images, names=CATALOG_NAMES[:3])  # uploaded before the trigger existed
    out = index_fn.lambda_handler({"action": "reindex", "bucket": BUCKET}, lambda_context)
    assert out == {"reindexed": {"indexed": 3}}
    assert len(all_keys(s3, BUCKET, "index/records/")) == 3
    out = index_fn.lambda_handler({"action": "reindex", "bucket": BUCKET}, lambda_context)
    assert out == {"reindexed": {"unchanged": 3}}
