"""Reindex throughput on the local stack: the single call (``{"action": "reindex", "queued": false}``,
the path before planned reindexes) against the planned one (``"queued": true``: slices through
ReindexQueue and the stack's SQS event source, :mod:`harmony_aws.reindex_jobs`), on the same
catalog whose records were deleted before each run. With ``--compact``, compaction instead:
``{"action": "compact", "queued": false}`` against a planned one (one item per segment to fold
through the same queue, :mod:`harmony_aws.compact_jobs`), the manifest and segments deleted
before each run (a full compaction each time), ``--shards`` shards.

    python -m benchmarks.reindex --images 200
    python -m benchmarks.reindex --images 2000 --compact --shards 4

The catalog: ``--images`` synthetic JPEGs of 200-700 px (benchmarks.datasets.distractor), uploaded
to a fresh local stack (IndexQueue indexes them; then the records are deleted before each run).
Both use the stack's workers (``--workers``, also ReindexMaxConcurrency); ``--repeat`` runs of
each, alternating; prints one JSON line per run on stderr, then the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.datasets import _encode_jpeg, distractor
from harmony_aws.compact_jobs import COMPACT_PREFIX
from harmony_aws.layout import SEGMENTS_MANIFEST_KEY, SEGMENTS_PREFIX
from harmony_aws.reindex_jobs import REINDEX_PREFIX
from harmony_local.importer import upload_files
from harmony_local.stack.server import LocalStack, StackConfig, find_template

SEED = 11


def drop_records(s3: Any, bucket: str, prefix: str = "index/records/") -> int:
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
            n += 1
    return n


def single_call(stack: Any, images: int) -> float:
    """Seconds of one ``{"action": "reindex", "queued": false}`` call."""
    t0 = time.perf_counter()
    inv = stack.invoke("IndexFunction", {"action": "reindex", "queued": False})
    seconds = time.perf_counter() - t0
    assert inv.ok and inv.result["reindexed"] == {"indexed": images}, inv
    return seconds


def wait_for(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    """The JSON at ``key`` once it exists (S3 HEADs, not status calls, which would wait for the
    function's workers)."""
    while True:
        try:
            s3.head_object(Bucket=bucket, Key=key)
            break
        except s3.exceptions.ClientError:
            time.sleep(0.05)
    return dict(json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def drop_segments(s3: Any, bucket: str) -> None:
    s3.delete_object(Bucket=bucket, Key=SEGMENTS_MANIFEST_KEY)
    drop_records(s3, bucket, SEGMENTS_PREFIX)


def compact_once(stack: Any, s3: Any, bucket: str, images: int, *, queued: bool) -> tuple[float, int]:
    """Seconds of a full compaction, in one call or planned (until its result is in the
    bucket), and the segments written."""
    t0 = time.perf_counter()
    inv = stack.invoke("IndexFunction", {"action": "compact", "queued": queued})
    assert inv.ok, inv
    if not queued:
        seconds = time.perf_counter() - t0
        assert inv.result["won"] and inv.result["records"] == images, inv.result
        return seconds, int(inv.result["written"])
    assert inv.result["planned"], inv.result
    result = wait_for(s3, bucket, f"{COMPACT_PREFIX}{inv.result['id']}.json")
    seconds = time.perf_counter() - t0
    assert result["won"] and result["counts"]["folded"] == images, result
    return seconds, int(result["written"])


def planned(stack: Any, s3: Any, bucket: str, images: int) -> tuple[float, int]:
    """Seconds from ``{"action": "reindex", "queued": true}`` until its summary is in the bucket
    (watched with S3 HEADs, not with status calls, which would wait for the function's workers),
    and the slices."""
    t0 = time.perf_counter()
    inv = stack.invoke("IndexFunction", {"action": "reindex", "queued": True})
    assert inv.ok and inv.result["queued"], inv
    summary = wait_for(s3, bucket, f"{REINDEX_PREFIX}{inv.result['id']}.json")
    seconds = time.perf_counter() - t0
    assert summary["counts"] == {"indexed": images}, summary
    return seconds, int(summary["slices"])


def run(
    images: int, workers: int, repeat: int, log: Any = print, *, compact: bool = False, shards: int = 1
) -> dict[str, Any]:
    files = {f"catalog/bench/{i:05d}.jpg": _encode_jpeg(distractor(SEED, i), 85) for i in range(images)}
    with tempfile.TemporaryDirectory(prefix="harmony-reindex-bench-") as tmp:
        cfg = StackConfig(
            template=find_template(),
            workdir=Path(tmp),
            bucket="harmony-reindex-bench",
            max_concurrency=workers,
            parameter_overrides={"ReindexMaxConcurrency": str(workers), "ShardIds": ",".join(map(str, range(shards)))},
        )
        stack = LocalStack(cfg, echo=lambda _m: None).start()
        try:
            s3, bucket = stack.client(), cfg.bucket
            upload_files(s3, bucket, files)
            stack.wait_idle(1800)
            times: dict[str, list[float]] = {"single_call": [], "planned": []}
            slices = 0
            for r in range(repeat):  # alternate which goes first: the machine's load drifts
                for kind in ("single_call", "planned") if r % 2 == 0 else ("planned", "single_call"):
                    if compact:
                        drop_segments(s3, bucket)
                        seconds, slices = compact_once(stack, s3, bucket, images, queued=kind == "planned")
                        times[kind].append(seconds)
                        log(
                            json.dumps(
                                {"run": kind, "s": round(seconds, 2), "images_per_s": round(images / seconds, 1)}
                            )
                        )
                        continue
                    drop_records(s3, bucket)
                    if kind == "single_call":
                        seconds = single_call(stack, images)
                    else:
                        seconds, slices = planned(stack, s3, bucket, images)
                    times[kind].append(seconds)
                    log(json.dumps({"run": kind, "s": round(seconds, 2), "images_per_s": round(images / seconds, 1)}))
            out: dict[str, Any] = {"images": images, "workers": workers, "repeat": repeat}
            out["what"] = "compact" if compact else "reindex"
            out["segments" if compact else "slices"] = slices
            if compact:
                out["shards"] = shards
            for kind, ts in times.items():
                med = statistics.median(ts)
                out[kind] = {"median_s": round(med, 2), "images_per_s": round(images / med, 1)}
            out["planned_vs_single"] = round(
                statistics.median(times["single_call"]) / statistics.median(times["planned"]), 2
            )
            return out
        finally:
            stack.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2, help="stack workers per function (and ReindexMaxConcurrency)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, alternating; medians reported")
    ap.add_argument("--compact", action="store_true", help="compaction (one call vs planned), not reindex")
    ap.add_argument("--shards", type=int, default=1, help="the stack's shards (ShardIds 0..n-1; --compact)")
    args = ap.parse_args(argv)
    out = run(
        args.images,
        args.workers,
        args.repeat,
        log=lambda m: print(m, file=sys.stderr),
        compact=args.compact,
        shards=args.shards,
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
