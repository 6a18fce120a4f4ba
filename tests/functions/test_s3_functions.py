"""IndexFunction and QueryDrop with the S3 events from events/*.json (moto in-process and server)."""

from __future__ import annotations

import json
import time
from urllib.parse import unquote

import pytest

from harmony_aws import runtime
from harmony_aws.errors import ConfigError
from harmony_local.stack.lambdas import LambdaContext
from tests.support import BUCKET, CATALOG_NAMES, all_keys, load_event, put_catalog, s3_event


def records_of(client, bucket: str) -> dict[str, str]:
    """catalog key -> source-etag of every index record."""
    out = {}
    for rk in all_keys(client, bucket, "index/records/"):
        meta = client.head_object(Bucket=bucket, Key=rk)["Metadata"]
        out[unquote(meta["catalog-key"])] = meta["source-etag"]
    return out


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
    assert all_keys(s3, BUCKET, "index/records/") == {}
    journal = sorted(all_keys(s3, BUCKET, "index/"))  # what is left: the journal of the put and the delete
    assert len(journal) == 2 and all(k.startswith("index/journal/") for k in journal)
    assert [k.split(".")[1] for k in journal] == ["put", "delete"]
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
    assert set(doc) == {"query", "results", "catalog_size", "took_ms", "source", "index"}
    assert doc["index"] == {"complete": True, "missing": 0}
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


def _report(out: dict) -> dict:
    assert isinstance(out.pop("seconds"), float)
    return out


def test_index_reindex_action_backfills(s3, images, index_fn, lambda_context):
    put_catalog(s3, BUCKET, images, names=CATALOG_NAMES[:3])  # uploaded before the trigger existed
    out = index_fn.lambda_handler({"action": "reindex", "bucket": BUCKET}, lambda_context)
    done = {"failed": [], "keys": 3, "attempted": 3, "complete": True, "resume_after": None}
    assert _report(out) == {"reindexed": {"indexed": 3}, **done}
    assert len(all_keys(s3, BUCKET, "index/records/")) == 3
    out = index_fn.lambda_handler({"action": "reindex", "bucket": BUCKET}, lambda_context)
    assert _report(out) == {"reindexed": {"unchanged": 3}, **done}


def test_index_reindex_as_documented_uses_the_function_bucket(s3, images, index_fn, lambda_context, monkeypatch):
    """`{"action": "reindex"}` alone (README): the bucket is HARMONY_BUCKET (the s3 fixture sets it)."""
    put_catalog(s3, BUCKET, images, names=CATALOG_NAMES[:2])
    out = index_fn.lambda_handler({"action": "reindex"}, lambda_context)
    assert out["reindexed"] == {"indexed": 2} and out["complete"] is True
    monkeypatch.delenv("HARMONY_BUCKET")
    runtime.reset()
    with pytest.raises(ConfigError, match="HARMONY_BUCKET"):
        index_fn.lambda_handler({"action": "reindex"}, lambda_context)


def test_index_reindex_reports_what_it_left_at_the_deadline(s3, images, index_fn, monkeypatch):
    """A reindex does not run past the function's timeout silently: with no time left it starts
    no key and says so; `start_after` continues after a key."""
    put_catalog(s3, BUCKET, images, names=CATALOG_NAMES[:4])
    keys = sorted("catalog/" + n for n in CATALOG_NAMES[:4])
    out = index_fn.lambda_handler({"action": "reindex"}, LambdaContext("IndexFunction", deadline=time.time()))
    assert _report(out) == {
        "reindexed": {},
        "failed": [],
        "keys": 4,
        "attempted": 0,
        "complete": False,
        "resume_after": None,
    }
    out = index_fn.lambda_handler({"action": "reindex", "start_after": keys[1]}, LambdaContext("IndexFunction"))
    assert _report(out) == {
        "reindexed": {"indexed": 2},
        "failed": [],
        "keys": 2,
        "attempted": 2,
        "complete": True,
        "resume_after": None,
    }
    assert sorted(records_of(s3, BUCKET)) == keys[2:]
