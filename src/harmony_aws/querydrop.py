"""QueryDrop: a query image dropped under queries/ gets its answer at results/<rel>.json.

* The answer has the API's shape (see service.py) plus ``"source": {"bucket", "key", "etag"}``.
* A dropped file that is not a usable image gets an error document instead:
  ``{"error": {"code", "message"}, "status": 4xx, "source": ...}`` — the only way to tell the
  person who dropped it; nothing else is written.
* An event for an object that no longer exists writes nothing.
* The answer carries the query's ETag (metadata ``query-etag``): an event delivered twice, or a
  second event for the same version, writes nothing the second time.
* An answer found on an index that is not complete (records that could not be read, see
  reader.py) says so (``"index": {"complete": false, "missing": N}``, metadata
  ``index-complete: false``) and is written, then :class:`IndexIncompleteError` fails the
  invocation: Lambda's retry answers again (an incomplete answer is never taken as done), and
  after its retries the event goes to the dead-letter queue.
* S3 failures (:class:`StorageError`: reads that keep arriving broken, 5xx after retries) are
  raised, never written as the answer: a broken download is not a truncated image.
* Only keys under queries/ are processed and answers go under results/, which no trigger
  watches, so writing an answer cannot trigger anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harmony_image import HarmonyError, SearchParams

from .errors import StorageError, error_body
from .layout import QUERIES_PREFIX, result_key
from .service import SearchService
from .sources import ImageBytes


@dataclass(frozen=True)
class DropResult:
    key: str
    action: str  # answered | failed | unchanged | absent | skipped
    result_key: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class IndexIncompleteError(StorageError):
    """The answer was written from an incomplete index: retry the event for a complete one."""

    code = "index_incomplete"


def answer_query(service: SearchService, key: str, params: SearchParams) -> DropResult:
    bucket = service.bucket
    if not key.startswith(QUERIES_PREFIX) or key.endswith("/") or key == QUERIES_PREFIX:
        return DropResult(key, "skipped", detail=f"not under {QUERIES_PREFIX}")
    rkey = result_key(key)
    src = bucket.head(key)
    if src is None:
        return DropResult(key, "absent", detail="the query object no longer exists; nothing written")
    prev = bucket.head(rkey)
    if (
        prev is not None
        and prev.metadata.get("query-etag") == src.etag
        and prev.metadata.get("index-complete") != "false"
    ):
        return DropResult(key, "unchanged", rkey, "already answered for this version")
    source = {"bucket": bucket.name, "key": key, "etag": src.etag}
    index: dict[str, Any] = {"complete": True}
    try:
        data, got = bucket.read(key, max_bytes=service.settings.max_image_bytes)
        source["etag"] = got.etag
        payload = service.search(ImageBytes(data), params)
        index = service.reader.status
        payload.setdefault("index", index)
        action, detail = "answered", f"{len(payload['results'])} results"
    except HarmonyError as exc:
        if exc.status == 404:  # deleted between HEAD and GET
            return DropResult(key, "absent", detail=exc.message)
        if exc.status >= 500:
            raise
        payload = {**error_body(exc.code, exc.message), "status": exc.status}
        action, detail = "failed", exc.code
    payload["source"] = source
    complete = bool(index.get("complete"))
    bucket.put_json(
        rkey, payload, metadata={"query-etag": source["etag"], "index-complete": "true" if complete else "false"}
    )
    if not complete:
        raise IndexIncompleteError(
            f"{rkey} was answered from an incomplete index ({index.get('missing', '?')} records missing); retry"
        )
    return DropResult(key, action, rkey, detail)
