"""The index's write path: one feature record per catalog object, kept equal to the object.

Never a shared index object, so concurrent IndexFunction invocations never read-modify-write
the same object::

    index/records/<name>.npz    ImageFeatures.to_bytes() of catalog/<rel>  (names: layout.py)
        metadata: source-etag    ETag of catalog/<rel> the record was computed from
                  catalog-key    percent-encoded full key (catalog/<rel>)
                  content-sha256 sha256 of the content the features were computed from (the
                                 record body's own sha256 must say the same)
                  source-url     percent-encoded `source-url` metadata of the catalog object, if any
                  feature-version
                  written-at     UNIX time the record was written (seconds)

Every record write and delete is followed by an entry in the change journal (journal.py), which
is how readers learn what changed since the segments without listing every record.

Reconciling (:meth:`RecordWriter.reconcile`): an event for key K is only a hint. The writer
looks at catalog/K itself (HEAD), writes or deletes the record to match it, and then looks at
catalog/K **again**; if it changed meanwhile it goes round once more. Whatever the order,
duplication or concurrency of events, the last write to a record is always followed by a check
that the source still matches it, so once events stop the records equal the bucket.

A record is deleted only when its source is gone (404) or its complete, verified content is not
a usable image; an S3 failure (:class:`~harmony_aws.errors.StorageError`, see s3.py) is raised,
never taken for an answer, so the invocation fails and Lambda retries it. Everything reconcile
does is idempotent: running it again for a key already done changes nothing.

:meth:`RecordWriter.reindex` reconciles every catalog object and every record, verifying record
bodies; it goes on past failures and reports them.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from urllib.parse import quote, unquote

from harmony_image import FEATURE_VERSION, ImageError, ImageFeatures, IndexFormatError, extract_features

from . import journal
from .errors import S3ObjectChangedError, S3ObjectNotFoundError, StorageError
from .layout import CATALOG_PREFIX, RECORDS_PREFIX, catalog_key_of_record, is_catalog_image_key, record_key
from .s3 import Bucket, Head

MAX_ROUNDS = 8
"""Reconcile rounds before giving up on an object that keeps changing (Lambda then retries)."""
MAX_RECORD_BYTES = 64 * 1024 * 1024
"""Largest record body read back when verifying (records are tens to hundreds of KB)."""
MAX_REPORTED_FAILURES = 100
JOURNAL_AGAIN_SECONDS = 3600
"""A record found current that was written less than this long ago gets its journal entry again:
the write that made it may have failed on its entry (reconcile raised, the message came back).
SQS gives a failed message back within minutes; later than this, a compaction has folded it."""


@dataclass(frozen=True)
class StoredRecord:
    """A record as read back: its ETag, catalog key, source URL (metadata) and features."""

    etag: str
    key: str
    source_url: str | None
    features: ImageFeatures


class RecordRejectedError(Exception):
    """A record that can be read but must not be served (damaged, or under another key's name);
    ``etag``: the version read."""

    def __init__(self, message: str, *, etag: str | None = None) -> None:
        super().__init__(message)
        self.etag = etag


def read_record(bucket: Bucket, rkey: str) -> StoredRecord | None:
    """The record ``rkey``; None when it does not exist (deleted since a listing named it).

    Raises StorageError when it cannot be read, :class:`RecordRejectedError` when it must not
    be served: its body is not a readable record, or it is stored under another name than its
    catalog key's (metadata ``catalog-key``, else the key its name encodes)."""
    try:
        data, head = bucket.read(rkey, max_bytes=MAX_RECORD_BYTES)
    except S3ObjectNotFoundError:
        return None
    meta = head.metadata
    if meta.get("catalog-key"):
        key = unquote(meta["catalog-key"])
    else:
        named = catalog_key_of_record(rkey)
        if named is None:
            raise RecordRejectedError("no catalog-key metadata and a name that does not give one", etag=head.etag)
        key = named
    if not is_catalog_image_key(key) or record_key(key) != rkey:
        raise RecordRejectedError(f"stored under another name than {key}'s record", etag=head.etag)
    try:
        features = ImageFeatures.from_bytes(data)
    except IndexFormatError as exc:
        raise RecordRejectedError(f"unreadable ({exc.message}); ignored until re-indexed", etag=head.etag) from exc
    url = unquote(meta["source-url"]) if meta.get("source-url") else None
    return StoredRecord(etag=head.etag, key=key, source_url=url, features=features)


@dataclass(frozen=True)
class ReconcileResult:
    key: str
    action: str  # indexed | unchanged | removed | absent | skipped
    detail: str = ""
    rounds: int = 1

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class ReindexReport:
    """What a reindex did. ``counts``: keys per reconcile action, plus ``failed``; ``complete``:
    every key was attempted and none failed; ``resume_after``: when the deadline stopped it, the
    last key attempted (keys go in sorted order; pass it back as ``start_after``)."""

    counts: dict[str, int] = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)  # the first MAX_REPORTED_FAILURES
    keys: int = 0
    attempted: int = 0
    complete: bool = True
    resume_after: str | None = None
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, action: str) -> None:
        with self._lock:
            self.counts[action] = self.counts.get(action, 0) + 1

    def fail(self, key: str, exc: BaseException) -> None:
        self.count("failed")
        with self._lock:
            self.complete = False
            if len(self.failed) < MAX_REPORTED_FAILURES:
                self.failed.append({"key": key, "error": f"{type(exc).__name__}: {exc}"})

    def to_dict(self) -> dict[str, object]:
        return {
            "reindexed": dict(sorted(self.counts.items())),
            "failed": self.failed,
            "keys": self.keys,
            "attempted": self.attempted,
            "complete": self.complete,
            "resume_after": self.resume_after,
            "seconds": round(self.seconds, 1),
        }


class RecordWriter:
    """Writes, replaces and deletes the records of one bucket's catalog."""

    def __init__(self, bucket: Bucket, *, max_pixels: int, max_image_bytes: int, shards: int = 1) -> None:
        """``shards``: the deployment's shard count, which the journal is partitioned by until a
        compaction publishes one (:class:`~harmony_aws.journal.WriterShards`)."""
        self.bucket = bucket
        self.max_pixels = max_pixels
        self.max_image_bytes = max_image_bytes
        self.journal_shards = journal.WriterShards(bucket, unpublished=shards)

    def _note(self, key: str | None, rkey: str, action: str, etag: str | None) -> None:
        """The journal entry of record ``rkey`` (of catalog ``key``, when known) just written or deleted."""
        journal.note(
            self.bucket, catalog_key=key, record_key=rkey, action=action, etag=etag, shards=self.journal_shards.get()
        )

    # ------------------------------------------------------------------ one key
    def reconcile(self, key: str, *, force: bool = False, verify: bool = False) -> ReconcileResult:
        """Make the record of catalog object ``key`` match the object as it is now.

        Idempotent and safe to run concurrently for the same key; see the module doc. Raises
        StorageError when S3 fails or the object keeps changing for MAX_ROUNDS rounds (the Lambda
        retry will reconcile it later). ``force`` recomputes the record even when it looks
        current; ``verify`` reads a current-looking record back and recomputes it unless its
        body is a readable record of the content its metadata names.
        """
        if not is_catalog_image_key(key):
            return ReconcileResult(key, "skipped", "not a catalog image key")
        bucket, rkey = self.bucket, record_key(key)
        repaired = ""
        for rounds in range(1, MAX_ROUNDS + 1):
            if rounds > 2:  # the object keeps changing: back off a little (jittered)
                time.sleep(random.uniform(0, min(1.0, 0.02 * 2**rounds)))  # noqa: S311 - jitter, not a secret
            src = bucket.head(key)
            if src is None:  # the source is gone (404): so goes its record
                existed = bucket.head(rkey) is not None
                bucket.delete(rkey)
                if existed:
                    self._note(key, rkey, "delete", None)
                if bucket.head(key) is None:
                    return ReconcileResult(key, "removed" if existed else "absent", rounds=rounds)
                continue
            source_url = src.metadata.get("source-url")
            rec = bucket.head(rkey)
            if not force and rec is not None and _describes(rec, key, src, source_url):
                if _written_lately(rec):  # its entry may be what failed last time: once more
                    self._note(key, rkey, "put", rec.etag)
                if not verify:
                    return ReconcileResult(key, "unchanged", rounds=rounds)
                try:
                    repaired = self._body_problem(rkey, rec)
                except (S3ObjectNotFoundError, S3ObjectChangedError):
                    continue  # rewritten or deleted meanwhile: look again
                if not repaired:
                    return ReconcileResult(key, "unchanged", "verified", rounds=rounds)
            problem = None
            if src.size > self.max_image_bytes:
                problem = f"payload_too_large: {src.size} bytes > {self.max_image_bytes}"
            else:
                try:
                    data, _ = bucket.read(key, max_bytes=self.max_image_bytes, if_match=src.etag)
                except (S3ObjectNotFoundError, S3ObjectChangedError):
                    continue  # deleted or replaced since the HEAD: look again
                try:
                    feats = extract_features(data, max_pixels=self.max_pixels, query=False)
                except ImageError as exc:
                    problem = f"{exc.code}: {exc.message}"
            if problem is not None:
                # The whole content, checked against its ETag, is not indexable: make sure no
                # stale record says otherwise, then verify the source did not change meanwhile.
                bucket.delete(rkey)
                if rec is not None:
                    self._note(key, rkey, "delete", None)
                after = bucket.head(key)
                if after is not None and after.etag == src.etag:
                    return ReconcileResult(key, "skipped", problem, rounds=rounds)
                continue
            meta = {
                "source-etag": src.etag,
                "catalog-key": quote(key, safe="/"),
                "content-sha256": feats.sha256,
                "feature-version": str(FEATURE_VERSION),
                "written-at": f"{time.time():.3f}",
            }
            if source_url:
                meta["source-url"] = quote(source_url, safe=":/")
            etag = bucket.put(rkey, feats.to_bytes(), content_type="application/octet-stream", metadata=meta)
            self._note(key, rkey, "put", etag)
            after = bucket.head(key)
            if after is not None and after.etag == src.etag and after.metadata.get("source-url") == source_url:
                detail = f"{feats.width}x{feats.height}" + (f"; repaired: {repaired}" if repaired else "")
                return ReconcileResult(key, "indexed", detail, rounds=rounds)
        # Giving up silently would be unsafe (our last write may be stale): fail, so that Lambda's
        # asynchronous retry (then the dead-letter queue, then `reindex`) reconciles it later.
        raise StorageError(f"{key} kept changing while being indexed ({MAX_ROUNDS} rounds); retry")

    def _body_problem(self, rkey: str, rec: Head) -> str:
        """Why the record's body does not hold what its metadata says ("" when it does)."""
        want = rec.metadata.get("content-sha256")
        if not want:
            return "the record does not name its content's sha256"
        data, _ = self.bucket.read(rkey, max_bytes=MAX_RECORD_BYTES, if_match=rec.etag)
        try:
            feats = ImageFeatures.from_bytes(data)
        except IndexFormatError as exc:
            return f"unreadable record: {exc.message}"
        if feats.sha256 != want:
            return f"the record holds the features of content {feats.sha256[:12]}, not {want[:12]}"
        return ""

    # ------------------------------------------------------------------ everything
    def reindex(
        self,
        *,
        force: bool = False,
        verify: bool = True,
        workers: int = 8,
        deadline: float | None = None,
        start_after: str | None = None,
    ) -> ReindexReport:
        """Reconcile every catalog object and every record: backfill after deploying onto a bucket
        that already holds images, feature-version upgrades, repairs, redrive of dead letters.

        Records are verified (``verify``: their bodies read back, see :meth:`reconcile`);
        records whose name does not match their ``catalog-key`` are removed (and their keys
        reconciled). It goes on past keys that fail and reports them. ``deadline`` (a
        ``time.monotonic()`` value): no key is started after it; ``start_after``: only keys
        after this one (a previous report's ``resume_after``). Listing failures are raised.
        """
        t0 = time.monotonic()
        report = ReindexReport()
        todo = self.reindex_keys(report, start_after=start_after, workers=workers)
        self.reindex_run(todo, report, force=force, verify=verify, workers=workers, deadline=deadline)
        report.seconds = time.monotonic() - t0
        return report

    def reindex_keys(self, report: ReindexReport, *, start_after: str | None = None, workers: int = 8) -> list[str]:
        """The keys a reindex reconciles, sorted: every catalog image and every key a record names.

        Records whose name gives no catalog image key are removed here, and records named by a
        hash whose ``catalog-key`` does not match their name too (counted in ``report`` as
        ``removed``, or ``failed``); ``start_after``: only keys after this one. Listing failures
        are raised."""
        bucket = self.bucket
        keys = {k for k in bucket.etags(CATALOG_PREFIX) if is_catalog_image_key(k)}
        unnamed: list[str] = []  # records whose name does not give their key: ask their metadata
        for rk in bucket.etags(RECORDS_PREFIX):
            named = catalog_key_of_record(rk)
            if named is None:
                unnamed.append(rk)
            elif is_catalog_image_key(named):
                keys.add(named)  # reconcile rewrites it if its catalog-key disagrees
            else:
                self._remove_record(rk, report)
        if unnamed:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                for found in pool.map(lambda rk: self._audit_unnamed(rk, report), unnamed):
                    if found:
                        keys.add(found)  # a record of a key no longer in the catalog: reconcile removes it
        return sorted(k for k in keys if start_after is None or k > start_after)

    def reindex_run(
        self,
        todo: list[str],
        report: ReindexReport,
        *,
        force: bool = False,
        verify: bool = True,
        workers: int = 8,
        deadline: float | None = None,
    ) -> None:
        """Reconcile ``todo`` (from :meth:`reindex_keys`) in order into ``report``, as :meth:`reindex`."""
        report.keys = len(todo)
        for key, outcome in self.reconcile_each(todo, force=force, verify=verify, workers=workers, deadline=deadline):
            report.attempted += 1
            report.resume_after = key
            if isinstance(outcome, ReconcileResult):
                report.count(outcome.action)
            else:
                report.fail(key, outcome)
        if report.attempted < len(todo):
            report.complete = False
        else:
            report.resume_after = None

    def reconcile_each(
        self,
        keys: list[str],
        *,
        force: bool = False,
        verify: bool = False,
        workers: int = 8,
        deadline: float | None = None,
    ) -> Iterator[tuple[str, ReconcileResult | Exception]]:
        """(key, its :meth:`reconcile` result or the exception it raised) for ``keys`` in order,
        ``workers`` threads at a time; no key is started after ``deadline`` (a
        ``time.monotonic()`` value), so the keys not yielded were not attempted."""

        def one(key: str) -> ReconcileResult:
            return self.reconcile(key, force=force, verify=verify)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for key, fut in _bounded(pool, keys, one, workers, deadline):
                try:
                    yield key, fut.result()
                except Exception as exc:  # noqa: BLE001 - one key's failure must not stop the others
                    yield key, exc

    def _remove_record(self, rk: str, report: ReindexReport) -> None:
        try:
            self.bucket.delete(rk)
            self._note(None, rk, "delete", None)
            report.count("removed")
        except StorageError as exc:
            report.fail(rk, exc)

    def _audit_unnamed(self, rk: str, report: ReindexReport) -> str | None:
        """A record named by a hash (or by no rule): its catalog key when its name is that key's
        record name; otherwise the record is removed (it would serve features for a key whose
        record lives elsewhere) and the key it claims, if any, is returned to be reconciled."""
        try:
            head = self.bucket.head(rk)
        except StorageError as exc:
            report.fail(rk, exc)
            return None
        if head is None:
            return None
        key = unquote(head.metadata.get("catalog-key", ""))
        if not (is_catalog_image_key(key) and record_key(key) == rk):
            self._remove_record(rk, report)
        return key if is_catalog_image_key(key) else None


def _describes(rec: Head, key: str, src: Head, source_url: str | None) -> bool:
    """Whether record metadata ``rec`` says it holds the current features of ``key`` (``src``)."""
    m = rec.metadata
    return (
        m.get("source-etag") == src.etag
        and m.get("feature-version") == str(FEATURE_VERSION)
        and unquote(m.get("catalog-key", "")) == key
        and unquote(m.get("source-url", "")) == (source_url or "")
    )


def _written_lately(rec: Head) -> bool:
    """Whether record ``rec`` says it was written less than JOURNAL_AGAIN_SECONDS ago."""
    try:
        return time.time() - float(rec.metadata.get("written-at", "")) < JOURNAL_AGAIN_SECONDS
    except ValueError:  # written before records said when: long ago
        return False


def _bounded(
    pool: ThreadPoolExecutor,
    keys: list[str],
    fn: Callable[[str], ReconcileResult],
    workers: int,
    deadline: float | None,
) -> Iterator[tuple[str, Future[ReconcileResult]]]:
    """(key, future) of ``fn(key)`` for the keys in order, at most 2 x ``workers`` in flight, none
    started after ``deadline``; yielded in order once done."""
    inflight: list[tuple[str, Future[ReconcileResult]]] = []
    it = iter(keys)
    while True:
        while len(inflight) < 2 * max(1, workers) and (deadline is None or time.monotonic() < deadline):
            key = next(it, None)
            if key is None:
                break
            inflight.append((key, pool.submit(fn, key)))
        if not inflight:
            return
        key, fut = inflight.pop(0)
        fut.exception()  # wait
        yield key, fut
