"""The compacted index in S3: records folded into a few large immutable segments.

Records (records.py) stay the write path: one object per catalog object, so concurrent events
never race on a shared object. Compaction folds them into segments (the engine's format,
:mod:`harmony_image.segment`) so that a cold reader makes a handful of large GETs instead of one
per image::

    index/segments.json          manifest: {"format", "generation", "shards", "writer",
                                  "segments": [{"key", "etag", "records_key", "shard", "images",
                                  "bytes", "shortlist_bytes", "shortlist_key", "shortlist_etag"}],
                                  "journal_cursor"}
    index/segments/<id>.seg      one segment: up to ``segment_images`` entries of one shard
    index/segments/<id>.head     a copy of its first ``shortlist_bytes``: header and shortlist tier
    index/segments/<id>.json     the records folded into it: {record key: [record ETag, catalog key]}

A compaction reads the manifest (and its ETag), lists the records, keeps each segment whose
folded records are all still current, rebuilds the others from their records, puts records
no segment holds into new segments, and writes the manifest with a conditional PUT (If-Match
the ETag it read; If-None-Match when there was none). Of two compactors one wins; the other
deletes the segments it wrote. Segments that neither the current manifest nor the one before
it names are deleted by a later compaction once older than :data:`GRACE_SECONDS` (a reader
may still be loading them). A compaction with many records to fold runs the same steps apart
(:mod:`harmony_aws.compact_jobs`): plan, one segment folded per invocation, the manifest
published by the last.

Readers load the manifest, the segments of their shard and, one by one, the records that differ
from what the segments hold (:mod:`harmony_aws.reader`): those the change journal names after
the manifest's ``journal_cursor`` (taken :data:`~harmony_aws.journal.CURSOR_MARGIN_SECONDS` before
the compaction began listing the records, then moved past the entries that name what its
segments hold: :meth:`Compactor.later_cursor`, :mod:`harmony_aws.journal`), or, under a manifest
without one (written by older code), those a listing of every record shows. A segment not yet on local disk is
opened without its verification tier (:class:`SegmentCache`): one GET of its ``.head`` for its
header and shortlist tier (a ranged GET of the file's start for a segment written before there
were heads), then, as queries need them, the verification rows of the images
they shortlist, while the whole file is downloaded to local disk in the background (cached by
ETag: segments never change); every ranged GET is If-Match the manifest's ETag.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from harmony_image import HarmonyError, IndexFormatError
from harmony_image.packed import CatalogEntry
from harmony_image.segment import RowCache, Segment, segment_bytes

from . import journal
from .errors import S3ObjectChangedError, S3ObjectNotFoundError, StorageError
from .jobs import slices_of
from .layout import RECORDS_PREFIX, SEGMENTS_MANIFEST_KEY, SEGMENTS_PREFIX, catalog_key_of_record, record_key, shard_of
from .records import RecordRejectedError, StoredRecord, read_record
from .s3 import POOL_CONNECTIONS, Bucket

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
SEGMENT_IMAGES = 1024
"""Entries per segment: ~100 MB of verification tier, one GET of a few seconds at most."""
GRACE_SECONDS = 3600
"""How long a segment no manifest names is kept (a reader that read the previous manifest may
still be downloading it)."""
JOB_SECONDS = 12 * 3600
"""The files a planned compaction writes (``index/segments/<job id>.<random>``) are kept this long
after the job started, though no manifest names them yet; a job older than this publishes
nothing (harmony_aws.compact_jobs). A job of 1M images, 1,000 chunks of ~10 s two at a time,
takes ~1.5 h; its failing chunks come back at most 4 times, 13 min apart."""
JOB_SEGMENT = re.compile(r"^index/segments/(\d{8}T\d{6}Z-[0-9a-f]{8})\.")
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
    shortlist_key: str = ""
    """The object holding a copy of those bytes, read whole at a cold start; "": none (older
    manifests: a ranged GET of the file's start). S3 serves either in the same time; a store that
    reads a whole object to answer a range (moto) reads ~20x fewer bytes."""
    shortlist_etag: str = ""


@dataclass(frozen=True)
class SegmentsManifest:
    generation: int
    shards: int
    segments: tuple[SegmentRef, ...]
    writer: str = ""
    etag: str | None = None  # the manifest object's ETag when read from S3
    journal_cursor: str | None = None
    """Where readers start reading the change journal (the key to list after); None: no journal
    (a manifest of older code), readers list every record."""
    journal_shards: tuple[int, ...] = ()
    """The shard counts whose journal folders readers list (:func:`~harmony_aws.journal.partitions`):
    this manifest's and the one's it replaced (1 for none); empty: (1, ``shards``), what a
    manifest of older code meant."""

    def journal_counts(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.journal_shards or (1, self.shards))))

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
        if self.journal_cursor:
            body["journal_cursor"] = self.journal_cursor
        if self.journal_shards:
            body["journal_shards"] = list(self.journal_shards)
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
                    shortlist_key=str(s.get("shortlist_key", "")),
                    shortlist_etag=str(s.get("shortlist_etag", "")),
                )
                for s in body["segments"]
            )
            cursor = body.get("journal_cursor")
            if cursor is not None:
                journal.cursor_time(str(cursor))  # ValueError when it is not a journal key
            manifest = cls(
                int(body["generation"]),
                int(body["shards"]),
                segments,
                str(body.get("writer", "")),
                etag,
                str(cursor) if cursor is not None else None,
                tuple(int(n) for n in body.get("journal_shards") or ()),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IndexFormatError(f"{SEGMENTS_MANIFEST_KEY} is not a segments manifest ({exc})") from exc
        if any(n < 1 for n in manifest.journal_shards):
            raise IndexFormatError(f"{SEGMENTS_MANIFEST_KEY} names a journal shard count below 1")
        if manifest.shards < 1 or any(not 0 <= s.shard < manifest.shards for s in segments):
            raise IndexFormatError(f"{SEGMENTS_MANIFEST_KEY} names a shard outside 0..{manifest.shards - 1}")
        if any(not k.startswith(SEGMENTS_PREFIX) for k in files_of(segments)):
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
        self._ever_replaced: set[str] = set()
        """The same, never cleared: such a segment is opened again by a ranged GET of its own file
        (If-Match), not from its head, so that a reload finds the file replaced at once."""
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
            segment = Segment.open(path)
        except IndexFormatError:
            path.unlink(missing_ok=True)  # damaged on disk or in S3: fetched again next time
            raise
        self.read_ahead(path)
        return segment

    def read_ahead(self, path: Path) -> Future[None]:
        """Ask the kernel to read the file at ``path`` into the page cache, in the background (done
        when the reads are asked for, not when they are complete). The verification rows of a query's
        candidates are then read from memory, not from disk one page at a time — a mapped file's
        pages are otherwise read only when touched, so a warm reader's queries would go on reading
        from disk for as long as it serves. The kernel gives the memory back under pressure."""
        return self._downloads_pool.submit(_read_ahead, path)

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
            with self._noting_replaced(ref):
                self.bucket.download(ref.key, path, max_bytes=MAX_SEGMENT_BYTES, if_match=ref.etag)
        return path

    def _read_ranges(self, ref: SegmentRef, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Byte ranges of ``ref``'s file, by ranged GETs in parallel (the engine's RangeReader)."""

        def one(r: tuple[int, int]) -> bytes:
            return self.bucket.read_range(ref.key, r[0], r[1], if_match=ref.etag, size=ref.bytes)

        with self._noting_replaced(ref):
            if len(ranges) == 1:
                return [one(ranges[0])]
            return list(self._ranges.map(one, ranges))

    @contextmanager
    def _noting_replaced(self, ref: SegmentRef) -> Iterator[None]:
        """Reads of ``ref``'s objects: one that finds another version marks ``ref`` replaced."""
        try:
            yield
        except S3ObjectChangedError:
            self.replaced.add(ref.key)
            self._ever_replaced.add(ref.key)
            raise

    def _head(self, ref: SegmentRef) -> bytes:
        """The first bytes of ``ref``'s file, as many as hold its header and shortlist tier (or a
        guess of that many, from a manifest that does not say): its ``.head`` object when it has one."""
        if ref.shortlist_key and ref.shortlist_bytes and ref.key not in self._ever_replaced:
            with self._noting_replaced(ref):
                data, _ = self.bucket.read(
                    ref.shortlist_key, max_bytes=ref.shortlist_bytes, if_match=ref.shortlist_etag
                )
            return data
        head = min(ref.bytes, ref.shortlist_bytes or ref.images * SHORTLIST_GUESS + 2 * SHORTLIST_GUESS)
        return self._read_ranges(ref, [(0, head)])[0] if head else b""

    def _open_ranged(self, ref: SegmentRef) -> Segment:
        segment = Segment.open_ranged(
            lambda ranges: self._read_ranges(ref, ranges),
            size=ref.bytes,
            name=ref.key,
            head=self._head(ref),
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
            path = done.result()
            segment.attach(path)
            self.read_ahead(path)
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


def _read_ahead(path: Path) -> None:
    if not hasattr(os, "posix_fadvise"):  # not on macOS: pages are read when touched
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # removed meanwhile (a newer manifest): nothing to read
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


@dataclass
class CompactionReport:
    """What a compaction did: ``won`` (its manifest was published) and its ``generation``;
    ``records`` listed; ``segments`` in the new manifest, of which ``kept`` from the last one and
    ``written`` new; records ``rejected`` (unreadable, left to be read one by one); old segment
    files ``deleted``; journal entries ``journal_trimmed`` (older than the replaced manifest's cursor)
    and ``journal_skipped`` (that readers of the new one need not list: :meth:`Compactor.later_cursor`)."""

    generation: int = 0
    won: bool = False
    records: int = 0
    segments: int = 0
    kept: int = 0
    written: int = 0
    rejected: int = 0
    deleted: int = 0
    journal_trimmed: int = 0
    journal_skipped: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CompactionPlan:
    """What a compaction is to do: the manifest it read (``old``; None: never compacted), the
    records it listed (record key -> ETag), the segments of ``old`` it keeps, and the records to
    fold in ``chunks`` of (shard, record keys): at most one segment's worth of one shard each."""

    old: SegmentsManifest | None
    listing: dict[str, str]
    kept: list[SegmentRef]
    chunks: list[tuple[int, list[str]]]
    journal_cursor: str | None = None
    """The manifest's cursor: the journal from a margin before the listing began."""

    @property
    def generation(self) -> int:
        """The generation the compaction publishes."""
        return (self.old.generation if self.old else 0) + 1

    @property
    def todo(self) -> int:
        """Records to fold."""
        return sum(len(keys) for _, keys in self.chunks)


def files_of(refs: Iterable[SegmentRef]) -> list[str]:
    """The objects of ``refs``: each segment file, its head (when it has one) and its folded records."""
    return [k for ref in refs for k in (ref.key, ref.shortlist_key, ref.records_key) if k]


class Compactor:
    """Folds one bucket's records into segments; see the module doc. :meth:`compact` does it all
    in one call; a planned compaction (:mod:`harmony_aws.compact_jobs`) runs the same steps —
    :meth:`plan`, :meth:`fold` per chunk (one invocation each), :meth:`publish` — apart."""

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

    def compact(self, *, planned: tuple[CompactionPlan, CompactionReport] | None = None) -> CompactionReport:
        """One compaction (of a ``planned`` one: that plan and its report). Raises StorageError
        when S3 fails (nothing half-done is published: the manifest is written last, and only if
        no other compactor wrote one meanwhile)."""
        t0 = time.monotonic()
        if planned is None:
            report = CompactionReport()
            plan = self.plan(report)
        else:
            plan, report = planned
        written: list[SegmentRef] = []
        try:
            for shard, keys in plan.chunks:
                ref = self.fold(shard, keys, report, listing=plan.listing)
                if ref is not None:
                    written.append(ref)
            report.written = len(written)
            cursor = plan.journal_cursor
            manifest = self.manifest(
                plan.kept,
                written,
                generation=plan.generation,
                writer=uuid.uuid4().hex,
                journal_cursor=cursor,
                previous_shards=plan.old.shards if plan.old else 1,
            )
            manifest, report.journal_skipped = self.later_cursor(manifest)
            report.won = self.publish(manifest, if_match=plan.old.etag if plan.old else None)
        except BaseException:
            self.discard(written)
            raise
        if not report.won:
            log.info("another compaction published first; removing the %d segments written", len(written))
            self.discard(written)
        else:
            report.generation = manifest.generation
            report.segments = len(manifest.segments)
            report.deleted = self.collect(files_of([*manifest.segments, *(plan.old.segments if plan.old else ())]))
            if plan.old is not None and plan.old.journal_cursor:  # its readers still read from there
                report.journal_trimmed = journal.trim(self.bucket, before=plan.old.journal_cursor)
        report.seconds = round(time.monotonic() - t0, 2)
        return report

    def plan(self, report: CompactionReport) -> CompactionPlan:
        """Read the manifest and list the records: the segments kept (every record they fold is
        still current, none folded twice) and the others' records, by shard, cut into chunks of
        :attr:`segment_images` (and at most :data:`~harmony_aws.jobs.SLICE_BYTES` of keys, one
        SQS message). Counts ``records`` and ``kept`` in ``report``."""
        bucket = self.bucket
        old = read_manifest(bucket)
        cursor = journal.cursor_at(time.time() - journal.CURSOR_MARGIN_SECONDS)  # before the listing begins
        listing = bucket.etags(RECORDS_PREFIX)
        report.records = len(listing)
        kept: list[SegmentRef] = []
        covered: set[str] = set()
        if old is not None and old.shards == self.shards:
            for ref, folded in zip(old.segments, self._folded_of(old.segments), strict=True):
                if all(listing.get(rk) == etag for rk, (etag, _) in folded.items()) and not covered & folded.keys():
                    kept.append(ref)
                    covered |= folded.keys()
        report.kept = len(kept)
        by_shard: dict[int, list[str]] = {}
        for rk in sorted(rk for rk in listing if rk not in covered):
            by_shard.setdefault(self._shard_of_record(rk), []).append(rk)
        chunks = [
            (shard, chunk)
            for shard, rks in sorted(by_shard.items())
            for chunk in slices_of(rks, max_keys=self.segment_images)
        ]
        return CompactionPlan(old, listing, kept, chunks, cursor)

    def _folded_of(self, refs: Sequence[SegmentRef]) -> list[Folded]:
        """The records folded into each of ``refs`` (:func:`read_folded`), read at once."""
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(refs)))) as pool:
            return list(pool.map(lambda ref: read_folded(self.bucket, ref), refs))

    def _shard_of_record(self, rk: str) -> int:
        """The shard of record ``rk``'s catalog key: from its name, or (a hashed name) its metadata."""
        named = catalog_key_of_record(rk)
        if named is not None:
            return shard_of(named, self.shards)
        head = self.bucket.head(rk)
        key = unquote(head.metadata.get("catalog-key", "")) if head is not None else ""
        return shard_of(key, self.shards) if key else 0  # no catalog key: read_record rejects it

    def fold(
        self,
        shard: int,
        record_keys: Sequence[str],
        report: CompactionReport,
        *,
        listing: dict[str, str] | None = None,
        prefix: str = "",
    ) -> SegmentRef | None:
        """One segment of shard ``shard`` from the records ``record_keys``: at their ``listing``
        version (a record changed or gone since is left to the next compaction: readers load it
        on its own meanwhile), or without ``listing`` as they are now. None when no record could
        be read. The files are named ``index/segments/<prefix><random>``; if writing them fails,
        what was written is removed."""
        records = [r for r in self._load(record_keys, listing, report) if shard_of(r.key, self.shards) == shard]
        if not records:
            return None
        records.sort(key=lambda r: r.key)
        return self._write_segment(shard, records, prefix=prefix)

    def manifest(
        self,
        kept: Sequence[SegmentRef],
        written: Sequence[SegmentRef],
        *,
        generation: int,
        writer: str,
        journal_cursor: str | None = None,
        previous_shards: int = 1,
    ) -> SegmentsManifest:
        """The manifest naming the segments ``kept`` (a plan's) and ``written``, the plan's
        ``journal_cursor`` (None: readers list every record), and the journal folders of its
        shard count and of ``previous_shards``, the replaced manifest's (1: none)."""
        segments = tuple(sorted([*kept, *written], key=lambda r: (r.shard, r.key)))
        counts = tuple(sorted({previous_shards, self.shards}))
        return SegmentsManifest(
            generation, self.shards, segments, writer, journal_cursor=journal_cursor, journal_shards=counts
        )

    def later_cursor(self, manifest: SegmentsManifest) -> tuple[SegmentsManifest, int]:
        """``manifest`` with its journal cursor moved past the entries that name versions its
        segments fold (:func:`~harmony_aws.journal.covered_to`), up to
        :data:`~harmony_aws.journal.CURSOR_MARGIN_SECONDS` before now: so that a cold reader does
        not list again what the compaction already folded (right after a bulk load, every entry of
        the load's last minutes). Also how many entries that skips. Best effort: when the journal
        or a segment's folded records cannot be read, ``manifest`` as it is (its cursor is right,
        only earlier)."""
        if manifest.journal_cursor is None:
            return manifest, 0
        until = journal.cursor_at(time.time() - journal.CURSOR_MARGIN_SECONDS)  # every entry before it has landed
        folded: dict[int, dict[str, str]] = {}  # per shard, read when an entry of that shard is first met

        def serves(rk: str) -> str | None:
            key = catalog_key_of_record(rk)
            if key is None:  # a hashed name: its shard is in its metadata; not worth a GET here
                return None
            shard = shard_of(key, self.shards)
            if shard not in folded:
                maps = self._folded_of(manifest.of_shard(shard))
                folded[shard] = {r: etag for m in maps for r, (etag, _) in m.items()}
            return folded[shard].get(rk)

        folders = journal.partitions(manifest.journal_counts(), None)
        try:
            cursor, skipped = journal.covered_to(
                self.bucket, manifest.journal_cursor, folders, until=until, serves=serves
            )
        except HarmonyError as exc:  # S3 failed, or a folded-records object is missing or damaged
            log.warning("the journal cursor stays where the records were listed: %s", exc)
            return manifest, 0
        return replace(manifest, journal_cursor=cursor), skipped

    def publish(self, manifest: SegmentsManifest, *, if_match: str | None) -> bool:
        """Write ``manifest`` if the current one's ETag is still ``if_match`` (None: if there is
        none); whether it is published — also when it was by an earlier try of the same writer
        whose answer was lost."""
        etag = self.bucket.put_if(
            SEGMENTS_MANIFEST_KEY,
            manifest.to_bytes(),
            content_type="application/json",
            if_match=if_match,
            metadata={journal.SHARDS_METADATA: str(manifest.shards)},  # what journal writers partition by
        )
        if etag is not None:
            return True
        current = read_manifest(self.bucket)  # someone wrote first - or our own write landed
        return current is not None and current.writer == manifest.writer

    def _load(
        self, todo: Sequence[str], listing: dict[str, str] | None, report: CompactionReport
    ) -> list[StoredRecord]:
        def one(rk: str) -> StoredRecord | None:
            try:
                rec = read_record(self.bucket, rk)
            except RecordRejectedError as exc:
                log.warning("record %s not compacted: %s", rk, exc)
                report.rejected += 1
                return None
            return rec if rec is not None and (listing is None or rec.etag == listing.get(rk)) else None

        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(todo) or 1))) as pool:
            return [r for r in pool.map(one, todo) if r is not None]

    def _write_segment(self, shard: int, records: list[StoredRecord], *, prefix: str = "") -> SegmentRef:
        name = f"{SEGMENTS_PREFIX}{prefix}{uuid.uuid4().hex}"
        data = segment_bytes(CatalogEntry(key=r.key, url=r.source_url or r.key, features=r.features) for r in records)
        folded = {record_key(r.key): [r.etag, r.key] for r in records}
        seg_key, head_key, records_key = name + ".seg", name + ".head", name + ".json"
        shortlist = int(Segment.from_bytes(data, name=seg_key).header["shortlist_end"])
        try:
            self.bucket.put(records_key, json.dumps(folded).encode("utf-8"), content_type="application/json")
            seg_etag = self._put_binary(seg_key, data)
            head_etag = self._put_binary(head_key, data[:shortlist])
        except BaseException:
            self._delete_quietly([records_key, seg_key, head_key])
            raise
        return SegmentRef(
            seg_key, seg_etag, records_key, shard, len(records), len(data), shortlist, head_key, head_etag
        )

    def _put_binary(self, key: str, data: bytes) -> str:
        """Write ``key``; its ETag, from the PUT's answer (a HEAD when the answer gave none)."""
        etag = self.bucket.put(key, data, content_type="application/octet-stream")
        if etag:
            return etag
        head = self.bucket.head(key)
        if head is None:
            raise StorageError(f"{key} vanished right after it was written")
        return head.etag

    def collect(self, named: Iterable[str]) -> int:
        """Delete segment files older than the grace period that are not ``named`` (pass the new
        manifest's and the one it replaces: a reader may have read that one just before; its
        segments go at the next compaction). The files of a planned compaction started less than
        :data:`JOB_SECONDS` ago are kept: its manifest may not be published yet."""
        named = set(named)
        now = datetime.now(UTC)
        cutoff = now - timedelta(seconds=self.grace_seconds)
        stale = [
            o["Key"]
            for o in self.bucket.objects(SEGMENTS_PREFIX)
            if o["Key"] not in named and o["LastModified"] < cutoff and not _of_a_running_job(o["Key"], now)
        ]
        self._delete_quietly(stale)
        return len(stale)

    def discard(self, refs: Iterable[SegmentRef]) -> None:
        """Delete the files of segments no manifest names (best effort)."""
        self._delete_quietly(files_of(refs))

    def _delete_quietly(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.bucket.delete(key)
            except StorageError as exc:  # left for a later compaction's collection
                log.warning("could not delete %s: %s", key, exc.message)


def _of_a_running_job(key: str, now: datetime) -> bool:
    """Whether ``key`` is a file of a planned compaction (named ``<job id>.<random>``) that
    started less than :data:`JOB_SECONDS` before ``now``."""
    m = JOB_SEGMENT.match(key)
    if m is None:
        return False
    started = datetime.strptime(m.group(1)[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return now - started < timedelta(seconds=JOB_SECONDS)
