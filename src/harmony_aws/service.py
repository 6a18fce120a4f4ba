"""A search, from a query source to the API's JSON answer (SearchFunction and QueryDrop).

Response (200)::

    {"query": {"sha256", "width", "height"},
     "results": [{"url", "key", "score", "ssim", "orb", "sha256"}],
     "catalog_size": int, "took_ms": float,
     "index": {"complete": bool, "missing": int}}

``index`` says whether every record could be read: a search is answered from the records that
could (never a 500 for one unreadable record); ``complete`` comes back once a later refresh reads
them (IndexReader.status).

Errors: ``{"error": {"code", "message"}}`` with the error's status (see errors.py).
"""

from __future__ import annotations

import time
from typing import Any

from harmony_image import EmptyImageError, ImageFeatures, SearchParams, extract_features
from harmony_image.fetch import fetch_url

from .config import Settings
from .errors import S3ReferenceRefusedError
from .fanout import ShardFanOut
from .layout import CATALOG_PREFIX, QUERIES_PREFIX
from .reader import IndexReader
from .s3 import Bucket
from .sources import MAX_S3_KEY_BYTES, ImageBytes, ImageUrl, QuerySource, S3Object
from .urls import ResultUrls

READABLE_PREFIXES = (CATALOG_PREFIX, QUERIES_PREFIX)
RESULT_FIELDS = ("url", "key", "score", "ssim", "orb", "sha256")


class SearchService:
    """Searches the bucket's index: the warm ``reader``'s, or every shard's through ``fanout``
    (fanout.py) when the catalog is sharded."""

    def __init__(
        self,
        bucket: Bucket,
        reader: IndexReader,
        urls: ResultUrls,
        settings: Settings,
        *,
        fanout: ShardFanOut | None = None,
    ) -> None:
        self.bucket = bucket
        self.reader = reader
        self.urls = urls
        self.settings = settings
        self.fanout = fanout

    def image_bytes(self, source: QuerySource) -> bytes:
        """The query image's bytes: as given, downloaded (SSRF-guarded), or read from S3."""
        if isinstance(source, ImageBytes):
            return source.data
        if isinstance(source, ImageUrl):
            return fetch_url(source.url, max_bytes=self.settings.max_image_bytes, timeout=self.settings.fetch_timeout)
        return self._s3_image(source)

    def _s3_image(self, ref: S3Object) -> bytes:
        if ref.bucket and ref.bucket != self.bucket.name:
            raise S3ReferenceRefusedError(
                f"only the catalog bucket {self.bucket.name!r} can be read, not {ref.bucket!r}"
            )
        try:
            too_long = len(ref.key.encode("utf-8")) > MAX_S3_KEY_BYTES
        except UnicodeEncodeError:
            raise S3ReferenceRefusedError("the S3 key is not valid UTF-8 (S3 keys are UTF-8 text)") from None
        if too_long:
            raise S3ReferenceRefusedError(f"the S3 key is longer than {MAX_S3_KEY_BYTES} bytes (S3's limit)")
        if not ref.key.startswith(READABLE_PREFIXES) or ".." in ref.key.split("/"):
            raise S3ReferenceRefusedError(
                f"only keys under {' or '.join(READABLE_PREFIXES)} can be used as queries; got {ref.key!r}"
            )
        data, _ = self.bucket.read(ref.key, max_bytes=self.settings.max_image_bytes)
        if not data:
            raise EmptyImageError(f"s3://{self.bucket.name}/{ref.key} is empty")
        return data

    def features(self, data: bytes, params: SearchParams) -> ImageFeatures:
        """The query's features, only those ``params.scoring`` reads."""
        return extract_features(data, max_pixels=self.settings.max_pixels, scoring=params.scoring)

    def search(self, source: QuerySource, params: SearchParams, *, started: float | None = None) -> dict[str, Any]:
        """The answer to one query; ``started`` (perf_counter) is when the request arrived."""
        started = time.perf_counter() if started is None else started
        features = self.features(self.image_bytes(source), params)
        if self.fanout is not None:
            found, size, status = self.fanout.search(features, params)
        else:
            index = self.reader.index()
            found, size, status = index.search(features, params), len(index), self.reader.status
        results = []
        for r in found:
            d = r.to_dict()
            d["url"] = self.urls.for_result(r.key, r.url)
            results.append({f: d[f] for f in RESULT_FIELDS})
        return {
            "query": {"sha256": features.sha256, "width": features.width, "height": features.height},
            "results": results,
            "catalog_size": size,
            "took_ms": round((time.perf_counter() - started) * 1000, 1),
            "index": status,
        }
