"""Turning requests into query images and search results into the API's JSON.

Used by the SearchFunction (API Gateway) and QueryDrop (S3 trigger); the handlers only parse the
event and format the response.

Query forms (POST /search):

* raw image body, any ``image/*`` (or ``application/octet-stream``) content type;
* ``multipart/form-data`` with the image in the field ``file``;
* ``application/json``: exactly one of ``{"url": ...}``, ``{"s3": {"bucket": ..., "key": ...}}``
  (``bucket`` optional, defaults to the catalog bucket; only that bucket, keys under
  ``catalog/`` or ``queries/``), ``{"image_base64": ...}``.

Response (200)::

    {"query": {"sha256", "width", "height"},
     "results": [{"url", "key", "score", "ssim", "orb", "sha256"}],
     "catalog_size": int, "took_ms": float}

Errors: ``{"error": {"code", "message"}}`` with the error's status.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any

from harmony_image import DEFAULT_K, MAX_K, SCORINGS, EmptyImageError, ImageFeatures, extract_features
from harmony_image.fetch import fetch_url

from .config import Settings
from .errors import (
    BadRequestError,
    InvalidJsonError,
    PayloadTooLargeError,
    S3ReferenceRefusedError,
    ValidationFailedError,
)
from .store import CATALOG_PREFIX, QUERIES_PREFIX, CatalogStore

# API Gateway accepts 10 MB; a synchronous Lambda invocation 6 MB (the base64 body counts), so
# a raw upload can be at most ~4.4 MB of image. Larger images go by URL or S3 reference.
MAX_BODY_BYTES = 6 * 1024 * 1024
READABLE_PREFIXES = (CATALOG_PREFIX, QUERIES_PREFIX)


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


# --------------------------------------------------------------------------- multipart
def _header_params(value: str) -> tuple[str, dict[str, str]]:
    parts = [p.strip() for p in value.split(";")]
    params: dict[str, str] = {}
    for p in parts[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1]
            params[k.strip().lower()] = v
    return parts[0].lower(), params


@dataclass(frozen=True)
class FormPart:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def parse_multipart(body: bytes, content_type: str) -> list[FormPart]:
    """Parts of a multipart/form-data body (exact bytes, no transfer decoding)."""
    _, params = _header_params(content_type)
    boundary = params.get("boundary")
    if not boundary:
        raise BadRequestError("multipart/form-data without a boundary")
    delim = b"--" + boundary.encode("latin-1")
    if delim not in body:
        raise BadRequestError("multipart body does not contain its boundary")
    parts: list[FormPart] = []
    chunks = body.split(delim)
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # closing delimiter
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        elif chunk.startswith(b"\n"):
            chunk = chunk[1:]
        sep = chunk.find(b"\r\n\r\n")
        skip = 4
        if sep < 0:
            sep, skip = chunk.find(b"\n\n"), 2
        if sep < 0:
            raise BadRequestError("malformed multipart part (no header/body separator)")
        head, data = chunk[:sep], chunk[sep + skip:]
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        disp, dparams = _header_params(headers.get("content-disposition", ""))
        if disp != "form-data":
            continue
        parts.append(FormPart(dparams.get("name", ""), dparams.get("filename"), headers.get("content-type"), data))
    return parts


# --------------------------------------------------------------------------- service
class SearchService:
    def __init__(self, store: CatalogStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    # query acquisition
    def image_from_body(self, body: bytes, content_type: str | None) -> bytes:
        ctype = (content_type or "").split(";")[0].strip().lower()
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLargeError(f"the request body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
        if ctype == "multipart/form-data":
            parts = parse_multipart(body, content_type or "")
            named = [p for p in parts if p.name == "file"]
            if not named:
                fields = ", ".join(sorted({p.name for p in parts})) or "none"
                raise BadRequestError(f'multipart/form-data needs the image in the field "file" (fields sent: {fields})')
            if not named[0].data:
                raise EmptyImageError('the "file" field is empty')
            return named[0].data
        if ctype in ("application/json", "text/json") or ctype.endswith("+json"):
            return self.image_from_json(body)
        if not body:
            raise EmptyImageError("the request body is empty: send an image, multipart field \"file\", or JSON")
        return body

    def image_from_json(self, body: bytes) -> bytes:
        if not body.strip():
            raise EmptyImageError("the request body is empty")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidJsonError(f"the body is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ValidationFailedError('the JSON body must be an object with "url", "s3" or "image_base64"')
        given = [k for k in ("url", "s3", "image_base64") if k in doc]
        unknown = sorted(set(doc) - {"url", "s3", "image_base64"})
        if len(given) != 1 or unknown:
            raise ValidationFailedError(
                'the JSON body needs exactly one of "url", "s3", "image_base64"'
                + (f" (unknown fields: {', '.join(unknown)})" if unknown else f" (got: {', '.join(given) or 'none'})")
            )
        which = given[0]
        if which == "url":
            if not isinstance(doc["url"], str):
                raise ValidationFailedError('"url" must be a string')
            return self.image_from_url(doc["url"])
        if which == "s3":
            ref = doc["s3"]
            if not isinstance(ref, dict) or not isinstance(ref.get("key"), str) or not ref["key"]:
                raise ValidationFailedError('"s3" must be {"bucket": "...", "key": "..."} with a non-empty key')
            bucket = ref.get("bucket")
            if bucket is not None and not isinstance(bucket, str):
                raise ValidationFailedError('"s3.bucket" must be a string')
            return self.image_from_s3(bucket, ref["key"])
        raw = doc["image_base64"]
        if not isinstance(raw, str):
            raise ValidationFailedError('"image_base64" must be a string')
        if raw.startswith("data:") and "," in raw:
            raw = raw.split(",", 1)[1]
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequestError(f'"image_base64" is not valid base64: {exc}') from exc
        if not data:
            raise EmptyImageError('"image_base64" is empty')
        return data

    def image_from_url(self, url: str) -> bytes:
        return fetch_url(url, max_bytes=self.settings.max_image_bytes, timeout=self.settings.fetch_timeout)

    def image_from_s3(self, bucket: str | None, key: str) -> bytes:
        if bucket and bucket != self.store.bucket:
            raise S3ReferenceRefusedError(
                f"only the catalog bucket {self.store.bucket!r} can be read, not {bucket!r}"
            )
        if not key.startswith(READABLE_PREFIXES) or ".." in key.split("/"):
            raise S3ReferenceRefusedError(
                f"only keys under {' or '.join(READABLE_PREFIXES)} can be used as queries; got {key!r}"
            )
        data, _ = self.store.read_object(key)
        if not data:
            raise EmptyImageError(f"s3://{self.store.bucket}/{key} is empty")
        return data

    # search
    def check_params(self, k: int | None, scoring: str | None, min_score: float | None) -> tuple[int, str, float | None]:
        k = DEFAULT_K if k is None else k
        if not 1 <= k <= MAX_K:
            raise ValidationFailedError(f"k must be between 1 and {MAX_K}; got {k}")
        scoring = scoring or self.settings.default_scoring
        if scoring not in SCORINGS:
            raise ValidationFailedError(f"scoring must be one of {', '.join(SCORINGS)}; got {scoring!r}")
        if min_score is not None and not 0.0 <= min_score <= 1.0:
            raise ValidationFailedError(f"min_score must be between 0 and 1; got {min_score}")
        return k, scoring, min_score

    def features(self, data: bytes) -> ImageFeatures:
        return extract_features(data, max_pixels=self.settings.max_pixels)

    def search(self, data: bytes, *, k: int | None = None, scoring: str | None = None,
               min_score: float | None = None, t0: float | None = None) -> dict[str, Any]:
        t0 = time.perf_counter() if t0 is None else t0
        k, scoring, min_score = self.check_params(k, scoring, min_score)
        feats = self.features(data)
        index = self.store.index()
        results = index.search(feats, k=k, scoring=scoring, min_score=min_score)
        out = []
        for r in results:
            d = r.to_dict()
            d["url"] = self.store.result_url(r.key, r.url)
            out.append({f: d[f] for f in ("url", "key", "score", "ssim", "orb", "sha256")})
        return {
            "query": {"sha256": feats.sha256, "width": feats.width, "height": feats.height},
            "results": out,
            "catalog_size": len(index),
            "took_ms": round((time.perf_counter() - t0) * 1000, 1),
        }
