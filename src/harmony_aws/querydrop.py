"""QueryDrop: a query image dropped under queries/ gets its answer at results/<rel>.json.

* The answer has the API's shape (see service.py) plus ``"source": {"bucket", "key", "etag"}``.
* A dropped file that is not a usable image gets an error document instead:
  ``{"error": {"code", "message"}, "status": 4xx, "source": ...}`` — the only way to tell the
  person who dropped it; nothing else is written.
* An event for an object that no longer exists writes nothing.
* The answer carries the query's ETag (metadata ``query-etag``): an event delivered twice, or a
  second event for the same version, writes nothing the second time.
* Only keys under queries/ are processed and answers go under results/, which no trigger
  watches, so writing an answer cannot trigger anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from harmony_image import HarmonyError, SearchParams

from .errors import error_body
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


def answer_query(service: SearchService, key: str, params: SearchParams) -> DropResult:
    bucket = service.bucket
    if not key.startswith(QUERIES_PREFIX) or key.endswith("/") or key == QUERIES_PREFIX:
        return DropResult(key, "skipped", detail=f"not under {QUERIES_PREFIX}")
    rkey = result_key(key)
    src = bucket.head(key)
    if src is None:
        return DropResult(key, "absent", detail="the query object no longer exists; nothing written")
    prev = bucket.head(rkey)
    if prev is not None and prev.metadata.get("query-etag") == src.etag:
        return DropResult(key, "unchanged", rkey, "already answered for this version")
    source = {"bucket": bucket.name, "key": key, "etag": src.etag}
    try:
        data, got = bucket.read(key, max_bytes=service.settings.max_image_bytes)
        source["etag"] = got.etag
        payload = service.search(ImageBytes(data), params)
        action, detail = "answered", f"{len(payload['results'])} results"
    except HarmonyError as exc:
        if exc.status == 404:  # deleted between HEAD and GET
            return DropResult(key, "absent", detail=exc.message)
        if exc.status >= 500:
            raise
        payload = {**error_body(exc.code, exc.message), "status": exc.status}
        action, detail = "failed", exc.code
    payload["source"] = source
    bucket.put_json(rkey, payload, metadata={"query-etag": source["etag"]})
    return DropResult(key, action, rkey, detail)
