"""S3 faults, one at a time: the adapters (s3, records, reader, querydrop) and the S3-triggered
handlers behind tests/faultproxy.py in front of moto's server, with rules that make S3 fail for
one key - a body cut in the middle, a corrupted body, 500s that do not stop - then heal.

What must hold: a broken answer is never taken for the object (no short bytes, no "truncated
image", no record deleted); what S3 keeps failing is raised (so Lambda retries) or reported (reindex,
the index status); what succeeds is not undone; everything converges once S3 heals.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from botocore.config import Config

from harmony_aws import runtime
from harmony_aws.errors import EventRecordsFailedError, StorageError
from harmony_aws.layout import RECORDS_PREFIX, record_key
from harmony_aws.querydrop import answer_query
from harmony_aws.reader import RETRY_SECONDS, IndexReader
from harmony_aws.s3 import BODY_ATTEMPTS, MAX_RETRIES, Bucket, etag_is_md5, s3_client
from harmony_aws.sources import ImageBytes
from harmony_aws.urls import ResultUrls
from harmony_image import ImageFeatures, SearchParams
from tests.faultproxy import FaultProxy
from tests.support import all_keys, record_writer, s3_event

NAMES = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]


class Faulty:
    """moto's server behind a FaultProxy; the adapters go through the proxy, ``direct`` does not."""

    def __init__(self, proxy: FaultProxy, direct: Any, bucket: str) -> None:
        self.proxy, self.direct, self.name = proxy, direct, bucket
        self.bucket = Bucket(bucket, s3_client())
        self.writer = record_writer(self.bucket)

    def reader(self, ttl: float = 3600.0) -> IndexReader:
        return IndexReader(self.bucket, ResultUrls(self.bucket, presign_seconds=900), ttl=ttl)

    def put(self, key: str, data: bytes) -> str:
        etag: str = self.direct.put_object(Bucket=self.name, Key=key, Body=data)["ETag"]
        return etag

    def record(self, key: str) -> tuple[str, dict[str, str], str]:
        """(ETag, metadata, features sha256) of ``key``'s record, read straight from moto."""
        r = self.direct.get_object(Bucket=self.name, Key=record_key(key))
        return r["ETag"], r["Metadata"], ImageFeatures.from_bytes(r["Body"].read()).sha256


@pytest.fixture
def faulty(moto_server_url: str, s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Faulty]:
    # Uploaded without an additional checksum: only the ETag (MD5) can tell a changed body here.
    direct = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=moto_server_url,
        config=Config(request_checksum_calculation="when_required"),
    )
    with FaultProxy(moto_server_url, seed=7) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        runtime.reset()
        yield Faulty(proxy, direct, s3_server.harmony_bucket)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- s3.py
def test_the_proxy_really_cuts_and_plain_boto3_takes_the_short_body(faulty, images):
    """The fault this is all about, shown without our code: a connection cut in the middle of a
    GetObject body reaches `Body.read(cap + 1)` as fewer bytes, no error."""
    data = images["chelsea.jpg"]
    faulty.put("catalog/a.jpg", data)
    faulty.proxy.fail("cut_body", "/catalog/a.jpg", method="GET", times=1)
    body = s3_client().get_object(Bucket=faulty.name, Key="catalog/a.jpg")["Body"]
    got = body.read(len(data) + 1)
    assert 0 < len(got) < len(data)


def test_read_retries_a_body_cut_midway_and_returns_it_whole(faulty, images):
    data = images["chelsea.jpg"]
    etag = faulty.put("catalog/a.jpg", data)
    faulty.proxy.fail("cut_body", "/catalog/a.jpg", method="GET", times=BODY_ATTEMPTS - 1)
    got, head = faulty.bucket.read("catalog/a.jpg", max_bytes=1 << 24)
    assert got == data and head.etag == etag and head.size == len(data)
    assert faulty.proxy.counts["cut_body"] == BODY_ATTEMPTS - 1


def test_read_never_returns_a_short_body(faulty, images):
    faulty.put("catalog/a.jpg", images["chelsea.jpg"])
    faulty.proxy.fail("cut_body", "/catalog/a.jpg", method="GET")
    with pytest.raises(StorageError, match="arrived broken 3 times"):
        faulty.bucket.read("catalog/a.jpg", max_bytes=1 << 24)
    assert faulty.proxy.counts["cut_body"] == BODY_ATTEMPTS


def test_read_checks_the_body_against_the_etag(faulty, images):
    data = images["coffee.jpg"]
    faulty.put("catalog/a.jpg", data)
    faulty.proxy.fail("corrupt_body", "/catalog/a.jpg", method="GET", times=1)
    got, _ = faulty.bucket.read("catalog/a.jpg", max_bytes=1 << 24)
    assert got == data and faulty.proxy.counts["corrupt_body"] == 1
    faulty.proxy.fail("corrupt_body", "/catalog/a.jpg", method="GET")
    with pytest.raises(StorageError, match="does not match ETag"):
        faulty.bucket.read("catalog/a.jpg", max_bytes=1 << 24)


def test_etag_is_md5_only_where_s3_says_so():
    md5 = '"9dd4e461268c8034f5c8564e155c67a6"'
    assert etag_is_md5(md5) and etag_is_md5(md5, "AES256")
    assert not etag_is_md5(md5, "aws:kms") and not etag_is_md5(md5, "aws:kms:dsse")
    assert not etag_is_md5(md5, None, "AES256")  # SSE-C
    assert not etag_is_md5('"9dd4e461268c8034f5c8564e155c67a6-3"')  # multipart


def test_head_and_listing_cut_anywhere_are_retried(faulty, images):
    etag = faulty.put("catalog/a.jpg", images["chelsea.jpg"])
    faulty.direct.put_object(Bucket=faulty.name, Key="catalog/b.jpg", Body=b"x", Metadata={"source-url": "https://x/b"})
    for _ in range(5):  # cuts at random points: the status line, a header, between headers
        faulty.proxy.fail("cut", "/catalog/", method="HEAD", times=1)
        assert faulty.bucket.head("catalog/a.jpg").etag == etag
        faulty.proxy.fail("cut", "/catalog/", method="HEAD", times=1)
        assert faulty.bucket.head("catalog/b.jpg").metadata == {"source-url": "https://x/b"}
        faulty.proxy.fail("cut", "list-type=2", method="GET", times=1)
        assert set(faulty.bucket.etags("catalog/")) == {"catalog/a.jpg", "catalog/b.jpg"}
    faulty.proxy.fail("cut_body", "list-type=2", method="GET", times=2)
    assert set(faulty.bucket.etags("catalog/")) == {"catalog/a.jpg", "catalog/b.jpg"}
    assert faulty.proxy.counts["cut"] == 15 and faulty.proxy.counts["cut_body"] == 2


def test_errors_after_botocores_retries_are_storage_errors(faulty):
    faulty.proxy.fail("error500", "/catalog/a.jpg")
    with pytest.raises(StorageError, match=f"after {MAX_RETRIES} retries"):
        faulty.bucket.head("catalog/a.jpg")
    faulty.proxy.heal()
    assert faulty.bucket.head("catalog/a.jpg") is None  # a real 404 is an answer, not an error


# --------------------------------------------------------------------------- records.py
def test_a_read_error_never_deletes_a_record(faulty, images):
    """The issue's lost records: a valid record, its source replaced, the new download cut every
    time. Before: the short bytes were a `truncated_image`, the record was deleted and the event
    counted as done. Now: the record stays, reconcile raises, and heals once S3 does."""
    key = "catalog/a.jpg"
    faulty.put(key, images["chelsea.jpg"])
    assert faulty.writer.reconcile(key).action == "indexed"
    before = faulty.record(key)
    faulty.put(key, images["coffee.jpg"])
    faulty.proxy.fail("cut_body", "/catalog/a.jpg", method="GET")
    with pytest.raises(StorageError):
        faulty.writer.reconcile(key)
    assert faulty.record(key) == before
    faulty.proxy.heal()
    assert faulty.writer.reconcile(key).action == "indexed"
    assert faulty.record(key)[2] == sha(images["coffee.jpg"])


def test_a_truncated_catalog_object_is_still_skipped(faulty, images):
    """The real thing (a truncated file in the bucket) is told apart from a cut download."""
    key = "catalog/a.jpg"
    faulty.put(key, images["chelsea.jpg"][:5000])
    faulty.proxy.fail("cut_body", "/catalog/a.jpg", method="GET", times=1)
    r = faulty.writer.reconcile(key)
    assert r.action == "skipped" and r.detail.startswith("truncated_image"), r


def test_reindex_goes_on_past_failures_and_reports_them(faulty, images):
    keys = [f"catalog/{n}" for n in NAMES]
    for k, n in zip(keys, NAMES, strict=True):
        faulty.put(k, images[n])
    faulty.proxy.fail("error500", "/catalog/chelsea.jpg", method="GET")
    report = faulty.writer.reindex()
    assert report.counts == {"indexed": 3, "failed": 1}
    assert [f["key"] for f in report.failed] == ["catalog/chelsea.jpg"]
    assert "StorageError" in report.failed[0]["error"]
    assert (report.keys, report.attempted, report.complete) == (4, 4, False)
    assert sorted(all_keys(faulty.direct, faulty.name, RECORDS_PREFIX)) == sorted(
        record_key(k) for k in keys if k != "catalog/chelsea.jpg"
    )
    faulty.proxy.heal()
    report = faulty.writer.reindex()
    assert (report.counts, report.complete) == ({"indexed": 1, "unchanged": 3}, True)


def test_reindex_verifies_record_bodies_without_force(faulty, images):
    """Junk under a record's current metadata (the metadata says "up to date"): the event path
    trusts it, reindex reads it back and rewrites it."""
    key = "catalog/a.jpg"
    faulty.put(key, images["chelsea.jpg"])
    faulty.writer.reconcile(key)
    _, meta, _ = faulty.record(key)
    faulty.put("catalog/b.jpg", images["coffee.jpg"])
    faulty.writer.reconcile("catalog/b.jpg")
    b_body = faulty.direct.get_object(Bucket=faulty.name, Key=record_key("catalog/b.jpg"))["Body"].read()
    for junk in (b"junk", b_body):  # unreadable, then another image's features under a's metadata
        faulty.direct.put_object(Bucket=faulty.name, Key=record_key(key), Body=junk, Metadata=meta)
        assert faulty.writer.reconcile(key).action == "unchanged"  # metadata only
        report = faulty.writer.reindex()
        assert report.counts == {"indexed": 1, "unchanged": 1}, report
        assert faulty.record(key)[2] == sha(images["chelsea.jpg"])
    assert faulty.writer.reindex().counts == {"unchanged": 2}


def test_records_under_another_keys_name_are_not_served_and_reindex_removes_them(faulty, images):
    """A record whose name is not its catalog-key's record name: before, search served it (the
    wrong features under a's key) and reindex kept it, even with force."""
    for n in ("astronaut.jpg", "chelsea.jpg"):
        faulty.put("catalog/" + n, images[n])
        faulty.writer.reconcile("catalog/" + n)
    _, meta_a, sha_a = faulty.record("catalog/astronaut.jpg")
    chelsea_body = faulty.direct.get_object(Bucket=faulty.name, Key=record_key("catalog/chelsea.jpg"))["Body"].read()
    stray = [
        RECORDS_PREFIX + "not-a-record-name.npz",  # no rule gives a key
        RECORDS_PREFIX + hashlib.sha256(b"something else").hexdigest() + ".h.npz",  # hashed, of another key
        record_key("catalog/gone.jpg"),  # the name of a key that has no object
    ]
    for rk in stray:  # chelsea's features, claiming to be astronaut's
        faulty.direct.put_object(Bucket=faulty.name, Key=rk, Body=chelsea_body, Metadata=meta_a)
    reader = faulty.reader()
    index = reader.index()
    assert sorted(index.keys()) == ["catalog/astronaut.jpg", "catalog/chelsea.jpg"]
    assert index.get("catalog/astronaut.jpg").features.sha256 == sha_a
    assert reader.status == {"complete": False, "missing": 3}
    report = faulty.writer.reindex(force=True)
    assert report.counts == {"indexed": 2, "removed": 3}, report
    assert sorted(all_keys(faulty.direct, faulty.name, RECORDS_PREFIX)) == sorted(
        record_key("catalog/" + n) for n in ("astronaut.jpg", "chelsea.jpg")
    )
    assert sorted(reader.index(force=True).keys()) == ["catalog/astronaut.jpg", "catalog/chelsea.jpg"]
    assert reader.status == {"complete": True, "missing": 0}


# --------------------------------------------------------------------------- reader.py
def test_index_serves_what_it_can_read_flagged_and_clears(faulty, images):
    for n in NAMES:
        faulty.put("catalog/" + n, images[n])
        faulty.writer.reconcile("catalog/" + n)
    bad = record_key("catalog/coffee.jpg")
    faulty.proxy.fail("cut_body", quote(bad), method="GET")
    reader = faulty.reader(ttl=3600)  # a long TTL: the retry must not wait for it
    index = reader.index()
    assert sorted(index.keys()) == sorted("catalog/" + n for n in NAMES if n != "coffee.jpg")
    assert reader.status == {"complete": False, "missing": 1}
    refreshed = reader.last_refresh
    reader.index()
    assert reader.last_refresh is refreshed  # within RETRY_SECONDS: no new refresh
    faulty.proxy.heal()
    time.sleep(RETRY_SECONDS)
    assert sorted(reader.index().keys()) == sorted("catalog/" + n for n in NAMES)
    assert reader.status == {"complete": True, "missing": 0}
    assert reader.last_refresh["loaded"] == 1  # only the one that was missing


def test_a_record_that_cannot_be_reloaded_keeps_its_older_version(faulty, images):
    key = "catalog/a.jpg"
    faulty.put(key, images["chelsea.jpg"])
    faulty.writer.reconcile(key)
    reader = faulty.reader(ttl=0)
    assert reader.index().get(key).features.sha256 == sha(images["chelsea.jpg"])
    faulty.put(key, images["coffee.jpg"])
    faulty.writer.reconcile(key)
    faulty.proxy.fail("error500", quote(record_key(key)), method="GET")
    assert reader.index().get(key).features.sha256 == sha(images["chelsea.jpg"])
    assert reader.status == {"complete": False, "missing": 1}
    faulty.proxy.heal()
    assert reader.index().get(key).features.sha256 == sha(images["coffee.jpg"])
    assert reader.status == {"complete": True, "missing": 0}


def test_a_failed_listing_keeps_the_warm_index_and_a_cold_one_raises(faulty, images):
    faulty.put("catalog/a.jpg", images["chelsea.jpg"])
    faulty.writer.reconcile("catalog/a.jpg")
    faulty.proxy.fail("error500", "list-type=2")
    with pytest.raises(StorageError):
        faulty.reader().index()
    faulty.proxy.heal()
    reader = faulty.reader(ttl=0)
    assert reader.index().keys() == ["catalog/a.jpg"]
    faulty.proxy.fail("error500", "list-type=2")
    assert reader.index().keys() == ["catalog/a.jpg"]
    assert reader.status["complete"] is False and "listing the records failed" in reader.status["error"]
    faulty.proxy.heal()
    reader.index()
    assert reader.status == {"complete": True, "missing": 0}


def test_a_manifest_that_cannot_be_read_is_not_forgotten(faulty, images):
    """Before, a failed read of the manifest cached an empty one under its ETag: every result
    lost its source URL until the manifest changed."""
    faulty.put("catalog/a.jpg", images["chelsea.jpg"])
    faulty.writer.reconcile("catalog/a.jpg")
    faulty.put("catalog/manifest.json", json.dumps([{"url": "https://cdn.example.com/a.jpg"}]).encode())
    faulty.proxy.fail("cut_body", "/catalog/manifest.json", method="GET")
    reader = faulty.reader(ttl=0)
    index = reader.index()
    assert index.get("catalog/a.jpg").url == "catalog/a.jpg"  # no source URL for now
    assert reader.status["complete"] is False and "manifest" in reader.status["error"]
    faulty.proxy.heal()
    assert reader.index().get("catalog/a.jpg").url == "https://cdn.example.com/a.jpg"
    assert reader.status == {"complete": True, "missing": 0}


# --------------------------------------------------------------------------- querydrop.py
def test_query_drop_never_answers_a_cut_download_as_truncated(faulty, images):
    faulty.put("catalog/chelsea.jpg", images["chelsea.jpg"])
    faulty.writer.reconcile("catalog/chelsea.jpg")
    faulty.put("queries/q.jpg", images["chelsea__hflip.jpg"])
    faulty.proxy.fail("cut_body", "/queries/q.jpg", method="GET")
    service = runtime.search_service(faulty.name)
    with pytest.raises(StorageError):
        answer_query(service, "queries/q.jpg", SearchParams())
    assert "results/q.jpg.json" not in all_keys(faulty.direct, faulty.name, "results/")
    faulty.proxy.heal()
    assert answer_query(service, "queries/q.jpg", SearchParams()).action == "answered"
    doc = json.loads(faulty.direct.get_object(Bucket=faulty.name, Key="results/q.jpg.json")["Body"].read())
    assert doc["results"][0]["key"] == "catalog/chelsea.jpg" and doc["index"] == {"complete": True, "missing": 0}


def test_query_drop_from_an_incomplete_index_says_so_and_retries(faulty, images):
    for n in ("chelsea.jpg", "coffee.jpg"):
        faulty.put("catalog/" + n, images[n])
        faulty.writer.reconcile("catalog/" + n)
    faulty.put("queries/q.jpg", images["chelsea__hflip.jpg"])
    faulty.proxy.fail("error500", quote(record_key("catalog/chelsea.jpg")), method="GET")
    service = runtime.search_service(faulty.name)
    with pytest.raises(StorageError, match="incomplete index"):
        answer_query(service, "queries/q.jpg", SearchParams())
    doc = json.loads(faulty.direct.get_object(Bucket=faulty.name, Key="results/q.jpg.json")["Body"].read())
    assert doc["index"] == {"complete": False, "missing": 1} and doc["catalog_size"] == 1
    faulty.proxy.heal()
    time.sleep(RETRY_SECONDS)
    assert answer_query(service, "queries/q.jpg", SearchParams()).action == "answered"  # not "unchanged"
    doc = json.loads(faulty.direct.get_object(Bucket=faulty.name, Key="results/q.jpg.json")["Body"].read())
    assert doc["index"] == {"complete": True, "missing": 0} and doc["results"][0]["key"] == "catalog/chelsea.jpg"
    assert answer_query(service, "queries/q.jpg", SearchParams()).action == "unchanged"


# --------------------------------------------------------------------------- handlers
def test_every_record_of_an_event_is_attempted(faulty, images, index_fn, lambda_context):
    keys = [f"catalog/{n}" for n in NAMES[:3]]
    for n in NAMES[:3]:
        faulty.put("catalog/" + n, images[n])
    ev = s3_event("s3-catalog-put.json", faulty.name, keys[0])
    ev["Records"] = [s3_event("s3-catalog-put.json", faulty.name, k)["Records"][0] for k in keys]
    faulty.proxy.fail("error500", quote(keys[1]), method="HEAD")
    with pytest.raises(EventRecordsFailedError, match=f"1 of 3 records failed.*{keys[1]}"):
        index_fn.lambda_handler(ev, lambda_context)
    written = set(all_keys(faulty.direct, faulty.name, RECORDS_PREFIX))
    assert written == {record_key(keys[0]), record_key(keys[2])}  # the records after the failing one too
    faulty.proxy.heal()  # Lambda's retry: the same event again
    out = index_fn.lambda_handler(ev, lambda_context)
    assert [r["action"] for r in out["results"]] == ["unchanged", "indexed", "unchanged"]


def test_query_drop_attempts_every_record(faulty, images, index_fn, query_drop_fn, lambda_context):
    faulty.put("catalog/chelsea.jpg", images["chelsea.jpg"])
    index_fn.lambda_handler(s3_event("s3-catalog-put.json", faulty.name, "catalog/chelsea.jpg"), lambda_context)
    for q in ("queries/a.jpg", "queries/b.jpg"):
        faulty.put(q, images["chelsea__hflip.jpg"])
    ev = s3_event("s3-query-put.json", faulty.name, "queries/a.jpg")
    ev["Records"].append(s3_event("s3-query-put.json", faulty.name, "queries/b.jpg")["Records"][0])
    faulty.proxy.fail("cut_body", "/queries/a.jpg", method="GET")
    with pytest.raises(EventRecordsFailedError, match=r"queries/a\.jpg"):
        query_drop_fn.lambda_handler(ev, lambda_context)
    assert set(all_keys(faulty.direct, faulty.name, "results/")) == {"results/b.jpg.json"}
    faulty.proxy.heal()
    out = query_drop_fn.lambda_handler(ev, lambda_context)
    assert [r["action"] for r in out["results"]] == ["answered", "unchanged"]


def test_a_search_with_a_record_unreadable_is_answered(faulty, images):
    """One record that cannot be downloaded: the search is answered from the others (before, the
    whole refresh failed and the API answered 500)."""
    for n in NAMES:
        faulty.put("catalog/" + n, images[n])
        faulty.writer.reconcile("catalog/" + n)
    faulty.proxy.fail("cut_body", quote(record_key("catalog/rocket.jpg")), method="GET")
    service = runtime.search_service(faulty.name)
    answer = service.search(ImageBytes(images["chelsea__hflip.jpg"]), SearchParams())
    assert answer["catalog_size"] == 3 and answer["results"][0]["key"] == "catalog/chelsea.jpg"
    assert service.reader.status == {"complete": False, "missing": 1}
