"""The catalog and its feature index in one S3 bucket.

Index layout: **one feature record per catalog object**, never a shared index object, so that
concurrent IndexFunction invocations never read-modify-write the same object::

    index/records/<name>.npz    ImageFeatures.to_bytes() of catalog/<rel>
        metadata: source-etag    ETag of catalog/<rel> the record was computed from
                  catalog-key    percent-encoded full key (catalog/<rel>)
                  source-url     percent-encoded `source-url` metadata of the catalog object, if any
                  feature-version

``<name>`` is the URL-safe base64 (no padding) of the UTF-8 ``<rel>``; a key too long for that
(S3 keys are at most 1024 bytes) uses ``<sha256 of rel>.h`` instead — base64 never contains a dot,
so the two forms cannot collide. Readers take the key from the record's metadata either way.

Reconciling (:meth:`CatalogStore.reconcile`): an event for key K is only a hint. The function
looks at catalog/K itself (HEAD), writes or deletes the record to match it, and then looks at
catalog/K **again**; if it changed meanwhile it goes round once more. Whatever the order,
duplication or concurrency of events, the last write to a record is always followed by a check
that the source still matches it, so once events stop the records equal the bucket.

Result URLs (:meth:`CatalogStore.result_url`): the catalog object's metadata ``source-url``
(``x-amz-meta-source-url``), else ``catalog/manifest.json`` — a JSON list of ``{"url": ...}``
(the seed's format); an item names its object with ``"key"`` (catalog-relative, as
``harmony import`` writes) or else the last path segment of its URL is the key relative to
``catalog/`` — else a presigned GET URL of the object, valid ``HARMONY_PRESIGN_SECONDS``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from harmony_image import (
    FEATURE_VERSION,
    HarmonyError,
    ImageError,
    ImageFeatures,
    IndexFormatError,
    SearchIndex,
    extract_features,
)

from harmony_image.catalog import parse_manifest

from .errors import PayloadTooLargeError, S3ObjectNotFoundError, StorageError

log = logging.getLogger(__name__)

CATALOG_PREFIX = "catalog/"
INDEX_PREFIX = "index/"
RECORDS_PREFIX = "index/records/"
QUERIES_PREFIX = "queries/"
RESULTS_PREFIX = "results/"
MANIFEST_KEY = "catalog/manifest.json"
RECORD_SUFFIX = ".npz"
_HASHED_SUFFIX = ".h.npz"
_MAX_B64_NAME = 900
MAX_ROUNDS = 8

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_PRECONDITION = {"412", "PreconditionFailed"}


def s3_client(region: str | None = None) -> Any:
    """An S3 client; the endpoint comes from the usual places (AWS_ENDPOINT_URL_S3 included)."""
    cfg = Config(
        signature_version="s3v4",
        retries={"max_attempts": 6, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        max_pool_connections=32,
    )
    return boto3.client("s3", region_name=region, config=cfg)


def _err_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def record_name(rel: str) -> str:
    """Record object name (under index/records/) of the catalog-relative key ``rel``."""
    b64 = base64.urlsafe_b64encode(rel.encode("utf-8")).decode("ascii").rstrip("=")
    if len(b64) <= _MAX_B64_NAME:
        return b64 + RECORD_SUFFIX
    return hashlib.sha256(rel.encode("utf-8")).hexdigest() + _HASHED_SUFFIX


def rel_from_record_name(name: str) -> str | None:
    """The catalog-relative key encoded in a record name (None for the hashed form)."""
    if name.endswith(_HASHED_SUFFIX) or not name.endswith(RECORD_SUFFIX):
        return None
    b64 = name[: -len(RECORD_SUFFIX)]
    try:
        return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class Head:
    etag: str
    size: int
    metadata: dict[str, str]


@dataclass(frozen=True)
class ReconcileResult:
    key: str
    action: str  # indexed | unchanged | removed | absent | skipped
    detail: str = ""
    rounds: int = 1

    def to_dict(self) -> dict:
        return {"key": self.key, "action": self.action, "detail": self.detail, "rounds": self.rounds}


@dataclass
class _CachedRecord:
    etag: str
    key: str
    source_url: str | None
    features: ImageFeatures


class CatalogStore:
    """One bucket's catalog, index records, queries and results."""

    def __init__(
        self,
        bucket: str,
        *,
        client: Any = None,
        max_pixels: int = 40_000_000,
        max_image_bytes: int = 20 * 1024 * 1024,
        presign_seconds: int = 900,
        index_ttl: float = 10.0,
        load_workers: int = 32,  # as many as the client's connection pool: cold loads are latency-bound
    ) -> None:
        if not bucket:
            raise ValueError("bucket is required")
        self.bucket = bucket
        self.s3 = client or s3_client()
        self.max_pixels = max_pixels
        self.max_image_bytes = max_image_bytes
        self.presign_seconds = presign_seconds
        self.index_ttl = index_ttl
        self.load_workers = load_workers
        # warm search index
        self._lock = threading.Lock()
        self._index = SearchIndex()
        self._records: dict[str, _CachedRecord] = {}
        self._manifest_etag: str | None = None
        self._manifest: dict[str, str] = {}
        self._loaded_at: float | None = None
        self.last_refresh: dict[str, Any] = {}

    # ------------------------------------------------------------------ S3 primitives
    def head(self, key: str) -> Head | None:
        try:
            r = self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _err_code(exc) in _NOT_FOUND:
                return None
            raise
        return Head(etag=r["ETag"], size=int(r.get("ContentLength", 0)), metadata=dict(r.get("Metadata") or {}))

    def read_object(self, key: str, *, max_bytes: int | None = None, if_match: str | None = None) -> tuple[bytes, Head]:
        """Bytes and head of ``key``; S3ObjectNotFoundError (404) / PayloadTooLargeError (413)."""
        cap = self.max_image_bytes if max_bytes is None else max_bytes
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if if_match:
            kwargs["IfMatch"] = if_match
        try:
            r = self.s3.get_object(**kwargs)
        except ClientError as exc:
            code = _err_code(exc)
            if code in _NOT_FOUND:
                raise S3ObjectNotFoundError(f"s3://{self.bucket}/{key} does not exist") from exc
            if code == "NoSuchBucket":
                raise S3ObjectNotFoundError(f"bucket {self.bucket!r} does not exist") from exc
            raise
        size = int(r.get("ContentLength", 0))
        body = r["Body"]
        try:
            if size > cap:
                raise PayloadTooLargeError(f"s3://{self.bucket}/{key} is {size} bytes; the limit is {cap}")
            data = body.read(cap + 1)
            if len(data) > cap:
                raise PayloadTooLargeError(f"s3://{self.bucket}/{key} is larger than {cap} bytes")
        finally:
            body.close()
        return data, Head(etag=r["ETag"], size=size, metadata=dict(r.get("Metadata") or {}))

    def put_json(self, key: str, payload: Any, *, metadata: dict[str, str] | None = None) -> None:
        self.s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=json.dumps(payload, indent=2).encode("utf-8"),
            ContentType="application/json",
            Metadata=metadata or {},
        )

    # ------------------------------------------------------------------ index records
    @staticmethod
    def catalog_rel(key: str) -> str:
        if not key.startswith(CATALOG_PREFIX):
            raise ValueError(f"{key!r} is not under {CATALOG_PREFIX}")
        return key[len(CATALOG_PREFIX):]

    @staticmethod
    def is_catalog_image_key(key: str) -> bool:
        return key.startswith(CATALOG_PREFIX) and key != MANIFEST_KEY and not key.endswith("/")

    def record_key(self, key: str) -> str:
        return RECORDS_PREFIX + record_name(self.catalog_rel(key))

    def list_records(self) -> dict[str, str]:
        """record object key -> ETag, for every record."""
        out: dict[str, str] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=RECORDS_PREFIX):
            for o in page.get("Contents", []):
                out[o["Key"]] = o["ETag"]
        return out

    def list_catalog(self) -> dict[str, str]:
        """catalog image key -> ETag (manifest and folder markers excluded)."""
        out: dict[str, str] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=CATALOG_PREFIX):
            for o in page.get("Contents", []):
                if self.is_catalog_image_key(o["Key"]):
                    out[o["Key"]] = o["ETag"]
        return out

    def reconcile(self, key: str, *, force: bool = False) -> ReconcileResult:
        """Make the record of catalog object ``key`` match the object as it is now.

        Idempotent and safe to run concurrently for the same key; see the module doc. Raises
        StorageError when the object keeps changing for MAX_ROUNDS rounds (the Lambda retry
        will reconcile it later). ``force`` recomputes the record even when it looks current.
        """
        if not self.is_catalog_image_key(key):
            return ReconcileResult(key, "skipped", "not a catalog image key")
        rkey = self.record_key(key)
        for rounds in range(1, MAX_ROUNDS + 1):
            if rounds > 2:  # the object keeps changing: back off a little (jittered)
                time.sleep(random.uniform(0, min(1.0, 0.02 * 2 ** rounds)))
            src = self.head(key)
            if src is None:
                existed = self.head(rkey) is not None
                self.s3.delete_object(Bucket=self.bucket, Key=rkey)
                if self.head(key) is None:
                    return ReconcileResult(key, "removed" if existed else "absent", rounds=rounds)
                continue
            source_url = src.metadata.get("source-url")
            rec = self.head(rkey)
            if (
                not force
                and rec is not None
                and rec.metadata.get("source-etag") == src.etag
                and rec.metadata.get("feature-version") == str(FEATURE_VERSION)
                and unquote(rec.metadata.get("source-url", "")) == (source_url or "")
            ):
                return ReconcileResult(key, "unchanged", rounds=rounds)
            problem = None
            if src.size > self.max_image_bytes:
                problem = f"payload_too_large: {src.size} bytes > {self.max_image_bytes}"
            else:
                try:
                    data, got = self.read_object(key, if_match=src.etag)
                except S3ObjectNotFoundError:
                    continue
                except ClientError as exc:
                    if _err_code(exc) in _PRECONDITION:
                        continue
                    raise
                try:
                    feats = extract_features(data, max_pixels=self.max_pixels, query=False)
                except ImageError as exc:
                    problem = f"{exc.code}: {exc.message}"
            if problem is not None:
                # Not indexable: make sure no stale record says otherwise, then verify.
                self.s3.delete_object(Bucket=self.bucket, Key=rkey)
                after = self.head(key)
                if after is not None and after.etag == src.etag:
                    return ReconcileResult(key, "skipped", problem, rounds=rounds)
                continue
            meta = {
                "source-etag": src.etag,
                "catalog-key": quote(key, safe="/"),
                "feature-version": str(FEATURE_VERSION),
            }
            if source_url:
                meta["source-url"] = quote(source_url, safe=":/")
            self.s3.put_object(
                Bucket=self.bucket,
                Key=rkey,
                Body=feats.to_bytes(),
                ContentType="application/octet-stream",
                Metadata=meta,
            )
            after = self.head(key)
            if after is not None and after.etag == src.etag and after.metadata.get("source-url") == source_url:
                return ReconcileResult(key, "indexed", f"{feats.width}x{feats.height}", rounds=rounds)
        # Giving up silently would be unsafe (our last write may be stale): fail, so that Lambda's
        # asynchronous retry (then the dead-letter queue, then `reindex`) reconciles it later.
        raise StorageError(f"{key} kept changing while being indexed ({MAX_ROUNDS} rounds); retry")

    def reindex(self, *, force: bool = False, workers: int = 8) -> dict[str, int]:
        """Reconcile every catalog object and every record (backfill after deploying onto a
        bucket that already holds images, feature-version upgrades, repairs). Counts per action."""
        keys = set(self.list_catalog())
        for rk in self.list_records():
            rel = rel_from_record_name(rk[len(RECORDS_PREFIX):])
            if rel is None:
                head = self.head(rk)
                if head is None or not head.metadata.get("catalog-key"):
                    self.s3.delete_object(Bucket=self.bucket, Key=rk)  # unattributable record
                    continue
                keys.add(unquote(head.metadata["catalog-key"]))
            else:
                keys.add(CATALOG_PREFIX + rel)
        counts: dict[str, int] = {}
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for r in pool.map(lambda k: self.reconcile(k, force=force), sorted(keys)):
                counts[r.action] = counts.get(r.action, 0) + 1
        return counts

    # ------------------------------------------------------------------ warm search index
    def _load_record(self, rkey: str) -> _CachedRecord | None:
        try:
            r = self.s3.get_object(Bucket=self.bucket, Key=rkey)
        except ClientError as exc:
            if _err_code(exc) in _NOT_FOUND:
                return None  # deleted since the listing
            raise
        with r["Body"] as body:
            data = body.read()
        meta = r.get("Metadata") or {}
        key = unquote(meta["catalog-key"]) if meta.get("catalog-key") else None
        if key is None:
            rel = rel_from_record_name(rkey[len(RECORDS_PREFIX):])
            if rel is None:
                log.warning("record %s has no catalog-key metadata; ignored", rkey)
                return None
            key = CATALOG_PREFIX + rel
        try:
            feats = ImageFeatures.from_bytes(data)
        except IndexFormatError as exc:
            log.warning("record %s unreadable (%s); ignored until re-indexed", rkey, exc.message)
            return None
        url = unquote(meta["source-url"]) if meta.get("source-url") else None
        return _CachedRecord(etag=r["ETag"], key=key, source_url=url, features=feats)

    def _refresh_manifest(self) -> bool:
        head = self.head(MANIFEST_KEY)
        if head is None:
            changed = self._manifest_etag is not None
            self._manifest_etag, self._manifest = None, {}
            return changed
        if head.etag == self._manifest_etag:
            return False
        try:
            data, got = self.read_object(MANIFEST_KEY, max_bytes=64 * 1024 * 1024)
            self._manifest = parse_manifest(data)
        except (HarmonyError, S3ObjectNotFoundError) as exc:
            log.warning("catalog/manifest.json ignored: %s", exc)
            self._manifest = {}
            got = head
        self._manifest_etag = got.etag
        return True

    def _url_for(self, rec: _CachedRecord) -> str | None:
        return rec.source_url or self._manifest.get(self.catalog_rel(rec.key))

    def index(self, *, force: bool = False) -> SearchIndex:
        """The search index, refreshed from S3 when older than ``index_ttl`` seconds.

        A refresh lists the records and fetches only the new and changed ones (by ETag), so a
        warm function pays one LIST per TTL when nothing changed.
        """
        with self._lock:
            now = time.monotonic()
            if force or self._loaded_at is None or now - self._loaded_at >= self.index_ttl:
                self._refresh()
                self._loaded_at = time.monotonic()
            return self._index

    def _refresh(self) -> None:
        t0 = time.perf_counter()
        listing = self.list_records()
        manifest_changed = self._refresh_manifest()
        gone = [rk for rk in self._records if rk not in listing]
        todo = [rk for rk, etag in listing.items() if rk not in self._records or self._records[rk].etag != etag]
        for rk in gone:
            rec = self._records.pop(rk)
            self._index.remove(rec.key)
        loaded: list[tuple[str, _CachedRecord | None]] = []
        if todo:
            workers = max(1, min(self.load_workers, len(todo)))
            if workers == 1:
                loaded = [(rk, self._load_record(rk)) for rk in todo]
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    loaded = list(zip(todo, pool.map(self._load_record, todo)))
        for rk, rec in loaded:
            old = self._records.pop(rk, None)
            if old is not None:
                self._index.remove(old.key)
            if rec is not None:
                self._records[rk] = rec
                self._index.add(rec.key, rec.features, url=self._url_for(rec))
        if manifest_changed:
            for rec in self._records.values():
                self._index.add(rec.key, rec.features, url=self._url_for(rec))
        self.last_refresh = {
            "records": len(self._records),
            "loaded": len(todo),
            "removed": len(gone),
            "manifest_changed": manifest_changed,
            "ms": round((time.perf_counter() - t0) * 1000, 1),
        }

    def result_url(self, key: str, url: str) -> str:
        """The URL a search result shows: its source URL, else a presigned GET of the object."""
        if url and url != key:
            return url
        return self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.presign_seconds
        )
