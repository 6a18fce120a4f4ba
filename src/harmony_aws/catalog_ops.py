"""List and delete catalog objects (the API's ``GET /catalog`` and ``DELETE /catalog/{key}``).

Listing, one page of ``limit`` keys under ``catalog/<prefix>``:

* one ListObjectsV2 of ``catalog/<prefix>`` (``MaxKeys=limit``) gives key, size and ETag;
* one HEAD per listed key of its record ``index/records/<name>`` (in parallel,
  :data:`HEAD_WORKERS`): the key is **indexed** when the record exists and its ``source-etag``
  is the object's ETag (a LIST of ``index/records/`` gives only the records' own ETags, and its
  order is not the catalog's, so it would have to be read whole for every page). The record's
  metadata also gives the object's ``source-url``;
* one HEAD per key that is *not* indexed, of the object itself, for its ``source-url``;
* one HEAD of ``catalog/manifest.json`` (and a GET when it changed) for manifest URLs;
* one GET of ``reports/latest.json``, the latest duplicate report, for ``duplicate_of``.

So a page of n keys costs 1 LIST + n HEADs + one HEAD per unindexed key + 1 HEAD + 1 GET.

The cursor is S3's continuation token wrapped with the prefix it belongs to (URL-safe base64 of
JSON): opaque to the client, checked before it reaches S3 (a cursor that does not decode, or
belongs to another prefix, is a 400; so is one S3 refuses).

Deleting goes through the index's write path: the object is deleted, then
:meth:`RecordWriter.reconcile` of the key removes its record (the S3 ObjectRemoved event makes
the IndexFunction reconcile it again, which changes nothing).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

from .duplicate_jobs import LATEST_KEY, MAX_REPORT_BYTES, duplicate_of
from .errors import BadRequestError, S3ObjectNotFoundError
from .layout import CATALOG_PREFIX, is_catalog_image_key, record_key
from .records import RecordWriter
from .s3 import Bucket, Head
from .urls import ResultUrls

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
HEAD_WORKERS = 16
MAX_CURSOR_LENGTH = 4096
MAX_KEY_BYTES = 1024 - len(CATALOG_PREFIX)


class BadCursorError(BadRequestError):
    code = "bad_cursor"


class BadKeyError(BadRequestError):
    code = "bad_key"


class CatalogKeyNotFoundError(S3ObjectNotFoundError):
    code = "key_not_found"


def encode_cursor(prefix: str, token: str) -> str:
    raw = json.dumps({"p": prefix, "t": token}, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, prefix: str) -> str:
    """S3's continuation token inside ``cursor``; BadCursorError unless it is one this API gave
    out for the same ``prefix``."""
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise BadCursorError("unknown cursor: pass back the next_cursor of the previous page")
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8"))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursorError("unknown cursor: pass back the next_cursor of the previous page") from None
    if not isinstance(data, dict) or not isinstance(data.get("t"), str) or not data["t"]:
        raise BadCursorError("unknown cursor: pass back the next_cursor of the previous page")
    if data.get("p") != prefix:
        raise BadCursorError("the cursor belongs to another prefix: list with the prefix it came from")
    token: str = data["t"]
    return token


def check_rel(rel: str, *, what: str = "key") -> str:
    """A catalog-relative key or prefix as the client gave it; BadKeyError when it would leave
    ``catalog/`` (``..`` or ``.`` segments, a leading ``/``, control characters) or is too long."""
    if rel.startswith("/"):
        raise BadKeyError(f"the {what} must be relative to catalog/ (no leading '/')")
    if any(seg in (".", "..") for seg in rel.split("/")):
        raise BadKeyError(f"the {what} may not contain '.' or '..' segments")
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        raise BadKeyError(f"the {what} may not contain control characters")
    if len(rel.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise BadKeyError(f"the {what} is longer than S3 allows")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise BadKeyError(f"the {what} is not valid UTF-8") from None
    return rel


class CatalogOps:
    """List and delete the catalog of one bucket."""

    def __init__(
        self, bucket: Bucket, writer: RecordWriter, urls: ResultUrls, *, on_change: Callable[[], None] | None = None
    ) -> None:
        self.bucket = bucket
        self.writer = writer
        self.urls = urls
        self.on_change = on_change  # called after a delete (the warm index of this process expires)

    # ------------------------------------------------------------------ list
    def list_page(self, prefix: str = "", *, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> dict[str, Any]:
        """``{"prefix", "items": [{"key", "name", "size", "last_modified", "source_url", "url",
        "indexed", "duplicate_of"}], "count", "next_cursor", "duplicates_report"}`` for one page
        (module doc: what it costs). ``url`` is the source URL, else a presigned GET of the object
        (a thumbnail the page can show); ``duplicate_of`` the key that the latest duplicate report
        (``duplicates_report``, its id) keeps in the key's group, else None."""
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequestError(f"limit must be between 1 and {MAX_LIMIT}")
        check_rel(prefix, what="prefix")
        token = decode_cursor(cursor, prefix) if cursor else None
        try:
            objects, nxt = self.bucket.page(CATALOG_PREFIX + prefix, limit=limit, token=token)
        except BadRequestError as exc:  # S3 refused the token inside a well-formed cursor
            raise BadCursorError(f"unknown cursor: {exc.message}") from exc
        objects = [o for o in objects if is_catalog_image_key(o["Key"])]
        self.urls.refresh_manifest()
        with ThreadPoolExecutor(max_workers=HEAD_WORKERS) as pool:
            items = list(pool.map(self._item, objects))
        report = self._latest_report()
        dup_of = duplicate_of(report)
        for it in items:
            it["duplicate_of"] = dup_of.get(it["key"])
        return {
            "prefix": prefix,
            "items": items,
            "count": len(items),
            "next_cursor": encode_cursor(prefix, nxt) if nxt else None,
            "duplicates_report": report.get("id") if report else None,
        }

    def _latest_report(self) -> dict[str, Any] | None:
        """The newest duplicate report (one GET of reports/latest.json), None before the first."""
        try:
            data, _ = self.bucket.read(LATEST_KEY, max_bytes=MAX_REPORT_BYTES)
        except S3ObjectNotFoundError:
            return None
        doc = json.loads(data)
        return doc if isinstance(doc, dict) else None

    def _item(self, obj: dict[str, Any]) -> dict[str, Any]:
        key, etag = obj["Key"], obj["ETag"]
        rec = self.bucket.head(record_key(key))
        indexed = rec is not None and rec.metadata.get("source-etag") == etag
        meta_url: str | None = None
        if indexed:
            assert rec is not None
            meta_url = unquote(rec.metadata["source-url"]) if rec.metadata.get("source-url") else None
        else:
            head: Head | None = self.bucket.head(key)
            if head is not None:
                meta_url = head.metadata.get("source-url")
        modified = obj.get("LastModified")
        source_url = self.urls.source_url(key, meta_url)
        return {
            "key": key,
            "name": key[len(CATALOG_PREFIX) :],
            "size": int(obj["Size"]),
            "last_modified": modified.isoformat() if modified is not None else None,
            "source_url": source_url,
            # what a search result would show: the source URL, else a presigned GET (no S3 call)
            "url": self.urls.for_result(key, source_url or ""),
            "indexed": indexed,
        }

    # ------------------------------------------------------------------ delete
    def delete(self, rel: str) -> dict[str, Any]:
        """Delete ``catalog/<rel>`` and its record: ``{"deleted": key, "record": "removed"|"absent"
        |...}``. CatalogKeyNotFoundError when neither the object nor its record exists."""
        check_rel(rel)
        key = CATALOG_PREFIX + rel
        if not is_catalog_image_key(key):
            raise BadKeyError(f"{key!r} is not a catalog image key")
        existed = self.bucket.head(key) is not None
        if not existed and self.bucket.head(record_key(key)) is None:
            raise CatalogKeyNotFoundError(f"{key} does not exist")
        self.bucket.delete(key)
        try:
            result = self.writer.reconcile(key)
        finally:
            if self.on_change is not None:
                self.on_change()
        return {"deleted": key, "object": "deleted" if existed else "absent", "record": result.action}
