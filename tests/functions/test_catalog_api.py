"""GET /catalog and DELETE /catalog/{key+} (functions/search/app.py over harmony_aws.catalog_ops)
through API Gateway proxy events, against moto's HTTP server."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

import pytest

from harmony_aws.catalog_ops import BadCursorError, BadKeyError, check_rel, decode_cursor, encode_cursor
from harmony_aws.layout import record_key
from tests.functions.test_search_function import api_event, call
from tests.support import CATALOG_NAMES, s3_event

N_KEYS = 2500
INDEXED = ["chelsea.jpg", "coffee.jpg", "astronaut.jpg"]


def delete_event(raw_key: str) -> dict:
    ev = api_event("DELETE", path="/catalog/" + raw_key)
    ev["resource"] = ev["requestContext"]["resourcePath"] = "/catalog/{key+}"
    ev["pathParameters"] = {"key": raw_key}  # as API Gateway REST passes it: percent-encoded
    return ev


def list_event(**query) -> dict:
    return api_event("GET", path="/catalog", query={k: str(v) for k, v in query.items()} or None)


@pytest.fixture
def big(s3_server, images, index_fn, lambda_context):
    """2,500 small objects (not images) and three real photos, indexed by the IndexFunction."""
    client, name = s3_server, s3_server.harmony_bucket

    def put(i: int) -> None:
        client.put_object(Bucket=name, Key=f"catalog/bulk/{i:05d}.bin", Body=b"x" * (i % 7))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(N_KEYS - len(INDEXED))))
    for n in INDEXED:
        meta = {"source-url": "https://example.com/" + n} if n == "coffee.jpg" else {}
        client.put_object(Bucket=name, Key="catalog/" + n, Body=images[n], Metadata=meta)
        out = index_fn.lambda_handler(s3_event("s3-catalog-put.json", name, "catalog/" + n), lambda_context)
        assert out["results"][0]["action"] == "indexed"
    return client


def test_list_pages_through_2500_keys(big, search_fn, lambda_context):
    seen: list[dict] = []
    cursor = None
    pages = 0
    t0 = time.perf_counter()
    while True:
        q = {"limit": 1000} | ({"cursor": cursor} if cursor else {})
        status, out = call(search_fn, lambda_context, list_event(**q))
        assert status == 200, out
        pages += 1
        assert out["count"] == len(out["items"]) <= 1000
        seen += out["items"]
        cursor = out["next_cursor"]
        if cursor is None:
            break
    took = time.perf_counter() - t0
    assert pages == 3, pages
    keys = [it["key"] for it in seen]
    assert len(keys) == len(set(keys)) == N_KEYS
    assert keys == sorted(keys)
    by_key = {it["key"]: it for it in seen}
    assert {k for k, it in by_key.items() if it["indexed"]} == {"catalog/" + n for n in INDEXED}
    assert by_key["catalog/coffee.jpg"]["source_url"] == "https://example.com/coffee.jpg"
    assert by_key["catalog/chelsea.jpg"]["source_url"] is None
    assert by_key["catalog/bulk/00003.bin"] | {"last_modified": None, "url": None} == {
        "key": "catalog/bulk/00003.bin",
        "name": "bulk/00003.bin",
        "size": 3,
        "last_modified": None,
        "source_url": None,
        "url": None,
        "indexed": False,
        "duplicate_of": None,
    }
    # url: the source URL, else a presigned GET of the object (the page's thumbnail)
    assert by_key["catalog/coffee.jpg"]["url"] == "https://example.com/coffee.jpg"
    presigned = urlsplit(by_key["catalog/bulk/00003.bin"]["url"])
    assert presigned.path == f"/{big.harmony_bucket}/catalog/bulk/00003.bin" and "Signature=" in presigned.query
    print(f"2,500 keys in {pages} pages: {took:.1f} s")

    # prefix and the default limit
    status, out = call(search_fn, lambda_context, list_event(prefix="bulk/00"))
    assert status == 200 and out["count"] == 100 and out["prefix"] == "bulk/00"
    assert all(it["name"].startswith("bulk/00") for it in out["items"])
    status, out2 = call(search_fn, lambda_context, list_event(prefix="bulk/00", cursor=out["next_cursor"]))
    assert status == 200 and out2["items"][0]["name"] == "bulk/00100.bin" and out2["next_cursor"]
    status, last = call(search_fn, lambda_context, list_event(prefix="bulk/024"))
    assert status == 200 and last["count"] == 97 and last["next_cursor"] is None
    # a cursor is valid only with its own prefix
    status, err = call(search_fn, lambda_context, list_event(prefix="bulk/", cursor=out["next_cursor"]))
    assert status == 400 and err["error"]["code"] == "bad_cursor"


def test_indexed_means_the_record_is_current(s3_server, images, index_fn, lambda_context, search_fn):
    client, name = s3_server, s3_server.harmony_bucket
    client.put_object(Bucket=name, Key="catalog/a.jpg", Body=images["chelsea.jpg"])
    index_fn.lambda_handler(s3_event("s3-catalog-put.json", name, "catalog/a.jpg"), lambda_context)
    client.put_object(Bucket=name, Key="catalog/a.jpg", Body=images["coffee.jpg"])  # no event yet
    status, out = call(search_fn, lambda_context, list_event())
    assert status == 200 and [(it["key"], it["indexed"]) for it in out["items"]] == [("catalog/a.jpg", False)]


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ({"limit": 0}, 422, "validation_error"),
        ({"limit": 1001}, 422, "validation_error"),
        ({"limit": "many"}, 422, "validation_error"),
        ({"cursor": "not-a-cursor"}, 400, "bad_cursor"),
        ({"cursor": base64.urlsafe_b64encode(b'{"p": "", "t": 5}').decode()}, 400, "bad_cursor"),
        ({"prefix": "../index/"}, 400, "bad_key"),
        ({"prefix": "/etc"}, 400, "bad_key"),
    ],
)
def test_list_bad_input(s3_server, search_fn, lambda_context, query, status, code):
    got, out = call(search_fn, lambda_context, list_event(**query))
    assert (got, out["error"]["code"]) == (status, code), out
    assert set(out["error"]) == {"code", "message"}


def test_delete_removes_object_and_record_and_search_forgets_it(s3_server, images, index_fn, lambda_context, search_fn):
    client, name = s3_server, s3_server.harmony_bucket
    keys = {n: f"catalog/sub dir/{n}" for n in CATALOG_NAMES}
    for n, key in keys.items():
        client.put_object(Bucket=name, Key=key, Body=images[n])
        index_fn.lambda_handler(s3_event("s3-catalog-put.json", name, key), lambda_context)
    query = base64.b64encode(images["chelsea.jpg"]).decode()
    body = json.dumps({"image_base64": query})

    status, out = call(search_fn, lambda_context, api_event("POST", body, "application/json"))
    assert status == 200 and out["results"][0]["key"] == keys["chelsea.jpg"]  # the warm index holds it

    raw = quote("sub dir/chelsea.jpg", safe="")  # %2F for the slash: either form works
    status, out = call(search_fn, lambda_context, delete_event(raw))
    assert status == 200, out
    assert out == {"deleted": keys["chelsea.jpg"], "object": "deleted", "record": "removed"}
    for k in (keys["chelsea.jpg"], record_key(keys["chelsea.jpg"])):
        with pytest.raises(client.exceptions.ClientError):
            client.head_object(Bucket=name, Key=k)

    status, out = call(search_fn, lambda_context, api_event("POST", body, "application/json"))
    assert status == 200 and keys["chelsea.jpg"] not in [r["key"] for r in out["results"]]
    assert out["catalog_size"] == len(CATALOG_NAMES) - 1

    # the ObjectRemoved event that follows reconciles again, harmlessly
    ev = s3_event("s3-catalog-delete.json", name, keys["chelsea.jpg"])
    assert index_fn.lambda_handler(ev, lambda_context)["results"][0]["action"] == "absent"

    # literal slashes, as a client that does not encode them sends them
    status, out = call(search_fn, lambda_context, delete_event("sub%20dir/coffee.jpg"))
    assert status == 200 and out["deleted"] == keys["coffee.jpg"]

    # again: 404
    status, out = call(search_fn, lambda_context, delete_event(raw))
    assert (status, out["error"]["code"]) == (404, "key_not_found")


@pytest.mark.parametrize(
    "raw",
    ["..%2Findex%2Frecords%2Fx.npz", "a/../../index/x", "%2Fetc%2Fpasswd", "manifest.json", "a/./b.jpg", "%ff.jpg"],
)
def test_delete_refuses_keys_outside_the_catalog(s3_server, search_fn, lambda_context, raw):
    status, out = call(search_fn, lambda_context, delete_event(raw))
    assert status == 400 and set(out["error"]) == {"code", "message"}, out


def test_delete_of_a_missing_key_is_404(s3_server, search_fn, lambda_context):
    status, out = call(search_fn, lambda_context, delete_event("nope.jpg"))
    assert (status, out["error"]["code"]) == (404, "key_not_found")


def test_openapi_documents_the_catalog_routes(s3_server, search_fn, lambda_context):
    paths = search_fn.app.get_openapi_schema().paths
    assert "/catalog" in paths and "/catalog/{key}" in paths
    params = {p.name: p for p in paths["/catalog"].get.parameters}
    assert set(params) == {"prefix", "limit", "cursor"}
    assert paths["/catalog/{key}"].delete is not None


def test_a_token_s3_refuses_is_bad_cursor(s3_server, search_fn, lambda_context, monkeypatch):
    from botocore.exceptions import ClientError

    from harmony_aws import runtime

    def refuse(**kw):
        raise ClientError({"Error": {"Code": "InvalidArgument", "Message": "bad token"}}, "ListObjectsV2")

    monkeypatch.setattr(runtime.catalog_ops().bucket.client, "list_objects_v2", refuse)
    status, out = call(search_fn, lambda_context, list_event(cursor=encode_cursor("", "forged")))
    assert (status, out["error"]["code"]) == (400, "bad_cursor"), out


def test_cursor_and_key_checks():
    c = encode_cursor("shoes/", "tok")
    assert decode_cursor(c, "shoes/") == "tok"
    for bad in ("", "!!!", base64.urlsafe_b64encode(b"[]").decode()):
        with pytest.raises(BadCursorError):
            decode_cursor(bad or "x", "shoes/")
    with pytest.raises(BadCursorError):
        decode_cursor(c, "hats/")
    assert check_rel("a/b c/é.jpg") == "a/b c/é.jpg"
    for bad in ("..", "a/../b", "/a", "a\x00b", "x" * 2000):
        with pytest.raises(BadKeyError):
            check_rel(bad)


def test_cors_preflight_allows_delete(s3_server, search_fn, lambda_context):
    """A page on another origin may DELETE (the resolver's preflight; template.yaml's Api Cors says
    the same for API Gateway's) and read a started job's Location."""
    ev = delete_event("chelsea.jpg")
    ev["httpMethod"] = ev["requestContext"]["httpMethod"] = "OPTIONS"
    ev["headers"] = {"Origin": "https://example.com", "Access-Control-Request-Method": "DELETE"}
    ev["multiValueHeaders"] = {k: [v] for k, v in ev["headers"].items()}
    resp = search_fn.lambda_handler(ev, lambda_context)
    headers = resp.get("multiValueHeaders") or {}
    allowed = {m.strip() for v in headers.get("Access-Control-Allow-Methods", []) for m in v.split(",")}
    assert resp["statusCode"] == 204 and "DELETE" in allowed, resp
    assert headers["Access-Control-Allow-Origin"] == ["*"]
    assert "Location" in headers["Access-Control-Expose-Headers"][0]
