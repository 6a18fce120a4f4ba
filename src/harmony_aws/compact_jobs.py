"""A planned compaction: ``IndexFunction {"action": "compact"}`` with more records to fold than
one invocation folds in good time runs as SQS-fed batches instead of one call (at ~100 images/s,
docs/SCALE.md, a full compaction of 1M images takes hours; the function has 120 s).

The call plans as :meth:`Compactor.compact` does (:meth:`Compactor.plan`: the manifest and its
ETag, the records, the segments kept, the records to fold in chunks), writes the job and sends one
item per chunk to ReindexQueue, which IndexFunction already takes bulk work from (same function
and permissions, one message per invocation, retries, dead-letter queue and its alarm). A chunk
is one shard's records, at most one segment's worth (SEGMENT_IMAGES, 1,024: ~10 s of folding),
not a whole shard: a shard of 50,000 images (SCALE.md's model) takes ~8 min to fold, past the
function's timeout, and a failing chunk is retried alone.

IndexFunction folds one item per invocation into one segment (:meth:`Compactor.fold`, its files
named after the job) and writes the item's part once: a second delivery finds the part and does
nothing; one that overlapped loses the part's conditional write and deletes its own files. The
last item (:mod:`harmony_aws.jobs`: whoever lists every part after writing its own) publishes the
manifest — the kept segments and every part's — by :meth:`Compactor.publish`'s conditional write
(If-Match the manifest ETag read when planning; If-None-Match when there was none), then writes
the result. Layout under ``reports/compact/``::

    reports/compact/<id>/job.json        the plan: kept segments, the manifest ETag to replace, ...
    reports/compact/<id>/parts/<n>.json  item n's segment (none: its records were gone), counts
    reports/compact/<id>/failed.json     an item failed its last delivery: nothing is published
    reports/compact/<id>.json            the result: "won" (published) or not, generation, counts
    reports/compact/latest.json          the last job planned: none is planned while it runs

Readers see the old manifest until the last item publishes, then the whole new one; its journal
cursor is the plan's (taken before the records were listed), moved past the entries that name
what its segments hold (Compactor.later_cursor), so readers find every change made while the job
ran, however long it ran, and list none it folded (harmony_aws.journal). When another
compaction published meanwhile (a one-call one, by hand), the job's conditional write fails and
it gives up (state ``lost``, counted): the catalog stays as the other published it, the job's
files are left to a later compaction's collection (kept :data:`~harmony_aws.segments.JOB_SECONDS`
after the job started; they cannot be proven unpublished), and the next compaction folds what is
still to fold. An item that fails on its last delivery (:data:`MAX_RECEIVES`) marks the job
failed: nothing is published, and the message goes to the dead-letter queue (alarmed).

At most :data:`INLINE_RECORDS` records to fold, ``"queued": false``, or no queue: the one call.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import Any

from harmony_image import HarmonyError

from . import journal, reindex_jobs
from .errors import BadRequestError
from .jobs import JOB_ID, JobNotFoundError, JobStore, SliceQueue, check_job_id, enqueue, iso, new_job_id
from .segments import (
    JOB_SECONDS,
    SEGMENT_IMAGES,
    CompactionReport,
    Compactor,
    SegmentRef,
    files_of,
)

log = logging.getLogger(__name__)

COMPACT_PREFIX = "reports/compact/"
LATEST_KEY = COMPACT_PREFIX + "latest.json"
INLINE_RECORDS = 2 * SEGMENT_IMAGES
"""At most this many records to fold (~20 s at ~100 images/s, besides the plan's listing) are
folded in the call itself; more are planned. An hourly compaction of a large catalog whose
records barely changed stays one call."""
MAX_RECEIVES = reindex_jobs.MAX_RECEIVES
"""ReindexQueue's maxReceiveCount (the items go through that queue): the last delivery of a
failing item marks the job failed."""
PUBLISH_MARGIN_SECONDS = 3600
"""A job publishes only while it is younger than JOB_SECONDS minus this: its files are kept
that long, and a collection may run while it publishes."""


class CompactionJobs:
    """Plan, follow and run the compactions of one bucket (``compactor``'s); ``queue`` takes the items."""

    def __init__(self, compactor: Compactor, queue: SliceQueue) -> None:
        self.compactor = compactor
        self.bucket = compactor.bucket
        self.store = JobStore(compactor.bucket, COMPACT_PREFIX)
        self.queue = queue

    # ------------------------------------------------------------------ start
    def start(self, *, queued: object = None) -> dict[str, Any]:
        """Compact the bucket: in this call (the answer is :class:`CompactionReport`'s) when
        ``queued`` is False, or is None and there are at most :data:`INLINE_RECORDS` records to
        fold or no queue is configured; else plan a job and answer its :meth:`status` with
        ``"queued": true`` — or, while the last job planned still runs, that job's status with
        ``"planned": false`` (nothing new is planned or folded)."""
        if queued is not None and not isinstance(queued, bool):
            raise BadRequestError(f'compact: "queued" must be true or false, not {queued!r}')
        t0 = time.monotonic()
        if queued is not False and self.queue.url:
            running = self._running()
            if running is not None:
                return {**self.status(running), "queued": True, "planned": False}
        report = CompactionReport()
        plan = self.compactor.plan(report)
        if queued is False or (queued is None and (not self.queue.url or plan.todo <= INLINE_RECORDS)):
            out = self.compactor.compact(planned=(plan, report)).to_dict()
            out["seconds"] = round(time.monotonic() - t0, 2)
            return out
        now = time.time()
        job_id = new_job_id(now)
        job = {
            "id": job_id,
            "shards": self.compactor.shards,
            "items": len(plan.chunks),
            "records": report.records,
            "todo": plan.todo,
            "kept": [asdict(ref) for ref in plan.kept],
            "previous": files_of(plan.old.segments) if plan.old else [],
            "manifest_etag": plan.old.etag if plan.old else None,
            "journal_cursor": plan.journal_cursor,  # the new manifest's (taken before the listing)
            "previous_cursor": plan.old.journal_cursor if plan.old else None,  # the journal is trimmed up to it
            "previous_shards": plan.old.shards if plan.old else 1,  # its journal folders are read too
            "generation": plan.generation,
            "created_at": iso(now),
            "created": now,
        }
        self.store.put_json(self.store.job_key(job_id), job)
        self.store.put_json(LATEST_KEY, {"id": job_id})
        if not plan.chunks:  # nothing to fold (queued: true): only the manifest of what is kept
            self._publish(job)
        else:
            bodies = [
                json.dumps({"job": job_id, "kind": "compact", "item": n, "shard": shard, "records": keys})
                for n, (shard, keys) in enumerate(plan.chunks)
            ]
            enqueue(self.store, self.queue, job_id, bodies, item="item")
        return {**self.status(job_id), "queued": True, "planned": True}

    def _running(self) -> str | None:
        """The last job planned, while it has neither result nor failure and is younger than
        :data:`JOB_SECONDS`."""
        latest = self.store.get_json(LATEST_KEY) or {}
        job_id = str(latest.get("id", ""))
        if not JOB_ID.match(job_id):
            return None
        if any(self.bucket.head(k) is not None for k in (self.store.report_key(job_id), self.store.failed_key(job_id))):
            return None
        job = self.store.get_json(self.store.job_key(job_id))
        if job is None or time.time() - float(job["created"]) > JOB_SECONDS:
            return None
        return job_id

    # ------------------------------------------------------------------ status
    def status(self, job_id: str) -> dict[str, Any]:
        """``{"id", "state", "records", "todo", "items", "items_done", "kept", "counts",
        "created_at"}``: state ``done`` (published, with ``"result"``), ``lost`` (another
        compaction published first; with ``"result"``), ``failed`` (with ``"error"``),
        ``running`` or ``queued``. Counts (``folded``, ``segments``, ``rejected``) so far.
        JobNotFoundError for an unknown id."""
        check_job_id(job_id)
        job = self.store.get_json(self.store.job_key(job_id))
        if job is None:
            raise JobNotFoundError(f"no compaction job {job_id}")
        out = {k: job[k] for k in ("id", "records", "todo", "items", "generation", "created_at")}
        out["kept"] = len(job["kept"])
        result = self.store.get_json(self.store.report_key(job_id))
        if result is not None:
            state = "done" if result["won"] else "lost"
            return {
                **out,
                "state": state,
                "items_done": result["items_done"],
                "counts": result["counts"],
                "result": result,
            }
        parts = self.store.parts(job_id)
        counts = _total(parts)
        failed = self.store.get_json(self.store.failed_key(job_id))
        if failed is not None:
            return {**out, "state": "failed", "items_done": len(parts), "counts": counts, "error": failed.get("error")}
        return {**out, "state": "running" if parts else "queued", "items_done": len(parts), "counts": counts}

    # ------------------------------------------------------------------ an item (the worker)
    def run_item(self, body: str, *, receive_count: int = 1) -> dict[str, Any]:
        """Fold one item (a ReindexQueue message body) into its segment and, if it is the last,
        publish; what it did. A failure on the last delivery marks the job failed, then raises."""
        msg = json.loads(body)
        if not (
            isinstance(msg, dict)
            and msg.get("kind") == "compact"
            and isinstance(msg.get("records"), list)
            and all(k in msg for k in ("job", "item", "shard"))
        ):
            raise ValueError("not a compaction item: {job, kind: compact, item, shard, records} expected")
        job_id, n, shard = check_job_id(str(msg["job"])), int(msg["item"]), int(msg["shard"])
        try:
            return self._run_item(job_id, n, shard, [str(k) for k in msg["records"]], receive_count)
        except Exception as exc:
            if receive_count >= MAX_RECEIVES:
                why = exc.message if isinstance(exc, HarmonyError) else f"{type(exc).__name__}: {exc}"
                self.store.put_if_absent(self.store.failed_key(job_id), {"item": n, "error": f"item {n}: {why}"})
            raise

    def _compactor(self, job: dict[str, Any]) -> Compactor:
        """The compactor of the job's shards (HARMONY_SHARDS may have changed since it was planned)."""
        c = self.compactor
        if int(job["shards"]) == c.shards:
            return c
        return Compactor(c.bucket, shards=int(job["shards"]), segment_images=c.segment_images, workers=c.workers)

    def _run_item(self, job_id: str, n: int, shard: int, keys: list[str], receive_count: int) -> dict[str, Any]:
        out: dict[str, Any] = {"job": job_id, "item": n, "shard": shard}
        job = self.store.get_json(self.store.job_key(job_id))
        if job is None:  # job.json is written before its items are sent: none will ever come
            log.warning("compaction item %d of %s dropped: no such job", n, job_id)
            return {**out, "action": "unknown_job"}
        if self.bucket.head(self.store.report_key(job_id)) is not None:
            return {**out, "action": "job_finished"}
        if self.bucket.head(self.store.failed_key(job_id)) is not None:
            return {**out, "action": "job_failed"}
        action = "already_done"
        part_key = self.store.part_key(job_id, n)
        if self.bucket.head(part_key) is None:
            compactor = self._compactor(job)
            report = CompactionReport()
            ref = compactor.fold(shard, keys, report, prefix=f"{job_id}.")
            counts = {"folded": ref.images if ref else 0, "segments": 1 if ref else 0, "rejected": report.rejected}
            part = {
                "item": n,
                "shard": shard,
                "records": len(keys),
                "segment": asdict(ref) if ref else None,
                "counts": counts,
                "receives": receive_count,
            }
            if self.store.put_if_absent(part_key, part):
                action = "folded"
                out["counts"] = counts
            elif ref is not None:  # another delivery wrote the part first: its segment is the one
                compactor.discard([ref])
        if self.store.parts_done(job_id) >= int(job["items"]):
            action += ", " + self._publish(job)
        return {**out, "action": action}

    def _publish(self, job: dict[str, Any]) -> str:
        """Publish the manifest of the kept segments and every part's, then write the result;
        what happened: ``published``, ``lost``, ``too_old`` (+ ``_elsewhere`` when another
        delivery wrote the result)."""
        job_id = job["id"]
        if time.time() - float(job["created"]) > JOB_SECONDS - PUBLISH_MARGIN_SECONDS:
            why = f"not published: started more than {(JOB_SECONDS - PUBLISH_MARGIN_SECONDS) // 3600} h ago"
            self.store.put_if_absent(self.store.failed_key(job_id), {"item": None, "error": why})
            return "too_old"
        parts = self.store.parts(job_id)
        compactor = self._compactor(job)
        kept = [SegmentRef(**ref) for ref in job["kept"]]
        written = [SegmentRef(**p["segment"]) for p in parts if p.get("segment")]
        manifest = compactor.manifest(
            kept,
            written,
            generation=int(job["generation"]),
            writer=job_id,
            journal_cursor=job.get("journal_cursor"),
            previous_shards=int(job.get("previous_shards", 1)),
        )
        manifest, skipped = compactor.later_cursor(manifest)
        won = compactor.publish(manifest, if_match=job["manifest_etag"])
        deleted = compactor.collect([*files_of(manifest.segments), *job["previous"]]) if won else 0
        trimmed = journal.trim(self.bucket, before=job["previous_cursor"]) if won and job.get("previous_cursor") else 0
        finished = time.time()
        took = finished - float(job["created"])
        result = {
            "id": job_id,
            "won": won,
            "generation": manifest.generation if won else None,
            "segments": len(manifest.segments),
            "kept": len(kept),
            "written": len(written),
            "deleted": deleted,
            "journal_trimmed": trimmed,
            "journal_skipped": skipped,
            "records": job["records"],
            "todo": job["todo"],
            "items": job["items"],
            "items_done": len(parts),
            "counts": _total(parts),
            "created_at": job["created_at"],
            "finished_at": iso(finished),
            "took_s": round(took, 3),
            "images_per_s": round(int(job["todo"]) / took, 2) if took > 0 else None,
        }
        wrote = self.store.put_if_absent(self.store.report_key(job_id), result)
        if won:
            log.info("compaction %s published generation %d", job_id, manifest.generation)
        else:
            log.warning("compaction %s lost: another compaction published first; nothing published", job_id)
        return ("published" if won else "lost") + ("" if wrote else "_elsewhere")


def _total(parts: list[dict[str, Any]]) -> dict[str, int]:
    total = {"folded": 0, "segments": 0, "rejected": 0}
    for p in parts:
        for what, n in (p.get("counts") or {}).items():
            total[what] = total.get(what, 0) + int(n)
    return total
