"""harmony_aws records (write path), reader (warm index) and urls: per-object index records,
reconcile, warm index, result URLs.

Runs each behaviour against moto in-process (mock_aws) and against moto's HTTP server."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from harmony_aws import journal, runtime
from harmony_aws import records as records_mod
from harmony_aws.errors import StorageError
from harmony_aws.layout import RECORDS_PREFIX, record_key, record_name, rel_from_record_name
from harmony_aws.reader import IndexReader
from harmony_aws.s3 import Bucket
from harmony_aws.urls import ResultUrls
from harmony_image import ImageError, ImageFeatures, extract_features, parse_manifest
from tests.hostile import png_claiming
from tests.support import BUCKET, CATALOG_NAMES, all_keys, put_catalog, record_writer, s3_event


@pytest.fixture(params=["mock_aws", "moto_server"])
def bucket(request, images):
    """(client, bucket name) — in-process moto or moto's HTTP server."""
    if request.param == "mock_aws":
        client = request.getfixturevalue("s3")
        return client, BUCKET
    client = request.getfixturevalue("s3_server")
    return client, client.harmony_bucket


class Store:
    """One bucket's adapters with their own client, wired as harmony_aws.runtime wires them."""

    def __init__(self, name: str, *, index_ttl: float = 10.0) -> None:
        self.bucket = Bucket(name)
        self.records = record_writer(self.bucket)
        self.urls = ResultUrls(self.bucket, presign_seconds=900)
        self.reader = IndexReader(self.bucket, self.urls, ttl=index_ttl)


def make_store(client, name, **kw) -> Store:
    return Store(name, **kw)


def records(client, name) -> dict[str, dict]:
    """catalog key -> record metadata, read straight from S3."""
    out = {}
    for rk in all_keys(client, name, RECORDS_PREFIX):
        head = client.head_object(Bucket=name, Key=rk)
        from urllib.parse import unquote

        out[unquote(head["Metadata"]["catalog-key"])] = head["Metadata"]
    return out


def test_record_names_roundtrip():
    for rel in ["a.jpg", "dir/sub/é ü.png", "x" * 600, "weird+key=1&b.jpg"]:
        name = record_name(rel)
        assert "/" not in name and name.endswith(".npz")
        assert rel_from_record_name(name) == rel
    long = "é" * 500  # 1000 bytes: too long for base64 in a 1024-byte S3 key
    name = record_name(long)
    assert name.endswith(".h.npz") and len(name) < 100
    assert rel_from_record_name(name) is None


def test_manifest_mapping():
    m = parse_manifest(
        json.dumps(
            [
                {"url": "https://cdn.example.com/img/chelsea.jpg"},
                {"url": "https://cdn.example.com/x?id=1", "key": "sub/coffee.jpg"},
                {"url": "https://cdn.example.com/a%20b.png"},
                {"nourl": 1},
            ]
        ).encode()
    )
    assert m == {
        "chelsea.jpg": "https://cdn.example.com/img/chelsea.jpg",
        "sub/coffee.jpg": "https://cdn.example.com/x?id=1",
        "a b.png": "https://cdn.example.com/a%20b.png",
    }


def test_reconcile_add_replace_remove(bucket, images):
    client, name = bucket
    store = make_store(client, name)
    key = "catalog/photos/chelsea one.jpg"
    client.put_object(Bucket=name, Key=key, Body=images["chelsea.jpg"])
    r = store.records.reconcile(key)
    assert r.action == "indexed"
    recs = records(client, name)
    assert list(recs) == [key]
    etag = client.head_object(Bucket=name, Key=key)["ETag"]
    assert recs[key]["source-etag"] == etag
    # stored features are the object's
    rk = record_key(key)
    feats = ImageFeatures.from_bytes(client.get_object(Bucket=name, Key=rk)["Body"].read())
    assert feats.sha256 == hashlib.sha256(images["chelsea.jpg"]).hexdigest()

    # duplicate event: nothing rewritten
    rec_etag = client.head_object(Bucket=name, Key=rk)["ETag"]
    assert store.records.reconcile(key).action == "unchanged"
    assert client.head_object(Bucket=name, Key=rk)["ETag"] == rec_etag

    # replaced content
    client.put_object(Bucket=name, Key=key, Body=images["coffee.jpg"])
    assert store.records.reconcile(key).action == "indexed"
    feats = ImageFeatures.from_bytes(client.get_object(Bucket=name, Key=rk)["Body"].read())
    assert feats.sha256 == hashlib.sha256(images["coffee.jpg"]).hexdigest()

    # removed
    client.delete_object(Bucket=name, Key=key)
    assert store.records.reconcile(key).action == "removed"
    assert records(client, name) == {}
    assert store.records.reconcile(key).action == "absent"  # delivered twice


@pytest.mark.parametrize(
    "body,code",
    [
        (b"", "empty_image"),
        (b"just some text, not an image", "not_an_image"),
        ("truncated", "truncated_image"),
        ("huge", "image_too_large"),
    ],
)
def test_bad_catalog_objects_write_no_record(bucket, images, body, code):
    client, name = bucket
    if body == "truncated":
        body = images["chelsea.jpg"][: len(images["chelsea.jpg"]) // 3]
    elif body == "huge":
        body = png_claiming(50_000, 50_000)
    store = make_store(client, name)
    key = "catalog/bad.png"
    client.put_object(Bucket=name, Key=key, Body=body)
    r = store.records.reconcile(key)
    assert r.action == "skipped" and r.detail.startswith(code), r
    assert all_keys(client, name, "index/") == {}


def test_bad_replacement_removes_stale_record(bucket, images):
    client, name = bucket
    store = make_store(client, name)
    key = "catalog/x.jpg"
    client.put_object(Bucket=name, Key=key, Body=images["chelsea.jpg"])
    store.records.reconcile(key)
    client.put_object(Bucket=name, Key=key, Body=b"<html>not an image</html>")
    assert store.records.reconcile(key).action == "skipped"
    assert all_keys(client, name, RECORDS_PREFIX) == {}
    # the journal says so: the record's put, then its delete
    entries = list(journal.since(Bucket(name), journal.cursor_at(0), [journal.partition(0, 1)]))  # no manifest: 1
    assert [(e.action, e.record_key) for e in entries] == [("put", record_key(key)), ("delete", record_key(key))]
    assert set(all_keys(client, name, "index/")) == {e.key for e in entries}


def test_manifest_and_folders_are_not_indexed(bucket, images):
    client, name = bucket
    store = make_store(client, name)
    client.put_object(Bucket=name, Key="catalog/manifest.json", Body=b"[]")
    client.put_object(Bucket=name, Key="catalog/folder/", Body=b"")
    assert store.records.reconcile("catalog/manifest.json").action == "skipped"
    assert store.records.reconcile("catalog/folder/").action == "skipped"
    # a local index uploaded with its folder (aws s3 cp --recursive without --exclude) is not a catalog
    client.put_object(Bucket=name, Key="catalog/.harmony/records-v3/x.npz", Body=images["chelsea.jpg"])
    client.put_object(Bucket=name, Key="catalog/shoes/.DS_Store.jpg", Body=images["chelsea.jpg"])
    assert store.records.reconcile("catalog/.harmony/records-v3/x.npz").action == "skipped"
    assert store.records.reconcile("catalog/shoes/.DS_Store.jpg").action == "skipped"
    assert all_keys(client, name, "index/records/") == {}
    assert store.records.reconcile("queries/x.jpg").action == "skipped"
    assert all_keys(client, name, "index/") == {}


def test_warm_index_picks_up_changes_and_urls(bucket, images):
    client, name = bucket
    put_catalog(
        client,
        name,
        images,
        names=CATALOG_NAMES[:4],
        metadata={"astronaut.jpg": {"source-url": "https://images.example.com/astro naut.jpg?a=1&b=%20"}},
    )
    client.put_object(
        Bucket=name,
        Key="catalog/manifest.json",
        Body=json.dumps(
            [{"url": "https://cdn.example.com/brick.jpg"}, {"url": "https://cdn.example.com/astronaut.jpg"}]
        ).encode(),
    )
    store = make_store(client, name, index_ttl=0.0)
    for n in CATALOG_NAMES[:4]:
        store.records.reconcile("catalog/" + n)
    index = store.reader.index()
    assert sorted(index.keys()) == sorted("catalog/" + n for n in CATALOG_NAMES[:4])
    assert store.reader.last_refresh["loaded"] == 4

    by_key = {e: index.get(e).url for e in index.keys()}  # noqa: SIM118 - SearchIndex is not iterable
    # object metadata wins over the manifest; manifest next; else the key (presigned at response time)
    assert by_key["catalog/astronaut.jpg"] == "https://images.example.com/astro naut.jpg?a=1&b=%20"
    assert by_key["catalog/brick.jpg"] == "https://cdn.example.com/brick.jpg"
    assert by_key["catalog/camera.jpg"] == "catalog/camera.jpg"
    url = store.urls.for_result("catalog/camera.jpg", "catalog/camera.jpg")
    q = parse_qs(urlsplit(url).query)
    assert "X-Amz-Signature" in q and q["X-Amz-Expires"] == ["900"]
    assert urlsplit(url).path.endswith("/catalog/camera.jpg")

    # nothing changed: a refresh loads nothing
    store.reader.index()
    assert store.reader.last_refresh["loaded"] == 0 and store.reader.last_refresh["removed"] == 0

    # a change, a removal and a new manifest are picked up
    client.put_object(Bucket=name, Key="catalog/camera.jpg", Body=images["coins.jpg"])
    store.records.reconcile("catalog/camera.jpg")
    client.delete_object(Bucket=name, Key="catalog/brick.jpg")
    store.records.reconcile("catalog/brick.jpg")
    client.put_object(
        Bucket=name,
        Key="catalog/manifest.json",
        Body=json.dumps([{"url": "https://cdn2.example.com/c.jpg", "key": "camera.jpg"}]).encode(),
    )
    index = store.reader.index()
    assert store.reader.last_refresh == {
        **store.reader.last_refresh,
        "loaded": 1,
        "removed": 1,
        "manifest_changed": True,
    }
    assert "catalog/brick.jpg" not in index
    assert index.get("catalog/camera.jpg").features.sha256 == hashlib.sha256(images["coins.jpg"]).hexdigest()
    assert index.get("catalog/camera.jpg").url == "https://cdn2.example.com/c.jpg"


def test_ttl_keeps_warm_index_between_refreshes(bucket, images):
    client, name = bucket
    store = make_store(client, name, index_ttl=3600)
    put_catalog(client, name, images, names=["chelsea.jpg"])
    store.records.reconcile("catalog/chelsea.jpg")
    assert len(store.reader.index()) == 1
    put_catalog(client, name, images, names=["coffee.jpg"])
    store.records.reconcile("catalog/coffee.jpg")
    assert len(store.reader.index()) == 1  # within the TTL: served from memory
    assert len(store.reader.index(force=True)) == 2


def test_damaged_record_is_skipped_not_fatal(bucket, images):
    client, name = bucket
    store = make_store(client, name, index_ttl=0)
    put_catalog(client, name, images, names=["chelsea.jpg", "coffee.jpg"])
    store.records.reconcile("catalog/chelsea.jpg")
    store.records.reconcile("catalog/coffee.jpg")
    rk = record_key("catalog/coffee.jpg")
    meta = client.head_object(Bucket=name, Key=rk)["Metadata"]
    client.put_object(Bucket=name, Key=rk, Body=b"garbage", Metadata=meta)
    assert store.reader.index().keys() == ["catalog/chelsea.jpg"]
    assert store.reader.status == {"complete": False, "missing": 1}  # served, flagged
    # a re-index reads record bodies back: no `force` needed to find and repair it
    report = store.records.reindex()
    assert (report.counts, report.complete, report.failed) == ({"indexed": 1, "unchanged": 1}, True, [])
    assert sorted(store.reader.index().keys()) == ["catalog/chelsea.jpg", "catalog/coffee.jpg"]
    assert store.reader.status == {"complete": True, "missing": 0}  # the flag clears
    # a forced re-index recomputes every record
    assert store.records.reindex(force=True).counts == {"indexed": 2}
    assert sorted(store.reader.index().keys()) == ["catalog/chelsea.jpg", "catalog/coffee.jpg"]


@pytest.mark.parametrize("failures", [1, 2])
def test_a_record_that_fails_to_load_for_another_reason_is_loaded_again_not_rejected(
    bucket, images, monkeypatch, failures
):
    """A good record whose load raised something that is not about S3 or its bytes (an
    interpreter's SystemError, as CPython 3.11's ast module can raise under threads, from numpy's
    header parse) is not taken for damaged, which would hide it until a re-index: it is loaded once
    more at once, and when that fails too, at the next refresh."""
    client, name = bucket
    store = make_store(client, name, index_ttl=0)
    put_catalog(client, name, images, names=["chelsea.jpg", "coffee.jpg"])
    store.records.reconcile("catalog/chelsea.jpg")
    store.records.reconcile("catalog/coffee.jpg")
    coffee = extract_features(images["coffee.jpg"]).sha256
    load = np.load
    failed: list[str] = []

    def flaky_load(*args, **kwargs):
        npz = load(*args, **kwargs)
        if coffee in npz["meta"].tobytes().decode() and len(failed) < failures:
            failed.append(coffee)
            raise SystemError("AST constructor recursion depth mismatch")
        return npz

    monkeypatch.setattr(np, "load", flaky_load)
    both = ["catalog/chelsea.jpg", "catalog/coffee.jpg"]
    if failures == 2:
        assert store.reader.index().keys() == ["catalog/chelsea.jpg"]
        assert store.reader.status == {"complete": False, "missing": 1}
    assert sorted(store.reader.index().keys()) == both and len(failed) == failures
    assert store.reader.status == {"complete": True, "missing": 0}


# --------------------------------------------------------------------------- the event storm
def _expected_state(client, name) -> dict[str, str]:
    """catalog key -> sha256 for every catalog object that is a usable image."""
    out = {}
    for key in all_keys(client, name, "catalog/"):
        if key == "catalog/manifest.json":
            continue
        data = client.get_object(Bucket=name, Key=key)["Body"].read()
        with contextlib.suppress(ImageError):  # not an image: must not be indexed
            out[key] = extract_features(data).sha256
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_event_storm_converges_to_bucket(s3_server, images, index_fn, lambda_context, seed, monkeypatch):
    """Many concurrent IndexFunction invocations while the catalog keeps changing under them;
    every event is delivered once to three times, each delivery after a random delay (so out of
    order). When the storm is over, the records are exactly the bucket.

    Invocations take a random 0-40 ms longer to compute features (as real ones vary, cold starts
    more so), and a failed invocation is retried after a delay, as Lambda retries asynchronous
    invocations. (A reconcile that does not re-check the source after writing fails this.)"""
    client, name = s3_server, s3_server.harmony_bucket
    rng = random.Random(seed)
    keys = [f"catalog/storm/{i} photo é.jpg" for i in range(4)]  # few keys: many collisions
    contents = [images[n] for n in CATALOG_NAMES] + [b"not an image at all"]
    results: list[dict] = []
    retries: list[str] = []

    real_extract = records_mod.extract_features
    jitter = random.Random(seed + 100)

    def slow_extract(data, **kw):
        time.sleep(jitter.random() * 0.04)
        return real_extract(data, **kw)

    monkeypatch.setattr(records_mod, "extract_features", slow_extract)

    def deliver(ev, delay, attempt=0):
        time.sleep(delay)
        try:
            out = index_fn.lambda_handler(ev, lambda_context)
        except StorageError:
            assert attempt < 2, "failed after Lambda's two retries"
            retries.append(ev["Records"][0]["s3"]["object"]["key"])
            return deliver(ev, 0.2, attempt + 1)
        results.extend(out["results"])
        return None

    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = []
        for _ in range(80):
            key = rng.choice(keys)
            if rng.random() < 0.3:
                client.delete_object(Bucket=name, Key=key)
                ev = s3_event("s3-catalog-delete.json", name, key)
            else:
                client.put_object(Bucket=name, Key=key, Body=rng.choice(contents))
                ev = s3_event("s3-catalog-put.json", name, key)
            for _ in range(rng.choice([1, 1, 2, 3])):  # at-least-once delivery
                futures.append(pool.submit(deliver, ev, rng.random() * 0.05))
            time.sleep(rng.random() * 0.004)
        for f in futures:
            f.result()  # no invocation may fail

    assert len(results) >= 80
    expected = _expected_state(client, name)
    got = records(client, name)
    assert sorted(got) == sorted(expected)
    for key, meta in got.items():
        assert meta["source-etag"] == client.head_object(Bucket=name, Key=key)["ETag"], key
    index = runtime.search_service(name).reader.index(force=True)
    assert {k: index.get(k).features.sha256 for k in index.keys()} == expected  # noqa: SIM118


def test_slow_stale_writer_is_corrected(bucket, images, monkeypatch):
    """The race that breaks a naive reconcile, made deterministic: invocation A reads version 1
    and is slow; meanwhile the object becomes version 2 and invocation B indexes it; then A
    writes its stale record. A must notice (the source changed) and end with version 2."""
    client, name = bucket

    key = "catalog/race.jpg"
    v1, v2 = images["chelsea.jpg"], images["coffee.jpg"]
    client.put_object(Bucket=name, Key=key, Body=v1)
    real_extract = records_mod.extract_features
    a_reading, a_go = threading.Event(), threading.Event()

    def extract(data, **kw):
        if data == v1 and not a_go.is_set():
            a_reading.set()
            assert a_go.wait(10)
        return real_extract(data, **kw)

    monkeypatch.setattr(records_mod, "extract_features", extract)
    store_a, store_b = make_store(client, name), make_store(client, name)
    with ThreadPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(store_a.records.reconcile, key)
        assert a_reading.wait(10)
        client.put_object(Bucket=name, Key=key, Body=v2)
        assert store_b.records.reconcile(key).action == "indexed"
        a_go.set()
        result = fut.result(timeout=30)
    assert result.action == "indexed" and result.rounds == 2
    rk = record_key(key)
    feats = ImageFeatures.from_bytes(client.get_object(Bucket=name, Key=rk)["Body"].read())
    assert feats.sha256 == hashlib.sha256(v2).hexdigest()
    assert (
        client.head_object(Bucket=name, Key=rk)["Metadata"]["source-etag"]
        == client.head_object(Bucket=name, Key=key)["ETag"]
    )
