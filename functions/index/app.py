"""IndexFunction: S3 ObjectCreated/ObjectRemoved under catalog/ -> reconcile that key's index record.

Deployed, S3 sends catalog/ changes to IndexQueue (SQS) and the function gets batches of its
messages, each body an S3 event notification (or S3's one-off ``s3:TestEvent``, skipped).
Powertools' BatchProcessor reconciles each message's records; a message whose reconcile failed
is reported in ``batchItemFailures``, so only it comes back (after the queue's visibility
timeout) and, after maxReceiveCount receives, goes to the queue's dead-letter queue.

Invoked with an S3 event itself (``sam local invoke -e events/s3-catalog-put.json``, or a bucket
notification pointing at the function) every record is attempted; if any failed, the invocation
fails afterwards (listing the keys), so that Lambda retries the event - the records already
reconciled are reconciled again at no cost (reconcile is idempotent).

Invoked directly with {"action": "reindex"} it reconciles every catalog object and record of the
function's bucket (HARMONY_BUCKET; or "bucket": "<name>"): backfill of images uploaded before the
trigger existed, repairs, redrive of dead letters. Options: "force": true (recompute every
record), "start_after": "<key>" (only the keys after it), "queued": true|false (see below).
A catalog of more than one slice (harmony_aws.reindex_jobs.INLINE_KEYS keys) of the function's
own bucket is planned: the keys go in slices to ReindexQueue (HARMONY_REINDEX_QUEUE_URL) and the
answer is the job's state ("id", "state": "queued", "keys", "slices"); this function then takes
the slices from that queue like the catalog's events, each key retried on its own, and the last
slice writes the summary. {"action": "reindex_status", "id": "<id>"} gives a job's state,
counts so far, and its summary once done. A smaller catalog, another bucket, "queued": false or
no queue configured: reindexed in this call, as before - it stops starting keys shortly before
the function's timeout and says so: "complete": false and "resume_after" (pass it back as
"start_after").

Invoked with {"action": "compact"} (hourly by its schedule, or by hand) it folds the records into
segments of HARMONY_SHARDS shards (harmony_aws.segments): readers then cold-start from a few
large objects. Incremental: segments whose records did not change are kept. More records to fold
than harmony_aws.compact_jobs.INLINE_RECORDS (and a queue, the function's own bucket) are
planned: one item per segment to fold goes to ReindexQueue, this function folds them one per
invocation, and the last publishes the manifest ("queued": true|false forces either way; while a
planned compaction runs, another is not planned). {"action": "compact_status", "id": "<id>"}
gives a job's state and counts, and its result once done.

The event is only a hint: harmony_aws.records.RecordWriter.reconcile looks at the object itself,
so duplicated, reordered and concurrent events converge to the bucket's state.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source
from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventRecord
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from harmony_aws import compact_jobs, runtime
from harmony_aws.errors import ConfigError, EventRecordsFailedError

logger = Logger()
tracer = Tracer()
metrics = Metrics()

DEADLINE_MARGIN_SECONDS = 15.0
"""A reindex starts no key later than this before the function's timeout (a key can take a few
seconds with S3's retries; the rest of the time is left for the keys in flight)."""


def _deadline(context: LambdaContext) -> float:
    """The ``time.monotonic()`` after which no key is started (see DEADLINE_MARGIN_SECONDS)."""
    remaining = context.get_remaining_time_in_millis() / 1000
    return time.monotonic() + max(remaining / 2, remaining - DEADLINE_MARGIN_SECONDS)


def _bucket(event: S3Event, action: str) -> str:
    bucket = event.get("bucket") or runtime.settings().bucket
    if not bucket:
        raise ConfigError(f'{action}: no bucket (set HARMONY_BUCKET or pass "bucket")')
    return str(bucket)


def _reindex(event: S3Event, context: LambdaContext) -> dict[str, Any]:
    bucket = _bucket(event, "reindex")
    out = runtime.reindex_jobs(bucket).start(
        force=event.get("force", False),
        queued=event.get("queued"),
        start_after=event.get("start_after"),
        deadline=_deadline(context),
    )
    if out.get("queued"):
        logger.info("reindex planned", extra={"bucket": bucket, **out})
        return out
    metrics.add_metric(name="ReindexFailed", unit=MetricUnit.Count, value=out["reindexed"].get("failed", 0))
    if out["complete"]:
        logger.info("reindexed", extra={"bucket": bucket, **out})
    else:  # not silent: the log, the metric and the answer say what is left
        logger.error("reindex incomplete", extra={"bucket": bucket, **out})
    return out


def _reindex_slice(record: SQSRecord, context: LambdaContext) -> dict[str, Any]:
    """One ReindexQueue message: a slice of a planned reindex of the function's bucket."""
    receives = int(record.attributes.approximate_receive_count or 1)
    bucket = runtime.settings().bucket  # the queue's jobs are of the function's own bucket
    if not bucket:
        raise ConfigError("reindex slice: HARMONY_BUCKET is not set")
    jobs = runtime.reindex_jobs(bucket)
    try:
        out = jobs.run_slice(record.body, receive_count=receives, deadline=_deadline(context))
    except Exception:
        logger.exception("reindex slice failed", extra={"message_id": record.message_id, "receives": receives})
        metrics.add_metric(name="ReindexSliceFailed", unit=MetricUnit.Count, value=1)
        raise
    logger.info("reindex slice", extra=out)
    metrics.add_metric(name="ReindexSlices", unit=MetricUnit.Count, value=1)
    return out


def _compact(event: S3Event) -> dict[str, Any]:
    bucket = _bucket(event, "compact")
    report = runtime.compaction_jobs(bucket).start(queued=event.get("queued"))
    if report.get("queued"):
        logger.info(
            "compaction planned" if report["planned"] else "compaction running", extra={"bucket": bucket, **report}
        )
        return report
    metrics.add_metric(name="CompactionSegmentsWritten", unit=MetricUnit.Count, value=report["written"])
    metrics.add_metric(name="CompactionLost", unit=MetricUnit.Count, value=0 if report["won"] else 1)
    logger.info("compacted", extra={"bucket": bucket, **report})
    return report


def _compact_item(record: SQSRecord) -> dict[str, Any]:
    """One ReindexQueue message of a planned compaction: one segment to fold (the last publishes)."""
    receives = int(record.attributes.approximate_receive_count or 1)
    bucket = runtime.settings().bucket  # the queue's jobs are of the function's own bucket
    if not bucket:
        raise ConfigError("compaction item: HARMONY_BUCKET is not set")
    jobs = runtime.compaction_jobs(bucket)
    try:
        out = jobs.run_item(record.body, receive_count=receives)
    except Exception:
        logger.exception("compaction item failed", extra={"message_id": record.message_id, "receives": receives})
        metrics.add_metric(name="CompactionItemFailed", unit=MetricUnit.Count, value=1)
        if receives >= compact_jobs.MAX_RECEIVES:
            metrics.add_metric(name="CompactionJobFailed", unit=MetricUnit.Count, value=1)
        raise
    logger.info("compaction item", extra=out)
    metrics.add_metric(name="CompactionItems", unit=MetricUnit.Count, value=1)
    if "lost" in out["action"]:
        metrics.add_metric(name="CompactionLost", unit=MetricUnit.Count, value=1)
    return out


def _reconcile(record: S3EventRecord) -> dict[str, Any]:
    """Reconcile the key of one S3 event record (raises what reconcile raises)."""
    bucket = record.s3.bucket.name
    key = unquote_plus(record.s3.get_object.key)  # S3 event keys arrive URL-encoded
    try:
        result = runtime.record_writer(bucket).reconcile(key)
    except Exception:
        logger.exception("reconcile failed", extra={"bucket": bucket, "key": key, "event": record.event_name})
        metrics.add_metric(name="IndexFailed", unit=MetricUnit.Count, value=1)
        raise
    logger.info("reconciled", extra={"bucket": bucket, "event": record.event_name, **result.to_dict()})
    metrics.add_metric(name=f"Index{result.action.capitalize()}", unit=MetricUnit.Count, value=1)
    return result.to_dict()


def _queue_message(record: SQSRecord, lambda_context: LambdaContext) -> list[dict[str, Any]]:
    """One IndexQueue message: an S3 event notification, or S3's test message (nothing to do);
    or one ReindexQueue message: a slice of a planned reindex ({"job", "slice", "keys"}) or an
    item of a planned compaction ({"job", "kind": "compact", ...}). Anything else raises, so the
    message ends in the dead-letter queue to be looked at."""
    kind = _job_kind(record.body)
    if kind == "compact":
        return [_compact_item(record)]
    if kind == "reindex":
        return [_reindex_slice(record, lambda_context)]
    body = json.loads(record.body)
    if isinstance(body, dict) and body.get("Event") == "s3:TestEvent":
        logger.info("s3 test event skipped", extra={"bucket": body.get("Bucket")})
        return []
    if not (isinstance(body, dict) and isinstance(body.get("Records"), list)):
        raise ValueError(f"message {record.message_id} is not an S3 event notification")
    return [_reconcile(s3_record) for s3_record in S3Event(body).records]


def _job_kind(body: object) -> str | None:
    """``reindex`` for a reindex slice ({"job", "slice", "keys"}), ``compact`` for a compaction
    item ({"job", "kind": "compact", ...}), None for any other SQS message body."""
    try:
        doc = json.loads(body) if isinstance(body, str) else None
    except ValueError:
        return None
    if not (isinstance(doc, dict) and "job" in doc):
        return None
    if doc.get("kind") == "compact":
        return "compact"
    return "reindex" if "keys" in doc else None


processor = BatchProcessor(event_type=EventType.SQS)
# A reindex slice or compaction item comes alone (BatchSize 1): one that failed is an expected
# outcome, counted and retried, so it is reported as a batch item failure, not as a failed invocation.
slice_processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@tracer.capture_method
def handle(event: S3Event, context: LambdaContext) -> dict[str, Any]:
    if event.get("action") == "reindex":  # direct invoke, see the module doc
        return _reindex(event, context)
    if event.get("action") == "reindex_status":
        return runtime.reindex_jobs(_bucket(event, "reindex_status")).status(str(event.get("id", "")))
    if event.get("action") == "compact":
        return _compact(event)
    if event.get("action") == "compact_status":
        return runtime.compaction_jobs(_bucket(event, "compact_status")).status(str(event.get("id", "")))
    records = event.get("Records") or []
    if records and all(r.get("eventSource") == "aws:sqs" for r in records):
        slices = all(_job_kind(r.get("body")) for r in records)
        return dict(
            process_partial_response(
                event=event.raw_event,
                record_handler=_queue_message,
                processor=slice_processor if slices else processor,
                context=context,
            )
        )
    done: dict[tuple[str, str], dict[str, Any]] = {}
    failed: list[tuple[str, BaseException]] = []
    seen: set[tuple[str, str]] = set()
    for record in event.records:
        bucket, key = record.s3.bucket.name, unquote_plus(record.s3.get_object.key)
        if (bucket, key) in seen:
            continue  # the same key twice in one event: once is enough
        seen.add((bucket, key))
        try:
            done[(bucket, key)] = _reconcile(record)
        except Exception as exc:  # noqa: BLE001 - the other records are attempted first; raised below
            failed.append((key, exc))
    if failed:
        raise EventRecordsFailedError.of(failed, done=len(done))
    return {"results": list(done.values())}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
@event_source(data_class=S3Event)
def lambda_handler(event: S3Event, context: LambdaContext) -> dict[str, Any]:
    return handle(event, context)
