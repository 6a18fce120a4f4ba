"""IndexFunction: S3 ObjectCreated/ObjectRemoved under catalog/ -> reconcile that key's index record.

Invoked directly with {"action": "reindex", "bucket": "<bucket>", "force": false} it reconciles
every catalog object and record (backfill of images uploaded before the trigger existed, repairs).

The event is only a hint: harmony_aws.records.RecordWriter.reconcile looks at the object itself,
so duplicated, reordered and concurrent events converge to the bucket's state.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from harmony_aws import runtime

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@tracer.capture_method
def handle(event: S3Event) -> dict:
    if event.get("action") == "reindex":  # direct invoke: {"action": "reindex", "bucket": "...", "force": false}
        counts = runtime.record_writer(event["bucket"]).reindex(force=bool(event.get("force", False)))
        logger.info("reindexed", extra={"bucket": event["bucket"], **counts})
        return {"reindexed": counts}
    done: dict[tuple[str, str], dict] = {}
    for record in event.records:
        bucket = record.s3.bucket.name
        key = unquote_plus(record.s3.get_object.key)  # S3 event keys arrive URL-encoded
        if (bucket, key) in done:
            continue  # the same key twice in one batch: once is enough
        result = runtime.record_writer(bucket).reconcile(key)
        logger.info("reconciled", extra={"bucket": bucket, "event": record.event_name, **result.to_dict()})
        metrics.add_metric(name=f"Index{result.action.capitalize()}", unit=MetricUnit.Count, value=1)
        done[(bucket, key)] = result.to_dict()
    return {"results": list(done.values())}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
@event_source(data_class=S3Event)
def lambda_handler(event: S3Event, context: LambdaContext) -> dict:
    return handle(event)
