"""The read path: a warm in-memory :class:`~harmony_image.SearchIndex` of one bucket's records.

A refresh (after ``ttl`` seconds) lists the records and fetches only new and changed ones (by
ETag), in parallel; a warm function pays one LIST per TTL when nothing changed.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from botocore.exceptions import ClientError

from harmony_image import ImageFeatures, IndexFormatError, SearchIndex

from .layout import CATALOG_PREFIX, RECORDS_PREFIX, rel_from_record_name
from .s3 import NOT_FOUND, POOL_CONNECTIONS, Bucket, error_code
from .urls import ResultUrls

log = logging.getLogger(__name__)


@dataclass
class _Record:
    etag: str
    key: str
    source_url: str | None
    features: ImageFeatures


class IndexReader:
    """The index of ``bucket``'s records, refreshed when older than ``ttl`` seconds."""

    def __init__(
        self,
        bucket: Bucket,
        urls: ResultUrls,
        *,
        ttl: float = 10.0,
        load_workers: int = POOL_CONNECTIONS,  # cold loads are latency-bound: one per connection
    ) -> None:
        self.bucket = bucket
        self.urls = urls
        self.ttl = ttl
        self.load_workers = load_workers
        self._lock = threading.Lock()
        self._index = SearchIndex()
        self._records: dict[str, _Record] = {}
        self._loaded_at: float | None = None
        self.last_refresh: dict[str, Any] = {}

    def index(self, *, force: bool = False) -> SearchIndex:
        with self._lock:
            now = time.monotonic()
            if force or self._loaded_at is None or now - self._loaded_at >= self.ttl:
                self._refresh()
                self._loaded_at = time.monotonic()
            return self._index

    def _load(self, rkey: str) -> _Record | None:
        try:
            r = self.bucket.client.get_object(Bucket=self.bucket.name, Key=rkey)
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND:
                return None  # deleted since the listing
            raise
        with r["Body"] as body:
            data = body.read()
        meta = r.get("Metadata") or {}
        key = unquote(meta["catalog-key"]) if meta.get("catalog-key") else None
        if key is None:
            rel = rel_from_record_name(rkey[len(RECORDS_PREFIX) :])
            if rel is None:
                log.warning("record %s has no catalog-key metadata; ignored", rkey)
                return None
            key = CATALOG_PREFIX + rel
        try:
            features = ImageFeatures.from_bytes(data)
        except IndexFormatError as exc:
            log.warning("record %s unreadable (%s); ignored until re-indexed", rkey, exc.message)
            return None
        url = unquote(meta["source-url"]) if meta.get("source-url") else None
        return _Record(etag=r["ETag"], key=key, source_url=url, features=features)

    def _refresh(self) -> None:
        t0 = time.perf_counter()
        listing = self.bucket.etags(RECORDS_PREFIX)
        manifest_changed = self.urls.refresh_manifest()
        gone = [rk for rk in self._records if rk not in listing]
        todo = [rk for rk, etag in listing.items() if rk not in self._records or self._records[rk].etag != etag]
        for rk in gone:
            self._index.remove(self._records.pop(rk).key)
        loaded: list[tuple[str, _Record | None]] = []
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, min(self.load_workers, len(todo)))) as pool:
                loaded = list(zip(todo, pool.map(self._load, todo), strict=False))
        for rk, rec in loaded:
            old = self._records.pop(rk, None)
            if old is not None:
                self._index.remove(old.key)
            if rec is not None:
                self._records[rk] = rec
                self._index.add(rec.key, rec.features, url=self.urls.source_url(rec.key, rec.source_url))
        if manifest_changed:
            for rec in self._records.values():
                self._index.add(rec.key, rec.features, url=self.urls.source_url(rec.key, rec.source_url))
        self.last_refresh = {
            "records": len(self._records),
            "loaded": len(todo),
            "removed": len(gone),
            "manifest_changed": manifest_changed,
            "ms": round((time.perf_counter() - t0) * 1000, 1),
        }
