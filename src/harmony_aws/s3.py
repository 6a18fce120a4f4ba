"""S3 access for one bucket: the few calls the adapters make, with S3's errors turned into the
project's (404 -> :class:`S3ObjectNotFoundError`, over the size cap -> :class:`PayloadTooLargeError`,
an ``If-Match`` that no longer holds -> :class:`S3ObjectChangedError`, anything else that went
wrong -> :class:`StorageError`, which retrying may fix).

Retries, and who does them:

* **botocore** (``standard`` mode, :data:`MAX_RETRIES`) retries a request that got no answer
  or an answer of 500/502/503/504, throttling (503 SlowDown) or a connection error *before* the
  response was read. It does not look at the body of an answer it has handed over: a connection
  cut in the middle of a GetObject body comes back as fewer bytes than Content-Length (or as a
  urllib3 ``ProtocolError`` from the body of a ListObjectsV2 answer), and botocore retries
  neither (boto/boto3#4111, boto/botocore#3132).
* **this module** checks every answer it uses: a GetObject body is read to its end and must have
  the Content-Length and, where the ETag is the content's MD5 (single-part upload, no SSE-KMS/C),
  that MD5; botocore also checks the object's CRC32/SHA checksum when it has one. A HEAD must
  carry an ETag, a listing page its KeyCount (a response cut inside its headers parses as an
  empty one). A body that fails these checks, or whose read broke, is requested again, up to
  :data:`BODY_ATTEMPTS` times with jittered backoff - only those; what botocore already retried
  is not retried again here.
* **the caller** gets a :class:`StorageError` when all that failed; the Lambda functions let it
  fail the invocation so that Lambda's asynchronous retries (then the dead-letter queue) take over.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.parsers import ResponseParserError

from .errors import BadRequestError, PayloadTooLargeError, S3ObjectChangedError, S3ObjectNotFoundError, StorageError

NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
PRECONDITION_FAILED = frozenset({"412", "PreconditionFailed"})
POOL_CONNECTIONS = 32
MAX_RETRIES = 6
"""botocore's retries per request (botocore's ``max_attempts`` setting counts retries: 7 attempts)."""
BODY_ATTEMPTS = 3
"""Requests of one object or listing page whose answer arrived broken (see the module doc)."""
BODY_BACKOFF = 0.05
"""Base of the jittered backoff between those, in seconds (botocore's own base for non-throttling)."""
CHUNK = 1 << 16
DELETE_BATCH = 1000
"""Keys per DeleteObjects request (S3's limit)."""

_MD5_ETAG = re.compile(r'^"?[0-9a-fA-F]{32}"?$')
_NOT_MD5_SSE = frozenset({"aws:kms", "aws:kms:dsse"})

T = TypeVar("T")


class BrokenAnswerError(StorageError):
    """An answer that arrived incomplete or inconsistent (short body, checksum, missing headers)."""

    code = "storage_incomplete_answer"


# Errors of an answer's body that botocore has not retried: the request is made again.
BROKEN_ANSWER = (
    BrokenAnswerError,
    urllib3.exceptions.HTTPError,  # e.g. ProtocolError from a non-streaming body cut short
    ResponseStreamingError,  # a streaming body cut short
    IncompleteReadError,  # a streaming body that ended before its Content-Length
    ResponseParserError,  # a body cut where its length was not given
    ValueError,  # headers cut in the middle of a value (botocore's timestamp parser raises it)
)


def s3_client(region: str | None = None) -> Any:
    """An S3 client; the endpoint comes from the usual places (AWS_ENDPOINT_URL_S3 included)."""
    cfg = Config(
        signature_version="s3v4",
        retries={"max_attempts": MAX_RETRIES, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        max_pool_connections=POOL_CONNECTIONS,
    )
    return boto3.client("s3", region_name=region, config=cfg)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def etag_is_md5(etag: str, sse: str | None = None, sse_customer: str | None = None) -> bool:
    """Whether S3's ETag is the MD5 of the content: single-part uploads without SSE-KMS or SSE-C."""
    return bool(_MD5_ETAG.match(etag)) and (sse or "") not in _NOT_MD5_SSE and not sse_customer


@dataclass(frozen=True)
class Head:
    etag: str
    size: int
    metadata: dict[str, str]


class Bucket:
    """One bucket through one client."""

    def __init__(self, name: str, client: Any = None) -> None:
        if not name:
            raise ValueError("bucket name is required")
        self.name = name
        self.client = client or s3_client()

    # ------------------------------------------------------------------ plumbing
    def _where(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def _attempts(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, made again when its answer arrived broken; failures as StorageError."""
        for attempt in range(1, BODY_ATTEMPTS + 1):
            try:
                return call()
            except (S3ObjectNotFoundError, S3ObjectChangedError, PayloadTooLargeError, BadRequestError):
                raise
            except BROKEN_ANSWER as exc:
                if attempt == BODY_ATTEMPTS:
                    raise StorageError(f"{what}: the answer arrived broken {attempt} times ({exc})") from exc
                time.sleep(random.uniform(0, BODY_BACKOFF * 2**attempt))  # noqa: S311 - jitter, not a secret
            except ClientError as exc:  # botocore's retries are spent, or the error is not retryable
                code = error_code(exc)
                if code == "NoSuchBucket":
                    raise S3ObjectNotFoundError(f"bucket {self.name!r} does not exist") from exc
                meta = exc.response.get("ResponseMetadata", {})
                why = f"{code or exc} after {meta.get('RetryAttempts', 0)} retries"
                if meta.get("RetryQuotaReached"):
                    why += " (botocore's retry quota is spent: S3 has been failing a lot)"
                raise StorageError(f"{what}: {why}") from exc
            except BotoCoreError as exc:  # connection errors after botocore's retries, and the like
                raise StorageError(f"{what}: {exc}") from exc
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ reads
    def head(self, key: str) -> Head | None:
        """The object's ETag, size and metadata; None when it does not exist (404)."""

        def call() -> Head | None:
            try:
                r = self.client.head_object(Bucket=self.name, Key=key)
            except ClientError as exc:
                if error_code(exc) in NOT_FOUND:
                    return None
                raise
            if not r.get("ETag") or "ContentLength" not in r:
                raise BrokenAnswerError(f"HEAD {self._where(key)}: answer without ETag or Content-Length")
            return Head(etag=r["ETag"], size=int(r["ContentLength"]), metadata=dict(r.get("Metadata") or {}))

        return self._attempts(f"HEAD {self._where(key)}", call)

    def read(self, key: str, *, max_bytes: int, if_match: str | None = None) -> tuple[bytes, Head]:
        """The whole content of ``key`` and its head, checked against Content-Length and ETag.

        S3ObjectNotFoundError (404), PayloadTooLargeError (over ``max_bytes``),
        S3ObjectChangedError (``if_match`` given and the ETag differs), StorageError (S3 failed,
        or the answer arrived broken :data:`BODY_ATTEMPTS` times)."""
        chunks: list[bytes] = []

        def restart() -> Callable[[bytes], object]:
            chunks.clear()
            return chunks.append

        head = self._get(key, max_bytes=max_bytes, if_match=if_match, restart=restart)
        return b"".join(chunks), head

    def download(self, key: str, path: str | os.PathLike[str], *, max_bytes: int, if_match: str | None = None) -> Head:
        """:meth:`read` streamed into the file ``path`` (written whole, through a temporary file
        and a rename, or not at all), for objects too large to hold twice in memory."""
        target = Path(path)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.part")
        with open(tmp, "wb") as f:

            def restart() -> Callable[[bytes], object]:
                f.seek(0)
                f.truncate()
                return f.write

            try:
                head = self._get(key, max_bytes=max_bytes, if_match=if_match, restart=restart)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        tmp.replace(target)
        return head

    def _get_object(self, key: str, *, if_match: str | None, **extra: str) -> dict[str, Any]:
        """One ``get_object`` of ``key`` (only the version ``if_match`` when given), S3's answers
        that the object is gone, changed or no longer holds a range asked for as this module's
        errors; other failures raise as they came (for :meth:`_attempts`)."""
        where = self._where(key)
        try:
            answer: dict[str, Any] = self.client.get_object(
                Bucket=self.name, Key=key, **({"IfMatch": if_match} if if_match else {}), **extra
            )
        except ClientError as exc:
            code = error_code(exc)
            if code in NOT_FOUND:
                raise S3ObjectNotFoundError(f"{where} does not exist") from exc
            if code in PRECONDITION_FAILED:
                raise S3ObjectChangedError(f"{where} changed (its ETag is no longer {if_match})") from exc
            if code in ("416", "InvalidRange"):
                raise S3ObjectChangedError(f"{where} no longer holds {extra.get('Range', 'that range')}") from exc
            raise
        return answer

    def _get(
        self, key: str, *, max_bytes: int, if_match: str | None, restart: Callable[[], Callable[[bytes], object]]
    ) -> Head:
        """GET ``key`` into the sink that ``restart()`` gives (called again for each attempt)."""
        where = self._where(key)

        def call() -> Head:
            r = self._get_object(key, if_match=if_match)
            body = r["Body"]
            try:
                etag, size = r.get("ETag"), r.get("ContentLength")
                if not etag or size is None:
                    raise BrokenAnswerError(f"GET {where}: answer without ETag or Content-Length")
                size = int(size)
                if size > max_bytes:
                    raise PayloadTooLargeError(f"{where} is {size} bytes; the limit is {max_bytes}")
                try:
                    got, md5 = _stream(body, restart(), max_bytes, where)
                except (ReadTimeoutError, urllib3.exceptions.HTTPError) as exc:  # stalled or cut body
                    raise BrokenAnswerError(f"GET {where}: reading the body failed ({exc})") from exc
            finally:
                body.close()
            if got != size:
                raise BrokenAnswerError(f"GET {where}: {got} of {size} bytes arrived")
            is_md5 = etag_is_md5(etag, r.get("ServerSideEncryption"), r.get("SSECustomerAlgorithm"))
            if is_md5 and md5 != etag.strip('"').lower():
                raise BrokenAnswerError(f"GET {where}: content MD5 {md5} does not match ETag {etag}")
            return Head(etag=etag, size=size, metadata=dict(r.get("Metadata") or {}))

        return self._attempts(f"GET {where}", call)

    def read_range(self, key: str, start: int, stop: int, *, if_match: str, size: int | None = None) -> bytes:
        """Bytes ``start:stop`` of ``key`` (one ranged GET, ``Range: bytes=start-(stop-1)``), only
        from the version whose ETag is ``if_match``.

        The answer must be that version (its ETag), the range asked for (its Content-Range, and
        ``size`` as the object's length when given) and that many bytes; a ranged answer has no
        whole-object checksum to check, so these and the ETag are what tells a wrong one.
        S3ObjectNotFoundError (404), S3ObjectChangedError (the ETag is no longer ``if_match``, or
        the object no longer holds the range), StorageError (S3 failed, or the answer arrived
        wrong :data:`BODY_ATTEMPTS` times)."""
        if not 0 <= start < stop:
            raise ValueError(f"not a byte range: {start}:{stop}")
        where = self._where(key)
        expected = f"bytes {start}-{stop - 1}/"

        def call() -> bytes:
            r = self._get_object(key, if_match=if_match, Range=f"bytes={start}-{stop - 1}")
            body = r["Body"]
            try:
                if r.get("ETag") != if_match:  # a server that ignored If-Match
                    raise S3ObjectChangedError(f"{where} changed (its ETag is {r.get('ETag')}, not {if_match})")
                got_range = str(r.get("ContentRange") or "")
                total = got_range[len(expected) :] if got_range.startswith(expected) else ""
                if not total.isdigit() or (size is not None and int(total) != size):
                    raise BrokenAnswerError(
                        f"GET {where} bytes {start}:{stop}: the answer's range is {got_range or 'missing'!r}"
                        + (f" (the object has {size} bytes)" if size is not None else "")
                    )
                try:
                    data = body.read(stop - start + 1)
                except (ReadTimeoutError, urllib3.exceptions.HTTPError) as exc:
                    raise BrokenAnswerError(
                        f"GET {where} bytes {start}:{stop}: reading the body failed ({exc})"
                    ) from exc
            finally:
                body.close()
            if len(data) != stop - start or int(r.get("ContentLength", -1)) != stop - start:
                raise BrokenAnswerError(
                    f"GET {where} bytes {start}:{stop}: {len(data)} of {stop - start} bytes arrived"
                )
            return bytes(data)

        return self._attempts(f"GET {where} bytes {start}:{stop}", call)

    def objects(self, prefix: str, *, after: str | None = None, upto: str | None = None) -> Iterator[dict[str, Any]]:
        """Every object under ``prefix`` (the listing's dicts: Key, ETag, Size, LastModified) —
        only those whose key is after ``after`` and not after ``upto``, when given."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            elif after is not None:
                kwargs["StartAfter"] = after

            def call(kwargs: dict[str, Any] = kwargs) -> dict[str, Any]:
                page: dict[str, Any] = self.client.list_objects_v2(**kwargs)
                if "KeyCount" not in page:  # cut inside the headers: an empty body parses as no keys
                    raise BrokenAnswerError(f"LIST {self._where(prefix)}: answer without KeyCount")
                if len(page.get("Contents", [])) != int(page["KeyCount"]):
                    raise BrokenAnswerError(f"LIST {self._where(prefix)}: KeyCount does not match the keys")
                return page

            page = self._attempts(f"LIST {self._where(prefix)}", call)
            contents = page.get("Contents", [])
            if upto is not None and contents and contents[-1]["Key"] > upto:
                yield from (o for o in contents if o["Key"] <= upto)
                return
            yield from contents
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def page(self, prefix: str, *, limit: int, token: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One listing page under ``prefix``: up to ``limit`` objects and the continuation token of
        the next page (None on the last). A token S3 refuses is a :class:`BadRequestError`."""
        kwargs: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix, "MaxKeys": limit}
        if token:
            kwargs["ContinuationToken"] = token
        where = self._where(prefix)

        def call() -> dict[str, Any]:
            try:
                page: dict[str, Any] = self.client.list_objects_v2(**kwargs)
            except ClientError as exc:
                if token and error_code(exc) in ("InvalidArgument", "InvalidToken", "400"):
                    raise BadRequestError(f"the cursor is not valid for this listing ({error_code(exc)})") from exc
                raise
            if "KeyCount" not in page:
                raise BrokenAnswerError(f"LIST {where}: answer without KeyCount")
            if len(page.get("Contents", [])) != int(page["KeyCount"]):
                raise BrokenAnswerError(f"LIST {where}: KeyCount does not match the keys")
            return page

        page = self._attempts(f"LIST {where}", call)
        nxt = page.get("NextContinuationToken") if page.get("IsTruncated") else None
        return list(page.get("Contents", [])), nxt or None

    def etags(self, prefix: str, *, splits: Iterable[str] = ()) -> dict[str, str]:
        """key -> ETag of every object under ``prefix``. ``splits``: keys that cut the listing into
        ranges listed at once (each key ends the range before it)."""
        bounds = sorted(set(splits))
        if not bounds:
            return {o["Key"]: o["ETag"] for o in self.objects(prefix)}
        ranges = list(zip([None, *bounds], [*bounds, None], strict=True))

        def one(r: tuple[str | None, str | None]) -> dict[str, str]:
            return {o["Key"]: o["ETag"] for o in self.objects(prefix, after=r[0], upto=r[1])}

        out: dict[str, str] = {}
        with ThreadPoolExecutor(max_workers=min(POOL_CONNECTIONS, len(ranges))) as pool:
            for part in pool.map(one, ranges):
                out.update(part)
        return out

    # ------------------------------------------------------------------ writes
    def put(self, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None) -> str | None:
        """Write ``key``; its new ETag (None if the answer did not give one)."""
        r = self._attempts(
            f"PUT {self._where(key)}",
            lambda: self.client.put_object(
                Bucket=self.name, Key=key, Body=data, ContentType=content_type, Metadata=metadata or {}
            ),
        )
        etag = r.get("ETag") if isinstance(r, dict) else None
        return str(etag) if etag else None

    def put_if(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        if_match: str | None,
        metadata: dict[str, str] | None = None,
    ) -> str | None:
        """A conditional PUT: only if ``key``'s ETag is still ``if_match``, or, with None, only if
        ``key`` does not exist. The new ETag, or None when the condition failed (someone else
        wrote first: 412, or 409 when a concurrent conditional write was in flight)."""
        condition = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
        where = self._where(key)

        def call() -> str | None:
            try:
                r = self.client.put_object(
                    Bucket=self.name, Key=key, Body=data, ContentType=content_type, Metadata=metadata or {}, **condition
                )
            except ClientError as exc:
                if error_code(exc) in PRECONDITION_FAILED or error_code(exc) in ("409", "ConditionalRequestConflict"):
                    return None
                raise
            etag = r.get("ETag")
            if not etag:
                raise BrokenAnswerError(f"PUT {where}: answer without ETag")
            return str(etag)

        return self._attempts(f"PUT {where}", call)

    def put_json(self, key: str, payload: Any, *, metadata: dict[str, str] | None = None) -> None:
        self.put(key, json.dumps(payload, indent=2).encode("utf-8"), content_type="application/json", metadata=metadata)

    def delete(self, key: str) -> None:
        self._attempts(f"DELETE {self._where(key)}", lambda: self.client.delete_object(Bucket=self.name, Key=key))

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete ``keys``, 1,000 a request (DeleteObjects); StorageError naming the first key S3
        could not delete."""
        keys = list(keys)
        for i in range(0, len(keys), DELETE_BATCH):
            objects = [{"Key": k} for k in keys[i : i + DELETE_BATCH]]
            where = f"DELETE {len(objects)} objects from {self._where(keys[i])}"

            def call(objects: list[dict[str, str]] = objects) -> dict[str, Any]:
                r: dict[str, Any] = self.client.delete_objects(
                    Bucket=self.name, Delete={"Objects": objects, "Quiet": True}
                )
                return r

            r = self._attempts(where, call)
            if r.get("Errors"):
                e = r["Errors"][0]
                raise StorageError(f"{where}: {e.get('Key')}: {e.get('Code')} ({len(r['Errors'])} failed)")

    def presigned_get(self, key: str, *, seconds: int) -> str:
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.name, "Key": key}, ExpiresIn=seconds
        )
        return url


def _stream(body: Any, write: Callable[[bytes], object], max_bytes: int, where: str) -> tuple[int, str]:
    """A streaming body to its end into ``write`` (botocore checks Content-Length and checksums at
    the end); the byte count and the content's MD5."""
    md5 = hashlib.md5(usedforsecurity=False)
    total = 0
    while True:
        chunk = body.read(CHUNK)
        if not chunk:
            return total, md5.hexdigest()
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLargeError(f"{where} is larger than {max_bytes} bytes")
        md5.update(chunk)
        write(chunk)
