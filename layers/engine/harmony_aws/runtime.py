"""Per-process singletons for the Lambda handlers: settings, S3 client, stores, search service.

Created on first use (not at import, so tests can set the environment and moto first) and kept
for warm invocations: the SearchFunction's in-memory index lives in its store. ``reset()`` drops
everything (tests).
"""

from __future__ import annotations

import threading

from .config import Settings
from .service import SearchService
from .store import CatalogStore, s3_client

_lock = threading.Lock()
_settings: Settings | None = None
_client = None
_stores: dict[str, CatalogStore] = {}


def settings() -> Settings:
    global _settings
    with _lock:
        if _settings is None:
            _settings = Settings.from_env()
        return _settings


def store(bucket: str | None = None) -> CatalogStore:
    """The store of ``bucket`` (default: HARMONY_BUCKET, required then)."""
    global _client
    s = settings()
    if bucket is None:
        s = Settings.from_env(require_bucket=True)
        bucket = s.bucket
    assert bucket
    with _lock:
        if bucket not in _stores:
            if _client is None:
                _client = s3_client()
            _stores[bucket] = CatalogStore(
                bucket,
                client=_client,
                max_pixels=s.max_pixels,
                max_image_bytes=s.max_image_bytes,
                presign_seconds=s.presign_seconds,
                index_ttl=s.index_ttl,
            )
        return _stores[bucket]


def search_service(bucket: str | None = None) -> SearchService:
    return SearchService(store(bucket), settings())


def reset() -> None:
    global _settings, _client
    with _lock:
        _settings = None
        _client = None
        _stores.clear()
