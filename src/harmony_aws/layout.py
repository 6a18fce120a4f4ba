"""Where things live in the catalog bucket, and how a catalog key names its index record.

    catalog/<rel>                 catalog images (any sub-folders)
    catalog/manifest.json         optional source URLs, the seed's format
    index/records/<name>.npz      one feature record per catalog object
    index/segments.json           the compacted index's manifest (segments.py)
    index/segments/<id>.seg       compacted segments of many records, <id>.head (their header and
                                  shortlist tier, read at a cold start) and <id>.json beside each
    index/journal/shard-<i>-of-<n>/<stamp>-...  one small entry per record write or delete, in its
                                  shard's folder, sorting by time (journal.py)
    queries/<rel>                 dropped query images (QueryDrop)
    results/<rel>.json            QueryDrop's answers

``<name>`` is the URL-safe base64 (no padding) of the UTF-8 ``<rel>``; a key too long for that
(S3 keys are at most 1024 bytes) uses ``<sha256 of rel>.h`` instead — base64 never contains a
dot, so the two forms cannot collide. Readers take the key from the record's metadata either way.
"""

from __future__ import annotations

import base64
import hashlib

from harmony_image import MANIFEST_NAME

CATALOG_PREFIX = "catalog/"
INDEX_PREFIX = "index/"
RECORDS_PREFIX = "index/records/"
SEGMENTS_PREFIX = "index/segments/"
SEGMENTS_MANIFEST_KEY = "index/segments.json"
JOURNAL_PREFIX = "index/journal/"
QUERIES_PREFIX = "queries/"
RESULTS_PREFIX = "results/"
MANIFEST_KEY = CATALOG_PREFIX + MANIFEST_NAME

RECORD_SUFFIX = ".npz"
_HASHED_SUFFIX = ".h.npz"
_MAX_B64_NAME = 900  # base64 names up to here keep the record key under S3's 1024 bytes


def shard_of(key: str, shards: int) -> int:
    """The shard (0 .. ``shards`` - 1) of catalog key ``key``: a stable hash, the same in every
    process and release (Python's own ``hash`` is salted per process)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def is_catalog_image_key(key: str) -> bool:
    """A catalog image's key: under catalog/, not the manifest, not a folder marker, and no hidden
    part (``catalog/.harmony/...``: a local index uploaded with its folder, as the CLI skips it)."""
    if not key.startswith(CATALOG_PREFIX) or key == MANIFEST_KEY or key.endswith("/"):
        return False
    return not any(part.startswith(".") for part in catalog_rel(key).split("/"))


def catalog_rel(key: str) -> str:
    """``catalog/<rel>`` -> ``<rel>``."""
    if not key.startswith(CATALOG_PREFIX):
        raise ValueError(f"{key!r} is not under {CATALOG_PREFIX}")
    return key[len(CATALOG_PREFIX) :]


def record_name(rel: str) -> str:
    """Record object name (under index/records/) of the catalog-relative key ``rel``."""
    b64 = base64.urlsafe_b64encode(rel.encode("utf-8")).decode("ascii").rstrip("=")
    if len(b64) <= _MAX_B64_NAME:
        return b64 + RECORD_SUFFIX
    return hashlib.sha256(rel.encode("utf-8")).hexdigest() + _HASHED_SUFFIX


def record_key(key: str) -> str:
    """The record object key of catalog object ``key``."""
    return RECORDS_PREFIX + record_name(catalog_rel(key))


def rel_from_record_name(name: str) -> str | None:
    """The catalog-relative key encoded in a record name (None for the hashed form)."""
    if name.endswith(_HASHED_SUFFIX) or not name.endswith(RECORD_SUFFIX):
        return None
    b64 = name[: -len(RECORD_SUFFIX)]
    try:
        return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def catalog_key_of_record(rk: str) -> str | None:
    """The catalog key that record key ``rk`` names (None for the hashed form, whose key is in
    the record's metadata only)."""
    rel = rel_from_record_name(rk[len(RECORDS_PREFIX) :])
    return CATALOG_PREFIX + rel if rel is not None else None


def result_key(query_key: str) -> str:
    """Where QueryDrop answers ``queries/<rel>``: ``results/<rel>.json``."""
    return RESULTS_PREFIX + query_key[len(QUERIES_PREFIX) :] + ".json"
