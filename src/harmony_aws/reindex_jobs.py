"""A planned reindex: ``IndexFunction {"action": "reindex"}`` over a catalog of more than one slice
runs as SQS-fed batches instead of one long call (which stopped near its timeout and handed back
``resume_after`` for someone to continue).

The call lists the keys as :meth:`RecordWriter.reindex` does (:meth:`RecordWriter.reindex_keys`,
which also removes misnamed records), writes the job, and sends the keys in slices of
:data:`SLICE_KEYS` to ReindexQueue. IndexFunction takes one slice per invocation, reconciles its
keys (:data:`SLICE_WORKERS` at a time; ``force`` as the job says), writes the slice's counts once,
and the last slice writes the summary. The layout is :mod:`harmony_aws.jobs`'s under
``reports/reindex/``::

    reports/reindex/<id>/job.json           {"id", "keys", "slices", "force", "created_at", "listing"}
    reports/reindex/<id>/progress/<n>.json  keys of slice n reconciled by earlier deliveries, and how
    reports/reindex/<id>/parts/<n>.json     slice n's counts and failed keys (written once)
    reports/reindex/<id>/failed.json        a slice could not run at all on its last delivery
    reports/reindex/<id>.json               the summary (written once)

Each key is retried on its own: a delivery reconciles the keys of its slice that the slice's
progress does not hold. When one fails (or the invocation's time runs short before every key was
started), the keys done are saved as progress and the message is reported failed
(``batchItemFailures``); SQS delivers it again after the visibility timeout and that delivery
does only the rest. On the last delivery (:data:`MAX_RECEIVES`, the queue's maxReceiveCount) the
keys still failing are counted ``failed`` in the part, so the job still ends (its summary names
them), and the message fails once more, into the dead-letter queue (whose alarm says so).

Counts use reconcile's words (``indexed``, ``unchanged``, ``removed``, ``absent``, ``skipped``)
plus ``failed``; a key counts with the delivery that reconciled it, and a part is written once,
so a slice delivered twice counts once.

A catalog of at most :data:`INLINE_KEYS` keys, a reindex of another bucket than the function's,
or a function without a queue (the CLI, tests) reindexes in the call itself, as before.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from harmony_image import HarmonyError

from .errors import BadRequestError
from .jobs import JobNotFoundError, JobStore, SliceQueue, check_job_id, enqueue, iso, new_job_id, slices_of
from .records import MAX_REPORTED_FAILURES, ReconcileResult, RecordWriter, ReindexReport

log = logging.getLogger(__name__)

REINDEX_PREFIX = "reports/reindex/"
SLICE_KEYS = 100
"""Catalog keys per slice (one SQS message, one IndexFunction invocation). A key that needs its
features takes 0.1–1 s of one core (camera photos the most); with :data:`SLICE_WORKERS` threads a
slice finishes well inside the function's 120 s, and one that does not saves its progress."""
INLINE_KEYS = SLICE_KEYS
"""A catalog of at most this many keys is reindexed in the call itself: it would be one slice."""
SLICE_WORKERS = 8  # keys of a slice reconciled at once (S3 round trips overlap the decoding)
MAX_RECEIVES = 5
"""ReindexQueue's RedrivePolicy maxReceiveCount (template.yaml): the last delivery's failures are
counted and the job goes on; SQS then moves the message to the dead-letter queue."""


class SliceKeysFailedError(HarmonyError):
    """Some keys of a slice failed: the message is reported failed, so SQS delivers it again."""

    code = "reindex_keys_failed"
    status = 503


class ReindexJobs:
    """Plan, follow and run the reindexes of one bucket (``writer``'s); ``queue`` takes the slices."""

    def __init__(self, writer: RecordWriter, queue: SliceQueue) -> None:
        self.writer = writer
        self.bucket = writer.bucket
        self.store = JobStore(writer.bucket, REINDEX_PREFIX)
        self.queue = queue

    def progress_key(self, job_id: str, n: int) -> str:
        return f"{self.store.prefix}{job_id}/progress/{n:06d}.json"

    # ------------------------------------------------------------------ start
    def start(
        self,
        *,
        force: object = False,
        queued: object = None,
        start_after: object = None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Reindex the bucket: in this call (the answer is :class:`ReindexReport`'s) when
        ``queued`` is False, or is None and the catalog is at most :data:`INLINE_KEYS` keys or no
        queue is configured; else plan a job and answer its :meth:`status` (state ``queued``)
        with ``"queued": true``.
        ``force`` recomputes every record; ``start_after``: only keys after this one;
        ``deadline`` (``time.monotonic()``) bounds the call's own reconciling."""
        if queued is not None and not isinstance(queued, bool):
            raise BadRequestError(f'reindex: "queued" must be true or false, not {queued!r}')
        if not isinstance(force, bool):
            raise BadRequestError(f'reindex: "force" must be true or false, not {force!r}')
        if start_after is not None and not isinstance(start_after, str):
            raise BadRequestError(f'reindex: "start_after" must be a catalog key, not {start_after!r}')
        t0 = time.monotonic()
        report = ReindexReport()
        keys = self.writer.reindex_keys(report, start_after=start_after)
        if queued is False or (queued is None and (not self.queue.url or len(keys) <= INLINE_KEYS)):
            self.writer.reindex_run(keys, report, force=force, verify=True, deadline=deadline)
            report.seconds = time.monotonic() - t0
            return report.to_dict()
        now = time.time()
        job_id = new_job_id(now)
        slices = slices_of(keys, max_keys=SLICE_KEYS)
        job = {
            "id": job_id,
            "keys": len(keys),
            "slices": len(slices),
            "force": force,
            "start_after": start_after,
            "created_at": iso(now),
            "created": now,
            # what the listing itself did: misnamed records removed (or failing to be)
            "listing": {"counts": dict(report.counts), "failed": report.failed},
        }
        self.store.put_json(self.store.job_key(job_id), job)
        if not slices:
            self._summarise(job)
        else:
            bodies = [json.dumps({"job": job_id, "slice": n, "keys": s}) for n, s in enumerate(slices)]
            enqueue(self.store, self.queue, job_id, bodies)
        return {**self.status(job_id), "queued": True}

    # ------------------------------------------------------------------ status
    def status(self, job_id: str) -> dict[str, Any]:
        """``{"id", "state", "keys", "slices", "slices_done", "counts", "force", "created_at"}``:
        state ``done`` (with ``"summary"``), ``failed`` (with ``"error"``), ``running`` or
        ``queued``; ``counts`` so far. JobNotFoundError for an unknown id."""
        check_job_id(job_id)
        job = self.store.get_json(self.store.job_key(job_id))
        if job is None:
            raise JobNotFoundError(f"no reindex job {job_id}")
        out = {k: job[k] for k in ("id", "keys", "slices", "force", "created_at")}
        summary = self.store.get_json(self.store.report_key(job_id))
        if summary is not None:
            return {
                **out,
                "state": "done",
                "slices_done": summary["slices_done"],
                "counts": summary["counts"],
                "summary": summary,
            }
        parts = self.store.parts(job_id)
        counts = _total(job, parts)
        failed = self.store.get_json(self.store.failed_key(job_id))
        if failed is not None:
            return {**out, "state": "failed", "slices_done": len(parts), "counts": counts, "error": failed.get("error")}
        return {**out, "state": "running" if parts else "queued", "slices_done": len(parts), "counts": counts}

    # ------------------------------------------------------------------ a slice (the worker)
    def run_slice(self, body: str, *, receive_count: int = 1, deadline: float | None = None) -> dict[str, Any]:
        """Reconcile one slice (a ReindexQueue message body) and, if it is the last, write the
        summary; what it did. Raises :class:`SliceKeysFailedError` when keys failed (see the
        module doc); any other failure on the last delivery marks the job failed, then raises."""
        msg = json.loads(body)
        if not (isinstance(msg, dict) and isinstance(msg.get("keys"), list) and "job" in msg and "slice" in msg):
            raise ValueError("not a reindex slice: {job, slice, keys} expected")
        job_id, n, keys = check_job_id(str(msg["job"])), int(msg["slice"]), [str(k) for k in msg["keys"]]
        try:
            return self._run_slice(job_id, n, keys, receive_count, deadline)
        except SliceKeysFailedError:
            raise
        except Exception as exc:
            if receive_count >= MAX_RECEIVES:
                why = exc.message if isinstance(exc, HarmonyError) else f"{type(exc).__name__}: {exc}"
                self.store.put_if_absent(self.store.failed_key(job_id), {"slice": n, "error": f"slice {n}: {why}"})
            raise

    def _run_slice(
        self, job_id: str, n: int, keys: list[str], receive_count: int, deadline: float | None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"job": job_id, "slice": n}
        job = self.store.get_json(self.store.job_key(job_id))
        if job is None:  # job.json is written before its slices are sent: none will ever come
            log.warning("reindex slice %d of %s dropped: no such job", n, job_id)
            return {**out, "action": "unknown_job"}
        if self.bucket.head(self.store.report_key(job_id)) is not None:
            return {**out, "action": "job_finished"}
        if self.bucket.head(self.store.failed_key(job_id)) is not None:
            return {**out, "action": "job_failed"}
        errors: dict[str, str] = {}
        action = "already_done"
        if self.bucket.head(self.store.part_key(job_id, n)) is None:
            progress = self.store.get_json(self.progress_key(job_id, n)) or {}
            done: dict[str, str] = {str(k): str(v) for k, v in (progress.get("done") or {}).items()}
            before = len(done)
            todo = [k for k in keys if k not in done]
            for key, outcome in self.writer.reconcile_each(
                todo, force=bool(job["force"]), verify=True, workers=SLICE_WORKERS, deadline=deadline
            ):
                if isinstance(outcome, ReconcileResult):
                    done[key] = outcome.action
                else:
                    errors[key] = f"{type(outcome).__name__}: {outcome}"
            for key in todo:
                if key not in done and key not in errors:
                    errors[key] = "not started: the invocation ran short of time"
            if errors and receive_count < MAX_RECEIVES:
                if len(done) > before:
                    self.store.put_json(self.progress_key(job_id, n), {"slice": n, "done": done})
                raise SliceKeysFailedError(_failure(n, keys, errors, receive_count))
            counts: dict[str, int] = {}
            for a in done.values():
                counts[a] = counts.get(a, 0) + 1
            if errors:
                counts["failed"] = len(errors)
            part = {
                "slice": n,
                "keys": len(keys),
                "counts": counts,
                "failed": [{"key": k, "error": e} for k, e in list(errors.items())[:MAX_REPORTED_FAILURES]],
                "receives": receive_count,
            }
            action = "reconciled" if self.store.put_if_absent(self.store.part_key(job_id, n), part) else "already_done"
            out["counts"] = counts
        if self.store.parts_done(job_id) >= int(job["slices"]):
            action += ", summarised" if self._summarise(job) else ", summarised_elsewhere"
        if errors:  # the last delivery: counted above; the message goes to the dead-letter queue
            raise SliceKeysFailedError(_failure(n, keys, errors, receive_count) + "; counted as failed")
        return {**out, "action": action}

    def _summarise(self, job: dict[str, Any]) -> bool:
        """Write the job's summary from every part; whether this call wrote it."""
        job_id = job["id"]
        parts = self.store.parts(job_id)
        counts = _total(job, parts)
        failed = list(job["listing"]["failed"]) + [f for p in parts for f in p.get("failed") or []]
        finished = time.time()
        took = finished - float(job["created"])
        summary = {
            "id": job_id,
            "keys": job["keys"],
            "slices": job["slices"],
            "slices_done": len(parts),
            "force": job["force"],
            "counts": counts,
            "complete": counts.get("failed", 0) == 0,
            "failed": failed[:MAX_REPORTED_FAILURES],
            "created_at": job["created_at"],
            "finished_at": iso(finished),
            "took_s": round(took, 3),
            "images_per_s": round(int(job["keys"]) / took, 2) if took > 0 else None,
        }
        wrote = self.store.put_if_absent(self.store.report_key(job_id), summary)
        self.store.put_json(self.store.job_key(job_id), {**job, "state": "done"})
        log.info("reindex %s done: %s", job_id, counts)
        return wrote


def _total(job: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, int]:
    """The listing's counts plus every part's, by action."""
    total: dict[str, int] = dict(job["listing"]["counts"])
    for p in parts:
        for action, n in (p.get("counts") or {}).items():
            total[action] = total.get(action, 0) + int(n)
    return dict(sorted(total.items()))


def _failure(n: int, keys: list[str], errors: dict[str, str], receive_count: int) -> str:
    first = next(iter(errors.items()))
    return f"slice {n}: {len(errors)} of {len(keys)} keys failed on delivery {receive_count} ({first[0]}: {first[1]})"
