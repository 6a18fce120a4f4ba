"""The read path: a warm in-memory :class:`~harmony_image.SearchIndex` of one bucket's records.

A refresh (after ``ttl`` seconds) lists the records and fetches only new and changed ones (by
ETag), in parallel; a warm function pays one LIST per TTL when nothing changed.

Each record is loaded on its own (S3 reads are checked and retried in s3.py): one that still
cannot be read is left out of this refresh - an older version of it, if any, is kept - and
tried again at the next one, which comes after :data:`RETRY_SECONDS` instead of the TTL. The
index is served meanwhile, flagged: :attr:`IndexReader.status` is ``{"complete": false,
"missing": N}``, N the listed records not served at their listed version (unreadable, damaged,
or stored under a name that is not their catalog key's). A refresh that serves every listed
record clears it. A listing that fails keeps the index of the last one (flagged, with
``"error"``); the very first one raises.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from harmony_image import ImageFeatures, IndexFormatError, SearchIndex

from .errors import S3ObjectNotFoundError, StorageError
from .layout import CATALOG_PREFIX, RECORDS_PREFIX, is_catalog_image_key, record_key, rel_from_record_name
from .s3 import POOL_CONNECTIONS, Bucket
from .urls import ResultUrls

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
"""How soon a refresh that could not read everything is tried again (when the TTL is longer)."""
MAX_RECORD_BYTES = 64 * 1024 * 1024


@dataclass
class _Record:
    etag: str
    key: str
    source_url: str | None
    features: ImageFeatures


class _RejectedError(Exception):
    """A record that can be read but must not be served (damaged, or under another key's name)."""


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
        self._rejected: dict[str, str] = {}  # record key -> ETag found unservable (not reloaded)
        self._loaded_at: float | None = None
        self._retry_soon = False
        self._status: dict[str, Any] = {"complete": False, "missing": 0}
        self.last_refresh: dict[str, Any] = {}

    @property
    def status(self) -> dict[str, Any]:
        """``{"complete": bool, "missing": int}`` (and ``"error"`` when a listing failed) of the
        index that :meth:`index` last returned."""
        return dict(self._status)

    def expire(self) -> None:
        """The next :meth:`index` lists the records again (after this process changed them)."""
        with self._lock:
            self._loaded_at = None

    def index(self, *, force: bool = False) -> SearchIndex:
        with self._lock:
            now = time.monotonic()
            wait = min(self.ttl, RETRY_SECONDS) if self._retry_soon else self.ttl
            if force or self._loaded_at is None or now - self._loaded_at >= wait:
                self._refresh()
                self._loaded_at = time.monotonic()
            return self._index

    def _load(self, rkey: str) -> _Record | None:
        """The record, None when it was deleted since the listing; StorageError when it cannot be
        read; _RejectedError when it must not be served."""
        try:
            data, head = self.bucket.read(rkey, max_bytes=MAX_RECORD_BYTES)
        except S3ObjectNotFoundError:
            return None  # deleted since the listing
        meta = head.metadata
        if meta.get("catalog-key"):
            key = unquote(meta["catalog-key"])
        else:
            rel = rel_from_record_name(rkey[len(RECORDS_PREFIX) :])
            if rel is None:
                raise _RejectedError("no catalog-key metadata and a name that does not give one")
            key = CATALOG_PREFIX + rel
        if not is_catalog_image_key(key) or record_key(key) != rkey:
            raise _RejectedError(f"stored under another name than {key}'s record")
        try:
            features = ImageFeatures.from_bytes(data)
        except IndexFormatError as exc:
            raise _RejectedError(f"unreadable ({exc.message}); ignored until re-indexed") from exc
        url = unquote(meta["source-url"]) if meta.get("source-url") else None
        return _Record(etag=head.etag, key=key, source_url=url, features=features)

    def _try_load(self, rkey: str) -> tuple[str, _Record | BaseException | None]:
        try:
            return rkey, self._load(rkey)
        except Exception as exc:  # noqa: BLE001 - one record must not take the index down; reported
            return rkey, exc

    def _refresh(self) -> None:
        t0 = time.perf_counter()
        try:
            listing = self.bucket.etags(RECORDS_PREFIX)
        except StorageError as exc:
            if self._loaded_at is None:
                raise  # nothing to serve
            log.warning("listing %s failed (%s); serving the index of the last listing", RECORDS_PREFIX, exc.message)
            self._status = {**self._status, "complete": False, "error": f"listing the records failed: {exc.message}"}
            self._retry_soon = True
            return
        manifest_error = None
        try:
            manifest_changed = self.urls.refresh_manifest()
        except StorageError as exc:  # keep the URLs of the last manifest read; try again soon
            manifest_changed, manifest_error = False, f"reading the manifest failed: {exc.message}"
            log.warning("%s", manifest_error)
        gone = [rk for rk in self._records if rk not in listing]
        self._rejected = {rk: etag for rk, etag in self._rejected.items() if listing.get(rk) == etag}
        todo = [
            rk
            for rk, etag in listing.items()
            if (rk not in self._records or self._records[rk].etag != etag) and rk not in self._rejected
        ]
        for rk in gone:
            self._index.remove(self._records.pop(rk).key)
        loaded: list[tuple[str, _Record | BaseException | None]] = []
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, min(self.load_workers, len(todo)))) as pool:
                loaded = list(pool.map(self._try_load, todo))
        failed = 0
        for rk, rec in loaded:
            if isinstance(rec, BaseException):
                if isinstance(rec, _RejectedError):
                    log.warning("record %s not served: %s", rk, rec)
                    self._rejected[rk] = listing[rk]
                    old = self._records.pop(rk, None)
                    if old is not None:
                        self._index.remove(old.key)
                else:  # kept at its older version, if any; loaded again at the next refresh
                    log.warning("record %s could not be loaded: %s: %s", rk, type(rec).__name__, rec)
                    failed += 1
                continue
            old = self._records.pop(rk, None)
            if old is not None:
                self._index.remove(old.key)
            if rec is not None:
                self._records[rk] = rec
                self._index.add(rec.key, rec.features, url=self.urls.source_url(rec.key, rec.source_url))
        if manifest_changed:
            for rec in self._records.values():
                self._index.add(rec.key, rec.features, url=self.urls.source_url(rec.key, rec.source_url))
        missing = failed + len(self._rejected)
        self._retry_soon = failed > 0 or manifest_error is not None
        self._status = {"complete": missing == 0 and manifest_error is None, "missing": missing}
        if manifest_error:
            self._status["error"] = manifest_error
        self.last_refresh = {
            "records": len(self._records),
            "loaded": len(todo),
            "removed": len(gone),
            "failed": failed,
            "missing": missing,
            "manifest_changed": manifest_changed,
            "ms": round((time.perf_counter() - t0) * 1000, 1),
        }
