"""The index's change journal: one small object per record write or delete, named so that keys
sort by time, so that a reader finds what changed since the segments by listing only the journal
from the manifest's cursor on (not every record)::

    index/journal/<stamp>-<random>.<action>.<etag>.<record name>
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
  cursor;
* a warm reader lists from :data:`OVERLAP_SECONDS` before its previous listing began (and skips
  the entries it has seen): an entry that landed after that listing is stamped after that.

Compaction deletes the entries older than the cursor of the manifest it replaces (no reader that
still serves that manifest needs them; a reader of an older one sees the manifest change and
starts again from the new cursor). Not an S3 lifecycle rule: its age is not the journal's need —
a catalog not compacted for longer than the rule's days would lose entries its readers need.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import StorageError
from .layout import JOURNAL_PREFIX, RECORDS_PREFIX
from .s3 import Bucket

log = logging.getLogger(__name__)

LATE_SECONDS = 30.0
"""An entry whose PUT took longer than this (retries) is written again with a new stamp, so every
change has an entry that landed at most this long after its stamp."""
OVERLAP_SECONDS = 60.0
"""A warm reader lists the journal from this long before its previous listing began: covers an
entry that landed up to :data:`LATE_SECONDS` after its stamp and clocks of two Lambda hosts up to
15 s apart (NTP keeps them within milliseconds). Costs the entries of one minute, listed again."""
CURSOR_MARGIN_SECONDS = 15 * 60
"""How long before a compaction began listing the records its manifest's cursor lies. A change
the listing missed was written after the listing began, and its entry is stamped after the write
(by the writer's clock, and landed within LATE_SECONDS): any margin above the hosts' clock skew
would do; 15 min is generous. It costs LIST pages only: a cold reader lists the entries of the
margin again, but entries whose ETag is the one the segments hold need no request."""
PUT_ATTEMPTS = 3
"""Entries written for one change at most (each one after a PUT that took longer than LATE_SECONDS)."""
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


@dataclass(frozen=True)
class Entry:
    """One journal entry as its name gives it: ``etag`` is None for a delete."""

    key: str
    record_key: str
    action: str
    etag: str | None


def entry_key(t: float, record_key: str, action: str, etag: str | None) -> str:
    if action not in ACTIONS or not record_key.startswith(RECORDS_PREFIX):
        raise ValueError(f"not a journal entry: {action} {record_key}")
    tag = (etag or "").strip('"') if action == "put" else ""
    if "." in tag or "/" in tag:
        raise ValueError(f"an ETag with a dot or slash cannot be named: {etag!r}")
    name = record_key[len(RECORDS_PREFIX) :]
    return f"{JOURNAL_PREFIX}{stamp(t)}-{secrets.token_hex(_RANDOM_HEX // 2)}.{action}.{tag or '-'}.{name}"


def parse(key: str) -> Entry | None:
    """The entry named ``key``; None for a key that is not one (ignored by readers)."""
    if not key.startswith(JOURNAL_PREFIX):
        return None
    parts = key[len(JOURNAL_PREFIX) :].split(".", 3)
    if len(parts) != 4 or parts[1] not in ACTIONS or not parts[3]:
        return None
    head, action, tag, name = parts
    if len(head) != _STAMP_LEN + 1 + _RANDOM_HEX or head[_STAMP_LEN] != "-":
        return None
    etag = f'"{tag}"' if action == "put" and tag != "-" else None
    return Entry(key, RECORDS_PREFIX + name, action, etag)


def note(bucket: Bucket, *, catalog_key: str | None, record_key: str, action: str, etag: str | None) -> str:
    """Write the entry of a record just written (``put``, its new ``etag``) or deleted; its key.

    Raises StorageError when it cannot be written (the caller's invocation fails and is retried:
    see :meth:`~harmony_aws.records.RecordWriter.reconcile`)."""
    body = {"catalog_key": catalog_key, "record_key": record_key, "action": action, "etag": etag}
    for _ in range(PUT_ATTEMPTS):
        t0 = time.time()
        key = entry_key(t0, record_key, action, etag)
        data = json.dumps({**body, "at": stamp(t0)}).encode("utf-8")
        bucket.put(key, data, content_type="application/json")
        if time.time() - t0 <= LATE_SECONDS:
            return key
        log.warning("journal entry %s took more than %.0f s to write; writing it again", key, LATE_SECONDS)
    raise StorageError(f"journal entries of {record_key} kept taking more than {LATE_SECONDS:.0f} s to write")


def since(bucket: Bucket, after: str) -> Iterator[Entry]:
    """The entries after journal key ``after``, in key (time) order; keys that are not entries
    are skipped. One LIST page per 1,000 entries; StorageError when listing fails."""
    for o in bucket.objects(JOURNAL_PREFIX, after=after):
        entry = parse(o["Key"])
        if entry is not None:
            yield entry


def trim(bucket: Bucket, before: str) -> int:
    """Delete the journal objects whose key sorts before ``before`` (a cursor); how many. Best
    effort: a failure is logged and left to the next compaction."""
    try:
        old = [o["Key"] for o in bucket.objects(JOURNAL_PREFIX, upto=before) if o["Key"] < before]
        bucket.delete_many(old)
    except StorageError as exc:
        log.warning("trimming the journal before %s failed: %s", before, exc.message)
        return 0
    return len(old)
