"""Duplicate report jobs: ``POST /duplicates`` fans the catalog out over an SQS queue in slices,
the DuplicatesFunction queries each slice against the whole index
(:func:`harmony_image.duplicates.find_edges`), and the last slice to finish merges the edges into
the report (:func:`harmony_image.duplicates.duplicate_groups`).

Everything a job is lives in the bucket (the layout of :mod:`harmony_aws.jobs`, prefix ``reports/``)::

    reports/<id>/job.json          {"id", "state", "keys", "slices", "min_score", "keep", "mutual", "created_at", ...}
    reports/<id>/parts/<n>.json    one per slice: its edges and counts (written once: If-None-Match)
    reports/<id>/failed.json       a slice that failed its last delivery (:data:`MAX_RECEIVES`)
    reports/<id>.json              the report (written once: If-None-Match)
    reports/latest.json            a copy of the newest report (GET /duplicates/latest; not replaced
                                   by a report of an older job that finishes later)

State: ``done`` once the report exists, ``failed`` once failed.json does, else ``running`` when
some parts exist, else ``queued``. How a part is written once and the report merged once:
:mod:`harmony_aws.jobs`.

Job ids are ``<UTC time>-<8 hex>`` (sortable by start time), checked before any S3 call.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harmony_image import HarmonyError, SearchIndex
from harmony_image.duplicates import Edge, KeepRule, check_keep, duplicate_groups, find_edges
from harmony_image.params import check_min_score
from harmony_image.scoring import SAME_IMAGE_THRESHOLD

from .jobs import (
    MAX_JOB_JSON_BYTES,
    JobNotFoundError,
    JobStore,
    SliceQueue,
    check_job_id,
    enqueue,
    new_job_id,
    slices_of,
)
from .jobs import iso as _iso
from .layout import CATALOG_PREFIX, is_catalog_image_key
from .s3 import Bucket
from .urls import ResultUrls

log = logging.getLogger(__name__)

REPORTS_PREFIX = "reports/"
LATEST_KEY = REPORTS_PREFIX + "latest.json"
SLICE_KEYS = 200
"""Catalog keys per slice (one SQS message, one DuplicatesFunction invocation): each key is one
default-scoring query against the whole index, so a slice must finish well within the function's
timeout on the largest catalog (template DuplicatesFunction: 900 s)."""
MAX_RECEIVES = 3
"""The queue's RedrivePolicy maxReceiveCount (template.yaml DuplicatesQueue): a slice that fails
on its last delivery marks the job failed before SQS moves it to the dead-letter queue."""
MAX_REPORT_BYTES = MAX_JOB_JSON_BYTES
STATES = ("queued", "running", "done", "failed")


def report_key(job_id: str) -> str:
    """Where the report of duplicate-report job ``job_id`` is kept."""
    return f"{REPORTS_PREFIX}{job_id}.json"


def duplicate_of(report: dict[str, Any] | None) -> dict[str, str]:
    """Catalog key -> the key its group keeps, for every member of ``report`` but the keepers."""
    out: dict[str, str] = {}
    for group in (report or {}).get("groups") or []:
        for m in group.get("members") or []:
            if m.get("key") != group.get("keep"):
                out[str(m["key"])] = str(group["keep"])
    return out


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
        self.store = JobStore(bucket, REPORTS_PREFIX)
        self.queue = queue
        self.urls = urls
        self.index = index

    def _get_json(self, key: str) -> dict[str, Any] | None:
        return self.store.get_json(key)

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
        self.store.put_json(self.store.job_key(job_id), job)
        if not slices:
            self._merge(job, SearchIndex(), [])
        else:
            bodies = [json.dumps({"job": job_id, "slice": n, "keys": s}) for n, s in enumerate(slices)]
            enqueue(self.store, self.queue, job_id, bodies)
        return self.status(job_id)

    # ------------------------------------------------------------------ status
    def status(self, job_id: str) -> dict[str, Any]:
        """``{"id", "state", "keys", "slices", "slices_done", "min_score", "keep", "created_at"}``,
        with ``"report"`` when done and ``"error"`` when failed; JobNotFoundError for an unknown id."""
        check_job_id(job_id)
        job = self._get_json(self.store.job_key(job_id))
        if job is None:
            raise JobNotFoundError(f"no duplicate-report job {job_id}")
        out = {k: v for k, v in job.items() if k != "created"}
        report = self._get_json(self.store.report_key(job_id))
        if report is not None:
            return {**out, "state": "done", "slices_done": job["slices"], "report": self._with_urls(report)}
        done = self.store.parts_done(job_id)
        failed = self._get_json(self.store.failed_key(job_id))
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
                self.store.put_if_absent(self.store.failed_key(job_id), {"slice": n, "error": f"slice {n}: {why}"})
            raise

    def _run_slice(self, job_id: str, n: int, keys: list[str]) -> SliceResult:
        job = self._get_json(self.store.job_key(job_id))
        if job is None:  # job.json is written before its slices are sent: none will ever come
            log.warning("slice %d of %s dropped: no such job", n, job_id)
            return SliceResult(job_id, n, "unknown_job")
        if self.bucket.head(self.store.report_key(job_id)) is not None:
            return SliceResult(job_id, n, "job_finished")
        if self.bucket.head(self.store.failed_key(job_id)) is not None:
            return SliceResult(job_id, n, "job_failed")
        index = self.index()
        action, found = "already_done", 0
        if self.bucket.head(self.store.part_key(job_id, n)) is None:
            present = [k for k in keys if k in index]
            edges = find_edges(index, keys=present, min_score=float(job["min_score"]))
            part = {
                "slice": n,
                "queried": len(present),
                "skipped": len(keys) - len(present),  # not images, not indexed yet, or deleted since
                "edges": [e.to_dict() for e in edges],
            }
            self.store.put_if_absent(self.store.part_key(job_id, n), part)
            action, found = "computed", len(edges)
        if self.store.parts_done(job_id) < int(job["slices"]):
            return SliceResult(job_id, n, action, found)
        parts = self.store.parts(job_id)
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
        wrote = self.store.put_if_absent(self.store.report_key(job_id), report)
        if not wrote:
            report = self._get_json(self.store.report_key(job_id)) or report
        latest = self._get_json(LATEST_KEY)
        if latest is None or str(latest.get("id", "")) <= job_id:
            self.store.put_json(LATEST_KEY, report)
        self.store.put_json(self.store.job_key(job_id), {**job, "state": "done", "groups": len(report["groups"])})
        log.info("duplicate report %s: %d groups among %d images", job_id, len(report["groups"]), report["images"])
        return wrote
