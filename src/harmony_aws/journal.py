"""The index's change journal: one small object per record write or delete, named so that keys
sort by time, so that a reader finds what changed since the segments by listing only the journal
from the manifest's cursor on (not every record). The journal is partitioned by shard, so that a
shard's reader lists only its shard's changes::

    index/journal/shard-<i>-of-<n>/<stamp>-<random>.<action>.<etag>.<record name>
        shard-<i>-of-<n>  the shard of the record's catalog key (layout.shard_of) in the index's
                  shard count when the entry was written (:class:`WriterShards`)
        <stamp>   UTC time the entry was written, to the microsecond (20261202T061500123456Z)
        <action>  put | delete
        <etag>    the record's ETag after a put (quotes stripped), "-" after a delete
        body      {"catalog_key", "record_key", "action", "etag", "at"} (for people; readers use the name)

The name says everything a reader needs, so it never GETs an entry: the listing is the journal.

An entry is a hint, like an S3 event: a reader never applies its content. For every record an
entry names it either already serves that record at the entry's ETag (a put it has seen: nothing
to do), or reads the record's current state (a GET: the record, or 404 for gone). Duplicated and
reordered entries converge: whatever order they come in, a change whose result a reader does not
serve has an entry that makes it read the record as it is now.

Why no change is missed:

* the writer (:meth:`~harmony_aws.records.RecordWriter.reconcile`) takes the entry's stamp after
  its record write returned, and writes the entry again, newly stamped, when its PUT took longer
  than :data:`LATE_SECONDS` (botocore retries): an entry lands at most LATE_SECONDS after its stamp;
* a compaction's manifest names a cursor :data:`CURSOR_MARGIN_SECONDS` before it began listing
  the records: a change its listing missed was written after that, so its entry sorts after the
  cursor. When it publishes, the cursor moves on past the entries that name versions its
  segments hold (:func:`covered_to`), up to the margin before then: a reader would skip them, and
  an entry stamped before that has landed (each lands within :data:`LATE_SECONDS`);
* a warm reader lists from :data:`OVERLAP_SECONDS` before its previous listing began (and skips
  the entries it has seen): an entry that landed after that listing is stamped after that.

Why no change is missed across partitions: writers partition by the shard count of the manifest
(``index/segments.json``'s ``shards`` metadata, read again every :data:`WRITER_SHARDS_SECONDS`;
no manifest: the deployment's count, which the first compaction publishes), and a manifest lists
in ``journal_shards`` its own count and its predecessor's (the first manifest: 1 as well, the
count of writers configured without one).
A reader lists its shard's partition in each count the manifest names (every partition of a count
that is not its own: the changes written before writers saw a new count). A writer sees a new
count at most WRITER_SHARDS_SECONDS after it is published, far less than compactions are apart.

Compaction deletes the entries older than the cursor of the manifest it replaces (no reader that
still serves that manifest needs them; a reader of an older one sees the manifest change and
starts again from the new cursor). Not an S3 lifecycle rule: its age is not the journal's need —
a catalog not compacted for longer than the rule's days would lose entries its readers need.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import StorageError
from .layout import JOURNAL_PREFIX, RECORDS_PREFIX, SEGMENTS_MANIFEST_KEY, catalog_key_of_record, shard_of
from .s3 import Bucket

log = logging.getLogger(__name__)

LATE_SECONDS = 30.0
"""An entry whose PUT took longer than this (retries) is written again with a new stamp, so every
change has an entry that landed at most this long after its stamp."""
OVERLAP_SECONDS = 60.0
"""A warm reader lists the journal from this long before its previous listing began: covers an
entry that landed up to :data:`LATE_SECONDS` after its stamp and clocks of two Lambda hosts up to
15 s apart (NTP keeps them within milliseconds). Costs the entries of one minute, listed again."""
CURSOR_MARGIN_SECONDS = 2 * 60
"""How long before a compaction began listing the records its manifest's cursor lies. A change
the listing missed was written after the listing began, and its entry is stamped after the write
(by the writer's clock): the margin need only exceed the hosts' clock skew (NTP keeps Lambda hosts
within milliseconds; :data:`OVERLAP_SECONDS` allows 15 s), and a skew beyond it delays a change
until the next compaction, which lists every record, but never loses one. The margin costs LIST
pages: a cold reader lists the entries of the margin again (entries whose ETag is the one the
segments hold need no request), so right after a bulk load it would list the load's last 2
minutes (was 15: 19 LIST pages on a 50,000-image load, docs/SCALE.md) — unless the compaction
took longer than the margin: its cursor then moves past them
(:meth:`~harmony_aws.segments.Compactor.later_cursor`)."""
PUT_ATTEMPTS = 3
"""Entries written for one change at most (each one after a PUT that took longer than LATE_SECONDS)."""
WRITER_SHARDS_SECONDS = 60.0
"""How long a writer trusts the shard count it read from the manifest's metadata."""
SHARDS_METADATA = "shards"
"""The segments manifest's metadata naming its shard count (what writers partition by)."""
ACTIONS = ("put", "delete")
_STAMP = "%Y%m%dT%H%M%S%fZ"
_STAMP_LEN = len("20261202T061500123456Z")
_RANDOM_HEX = 8


def stamp(t: float) -> str:
    """The stamp of UNIX time ``t``: UTC to the microsecond, sorting as the times do."""
    return datetime.fromtimestamp(t, UTC).strftime(_STAMP)


def cursor_at(t: float) -> str:
    """The journal key to list after (S3's StartAfter) to get every entry stamped at or after ``t``."""
    return JOURNAL_PREFIX + stamp(t)


def cursor_time(cursor: str) -> float:
    """The UNIX time of a cursor or entry key (ValueError when it is not one)."""
    if not cursor.startswith(JOURNAL_PREFIX):
        raise ValueError(f"{cursor!r} is not under {JOURNAL_PREFIX}")
    text = cursor[len(JOURNAL_PREFIX) : len(JOURNAL_PREFIX) + _STAMP_LEN]
    return datetime.strptime(text, _STAMP).replace(tzinfo=UTC).timestamp()


def partition(shard: int, shards: int) -> str:
    """The journal folder of shard ``shard`` of ``shards``."""
    return f"{JOURNAL_PREFIX}shard-{shard}-of-{shards}/"


def partitions(counts: Iterable[int], shard: tuple[int, int] | None) -> list[str]:
    """The folders a reader of ``shard`` (i, n) (None: every shard) lists under a manifest whose
    ``journal_shards`` are ``counts``: in its own count its shard's, in another every one."""
    out: list[str] = []
    for n in sorted(set(counts)):
        if shard is not None and n == shard[1]:
            out.append(partition(shard[0], n))
        else:
            out += [partition(i, n) for i in range(n)]
    return out


def start_in(folder: str, cursor: str) -> str:
    """The key to list ``folder`` after (S3's StartAfter) for its entries after ``cursor``."""
    return folder + cursor[len(JOURNAL_PREFIX) :]


@dataclass(frozen=True)
class Entry:
    """One journal entry as its name gives it: ``etag`` is None for a delete."""

    key: str
    record_key: str
    action: str
    etag: str | None

    @property
    def position(self) -> str:
        """Where the entry lies in time, as a cursor does (whatever its partition): entries and
        cursors compare by it."""
        head = self.key[len(JOURNAL_PREFIX) :].rsplit("/", 1)[-1]
        return JOURNAL_PREFIX + head.split(".", 1)[0]


def entry_key(t: float, record_key: str, action: str, etag: str | None, *, folder: str) -> str:
    """The key of an entry written at UNIX time ``t`` in journal ``folder`` (:func:`partition`)."""
    if action not in ACTIONS or not record_key.startswith(RECORDS_PREFIX):
        raise ValueError(f"not a journal entry: {action} {record_key}")
    if not (folder.startswith(JOURNAL_PREFIX) and folder.endswith("/")):
        raise ValueError(f"not a journal folder: {folder!r}")
    tag = (etag or "").strip('"') if action == "put" else ""
    if "." in tag or "/" in tag:
        raise ValueError(f"an ETag with a dot or slash cannot be named: {etag!r}")
    name = record_key[len(RECORDS_PREFIX) :]
    return f"{folder}{stamp(t)}-{secrets.token_hex(_RANDOM_HEX // 2)}.{action}.{tag or '-'}.{name}"


_FOLDER = re.compile(r"shard-(0|[1-9][0-9]*)-of-([1-9][0-9]*)/")


def parse(key: str) -> Entry | None:
    """The entry named ``key`` (in a shard's folder, or directly under the journal as older code
    wrote them); None for a key that is not one (ignored by readers)."""
    if not key.startswith(JOURNAL_PREFIX):
        return None
    rest = key[len(JOURNAL_PREFIX) :]
    folder = _FOLDER.match(rest)
    if folder is not None:
        if int(folder.group(1)) >= int(folder.group(2)):
            return None
        rest = rest[folder.end() :]
    parts = rest.split(".", 3)
    if len(parts) != 4 or parts[1] not in ACTIONS or not parts[3]:
        return None
    head, action, tag, name = parts
    if len(head) != _STAMP_LEN + 1 + _RANDOM_HEX or head[_STAMP_LEN] != "-" or "/" in head:
        return None
    etag = f'"{tag}"' if action == "put" and tag != "-" else None
    return Entry(key, RECORDS_PREFIX + name, action, etag)


def folders_of(catalog_key: str | None, record_key: str, shards: int) -> list[str]:
    """The folders an entry of ``record_key`` goes to: its catalog key's shard's (the key given,
    else the one its record name encodes), or every shard's when neither says (a hashed record
    name whose catalog key is unknown: rare, an orphan record's delete)."""
    catalog_key = catalog_key or catalog_key_of_record(record_key)
    if catalog_key is None:
        return [partition(i, shards) for i in range(shards)]
    return [partition(shard_of(catalog_key, shards), shards)]


class WriterShards:
    """The shard count a writer partitions its entries by: the segments manifest's (its
    :data:`SHARDS_METADATA` metadata), read again after :data:`WRITER_SHARDS_SECONDS`; before
    the first manifest, ``unpublished`` (the deployment's HARMONY_SHARDS, which its first
    compaction will publish), so that a new catalog's first bulk load is journalled by shard."""

    def __init__(self, bucket: Bucket, *, unpublished: int = 1) -> None:
        if unpublished < 1:
            raise ValueError(f"unpublished={unpublished}: a shard count is 1 or more")
        self.bucket = bucket
        self.unpublished = unpublished
        self._lock = threading.Lock()
        self._shards, self._read_at = unpublished, -math.inf

    def get(self) -> int:
        with self._lock:
            if time.monotonic() - self._read_at >= WRITER_SHARDS_SECONDS:
                head = self.bucket.head(SEGMENTS_MANIFEST_KEY)
                raw = head.metadata.get(SHARDS_METADATA, "1") if head is not None else str(self.unpublished)
                try:
                    self._shards = max(1, int(raw))
                except ValueError:
                    raise StorageError(f"{SEGMENTS_MANIFEST_KEY} names {raw!r} shards in its metadata") from None
                self._read_at = time.monotonic()
            return self._shards


def note(
    bucket: Bucket, *, catalog_key: str | None, record_key: str, action: str, etag: str | None, shards: int
) -> list[str]:
    """Write the entry of a record just written (``put``, its new ``etag``) or deleted, in its
    shard's folder of ``shards`` (:func:`folders_of`); the keys written.

    Raises StorageError when it cannot be written (the caller's invocation fails and is retried:
    see :meth:`~harmony_aws.records.RecordWriter.reconcile`)."""
    body = {"catalog_key": catalog_key, "record_key": record_key, "action": action, "etag": etag}
    return [_note_in(bucket, folder, body) for folder in folders_of(catalog_key, record_key, shards)]


def _note_in(bucket: Bucket, folder: str, body: dict[str, str | None]) -> str:
    for _ in range(PUT_ATTEMPTS):
        t0 = time.time()
        key = entry_key(t0, str(body["record_key"]), str(body["action"]), body["etag"], folder=folder)
        data = json.dumps({**body, "at": stamp(t0)}).encode("utf-8")
        bucket.put(key, data, content_type="application/json")
        if time.time() - t0 <= LATE_SECONDS:
            return key
        log.warning("journal entry %s took more than %.0f s to write; writing it again", key, LATE_SECONDS)
    raise StorageError(f"journal entries of {body['record_key']} kept taking more than {LATE_SECONDS:.0f} s to write")


def since(bucket: Bucket, after: str, folders: Iterable[str]) -> Iterator[Entry]:
    """The entries of ``folders`` after cursor ``after``, folder by folder, each in time order;
    keys that are not entries are skipped. One LIST page per 1,000 entries of a folder (and one
    for an empty folder); StorageError when listing fails."""
    for folder in folders:
        for o in bucket.objects(folder, after=start_in(folder, after)):
            entry = parse(o["Key"])
            if entry is not None:
                yield entry


def covered_to(
    bucket: Bucket, after: str, folders: Iterable[str], *, until: str, serves: Callable[[str], str | None]
) -> tuple[str, int]:
    """How far past cursor ``after`` (at most to cursor ``until``) a manifest's cursor may move: to
    the first entry of ``folders`` that is not a put of the version ``serves`` names for its record
    (a delete, or a put of another ETag). A reader that serves those versions skips every entry
    before it (it reads a record again only for such an entry), so it need not list them. Also how
    many entries the move skips. StorageError when listing fails."""
    if until <= after:
        return after, 0
    cursor, skipped = until, []
    for folder in folders:
        for entry in since(bucket, after, [folder]):
            if entry.position >= cursor:
                break
            if entry.action != "put" or entry.etag is None or serves(entry.record_key) != entry.etag:
                cursor = entry.position[: len(JOURNAL_PREFIX) + _STAMP_LEN]  # lists this entry again
                break
            skipped.append(entry.position)
    return cursor, sum(1 for position in skipped if position < cursor)


def trim(bucket: Bucket, before: str) -> int:
    """Delete the journal's entries (every folder's) that lie before cursor ``before``; how many.
    Best effort: a failure is logged and left to the next compaction."""
    try:
        old = [o["Key"] for o in bucket.objects(JOURNAL_PREFIX) if (e := parse(o["Key"])) and e.position < before]
        bucket.delete_many(old)
    except StorageError as exc:
        log.warning("trimming the journal before %s failed: %s", before, exc.message)
        return 0
    return len(old)
