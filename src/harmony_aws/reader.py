"""The read path: a warm in-memory :class:`~harmony_image.SearchIndex` of one bucket's index.

The index is the compacted segments (segments.py; when the bucket has been compacted) plus the
records that differ from what the segments hold. A cold start reads the segments manifest,
each segment's header and shortlist tier (one ranged GET each; the verification rows of the
images a query shortlists are read by ranged GETs when it needs them, while the whole files
download to local disk in the background), then finds the records newer than the segments and
loads them one by one. A segment found replaced in S3 while in use fails the query that read it;
the next :meth:`IndexReader.index` serves the records instead until the segments load again.

Finding what changed: under a manifest with a journal cursor (journal.py), the reader lists only
the change journal after that cursor — its shard's folder only, when it serves one shard — and
reads again (one GET each) the records whose entries name a version it does not serve —
duplicated or reordered entries change nothing. A refresh (after ``ttl`` seconds) is one HEAD of
the manifest and one LIST of the journal (of each folder it reads) since the previous refresh (a
page per 1,000 entries; from :data:`~harmony_aws.journal.OVERLAP_SECONDS` before it, the entries
already seen skipped): its cost follows the catalog's changes, not its size. When the manifest
changed it loads the new segments and reads the journal from the new cursor. Under no manifest
or one without a cursor (older code) it lists every record — in ranges listed at once, cut at
records the segments hold — and fetches new and changed ones (by ETag).

Each record is loaded on its own (S3 reads are checked and retried in s3.py): one that still
cannot be read is left out of this refresh - an older version of it, if any, is kept - and
tried again at the next one, which comes after :data:`RETRY_SECONDS` instead of the TTL. The
index is served meanwhile, flagged: :attr:`IndexReader.status` is ``{"complete": false,
"missing": N}``, N the listed records not served at their listed version (unreadable, damaged,
or stored under a name that is not their catalog key's). A refresh that serves every listed
record clears it. A listing or segment load that fails keeps the index of the last one (flagged,
with ``"error"``); the very first listing raises.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harmony_image import HarmonyError, SearchIndex
from harmony_image.segment import Segment

from . import journal
from .errors import ConfigError, StorageError
from .layout import RECORDS_PREFIX, SEGMENTS_MANIFEST_KEY, catalog_key_of_record, shard_of
from .records import RecordRejectedError, StoredRecord, read_record
from .s3 import POOL_CONNECTIONS, Bucket
from .segments import Folded, SegmentCache, SegmentRef, read_folded, read_manifest
from .urls import ResultUrls

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
"""How soon a refresh that could not read everything is tried again (when the TTL is longer)."""
SEGMENT_CACHE = Path("/tmp/harmony-segments")  # noqa: S108 - Lambda's only writable disk; segments are public to the function anyway
"""Where downloaded segments are kept (Lambda's /tmp holds up to 10 GB)."""
SEGMENT_WORKERS = 4
"""Segments downloaded at once when they are downloaded whole before use (each is up to ~110 MB,
streamed to disk)."""
SHORTLIST_WORKERS = 16
"""Segments whose header and shortlist tier (~7 MB each) are read at once."""
_NO_MANIFEST = "none"
LIST_RANGES = POOL_CONNECTIONS
"""Ranges of the record listing listed at once: a LIST page (1,000 keys) takes tens of ms, and
every reader lists every record (at 1M images, 1,000 pages)."""
LIST_SPLIT_MIN = 2000
"""Known records below which the listing is not split (it is a page or two)."""


def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc (Lambda's Amazon Linux)
    except (OSError, AttributeError, TypeError):  # another C library or system: nothing to call
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> bool:
    """Give the pages of memory freed in the C heap back to the system; whether it could.

    A load's large buffers (S3 answers of megabytes, JSON, listings) are freed in many threads'
    malloc arenas, between arrays that stay: glibc keeps such holes mapped. A cold shard read by
    ranges held 12.5 KiB per image without this, 8.3 with it (its shortlist tier: 7.0);
    ``malloc_trim`` takes under a millisecond."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class IndexReader:
    """The index of ``bucket``'s records, refreshed when older than ``ttl`` seconds."""

    def __init__(
        self,
        bucket: Bucket,
        urls: ResultUrls,
        *,
        ttl: float = 10.0,
        load_workers: int = POOL_CONNECTIONS,  # cold loads are latency-bound: one per connection
        cache_dir: str | Path | None = None,
        shard: tuple[int, int] | None = None,
        ranged: bool = True,
        background: bool = True,
        use_journal: bool = True,
    ) -> None:
        """``shard``: ``(i, n)`` serves only the catalog keys of shard ``i`` of ``n``
        (:func:`~harmony_aws.layout.shard_of`); None serves them all. ``ranged``: a segment not
        on local disk is read by ranged GETs (else downloaded whole first), and downloaded whole
        in the ``background`` (see :class:`~harmony_aws.segments.SegmentCache`). ``use_journal``:
        False lists every record even under a manifest with a journal cursor (as readers did before
        the journal: for comparisons). ``cache_dir``: where whole segment files are kept; by default
        a folder of :data:`SEGMENT_CACHE` for this bucket and shard (a reader removes the files of
        its folder that its segments no longer name, so two readers never share one)."""
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard {shard[0]} of {shard[1]} does not exist")
        self.shard = shard
        self.bucket = bucket
        self.urls = urls
        self.ttl = ttl
        self.load_workers = load_workers
        self.use_journal = use_journal
        self._lock = threading.Lock()
        self._index = SearchIndex()
        self._records: dict[str, StoredRecord] = {}  # loaded one by one: newer than the segments
        if cache_dir is None:  # a folder of its own: a cache removes the files it no longer wants
            cache_dir = SEGMENT_CACHE / (bucket.name + (f"-shard-{shard[0]}-of-{shard[1]}" if shard else ""))
        self._segments = SegmentCache(bucket, cache_dir, ranged=ranged, background=background)
        self._segments_etag: str | None = None  # of the manifest the segments came from
        self._folded: Folded = {}  # records the segments hold
        self._dropped: set[str] = set()  # of those, records no longer listed (removed from the index)
        self._foreign: dict[str, str] = {}  # record key -> ETag: of another shard (hashed names only)
        self._rejected: dict[str, str] = {}  # record key -> ETag found unservable (not reloaded)
        self._cursor: str | None = None  # the journal cursor of the manifest the segments came from
        self._journal_from: str | None = None  # the journal key the next listing starts after
        self._journal_seen: set[str] = set()  # entries after _journal_from already applied
        self._journal_folders: list[str] = []  # the journal's folders this reader lists (its shard's)
        self._recheck: set[str] = set()  # record keys to read again at the next journal refresh
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
            stale = self._loaded_at is None or now - self._loaded_at >= wait or bool(self._segments.replaced)
            if force or stale:
                self._refresh()
                self._loaded_at = time.monotonic()
            return self._index

    @property
    def segments(self) -> SegmentCache:
        """Where the segments come from (local files, ranged GETs, the rows those read)."""
        return self._segments

    def wait_for_segments(self) -> None:
        """Wait until the segments read by ranges so far are downloaded whole (or failed to be)."""
        self._segments.wait()

    def _try_load(self, rkey: str) -> tuple[str, StoredRecord | BaseException | None]:
        try:
            return rkey, read_record(self.bucket, rkey)
        except (HarmonyError, RecordRejectedError) as exc:  # S3 failed past its retries, or the record is damaged
            return rkey, exc
        except Exception as exc:  # noqa: BLE001 - about neither S3 nor the bytes (an interpreter's fault)
            log.warning("record %s: %s: %s; loading it once more", rkey, type(exc).__name__, exc)
        try:
            return rkey, read_record(self.bucket, rkey)
        except Exception as exc:  # noqa: BLE001 - one record must not take the index down; reported
            return rkey, exc

    def _etag_served(self, rk: str) -> str | None:
        if rk in self._records:
            return self._records[rk].etag
        folded = self._folded.get(rk)
        return folded[0] if folded is not None and rk not in self._dropped else None

    def _refresh_segments(self) -> None:
        """Reload the segments if the manifest changed; the records loaded one by one that the new
        segments hold are let go, the others kept on top."""
        head = self.bucket.head(SEGMENTS_MANIFEST_KEY)
        etag = head.etag if head is not None else _NO_MANIFEST
        if etag == self._segments_etag:
            return
        manifest = read_manifest(self.bucket) if head is not None else None
        refs: tuple[SegmentRef, ...] = ()
        if manifest is not None:
            if self.shard is not None and manifest.shards != self.shard[1]:
                raise ConfigError(
                    f"the segments are compacted in {manifest.shards} shards; this reader serves "
                    f"shard {self.shard[0]} of {self.shard[1]}: compact again with {self.shard[1]} shards"
                )
            refs = tuple(manifest.of_shard(self.shard[0] if self.shard else None))
        workers = max(1, min(SHORTLIST_WORKERS if self._segments.ranged else SEGMENT_WORKERS, len(refs)))

        def load(ref: SegmentRef) -> tuple[Segment, Folded]:
            segment = self._segments.open(ref)
            return segment, read_folded(self.bucket, ref, keys=segment.keys)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            loaded = list(pool.map(load, refs))
        index = SearchIndex()
        folded: Folded = {}
        for segment, part in loaded:
            index.add_segment(segment)
            folded.update(part)
        for _, key in folded.values():  # the catalog manifest's URLs, where a record has none
            url = self.urls.source_url(key, None)
            if url:
                entry = index.get(key)
                if entry is not None and entry.url == key:
                    index.add(key, entry.features, url=url)
        for rk, rec in list(self._records.items()):
            if rk in folded and folded[rk][0] == rec.etag:
                del self._records[rk]
            else:
                index.add(rec.key, rec.features, url=self.urls.source_url(rec.key, rec.source_url))
        self._index, self._folded, self._dropped = index, folded, set()
        self._segments_etag = manifest.etag if manifest is not None else _NO_MANIFEST
        self._segments.keep_only(refs)
        self._cursor = manifest.journal_cursor if manifest is not None and self.use_journal else None
        self._journal_folders = journal.partitions(manifest.journal_counts(), self.shard) if manifest else []
        # The journal from the new cursor on; the records kept on top may be older than what the
        # new segments hold (a change folded before the cursor): each is read again.
        self._journal_from, self._journal_seen = self._cursor, set()
        self._recheck |= set(self._records)

    def _forget_segments(self) -> None:
        """Serve the records one by one instead of the segments (one was found replaced in S3)."""
        log.warning("segments %s changed in S3 while in use; serving the records", sorted(self._segments.replaced))
        self._segments.replaced.clear()
        index = SearchIndex()
        for rec in self._records.values():
            index.add(rec.key, rec.features, url=self.urls.source_url(rec.key, rec.source_url))
        self._index, self._folded, self._dropped, self._segments_etag = index, {}, set(), None
        self._cursor = None

    def _refresh_manifests(self, errors: list[str]) -> bool:
        """Read the catalog manifest (URLs) and load the segments if their manifest changed;
        failures are added to ``errors`` (the last ones read are kept). Whether the URLs changed."""
        manifest_changed = False
        try:
            manifest_changed = self.urls.refresh_manifest()
            if manifest_changed:
                self._segments_etag = None  # URLs changed: the rebuild below gives every entry its URL
        except StorageError as exc:  # keep the URLs of the last manifest read; try again soon
            errors.append(f"reading the manifest failed: {exc.message}")
        try:
            self._refresh_segments()
        except (StorageError, HarmonyError) as exc:  # keep the segments of the last manifest read
            errors.append(f"loading the segments failed: {exc.message}")
            if manifest_changed:  # no rebuild: the records loaded one by one get their new URLs here
                for rec in self._records.values():
                    self._index.add(rec.key, rec.features, url=self.urls.source_url(rec.key, rec.source_url))
        return manifest_changed

    def _list_splits(self) -> list[str]:
        """Record keys that cut the listing of every record into up to :data:`LIST_RANGES` ranges of
        about equal size, listed at once: an even sample of the records this reader knows (those
        of its shard are spread over all by the key's hash). None when it knows too few."""
        known = sorted({*self._folded, *self._records})
        step = len(known) // LIST_RANGES
        if len(known) < LIST_SPLIT_MIN or step == 0:
            return []
        return known[step::step][: LIST_RANGES - 1]

    def _refresh(self) -> None:
        t0 = time.perf_counter()
        segments_etag = self._segments_etag
        if self._segments.replaced:
            self._forget_segments()
        cold = self._loaded_at is None
        errors: list[str] = []
        # The segments first: their manifest says where the journal starts, and the records they
        # hold split a listing of every record into ranges listed at once.
        manifest_changed = self._refresh_manifests(errors)
        listing: dict[str, str] | None = None
        entries: int | None = None
        gone: list[str] = []
        l0 = time.perf_counter()
        try:
            if self._cursor is not None:
                todo, entries = self._journal_changes()
            else:
                listing = self._ours(self.bucket.etags(RECORDS_PREFIX, splits=self._list_splits()))
        except StorageError as exc:
            if cold:
                raise  # nothing to serve
            what = "the journal" if self._cursor is not None else RECORDS_PREFIX
            log.warning("listing %s failed (%s); serving the index of the last listing", what, exc.message)
            self._status = {**self._status, "complete": False, "error": f"listing the records failed: {exc.message}"}
            self._retry_soon = True
            return
        listing_ms = (time.perf_counter() - l0) * 1000
        for e in errors:
            log.warning("%s", e)
        if listing is not None:
            gone = [rk for rk in self._records if rk not in listing]
            for rk in gone:
                self._index.remove(self._records.pop(rk).key)
            for rk, (_, key) in self._folded.items():
                if rk not in listing and rk not in self._dropped:
                    self._index.remove(key)
                    self._dropped.add(rk)
                    gone.append(rk)
            self._rejected = {rk: etag for rk, etag in self._rejected.items() if listing.get(rk) == etag}
            todo = [rk for rk, etag in listing.items() if self._etag_served(rk) != etag and rk not in self._rejected]
        loaded: list[tuple[str, StoredRecord | BaseException | None]] = []
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, min(self.load_workers, len(todo)))) as pool:
                loaded = list(pool.map(self._try_load, todo))
        failed = fresh = 0
        for rk, got in loaded:
            if isinstance(got, RecordRejectedError):
                log.warning("record %s not served: %s", rk, got)
                self._rejected[rk] = listing[rk] if listing is not None else got.etag or ""
                self._forget(rk)
            elif isinstance(got, BaseException):  # kept at its older version; loaded again next time
                log.warning("record %s could not be loaded: %s: %s", rk, type(got).__name__, got)
                failed += 1
                if listing is None:
                    self._recheck.add(rk)
            elif got is None:  # deleted (since the listing)
                if self._etag_served(rk) is not None:
                    gone.append(rk)
                self._forget(rk)
                self._rejected.pop(rk, None)
                self._foreign.pop(rk, None)
            elif self.shard is not None and shard_of(got.key, self.shard[1]) != self.shard[0]:
                self._foreign[rk] = got.etag  # a hashed name: its shard is known only now
                fresh += 1
            else:
                rec = got
                self._rejected.pop(rk, None)
                if self._etag_served(rk) == rec.etag:  # a journal entry of a version already served
                    continue
                old = self._records.pop(rk, None)
                if old is not None and old.key != rec.key:
                    self._index.remove(old.key)
                self._records[rk] = rec
                self._index.add(rec.key, rec.features, url=self.urls.source_url(rec.key, rec.source_url))
                fresh += 1
        if todo or self._segments_etag != segments_etag:  # something was loaded
            release_freed_memory()
        missing = failed + len(self._rejected)
        self._retry_soon = failed > 0 or bool(errors)
        self._status = {"complete": missing == 0 and not errors, "missing": missing}
        if errors:
            self._status["error"] = "; ".join(errors)
        self.last_refresh = {
            "records": len(self._records),
            "segment_records": len(self._folded) - len(self._dropped),
            "loaded": fresh,  # records served anew (or found of another shard)
            "read": len(todo),  # records requested (a journal's also those found as served, or gone)
            "removed": len(gone),
            "failed": failed,
            "missing": missing,
            "manifest_changed": manifest_changed,
            "journal_entries": entries,  # None: every record was listed (no journal cursor)
            "segments_ms": round((l0 - t0) * 1000, 1),  # the manifest and, when it changed, the segments
            "listing_ms": round(listing_ms, 1),  # of the journal (or of every record)
            "ms": round((time.perf_counter() - t0) * 1000, 1),
        }

    def _journal_changes(self) -> tuple[list[str], int]:
        """The records to read again after listing the journal since the last listing (or the
        manifest's cursor), and the entries listed: those whose entries name a version this
        reader does not serve (a put of another ETag, a delete), plus those to read again
        (failed last time, or kept over segments that replaced theirs). Entries already applied
        (listed again in the overlap) are skipped; StorageError when the listing fails."""
        start = self._journal_from or self._cursor or journal.cursor_at(0)
        began = time.time()
        listed = list(journal.since(self.bucket, start, self._journal_folders))
        todo = set(self._recheck)
        for e in listed:
            if e.key in self._journal_seen or not self._mine(e.record_key):
                continue
            if e.action != "put" or e.etag != self._etag_known(e.record_key):
                todo.add(e.record_key)
        self._recheck = set()
        after = max(start, journal.cursor_at(began - journal.OVERLAP_SECONDS))
        self._journal_from = after
        self._journal_seen = {e.key for e in listed if e.position > after}
        return sorted(todo), len(listed)

    def _etag_known(self, rk: str) -> str | None:
        """The ETag at which record ``rk`` is served, or found unservable or of another shard."""
        served = self._etag_served(rk)
        return served if served is not None else self._rejected.get(rk) or self._foreign.get(rk)

    def _mine(self, rk: str) -> bool:
        """Whether record ``rk`` may be of this reader's shard (a hashed name: until read once)."""
        if self.shard is None:
            return True
        key = catalog_key_of_record(rk)
        return key is None or shard_of(key, self.shard[1]) == self.shard[0]

    def _ours(self, listing: dict[str, str]) -> dict[str, str]:
        """The listed records of this reader's shard (hashed names: until loaded once)."""
        if self.shard is None:
            return listing
        i, n = self.shard
        self._foreign = {rk: etag for rk, etag in self._foreign.items() if listing.get(rk) == etag}
        ours = {}
        for rk, etag in listing.items():
            key = catalog_key_of_record(rk)
            mine = rk not in self._foreign if key is None else shard_of(key, n) == i
            if mine:
                ours[rk] = etag
        return ours

    def _forget(self, rk: str) -> None:
        """Take record ``rk`` out of the index, in whichever form it is served."""
        old = self._records.pop(rk, None)
        if old is not None:
            self._index.remove(old.key)
        folded = self._folded.get(rk)
        if folded is not None and rk not in self._dropped:
            self._index.remove(folded[1])
            self._dropped.add(rk)
