"""IndexFunction: S3 ObjectCreated/ObjectRemoved under catalog/ -> reconcile that key's index record.

Every record of an event is attempted; if any failed, the invocation fails afterwards (listing
the keys), so that Lambda retries the event - the records already reconciled are reconciled
again at no cost (reconcile is idempotent) - and after its retries sends it to the dead-letter
queue.

Invoked directly with {"action": "reindex"} it reconciles every catalog object and record of the
function's bucket (HARMONY_BUCKET; or "bucket": "<name>"): backfill of images uploaded before the
trigger existed, repairs, redrive of dead letters. Options: "force": true (recompute every
record), "start_after": "<key>" (continue a previous run). It stops starting keys shortly before
the function's timeout and says so: "complete": false and "resume_after" (pass it back as
"start_after").

The event is only a hint: harmony_aws.records.RecordWriter.reconcile looks at the object itself,
so duplicated, reordered and concurrent events converge to the bucket's state.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from harmony_aws import runtime
from harmony_aws.errors import ConfigError, EventRecordsFailedError

logger = Logger()
tracer = Tracer()
metrics = Metrics()

DEADLINE_MARGIN_SECONDS = 15.0
"""A reindex starts no key later than this before the function's timeout (a key can take a few
seconds with S3's retries; the rest of the time is left for the keys in flight)."""


def _reindex(event: S3Event, context: LambdaContext) -> dict[str, Any]:
    bucket = event.get("bucket") or runtime.settings().bucket
    if not bucket:
        raise ConfigError('reindex: no bucket (set HARMONY_BUCKET or pass "bucket")')
    remaining = context.get_remaining_time_in_millis() / 1000
    deadline = time.monotonic() + max(remaining / 2, remaining - DEADLINE_MARGIN_SECONDS)
    report = runtime.record_writer(bucket).reindex(
        force=bool(event.get("force", False)), deadline=deadline, start_after=event.get("start_after")
    )
    out = report.to_dict()
    metrics.add_metric(name="ReindexFailed", unit=MetricUnit.Count, value=report.counts.get("failed", 0))
    if report.complete:
        logger.info("reindexed", extra={"bucket": bucket, **out})
    else:  # not silent: the log, the metric and the answer say what is left
        logger.error("reindex incomplete", extra={"bucket": bucket, **out})
    return out


@tracer.capture_method
def handle(event: S3Event, context: LambdaContext) -> dict[str, Any]:
    if event.get("action") == "reindex":  # direct invoke, see the module doc
        return _reindex(event, context)
    done: dict[tuple[str, str], dict[str, Any]] = {}
    failed: list[tuple[str, BaseException]] = []
    seen: set[tuple[str, str]] = set()
    for record in event.records:
        bucket = record.s3.bucket.name
        key = unquote_plus(record.s3.get_object.key)  # S3 event keys arrive URL-encoded
        if (bucket, key) in seen:
            continue  # the same key twice in one batch: once is enough
        seen.add((bucket, key))
        try:
            result = runtime.record_writer(bucket).reconcile(key)
        except Exception as exc:  # the other records are attempted first; raised below
            logger.exception("reconcile failed", extra={"bucket": bucket, "key": key, "event": record.event_name})
            metrics.add_metric(name="IndexFailed", unit=MetricUnit.Count, value=1)
            failed.append((key, exc))
            continue
        logger.info("reconciled", extra={"bucket": bucket, "event": record.event_name, **result.to_dict()})
        metrics.add_metric(name=f"Index{result.action.capitalize()}", unit=MetricUnit.Count, value=1)
        done[(bucket, key)] = result.to_dict()
    if failed:
        raise EventRecordsFailedError.of(failed, done=len(done))
    return {"results": list(done.values())}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
@event_source(data_class=S3Event)
def lambda_handler(event: S3Event, context: LambdaContext) -> dict[str, Any]:
    return handle(event, context)
