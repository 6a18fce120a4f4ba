"""The compacted index in S3: records folded into a few large immutable segments.

Records (records.py) stay the write path: one object per catalog object, so concurrent events
never race on a shared object. Compaction folds them into segments (the engine's format,
:mod:`harmony_image.segment`) so that a cold reader makes a handful of large GETs instead of one
per image::

    index/segments.json          manifest: {"format", "generation", "shards", "writer",
                                  "segments": [{"key", "etag", "records_key", "shard", "images",
                                  "bytes"}]}
    index/segments/<id>.seg      one segment: up to ``segment_images`` entries of one shard
    index/segments/<id>.json     the records folded into it: {record key: [record ETag, catalog key]}

A compaction reads the manifest (and its ETag), lists the records, keeps each segment whose
folded records are all still current, rebuilds the others from their records, puts records
no segment holds into new segments, and writes the manifest with a conditional PUT (If-Match
the ETag it read; If-None-Match when there was none). Of two compactors one wins; the other
deletes the segments it wrote. Segments that neither the current manifest nor the one before
it names are deleted by a later compaction once older than :data:`GRACE_SECONDS` (a reader
may still be loading them).

Readers load the manifest, the segments of their shard and, one by one, the records that differ
from what the segments hold (:mod:`harmony_aws.reader`). A segment not yet on local disk is
opened by ranged GETs (:class:`SegmentCache`): one for its header and shortlist tier (the
manifest gives its length), then, as queries need them, the verification rows of the images
they shortlist, while the whole file is downloaded to local disk in the background (cached by
ETag: segments never change); every ranged GET is If-Match the manifest's ETag.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from harmony_image import HarmonyError, IndexFormatError
from harmony_image.packed import CatalogEntry
from harmony_image.segment import RowCache, Segment, segment_bytes

from .errors import S3ObjectChangedError, S3ObjectNotFoundError, StorageError
from .layout import RECORDS_PREFIX, SEGMENTS_MANIFEST_KEY, SEGMENTS_PREFIX, record_key, shard_of
from .records import RecordRejectedError, StoredRecord, read_record
from .s3 import POOL_CONNECTIONS, Bucket

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
SEGMENT_IMAGES = 1024
"""Entries per segment: ~100 MB of verification tier, one GET of a few seconds at most."""
GRACE_SECONDS = 3600
"""How long a segment no manifest names is kept (a reader that read the previous manifest may
still be downloading it)."""
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_SEGMENT_BYTES = 4 * 1024 * 1024 * 1024
MAX_FOLDED_BYTES = 64 * 1024 * 1024
SHORTLIST_GUESS = 8 * 1024
"""Bytes per image read at first from a segment whose manifest entry does not give its header
and shortlist tier's length (written before it did): the tier is ~7.1 KiB per image."""
RANGE_WORKERS = POOL_CONNECTIONS
"""Ranged GETs at once, over all of a reader's segments (a query gathers ~24-60 rows, up to 5
ranges each: latency-bound, one per connection)."""
DOWNLOAD_WORKERS = 4
"""Whole segment files downloaded to local disk at once, in the background (as many as a reader
that downloads them before use: harmony_aws.reader.SEGMENT_WORKERS)."""


@dataclass(frozen=True)
class SegmentRef:
    """One segment as the manifest names it."""

    key: str
    etag: str
    records_key: str
    shard: int
    images: int
    bytes: int
    shortlist_bytes: int = 0
    """Bytes of the header and shortlist tier (the start of the file); 0: not given (older manifests)."""


@dataclass(frozen=True)
class SegmentsManifest:
    generation: int
    shards: int
    segments: tuple[SegmentRef, ...]
    writer: str = ""
    etag: str | None = None  # the manifest object's ETag when read from S3

    def of_shard(self, shard: int | None) -> list[SegmentRef]:
        return [s for s in self.segments if shard is None or s.shard == shard]

    def to_bytes(self) -> bytes:
        body = {
            "format": MANIFEST_FORMAT,
            "generation": self.generation,
            "shards": self.shards,
            "writer": self.writer,
            "segments": [asdict(s) for s in self.segments],
        }
        return json.dumps(body, indent=1).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, *, etag: str | None = None) -> SegmentsManifest:
        """Parse a manifest; :class:`~harmony_image.IndexFormatError` when it is not one."""
        try:
            body = json.loads(data)
            if body.get("format") != MANIFEST_FORMAT:
                raise IndexFormatError(
                    f"{SEGMENTS_MANIFEST_KEY} has format {body.get('format')!r}, not {MANIFEST_FORMAT}"
                )
            segments = tuple(
                SegmentRef(
                    key=str(s["key"]),
                    etag=str(s["etag"]),
                    records_key=str(s["records_key"]),
                    shard=int(s["shard"]),
                    images=int(s["images"]),
                    bytes=int(s["bytes"]),
                    shortlist_bytes=int(s.get("shortlist_bytes", 0)),
                )
                for s in body["segments"]
            )
            manifest = cls(int(body["generation"]), int(body["shards"]), segments, str(body.get("writer", "")), etag)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IndexFormatError(f"{SEGMENTS_MANIFEST_KEY} is not a segments manifest ({exc})") from exc
        if manifest.shards < 1 or any(not 0 <= s.shard < manifest.shards for s in segments):
            raise IndexFormatError(f"{SEGMENTS_MANIFEST_KEY} names a shard outside 0..{manifest.shards - 1}")
        if any(
            not s.key.startswith(SEGMENTS_PREFIX) or not s.records_key.startswith(SEGMENTS_PREFIX) for s in segments
        ):
            raise IndexFormatError(f"{SEGMENTS_MANIFEST_KEY} names a segment outside {SEGMENTS_PREFIX}")
        return manifest


def read_manifest(bucket: Bucket) -> SegmentsManifest | None:
    """The current segments manifest, None when there is none (never compacted)."""
    try:
        data, head = bucket.read(SEGMENTS_MANIFEST_KEY, max_bytes=MAX_MANIFEST_BYTES)
    except S3ObjectNotFoundError:
        return None
    return SegmentsManifest.from_bytes(data, etag=head.etag)


Folded = dict[str, tuple[str, str]]
"""record key -> (record ETag, catalog key) of the records folded into a segment."""


def read_folded(bucket: Bucket, ref: SegmentRef, *, keys: Sequence[str] = ()) -> Folded:
    """The records folded into ``ref``; a catalog key equal to one of ``keys`` (the segment's, which
    a reader holds anyway) is that string, not another copy of it (~100 B per image)."""
    data, _ = bucket.read(ref.records_key, max_bytes=MAX_FOLDED_BYTES)
    held = {k: k for k in keys}
    try:
        raw = json.loads(data)
        return {str(rk): (str(v[0]), held.get(v[1], str(v[1]))) for rk, v in raw.items()}
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        raise IndexFormatError(f"{ref.records_key} is not a list of folded records ({exc})") from exc


class SegmentCache:
    """The segments of a reader, from a local folder (Lambda's /tmp) where whole files are kept
    named by ETag — a segment never changes, so a file once complete is reused by every later
    load and by other readers of the same process — or, while a file is not there, read by
    ranged GETs (``ranged``; see the module doc) with the file downloaded in the background
    (``background``) and attached once complete. Without ``ranged`` a segment is downloaded
    whole before it is opened. Files of segments no longer wanted are removed by :meth:`keep_only`.

    A ranged GET that finds another version of a segment (its ETag is not the manifest's) raises
    :class:`~harmony_aws.errors.S3ObjectChangedError` to the query that needed it, and the
    segment's key is added to :attr:`replaced` (the reader falls back to the records)."""

    def __init__(
        self,
        bucket: Bucket,
        folder: str | os.PathLike[str],
        *,
        ranged: bool = True,
        background: bool = True,
        rows: RowCache | None = None,
    ) -> None:
        self.bucket = bucket
        self.folder = Path(folder)
        self.ranged, self.background = ranged, background
        self.rows = rows if rows is not None else RowCache()
        self.replaced: set[str] = set()
        """Keys of segments found replaced in S3 while in use."""
        self._ranges = ThreadPoolExecutor(max_workers=RANGE_WORKERS, thread_name_prefix="harmony-segment-ranges")
        self._downloads_pool = ThreadPoolExecutor(max_workers=DOWNLOAD_WORKERS, thread_name_prefix="harmony-segments")
        self._downloads: dict[str, Future[Path]] = {}
        self._attached: list[Future[None]] = []
        self._lock = threading.Lock()

    def _path(self, ref: SegmentRef) -> Path:
        return self.folder / (ref.etag.strip('"') + ".seg")

    def open(self, ref: SegmentRef) -> Segment:
        """The segment: mapped from the cache, or opened by ranged GETs (or downloaded first),
        its ETag checked: another version is an :class:`~harmony_aws.errors.S3ObjectChangedError`."""
        path = self._path(ref)
        if not path.exists():
            if self.ranged:
                return self._open_ranged(ref)
            self.download(ref).result()
        try:
            return Segment.open(path)
        except IndexFormatError:
            path.unlink(missing_ok=True)  # damaged on disk or in S3: fetched again next time
            raise

    def download(self, ref: SegmentRef) -> Future[Path]:
        """The whole file of ``ref`` in the cache: its path once there (one download at a time per
        segment; a failed one is started again by the next call)."""
        with self._lock:
            future = self._downloads.get(ref.etag)
            if future is None or (future.done() and future.exception() is not None):
                future = self._downloads_pool.submit(self._download, ref)
                self._downloads[ref.etag] = future
            return future

    def _download(self, ref: SegmentRef) -> Path:
        path = self._path(ref)
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                self.bucket.download(ref.key, path, max_bytes=MAX_SEGMENT_BYTES, if_match=ref.etag)
            except S3ObjectChangedError:
                self.replaced.add(ref.key)
                raise
        return path

    def _read_ranges(self, ref: SegmentRef, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Byte ranges of ``ref``'s file, by ranged GETs in parallel (the engine's RangeReader)."""

        def one(r: tuple[int, int]) -> bytes:
            return self.bucket.read_range(ref.key, r[0], r[1], if_match=ref.etag, size=ref.bytes)

        try:
            if len(ranges) == 1:
                return [one(ranges[0])]
            return list(self._ranges.map(one, ranges))
        except S3ObjectChangedError:
            self.replaced.add(ref.key)
            raise

    def _open_ranged(self, ref: SegmentRef) -> Segment:
        head = ref.shortlist_bytes or ref.images * SHORTLIST_GUESS + 2 * SHORTLIST_GUESS
        head = min(ref.bytes, head)
        segment = Segment.open_ranged(
            lambda ranges: self._read_ranges(ref, ranges),
            size=ref.bytes,
            name=ref.key,
            head=self._read_ranges(ref, [(0, head)])[0] if head else b"",
            whole=lambda: self.download(ref).result(),
            cache=self.rows,
        )
        if self.background:
            attached: Future[None] = Future()
            with self._lock:
                self._attached.append(attached)
            self.download(ref).add_done_callback(lambda done: self._attach(ref, segment, done, attached))
        return segment

    def _attach(self, ref: SegmentRef, segment: Segment, done: Future[Path], attached: Future[None]) -> None:
        """Once the whole file is on disk, the segment reads every row from its mapping."""
        try:
            segment.attach(done.result())
        except (StorageError, HarmonyError, OSError) as exc:  # ranged reads go on; seed tries again
            log.warning("segment %s stays read by ranges: %s", ref.key, exc)
        finally:
            attached.set_result(None)

    def wait(self) -> None:
        """Wait until the background downloads started so far are done (and their segments read
        from local disk, or left read by ranges when a download failed)."""
        with self._lock:
            attached, self._attached = self._attached, []
        for future in attached:
            future.result()

    def keep_only(self, refs: Iterable[SegmentRef]) -> None:
        refs = list(refs)
        wanted = {self._path(r).name for r in refs}
        with self._lock:
            etags = {r.etag for r in refs}
            self._downloads = {etag: f for etag, f in self._downloads.items() if etag in etags}
        for path in self.folder.glob("*.seg"):
            if path.name not in wanted:
                path.unlink(missing_ok=True)


@dataclass
class CompactionReport:
    """What a compaction did: ``won`` (its manifest was published) and its ``generation``;
    ``records`` listed; ``segments`` in the new manifest, of which ``kept`` from the last one and
    ``written`` new; records ``rejected`` (unreadable, left to be read one by one); old segment
    files ``deleted``."""

    generation: int = 0
    won: bool = False
    records: int = 0
    segments: int = 0
    kept: int = 0
    written: int = 0
    rejected: int = 0
    deleted: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Compactor:
    """Folds one bucket's records into segments; see the module doc."""

    def __init__(
        self,
        bucket: Bucket,
        *,
        shards: int = 1,
        segment_images: int = SEGMENT_IMAGES,
        workers: int = POOL_CONNECTIONS,
        grace_seconds: float = GRACE_SECONDS,
    ) -> None:
        if shards < 1 or segment_images < 1:
            raise ValueError("shards and segment_images must be at least 1")
        self.bucket = bucket
        self.shards = shards
        self.segment_images = segment_images
        self.workers = workers
        self.grace_seconds = grace_seconds

    def compact(self) -> CompactionReport:
        """One compaction. Raises StorageError when S3 fails (nothing half-done is published:
        the manifest is written last, and only if no other compactor wrote one meanwhile)."""
        t0 = time.monotonic()
        report = CompactionReport()
        bucket = self.bucket
        old = read_manifest(bucket)
        listing = bucket.etags(RECORDS_PREFIX)
        report.records = len(listing)
        kept: list[SegmentRef] = []
        covered: set[str] = set()
        if old is not None and old.shards == self.shards:
            with ThreadPoolExecutor(max_workers=min(self.workers, max(1, len(old.segments)))) as pool:
                folded_of = list(pool.map(lambda ref: read_folded(bucket, ref), old.segments))
            for ref, folded in zip(old.segments, folded_of, strict=True):
                if all(listing.get(rk) == etag for rk, (etag, _) in folded.items()) and not covered & folded.keys():
                    kept.append(ref)
                    covered |= folded.keys()
        report.kept = len(kept)
        todo = sorted(rk for rk in listing if rk not in covered)
        records = self._load(todo, listing, report)
        by_shard: dict[int, list[StoredRecord]] = {}
        for rec in records:
            by_shard.setdefault(shard_of(rec.key, self.shards), []).append(rec)
        writer = uuid.uuid4().hex
        written: list[SegmentRef] = []
        try:
            for shard, recs in sorted(by_shard.items()):
                recs.sort(key=lambda r: r.key)
                for start in range(0, len(recs), self.segment_images):
                    written.append(self._write_segment(shard, recs[start : start + self.segment_images]))
            report.written = len(written)
            segments = tuple(sorted([*kept, *written], key=lambda r: (r.shard, r.key)))
            generation = (old.generation if old else 0) + 1
            manifest = SegmentsManifest(generation, self.shards, segments, writer)
            etag = bucket.put_if(
                SEGMENTS_MANIFEST_KEY,
                manifest.to_bytes(),
                content_type="application/json",
                if_match=old.etag if old else None,
            )
            if etag is None:  # someone wrote first - or our own write landed and its answer was lost
                current = read_manifest(bucket)
                report.won = current is not None and current.writer == writer
            else:
                report.won = True
        except BaseException:
            self._delete_quietly([k for ref in written for k in (ref.key, ref.records_key)])
            raise
        if not report.won:
            log.info("another compaction published first; removing the %d segments written", len(written))
            self._delete_quietly([k for ref in written for k in (ref.key, ref.records_key)])
        else:
            report.generation = generation
            report.segments = len(segments)
            report.deleted = self._collect([*segments, *(old.segments if old else ())])
        report.seconds = round(time.monotonic() - t0, 2)
        return report

    def _load(self, todo: Sequence[str], listing: dict[str, str], report: CompactionReport) -> list[StoredRecord]:
        """The records ``todo`` at their listed version (a record changed or gone since the listing
        is left to the next compaction: readers load it on its own meanwhile)."""

        def one(rk: str) -> StoredRecord | None:
            try:
                rec = read_record(self.bucket, rk)
            except RecordRejectedError as exc:
                log.warning("record %s not compacted: %s", rk, exc)
                report.rejected += 1
                return None
            return rec if rec is not None and rec.etag == listing[rk] else None

        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(todo) or 1))) as pool:
            return [r for r in pool.map(one, todo) if r is not None]

    def _write_segment(self, shard: int, records: list[StoredRecord]) -> SegmentRef:
        name = f"{SEGMENTS_PREFIX}{uuid.uuid4().hex}"
        data = segment_bytes(CatalogEntry(key=r.key, url=r.source_url or r.key, features=r.features) for r in records)
        folded = {record_key(r.key): [r.etag, r.key] for r in records}
        seg_key, records_key = name + ".seg", name + ".json"
        self.bucket.put(records_key, json.dumps(folded).encode("utf-8"), content_type="application/json")
        self.bucket.put(seg_key, data, content_type="application/octet-stream")
        head = self.bucket.head(seg_key)
        if head is None:
            raise StorageError(f"{seg_key} vanished right after it was written")
        shortlist = Segment.from_bytes(data, name=seg_key).header["shortlist_end"]
        return SegmentRef(seg_key, head.etag, records_key, shard, len(records), len(data), int(shortlist))

    def _collect(self, named_refs: Sequence[SegmentRef]) -> int:
        """Delete segment files older than the grace period that neither the new manifest nor the
        one it replaces names (a reader may have read that one just before: its segments go at
        the next compaction)."""
        named = {k for ref in named_refs for k in (ref.key, ref.records_key)}
        cutoff = datetime.now(UTC) - timedelta(seconds=self.grace_seconds)
        stale = [
            o["Key"]
            for o in self.bucket.objects(SEGMENTS_PREFIX)
            if o["Key"] not in named and o["LastModified"] < cutoff
        ]
        self._delete_quietly(stale)
        return len(stale)

    def _delete_quietly(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.bucket.delete(key)
            except StorageError as exc:  # left for a later compaction's collection
                log.warning("could not delete %s: %s", key, exc.message)
