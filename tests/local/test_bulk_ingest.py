"""Bulk ingest through IndexQueue on the local stack: 1,000 uploads under S3 faults, duplicated
and early notifications, end with the index equal to the bucket.

The stack runs the repository's template.yaml: the bucket's catalog/ notifications go to
IndexQueue (moto's SQS, with the template's RedrivePolicy to IndexDeadLetterQueue), whose SQS
event source hands batches to the real IndexFunction, at most IndexMaxConcurrency at once (2
here, below the stack's 3 warm workers, so the cap is what holds it). The functions reach S3
through tests/faultproxy.py:

* a share of all their S3 requests fail at random (500, 503 SlowDown, delays, cut connections;
  botocore retries them);
* the first GET of some keys is denied (403, not retried): their reconcile fails, the batch
  reports just that message, which comes back after the visibility timeout and succeeds;
* every HEAD of two keys is denied: their messages fail maxReceiveCount times and go to the
  dead-letter queue - the only keys missing from the index, named by the dead letters.

Besides S3's own notification for each upload, a share of the keys get the same notification
again (at-least-once delivery) and some get one before their upload (it finds nothing, the
real one indexes). Some files are not images (text, a truncated JPEG): no record, counted as
skipped. After the queue drains, the records are read back (harmony_local.importer's
index_report, what `python -m harmony_local import` prints); then S3 recovers, the dead letters
are redriven, and the index equals the bucket with the dead-letter queue empty.

    .venv/bin/pytest tests/local/test_bulk_ingest.py -s     # prints a summary line
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from urllib.parse import unquote

import cv2
import numpy as np
import pytest

from harmony_local.importer import dead_letter_keys, index_report, queue_depth, upload_files, wait_drained
from harmony_local.stack.server import free_port
from tests.faultproxy import FaultProxy
from tests.support import FIXTURES, TEMPLATE, all_keys, s3_event, start_stack

N = 1000
MAX_CONCURRENCY = 2  # IndexMaxConcurrency for this stack; its functions have 3 workers each
WORKERS = 3
RATE = 0.02  # share of the functions' S3 requests given a random fault
# seconds before a received, undeleted message comes back (the template's 780 s, scaled down):
# longer than a batch takes under the faults, so that no message is received again mid-batch
VISIBILITY = 5
FLAKY, BROKEN = 20, 2  # keys whose first GET is denied / whose every HEAD is denied
DUPLICATED, EARLY = 0.1, 10  # share of keys notified twice; keys notified before their upload
DRAIN_TIMEOUT = 600.0


def make_files(n: int) -> tuple[dict[str, bytes], set[str]]:
    """``n`` small distinct files under catalog/bulk/ (key -> bytes) made from the test images
    (resized 72-160 px wide, cropped, mirrored, brightened, numbered), and the keys that are
    images; about 2% are not (text, or a JPEG cut in half)."""
    bases = []
    for p in sorted(FIXTURES.iterdir()):
        img = cv2.imdecode(np.frombuffer(p.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        if img is not None and min(img.shape[:2]) >= 32:
            bases.append(img)
    files, images = {}, set()
    for i in range(n):
        key = f"catalog/bulk/{i // 100:02d}/{i:04d}.jpg"
        base = bases[i % len(bases)]
        h, w = base.shape[:2]
        x0, y0 = (i * 7) % max(1, w // 5), (i * 11) % max(1, h // 5)
        img = base[y0 : h - (i * 5) % max(1, h // 6), x0:w]
        width = 72 + (i * 37) % 89
        img = cv2.resize(img, (width, max(16, width * img.shape[0] // img.shape[1])), interpolation=cv2.INTER_AREA)
        if (i // len(bases)) % 2:
            img = cv2.flip(img, 1)
        img = cv2.convertScaleAbs(img, alpha=1.0, beta=float((i * 13) % 40))
        cv2.putText(img, str(i), (4, img.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 255), 1)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        data = bytes(buf.tobytes())
        if i % 97 == 5:
            data = b"not an image, file %d\n" % i
        elif i % 97 == 11:
            data = data[: len(data) // 2]
        else:
            images.add(key)
        files[key] = data
    assert len({hashlib.sha256(d).digest() for d in files.values()}) == n
    return files, images


def records(s3, bucket: str) -> dict[str, tuple[str, str]]:
    """catalog key -> (source ETag, content sha256) of every record, read straight from moto."""
    out = {}
    for rk in all_keys(s3, bucket, "index/records/"):
        meta = s3.head_object(Bucket=bucket, Key=rk)["Metadata"]
        out[unquote(meta["catalog-key"])] = (meta["source-etag"].strip('"'), meta["content-sha256"])
    return out


def notify(sqs, queue_url: str, bucket: str, keys: list[str]) -> None:
    """The notification S3 sends for an upload of each key, sent to the queue once more."""
    for i in range(0, len(keys), 10):
        entries = [
            {"Id": str(j), "MessageBody": json.dumps(s3_event("s3-catalog-put.json", bucket, k))}
            for j, k in enumerate(keys[i : i + 10])
        ]
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)


@pytest.mark.slow
def test_bulk_ingest_1000_uploads_through_the_queue(tmp_path):
    files, images = make_files(N)
    rng = random.Random(7)
    flaky = rng.sample(sorted(images), FLAKY + BROKEN)
    broken, flaky = set(flaky[:BROKEN]), flaky[BROKEN:]
    port = free_port()
    with FaultProxy(f"http://127.0.0.1:{port}", seed=7) as proxy:
        stack = start_stack(
            TEMPLATE,
            tmp_path,
            bucket="harmony-bulk",
            s3_port=port,
            function_s3_endpoint=proxy.url,
            max_concurrency=WORKERS,
            queue_visibility_timeout=VISIBILITY,
            parameter_overrides={"IndexMaxConcurrency": str(MAX_CONCURRENCY)},
        )
        try:
            s3, sqs, bucket = stack.client(), stack.client("sqs"), stack.config.bucket
            queue = stack.catalog_queue()
            assert queue == "IndexQueue"
            queue_url = stack.queue_urls[queue]
            dlq_url = stack.queue_urls[stack.dead_letter_of()[queue]]
            for key in flaky:
                proxy.fail("denied", key, method="GET", times=1)
            for key in broken:
                proxy.fail("denied", key, method="HEAD")
            proxy.rate = RATE

            t0 = time.perf_counter()
            keys = sorted(files)
            notify(sqs, queue_url, bucket, rng.sample(keys, EARLY))  # before the objects exist
            upload_files(s3, bucket, files, workers=8)
            notify(sqs, queue_url, bucket, rng.sample(keys, int(DUPLICATED * N)))
            wait_drained(sqs, queue_url, timeout=DRAIN_TIMEOUT)
            report = index_report(s3, sqs, bucket, keys, dlq_url)
            ingest_s = time.perf_counter() - t0
            stats = stack.sqs_stats["IndexFunction.CatalogQueue"]
            summary = {
                "uploads": N,
                "indexed": report.indexed,
                "not_images": report.not_images,
                "failed": report.failed,
                "dead_letters": report.dead_letters,
                "batches": stats.batches,
                "messages": stats.messages,
                "failed_messages": stats.failed_messages,
                "peak_concurrency": stats.peak_concurrency,
                "proxy": dict(proxy.counts),
                "ingest_s": round(ingest_s, 1),
            }
            print("BULK", json.dumps(summary))

            # every key counted once, each the right way; the dead letters name only the broken keys
            assert set(report.failed_keys) == broken, summary
            assert set(report.not_image_keys) == set(files) - images, summary
            assert report.indexed == len(images) - len(broken), summary
            got = records(s3, bucket)
            want = {k: (hashlib.md5(files[k]).hexdigest(), hashlib.sha256(files[k]).hexdigest()) for k in images}
            assert got == {k: v for k, v in want.items() if k not in broken}, summary
            messages, dead = dead_letter_keys(sqs, dlq_url)
            assert dead == broken and messages == report.dead_letters >= len(broken), summary
            # the faults happened and were survived: partial batch failures, the cap held
            assert proxy.counts["denied"] >= len(flaky) and sum(proxy.counts[f] for f in proxy.faults) > 0, summary
            assert stats.failed_messages >= len(flaky) + 5 * len(broken), summary  # maxReceiveCount 5
            assert stats.peak_concurrency == MAX_CONCURRENCY, summary
            assert stats.messages >= N + EARLY + int(DUPLICATED * N), summary

            # S3 recovers; the dead letters are moved back (start-message-move-task) and indexed
            proxy.heal()
            proxy.rate = 0.0
            assert stack.redrive(queue) == report.dead_letters
            wait_drained(sqs, queue_url, timeout=120)
            again = index_report(s3, sqs, bucket, keys, dlq_url)
            assert (again.indexed, again.not_images, again.failed) == (len(images), N - len(images), 0)
            assert queue_depth(sqs, dlq_url) == 0
            assert records(s3, bucket) == want
        finally:
            stack.stop()
