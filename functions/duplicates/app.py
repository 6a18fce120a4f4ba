"""DuplicatesFunction: DuplicatesQueue (SQS) -> one slice of a duplicate-report job each.

``POST /duplicates`` (SearchFunction) lists the catalog and sends one message per slice of keys,
``{"job": "<id>", "slice": n, "keys": ["catalog/...", ...]}``. For each, this function queries
the slice's keys against the whole warm index, writes the slice's edges under
``reports/<id>/parts/``, and the slice that finds every part written merges the report
``reports/<id>.json`` (harmony_aws/duplicate_jobs.py: the layout, and why the merge happens once).

Powertools' BatchProcessor reports a failed slice in ``batchItemFailures``: it comes back after
the queue's visibility timeout; a failure on its last delivery marks the job failed before SQS
moves the message to the dead-letter queue. A body that is not a slice raises (dead letter, to
be looked at); a slice of a job that does not exist is dropped (logged). A duplicated delivery
finds its part written and does nothing.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from harmony_aws import runtime

logger = Logger()
tracer = Tracer()
metrics = Metrics()

processor = BatchProcessor(event_type=EventType.SQS)


def _slice(record: SQSRecord) -> dict[str, Any]:
    receives = int(record.attributes.approximate_receive_count or 1)
    try:
        result = runtime.duplicate_jobs().run_slice(record.body, receive_count=receives)
    except Exception:
        logger.exception("duplicate slice failed", extra={"message_id": record.message_id, "receives": receives})
        metrics.add_metric(name="DuplicateSliceFailed", unit=MetricUnit.Count, value=1)
        raise
    out = result.to_dict()
    logger.info("duplicate slice", extra=out)
    metrics.add_metric(name="DuplicateSlices", unit=MetricUnit.Count, value=1)
    return out


@tracer.capture_method
def handle(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=_slice, processor=processor, context=context)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    if not isinstance(event.get("Records"), list):
        raise ValueError(f"not an SQS event: {json.dumps(event)[:200]}")
    return handle(event, context)
