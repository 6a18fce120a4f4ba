"""The index's write path: one feature record per catalog object, kept equal to the object.

Never a shared index object, so concurrent IndexFunction invocations never read-modify-write
the same object::

    index/records/<name>.npz    ImageFeatures.to_bytes() of catalog/<rel>  (names: layout.py)
        metadata: source-etag    ETag of catalog/<rel> the record was computed from
                  catalog-key    percent-encoded full key (catalog/<rel>)
                  source-url     percent-encoded `source-url` metadata of the catalog object, if any
                  feature-version

Reconciling (:meth:`RecordWriter.reconcile`): an event for key K is only a hint. The writer
looks at catalog/K itself (HEAD), writes or deletes the record to match it, and then looks at
catalog/K **again**; if it changed meanwhile it goes round once more. Whatever the order,
duplication or concurrency of events, the last write to a record is always followed by a check
that the source still matches it, so once events stop the records equal the bucket.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from urllib.parse import quote, unquote

from botocore.exceptions import ClientError

from harmony_image import FEATURE_VERSION, ImageError, extract_features

from .errors import S3ObjectNotFoundError, StorageError
from .layout import CATALOG_PREFIX, RECORDS_PREFIX, is_catalog_image_key, record_key, rel_from_record_name
from .s3 import PRECONDITION_FAILED, Bucket, error_code

MAX_ROUNDS = 8
"""Reconcile rounds before giving up on an object that keeps changing (Lambda then retries)."""


@dataclass(frozen=True)
class ReconcileResult:
    key: str
    action: str  # indexed | unchanged | removed | absent | skipped
    detail: str = ""
    rounds: int = 1

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class RecordWriter:
    """Writes, replaces and deletes the records of one bucket's catalog."""

    def __init__(self, bucket: Bucket, *, max_pixels: int, max_image_bytes: int) -> None:
        self.bucket = bucket
        self.max_pixels = max_pixels
        self.max_image_bytes = max_image_bytes

    def reconcile(self, key: str, *, force: bool = False) -> ReconcileResult:
        """Make the record of catalog object ``key`` match the object as it is now.

        Idempotent and safe to run concurrently for the same key; see the module doc. Raises
        StorageError when the object keeps changing for MAX_ROUNDS rounds (the Lambda retry
        will reconcile it later). ``force`` recomputes the record even when it looks current.
        """
        if not is_catalog_image_key(key):
            return ReconcileResult(key, "skipped", "not a catalog image key")
        bucket, rkey = self.bucket, record_key(key)
        for rounds in range(1, MAX_ROUNDS + 1):
            if rounds > 2:  # the object keeps changing: back off a little (jittered)
                time.sleep(random.uniform(0, min(1.0, 0.02 * 2**rounds)))  # noqa: S311 - jitter, not a secret
            src = bucket.head(key)
            if src is None:
                existed = bucket.head(rkey) is not None
                bucket.delete(rkey)
                if bucket.head(key) is None:
                    return ReconcileResult(key, "removed" if existed else "absent", rounds=rounds)
                continue
            source_url = src.metadata.get("source-url")
            rec = bucket.head(rkey)
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
                    data, _ = bucket.read(key, max_bytes=self.max_image_bytes, if_match=src.etag)
                except S3ObjectNotFoundError:
                    continue
                except ClientError as exc:
                    if error_code(exc) in PRECONDITION_FAILED:
                        continue
                    raise
                try:
                    feats = extract_features(data, max_pixels=self.max_pixels, query=False)
                except ImageError as exc:
                    problem = f"{exc.code}: {exc.message}"
            if problem is not None:
                # Not indexable: make sure no stale record says otherwise, then verify.
                bucket.delete(rkey)
                after = bucket.head(key)
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
            bucket.put(rkey, feats.to_bytes(), content_type="application/octet-stream", metadata=meta)
            after = bucket.head(key)
            if after is not None and after.etag == src.etag and after.metadata.get("source-url") == source_url:
                return ReconcileResult(key, "indexed", f"{feats.width}x{feats.height}", rounds=rounds)
        # Giving up silently would be unsafe (our last write may be stale): fail, so that Lambda's
        # asynchronous retry (then the dead-letter queue, then `reindex`) reconciles it later.
        raise StorageError(f"{key} kept changing while being indexed ({MAX_ROUNDS} rounds); retry")

    def reindex(self, *, force: bool = False, workers: int = 8) -> dict[str, int]:
        """Reconcile every catalog object and every record (backfill after deploying onto a
        bucket that already holds images, feature-version upgrades, repairs). Counts per action."""
        bucket = self.bucket
        keys = {k for k in bucket.etags(CATALOG_PREFIX) if is_catalog_image_key(k)}
        for rk in bucket.etags(RECORDS_PREFIX):
            rel = rel_from_record_name(rk[len(RECORDS_PREFIX) :])
            if rel is None:
                head = bucket.head(rk)
                if head is None or not head.metadata.get("catalog-key"):
                    bucket.delete(rk)  # unattributable record
                    continue
                keys.add(unquote(head.metadata["catalog-key"]))
            else:
                keys.add(CATALOG_PREFIX + rel)
        counts: dict[str, int] = {}
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for r in pool.map(lambda k: self.reconcile(k, force=force), sorted(keys)):
                counts[r.action] = counts.get(r.action, 0) + 1
        return counts
