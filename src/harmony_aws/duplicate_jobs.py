"""Duplicate report jobs: ``POST /duplicates`` fans the catalog out over an SQS queue in slices,
the DuplicatesFunction queries each slice against the whole index
(:func:`harmony_image.duplicates.find_edges`), and the last slice to finish merges the edges into
the report (:func:`harmony_image.duplicates.duplicate_groups`).

Everything a job is lives in the bucket::

    reports/<id>/job.json          {"id", "state", "keys", "slices", "min_score", "keep", "mutual", "created_at", ...}
    reports/<id>/parts/<n>.json    one per slice: its edges and counts (written once: If-None-Match)
    reports/<id>/failed.json       a slice that failed its last delivery (:data:`MAX_RECEIVES`)
    reports/<id>.json              the report (written once: If-None-Match)
    reports/latest.json            a copy of the newest report (GET /duplicates/latest; not replaced
                                   by a report of an older job that finishes later)

State: ``done`` once the report exists, ``failed`` once failed.json does, else ``running`` when
some parts exist, else ``queued``. Nothing is counted in a shared object: a slice's part is
written at most once (a duplicated SQS delivery finds it and does nothing), progress is the
number of part objects, and "the last slice" is whoever lists ``slices`` parts after writing its
own — S3 lists what was written before (strong consistency), so at least one slice sees them
all; when two do, both compute the report and the conditional write keeps exactly one.

Job ids are ``<UTC time>-<8 hex>`` (sortable by start time), checked before any S3 call.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from harmony_image import HarmonyError, SearchIndex
from harmony_image.duplicates import Edge, KeepRule, check_keep, duplicate_groups, find_edges
from harmony_image.params import check_min_score
from harmony_image.scoring import SAME_IMAGE_THRESHOLD

from .errors import BadRequestError, S3ObjectNotFoundError, StorageError
from .layout import CATALOG_PREFIX, is_catalog_image_key
from .s3 import Bucket, error_code
from .urls import ResultUrls

log = logging.getLogger(__name__)

REPORTS_PREFIX = "reports/"
LATEST_KEY = REPORTS_PREFIX + "latest.json"
SLICE_KEYS = 200
"""Catalog keys per slice (one SQS message, one DuplicatesFunction invocation): each key is one
default-scoring query against the whole index, so a slice must finish well within the function's
timeout on the largest catalog (template DuplicatesFunction: 900 s)."""
SLICE_BYTES = 200 * 1024
"""Most bytes of keys in one message (SQS takes 256 KiB; S3 keys are up to 1,024 bytes each)."""
SEND_BATCH = 10  # SendMessageBatch's most entries
SEND_ATTEMPTS = 3  # entries SendMessageBatch reports failed are sent again, this many times in all
MAX_RECEIVES = 3
"""The queue's RedrivePolicy maxReceiveCount (template.yaml DuplicatesQueue): a slice that fails
on its last delivery marks the job failed before SQS moves it to the dead-letter queue."""
MAX_REPORT_BYTES = 256 * 1024 * 1024
JOB_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
STATES = ("queued", "running", "done", "failed")


class BadJobIdError(BadRequestError):
    code = "bad_job_id"


class JobNotFoundError(S3ObjectNotFoundError):
    code = "job_not_found"


class QueueNotConfiguredError(HarmonyError):
    code = "misconfigured"
    status = 500


def check_job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise BadJobIdError("a job id looks like 20260101T120000Z-0123abcd (as POST /duplicates returned it)")
    return job_id


def new_job_id(now: float | None = None) -> str:
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(4)}"


def job_key(job_id: str) -> str:
    return f"{REPORTS_PREFIX}{job_id}/job.json"


def parts_prefix(job_id: str) -> str:
    return f"{REPORTS_PREFIX}{job_id}/parts/"


def part_key(job_id: str, n: int) -> str:
    return f"{parts_prefix(job_id)}{n:06d}.json"


def failed_key(job_id: str) -> str:
    return f"{REPORTS_PREFIX}{job_id}/failed.json"


def report_key(job_id: str) -> str:
    return f"{REPORTS_PREFIX}{job_id}.json"


def _iso(t: float) -> str:
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


def duplicate_of(report: dict[str, Any] | None) -> dict[str, str]:
    """Catalog key -> the key its group keeps, for every member of ``report`` but the keepers."""
    out: dict[str, str] = {}
    for group in (report or {}).get("groups") or []:
        for m in group.get("members") or []:
            if m.get("key") != group.get("keep"):
                out[str(m["key"])] = str(group["keep"])
    return out


class SliceQueue:
    """The SQS queue the slices go to (one message per slice)."""

    def __init__(self, url: str | None, client: Any = None) -> None:
        self.url = url
        self._client = client

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
            raise QueueNotConfiguredError("HARMONY_DUPLICATES_QUEUE_URL is not set: no queue to send slices to")
        for start in range(0, len(bodies), SEND_BATCH):
            todo = {str(i): b for i, b in enumerate(bodies[start : start + SEND_BATCH], start)}
            for _ in range(SEND_ATTEMPTS):
                try:
                    r = self.client.send_message_batch(
                        QueueUrl=self.url, Entries=[{"Id": i, "MessageBody": b} for i, b in todo.items()]
                    )
                except (ClientError, BotoCoreError) as exc:
                    raise StorageError(f"sending duplicate-report slices to SQS failed: {exc}") from exc
                failed = {f["Id"] for f in r.get("Failed") or []}
                todo = {i: b for i, b in todo.items() if i in failed}
                if not todo:
                    break
            if todo:
                raise StorageError(f"SQS refused {len(todo)} duplicate-report slice(s) {SEND_ATTEMPTS} times")


@dataclass(frozen=True)
class SliceResult:
    job: str
    slice: int
    action: str  # computed | already_done | job_finished | job_failed | unknown_job | merged | merged_elsewhere
    edges: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job, "slice": self.slice, "action": self.action, "edges": self.edges}


class DuplicateJobs:
    """Start, follow and run the duplicate-report jobs of one bucket.

    ``index`` gives the warm index of the bucket's records (the worker's, or the SearchFunction's
    for an empty catalog), ``urls`` what a member's ``url`` shows when the report is read."""

    def __init__(self, bucket: Bucket, queue: SliceQueue, urls: ResultUrls, index: Callable[[], SearchIndex]) -> None:
        self.bucket = bucket
        self.queue = queue
        self.urls = urls
        self.index = index

    # ------------------------------------------------------------------ S3 helpers
    def _get_json(self, key: str) -> dict[str, Any] | None:
        try:
            data, _ = self.bucket.read(key, max_bytes=MAX_REPORT_BYTES)
        except S3ObjectNotFoundError:
            return None
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise StorageError(f"s3://{self.bucket.name}/{key} is not a JSON object")
        return doc

    def _put_json(self, key: str, doc: dict[str, Any]) -> None:
        self.bucket.put_json(key, doc)

    def _put_if_absent(self, key: str, doc: dict[str, Any]) -> bool:
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

    def _parts_done(self, job_id: str) -> int:
        return sum(1 for _ in self.bucket.objects(parts_prefix(job_id)))

    # ------------------------------------------------------------------ start
    def start(self, *, min_score: float | None = None, keep: str = "largest", mutual: bool = False) -> dict[str, Any]:
        """List the catalog, write the job, enqueue its slices: the job's status (state queued,
        or done at once for an empty catalog). ``min_score``, ``keep``, ``mutual``: as
        :func:`harmony_image.duplicates.find_duplicates` takes them."""
        checked = check_min_score(min_score)
        threshold = SAME_IMAGE_THRESHOLD if checked is None else checked
        rule = check_keep(keep)
        now = time.time()
        job_id = new_job_id(now)
        keys = sorted(o["Key"] for o in self.bucket.objects(CATALOG_PREFIX) if is_catalog_image_key(o["Key"]))
        slices = slices_of(keys, max_keys=SLICE_KEYS)
        job = {
            "id": job_id,
            "state": "queued",
            "keys": len(keys),
            "slices": len(slices),
            "min_score": threshold,
            "keep": rule,
            "mutual": bool(mutual),
            "created_at": _iso(now),
            "created": now,
        }
        self._put_json(job_key(job_id), job)
        if not slices:
            self._merge(job, SearchIndex(), [])
        else:
            bodies = [json.dumps({"job": job_id, "slice": n, "keys": s}) for n, s in enumerate(slices)]
            try:
                self.queue.send(bodies)
            except HarmonyError as exc:
                self._put_if_absent(failed_key(job_id), {"slice": None, "error": f"enqueueing failed: {exc.message}"})
                raise
        return self.status(job_id)

    # ------------------------------------------------------------------ status
    def status(self, job_id: str) -> dict[str, Any]:
        """``{"id", "state", "keys", "slices", "slices_done", "min_score", "keep", "created_at"}``,
        with ``"report"`` when done and ``"error"`` when failed; JobNotFoundError for an unknown id."""
        check_job_id(job_id)
        job = self._get_json(job_key(job_id))
        if job is None:
            raise JobNotFoundError(f"no duplicate-report job {job_id}")
        out = {k: v for k, v in job.items() if k != "created"}
        report = self._get_json(report_key(job_id))
        if report is not None:
            return {**out, "state": "done", "slices_done": job["slices"], "report": self._with_urls(report)}
        done = self._parts_done(job_id)
        failed = self._get_json(failed_key(job_id))
        if failed is not None:
            return {**out, "state": "failed", "slices_done": done, "error": failed.get("error")}
        return {**out, "state": "running" if done else "queued", "slices_done": done}

    def latest(self) -> dict[str, Any]:
        """The newest finished report as :meth:`status` gives it; ``{"id": None, "state": None,
        "report": None}`` before the first one."""
        report = self._get_json(LATEST_KEY)
        if report is None:
            return {"id": None, "state": None, "report": None}
        return {"id": report.get("id"), "state": "done", "report": self._with_urls(report)}

    def latest_report(self) -> dict[str, Any] | None:
        """The newest finished report as stored (member URLs not resolved); None before the first."""
        return self._get_json(LATEST_KEY)

    def _with_urls(self, report: dict[str, Any]) -> dict[str, Any]:
        """The report with each member's ``url`` its source URL, else a fresh presigned GET."""
        self.urls.refresh_manifest()
        groups = []
        for g in report.get("groups") or []:
            members = [
                {**m, "url": self.urls.for_result(m["key"], self.urls.source_url(m["key"], m.get("url")) or "")}
                for m in g.get("members") or []
            ]
            groups.append({**g, "members": members})
        return {**report, "groups": groups}

    # ------------------------------------------------------------------ a slice (the worker)
    def run_slice(self, body: str, *, receive_count: int = 1) -> SliceResult:
        """Query one slice (an SQS message body) and, if it is the last, merge the report.

        Idempotent: a slice whose part exists is not computed again, a finished job is left
        alone. A failure on the message's last delivery (``receive_count`` >= :data:`MAX_RECEIVES`)
        marks the job failed, then raises."""
        msg = json.loads(body)
        job_id, n, keys = check_job_id(str(msg["job"])), int(msg["slice"]), [str(k) for k in msg["keys"]]
        try:
            return self._run_slice(job_id, n, keys)
        except Exception as exc:
            if receive_count >= MAX_RECEIVES:
                why = exc.message if isinstance(exc, HarmonyError) else f"{type(exc).__name__}: {exc}"
                self._put_if_absent(failed_key(job_id), {"slice": n, "error": f"slice {n}: {why}"})
            raise

    def _run_slice(self, job_id: str, n: int, keys: list[str]) -> SliceResult:
        job = self._get_json(job_key(job_id))
        if job is None:  # job.json is written before its slices are sent: none will ever come
            log.warning("slice %d of %s dropped: no such job", n, job_id)
            return SliceResult(job_id, n, "unknown_job")
        if self.bucket.head(report_key(job_id)) is not None:
            return SliceResult(job_id, n, "job_finished")
        if self.bucket.head(failed_key(job_id)) is not None:
            return SliceResult(job_id, n, "job_failed")
        index = self.index()
        action, found = "already_done", 0
        if self.bucket.head(part_key(job_id, n)) is None:
            present = [k for k in keys if k in index]
            edges = find_edges(index, keys=present, min_score=float(job["min_score"]))
            part = {
                "slice": n,
                "queried": len(present),
                "skipped": len(keys) - len(present),  # not images, not indexed yet, or deleted since
                "edges": [e.to_dict() for e in edges],
            }
            self._put_if_absent(part_key(job_id, n), part)
            action, found = "computed", len(edges)
        if self._parts_done(job_id) < int(job["slices"]):
            return SliceResult(job_id, n, action, found)
        parts = [self._get_json(o["Key"]) or {} for o in self.bucket.objects(parts_prefix(job_id))]
        merged = self._merge(job, index, parts)
        return SliceResult(job_id, n, "merged" if merged else "merged_elsewhere", found)

    def _merge(self, job: dict[str, Any], index: SearchIndex, parts: list[dict[str, Any]]) -> bool:
        """Write the report from every part; whether this call wrote it (the other writer's
        report stands otherwise). Either way latest.json and job.json are brought up to date."""
        job_id = job["id"]
        edges = [
            Edge.from_dict(e)
            for p in parts
            for e in p.get("edges") or []
            if e.get("a") in index and e.get("b") in index  # both still in the catalog
        ]
        rule: KeepRule = check_keep(str(job["keep"]))
        timestamps = None
        if rule == "oldest":
            timestamps = {
                o["Key"]: o["LastModified"].timestamp()
                for o in self.bucket.objects(CATALOG_PREFIX)
                if o["Key"] in index
            }
        groups = duplicate_groups(index, edges, mutual=bool(job.get("mutual")), keep=rule, timestamps=timestamps)
        finished = time.time()
        report = {
            "id": job_id,
            "groups": [g.to_dict() for g in groups],
            "images": len(index),
            "took_s": round(finished - float(job["created"]), 3),
            "queried": sum(int(p.get("queried", 0)) for p in parts),
            "skipped": sum(int(p.get("skipped", 0)) for p in parts),
            "min_score": job["min_score"],
            "keep": rule,
            "mutual": bool(job.get("mutual")),
            "created_at": job["created_at"],
            "finished_at": _iso(finished),
        }
        wrote = self._put_if_absent(report_key(job_id), report)
        if not wrote:
            report = self._get_json(report_key(job_id)) or report
        latest = self._get_json(LATEST_KEY)
        if latest is None or str(latest.get("id", "")) <= job_id:
            self._put_json(LATEST_KEY, report)
        self._put_json(job_key(job_id), {**job, "state": "done", "groups": len(report["groups"])})
        log.info("duplicate report %s: %d groups among %d images", job_id, len(report["groups"]), report["images"])
        return wrote
