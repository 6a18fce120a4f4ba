"""Sliced jobs kept in the bucket: a job's catalog keys cut into slices, one SQS message each, each
slice's result written once, and the last slice to finish writes the job's result. Duplicate
reports (:mod:`harmony_aws.duplicate_jobs`) and planned reindexes (:mod:`harmony_aws.reindex_jobs`)
are such jobs; each kind lives under its own prefix::

    <prefix><id>/job.json          what the job is (written when it starts)
    <prefix><id>/parts/<n>.json    one per slice (written once: If-None-Match)
    <prefix><id>/failed.json       the job failed (a slice failed its last delivery)
    <prefix><id>.json              the job's result (written once: If-None-Match)

Nothing is counted in a shared object: a slice's part is written at most once (a duplicated SQS
delivery finds it and does nothing), progress is the number of part objects, and "the last
slice" is whoever lists every part after writing its own — S3 lists what was written before
(strong consistency), so at least one slice sees them all; when two do, both compute the result
and the conditional write keeps exactly one.

Job ids are ``<UTC time>-<8 hex>`` (sortable by start time), checked before any S3 call.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from harmony_image import HarmonyError

from .errors import BadRequestError, S3ObjectNotFoundError, StorageError
from .s3 import Bucket, error_code

SLICE_BYTES = 200 * 1024
"""Most bytes of keys in one message (SQS takes 256 KiB; S3 keys are up to 1,024 bytes each)."""
SEND_BATCH = 10  # SendMessageBatch's most entries
SEND_ATTEMPTS = 3  # entries SendMessageBatch reports failed are sent again, this many times in all
MAX_JOB_JSON_BYTES = 256 * 1024 * 1024
PART_READERS = 16  # parts read at once (GETs of a few hundred bytes: latency-bound)
JOB_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


class BadJobIdError(BadRequestError):
    code = "bad_job_id"


class JobNotFoundError(S3ObjectNotFoundError):
    code = "job_not_found"


class QueueNotConfiguredError(HarmonyError):
    code = "misconfigured"
    status = 500


def check_job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise BadJobIdError("a job id looks like 20260101T120000Z-0123abcd (as starting the job returned it)")
    return job_id


def new_job_id(now: float | None = None) -> str:
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(4)}"


def iso(t: float) -> str:
    """``t`` (seconds since the epoch) as ``2026-01-01T12:00:00Z``."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def slices_of(keys: Iterable[str], *, max_keys: int, max_bytes: int = SLICE_BYTES) -> list[list[str]]:
    """``keys`` cut into runs of at most ``max_keys`` keys and ``max_bytes`` UTF-8 bytes."""
    out: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for key in keys:
        n = len(key.encode("utf-8")) + 4  # the key's JSON quotes and separator
        if cur and (len(cur) >= max_keys or size + n > max_bytes):
            out.append(cur)
            cur, size = [], 0
        cur.append(key)
        size += n
    if cur:
        out.append(cur)
    return out


class SliceQueue:
    """The SQS queue a kind of job sends its slices to (one message per slice). ``setting``
    names the variable that gives ``url`` and ``what`` the messages, for error messages."""

    def __init__(
        self,
        url: str | None,
        client: Any = None,
        *,
        setting: str = "HARMONY_DUPLICATES_QUEUE_URL",
        what: str = "duplicate-report slices",
    ) -> None:
        self.url = url
        self._client = client
        self.setting = setting
        self.what = what

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client("sqs", config=Config(retries={"max_attempts": 6, "mode": "standard"}))
        return self._client

    def send(self, bodies: list[str]) -> None:
        """Every body as a message; StorageError when some still fail after :data:`SEND_ATTEMPTS`."""
        if not self.url:
            raise QueueNotConfiguredError(f"{self.setting} is not set: no queue to send {self.what} to")
        for start in range(0, len(bodies), SEND_BATCH):
            todo = {str(i): b for i, b in enumerate(bodies[start : start + SEND_BATCH], start)}
            for _ in range(SEND_ATTEMPTS):
                try:
                    r = self.client.send_message_batch(
                        QueueUrl=self.url, Entries=[{"Id": i, "MessageBody": b} for i, b in todo.items()]
                    )
                except (ClientError, BotoCoreError) as exc:
                    raise StorageError(f"sending {self.what} to SQS failed: {exc}") from exc
                failed = {f["Id"] for f in r.get("Failed") or []}
                todo = {i: b for i, b in todo.items() if i in failed}
                if not todo:
                    break
            if todo:
                raise StorageError(f"SQS refused {len(todo)} of the {self.what} {SEND_ATTEMPTS} times")


def enqueue(store: JobStore, queue: SliceQueue, job_id: str, bodies: list[str], *, item: str = "slice") -> None:
    """Send a job's messages; when that fails, mark the job failed (its status says why; ``item``
    names the failed field, null: none of them) and raise."""
    try:
        queue.send(bodies)
    except HarmonyError as exc:
        store.put_if_absent(store.failed_key(job_id), {item: None, "error": f"enqueueing failed: {exc.message}"})
        raise


class JobStore:
    """The objects of one kind of job: everything under ``prefix`` of ``bucket`` (see the module doc)."""

    def __init__(self, bucket: Bucket, prefix: str) -> None:
        self.bucket = bucket
        self.prefix = prefix

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}{job_id}/job.json"

    def parts_prefix(self, job_id: str) -> str:
        return f"{self.prefix}{job_id}/parts/"

    def part_key(self, job_id: str, n: int) -> str:
        return f"{self.parts_prefix(job_id)}{n:06d}.json"

    def failed_key(self, job_id: str) -> str:
        return f"{self.prefix}{job_id}/failed.json"

    def report_key(self, job_id: str) -> str:
        return f"{self.prefix}{job_id}.json"

    def get_json(self, key: str) -> dict[str, Any] | None:
        """The JSON object at ``key``; None when it does not exist."""
        try:
            data, _ = self.bucket.read(key, max_bytes=MAX_JOB_JSON_BYTES)
        except S3ObjectNotFoundError:
            return None
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise StorageError(f"s3://{self.bucket.name}/{key} is not a JSON object")
        return doc

    def put_json(self, key: str, doc: dict[str, Any]) -> None:
        self.bucket.put_json(key, doc)

    def put_if_absent(self, key: str, doc: dict[str, Any]) -> bool:
        """Write ``key`` unless it exists (S3's conditional write): whether this call wrote it."""
        body = json.dumps(doc, indent=1).encode("utf-8")
        try:
            self.bucket.client.put_object(
                Bucket=self.bucket.name, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*"
            )
        except ClientError as exc:
            # 412: it exists; 409: another conditional write of it is in progress (it will exist)
            if error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise StorageError(f"PUT s3://{self.bucket.name}/{key}: {error_code(exc) or exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"PUT s3://{self.bucket.name}/{key}: {exc}") from exc
        return True

    def parts_done(self, job_id: str) -> int:
        return sum(1 for _ in self.bucket.objects(self.parts_prefix(job_id)))

    def parts(self, job_id: str) -> list[dict[str, Any]]:
        """Every part written so far, in order (one GET each, :data:`PART_READERS` at once: a
        planned compaction of 1M images has ~1,000)."""
        keys = [o["Key"] for o in self.bucket.objects(self.parts_prefix(job_id))]
        if len(keys) <= 1:
            return [self.get_json(k) or {} for k in keys]
        with ThreadPoolExecutor(max_workers=min(PART_READERS, len(keys))) as pool:
            return [doc or {} for doc in pool.map(self.get_json, keys)]
