"""Per-process singletons for the Lambda handlers: settings, one S3 client, and per bucket its
record writer and search service.

Created on first use (not at import, so tests can set the environment and moto first) and kept
for warm invocations: the SearchFunction's in-memory index lives in its reader. ``reset()``
drops everything (tests).
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config

from .catalog_ops import CatalogOps
from .compact_jobs import CompactionJobs
from .config import Settings
from .duplicate_jobs import DuplicateJobs
from .fanout import ShardFanOut
from .jobs import SliceQueue
from .reader import IndexReader
from .records import RecordWriter
from .reindex_jobs import ReindexJobs
from .s3 import Bucket, s3_client
from .segments import Compactor
from .service import SearchService
from .urls import ResultUrls

_lock = threading.Lock()
_settings: Settings | None = None
_client: Any = None
_services: dict[str, SearchService] = {}
_writers: dict[str, RecordWriter] = {}
_queue: SliceQueue | None = None
_reindex_queues: dict[str | None, SliceQueue] = {}


def settings() -> Settings:
    global _settings
    with _lock:
        if _settings is None:
            _settings = Settings.from_env()
        return _settings


def _bucket(name: str) -> Bucket:
    global _client
    if _client is None:
        _client = s3_client()
    return Bucket(name, _client)


def search_service(bucket: str | None = None) -> SearchService:
    """The search service of ``bucket`` (default: HARMONY_BUCKET, required then)."""
    s = settings()
    name = bucket or Settings.from_env(require_bucket=True).bucket
    assert name
    with _lock:
        if name not in _services:
            b = _bucket(name)
            urls = ResultUrls(b, presign_seconds=s.presign_seconds)
            fanout = ShardFanOut(_lambda_client(), s.shard_functions) if s.shard_functions else None
            reader = IndexReader(b, urls, ttl=s.index_ttl, shard=s.shard)
            _services[name] = SearchService(b, reader, urls, s, fanout=fanout)
        return _services[name]


def _lambda_client() -> Any:
    """A Lambda client for the shard fan-out: a read timeout past a shard's own timeout, one retry
    (a shard search only reads; a shard that still fails flags the answer instead)."""
    cfg = Config(
        connect_timeout=5, read_timeout=60, retries={"max_attempts": 1, "mode": "standard"}, max_pool_connections=64
    )
    return boto3.client("lambda", config=cfg)


def compactor(bucket: str) -> Compactor:
    """Compaction of ``bucket``'s records into HARMONY_SHARDS shards (IndexFunction)."""
    return Compactor(_bucket(bucket), shards=settings().shards)


def record_writer(bucket: str) -> RecordWriter:
    s = settings()
    with _lock:
        if bucket not in _writers:
            _writers[bucket] = RecordWriter(
                _bucket(bucket), max_pixels=s.max_pixels, max_image_bytes=s.max_image_bytes, shards=s.shards
            )
        return _writers[bucket]


def catalog_ops(bucket: str | None = None) -> CatalogOps:
    """List and delete over ``bucket`` (default: HARMONY_BUCKET), sharing the search service's
    bucket and result URLs; a delete expires the warm index of this process."""
    service = search_service(bucket)
    return CatalogOps(service.bucket, record_writer(service.bucket.name), service.urls, on_change=service.reader.expire)


def duplicate_jobs(bucket: str | None = None) -> DuplicateJobs:
    """Duplicate-report jobs over ``bucket`` (default: HARMONY_BUCKET): its warm index and result
    URLs, and the slice queue HARMONY_DUPLICATES_QUEUE_URL (needed to start a job, not to run one)."""
    global _queue
    service = search_service(bucket)
    url = settings().duplicates_queue_url
    with _lock:
        if _queue is None or _queue.url != url:
            _queue = SliceQueue(url)
        queue = _queue
    return DuplicateJobs(service.bucket, queue, service.urls, service.reader.index)


def _reindex_queue(bucket: str) -> SliceQueue:
    """HARMONY_REINDEX_QUEUE_URL when ``bucket`` is the function's own (HARMONY_BUCKET: the
    queue's consumer works on that one), else a queue without URL (the work is done in one call)."""
    s = settings()
    url = s.reindex_queue_url if bucket == s.bucket else None
    with _lock:
        if url not in _reindex_queues:
            _reindex_queues[url] = SliceQueue(
                url, setting="HARMONY_REINDEX_QUEUE_URL", what="reindex and compaction items"
            )
        return _reindex_queues[url]


def reindex_jobs(bucket: str) -> ReindexJobs:
    """Reindexes of ``bucket``: planned onto HARMONY_REINDEX_QUEUE_URL when ``bucket`` is the
    function's own, else in one call."""
    return ReindexJobs(record_writer(bucket), _reindex_queue(bucket))


def compaction_jobs(bucket: str) -> CompactionJobs:
    """Compactions of ``bucket``: planned onto HARMONY_REINDEX_QUEUE_URL when large and ``bucket``
    is the function's own, else in one call."""
    return CompactionJobs(compactor(bucket), _reindex_queue(bucket))


def reset() -> None:
    global _settings, _client, _queue
    with _lock:
        _settings = None
        _client = None
        _queue = None
        _services.clear()
        _writers.clear()
        _reindex_queues.clear()
