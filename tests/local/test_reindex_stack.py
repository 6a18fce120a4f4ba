"""A planned reindex on the local stack: the repository's template.yaml, IndexFunction invoked with
``{"action": "reindex"}`` over a catalog of more than one slice (100 keys) whose records were lost,
the slices sent to ReindexQueue (moto's SQS, the template's redrive to ReindexDeadLetterQueue) and
handed back to IndexFunction by the stack's SQS event source (ReindexSlices, BatchSize 1), as
Lambda's would.

The functions reach S3 through tests/faultproxy.py: every HEAD of one key is denied, so its slice
fails on each delivery (a batch item failure; only that key is tried again), and after the
queue's maxReceiveCount receives the key is counted as failed in the job's summary and the
message is a dead letter. The other keys are all indexed, each counted once. Once S3 heals, a
second reindex indexes the missing key and finds the rest unchanged.

    .venv/bin/pytest tests/local/test_reindex_stack.py
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote, unquote

from harmony_aws import reindex_jobs
from harmony_local.stack.server import free_port
from tests.faultproxy import FaultProxy
from tests.local.test_bulk_ingest import make_files
from tests.support import TEMPLATE, all_keys, start_stack

N = 150  # > reindex_jobs.INLINE_KEYS: planned by default, in 2 slices
VISIBILITY = 1  # seconds before a failed slice comes back (the template's 780 s, scaled down)


def records(s3: Any, bucket: str) -> set[str]:
    return {
        unquote(s3.head_object(Bucket=bucket, Key=rk)["Metadata"]["catalog-key"])
        for rk in all_keys(s3, bucket, "index/records/")
    }


def reindex_until_done(stack: Any, event: dict[str, Any], timeout: float = 240.0) -> dict[str, Any]:
    """Invoke IndexFunction with ``event``; the job's state once the stack's queues are idle."""
    inv = stack.invoke("IndexFunction", event)
    assert inv.ok, inv.error
    started = inv.result
    assert started["queued"] is True and started["state"] == "queued", started
    stack.wait_idle(timeout)
    deadline = time.monotonic() + 30
    while True:
        inv = stack.invoke("IndexFunction", {"action": "reindex_status", "id": started["id"]})
        assert inv.ok, inv.error
        if inv.result["state"] != "running" or time.monotonic() > deadline:
            return dict(inv.result)
        time.sleep(0.2)


def test_planned_reindex_through_the_stack_queue_counts_and_dead_letters(tmp_path: Any) -> None:
    files, images = make_files(N)
    assert N > reindex_jobs.INLINE_KEYS
    bad = sorted(images)[7]
    port = free_port()
    with FaultProxy(f"http://127.0.0.1:{port}") as proxy:
        stack = start_stack(
            TEMPLATE,
            tmp_path,
            bucket="harmony-reindex",
            s3_port=port,
            function_s3_endpoint=proxy.url,
            queue_visibility_timeout=VISIBILITY,
        )
        try:
            s3, sqs, bucket = stack.client(), stack.client("sqs"), stack.config.bucket
            for key, data in files.items():
                s3.put_object(Bucket=bucket, Key=key, Body=data)
            stack.wait_idle(240)  # IndexQueue indexed the uploads; now the index is lost
            assert records(s3, bucket) == images
            for rk in all_keys(s3, bucket, "index/records/"):
                s3.delete_object(Bucket=bucket, Key=rk)
            proxy.fail("denied", quote(bad), method="HEAD")

            done = reindex_until_done(stack, {"action": "reindex"})
            assert (done["state"], done["keys"], done["slices"], done["slices_done"]) == ("done", N, 2, 2), done
            not_images = N - len(images)
            assert done["counts"] == {"indexed": len(images) - 1, "skipped": not_images, "failed": 1}, done
            assert [f["key"] for f in done["summary"]["failed"]] == [bad], done
            assert records(s3, bucket) == images - {bad}
            stats = stack.sqs_stats["IndexFunction.ReindexSlices"]
            assert stats.batches >= 2 + reindex_jobs.MAX_RECEIVES - 1 and stats.failed_invocations == 0, stats
            assert stats.failed_messages == reindex_jobs.MAX_RECEIVES, stats
            dlq = stack.queue_urls[stack.dead_letter_of()["ReindexQueue"]]
            dead = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10).get("Messages", [])
            assert len(dead) == 1 and bad in dead[0]["Body"], dead

            proxy.heal()
            again = reindex_until_done(stack, {"action": "reindex"})
            assert again["counts"] == {"indexed": 1, "unchanged": len(images) - 1, "skipped": not_images}, again
            assert again["summary"]["complete"] is True
            assert records(s3, bucket) == images
        finally:
            stack.stop()
