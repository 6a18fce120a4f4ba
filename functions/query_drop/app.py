"""QueryDrop: S3 ObjectCreated under queries/ -> search -> results/<key>.json (see harmony_aws.querydrop).

Every record of an event is attempted; if any failed (S3 failures, an answer from an incomplete
index), the invocation fails afterwards so that Lambda retries the event (answers already
written for a version are not rewritten) and, after its retries, sends it to the dead-letter
queue."""

from __future__ import annotations

from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from harmony_aws import runtime
from harmony_aws.errors import EventRecordsFailedError
from harmony_aws.querydrop import answer_query

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@tracer.capture_method
def handle(event: S3Event) -> dict:
    out = []
    failed: list[tuple[str, BaseException]] = []
    for record in event.records:
        bucket = record.s3.bucket.name
        key = unquote_plus(record.s3.get_object.key)  # S3 event keys arrive URL-encoded
        try:
            result = answer_query(runtime.search_service(bucket), key, runtime.settings().search_params())
        except Exception as exc:  # the other records are attempted first; raised below
            logger.exception("query drop failed", extra={"bucket": bucket, "key": key})
            metrics.add_metric(name="QueryDropError", unit=MetricUnit.Count, value=1)
            failed.append((key, exc))
            continue
        logger.info("query drop", extra={"bucket": bucket, **result.to_dict()})
        metrics.add_metric(name=f"QueryDrop{result.action.capitalize()}", unit=MetricUnit.Count, value=1)
        out.append(result.to_dict())
    if failed:
        raise EventRecordsFailedError.of(failed, done=len(out))
    return {"results": out}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
@event_source(data_class=S3Event)
def lambda_handler(event: S3Event, context: LambdaContext) -> dict:
    return handle(event)
