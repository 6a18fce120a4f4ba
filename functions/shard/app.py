"""ShardFunction: one shard of a sharded catalog, searched for SearchFunction's fan-out.

Invoked (Lambda ``Invoke``, RequestResponse) by SearchFunction with a shard request
(harmony_aws/fanout.py has its shapes): ``search`` (seed scoring, or a single shard) is answered
``{"results", "catalog_size", "index"}``; default scoring's two rounds ``shortlist`` and
``verify`` are answered with the shard's best rows by votes and looks, then the evidence for its
part of the catalog's shortlist — from its warm index of shard HARMONY_SHARD (``i/n``): the
segments of that shard and its newer records.
A request it cannot serve is answered ``{"error": {"code", "message"}, "status"}``, which the
fan-out reports as a failed shard.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from harmony_aws import runtime
from harmony_aws.errors import error_body
from harmony_aws.fanout import answer_shard
from harmony_image import HarmonyError

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@tracer.capture_method
def handle(event: Any) -> dict[str, Any]:
    try:
        return answer_shard(event, runtime.search_service().reader)
    except HarmonyError as exc:
        logger.warning("shard request refused", extra={"code": exc.code, "reason": exc.message})
        metrics.add_metric(name="ShardRequestRefused", unit=MetricUnit.Count, value=1)
        return {**error_body(exc.code, exc.message), "status": exc.status}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    return handle(event)
