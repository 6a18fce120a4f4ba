"""Reindex throughput on the local stack: the single call (``{"action": "reindex", "queued": false}``,
the path before planned reindexes) against the planned one (``"queued": true``: slices through
ReindexQueue and the stack's SQS event source, :mod:`harmony_aws.reindex_jobs`), on the same
catalog whose records were deleted before each run.

    python -m benchmarks.reindex --images 200

The catalog: ``--images`` synthetic JPEGs of 200-700 px (benchmarks.datasets.distractor), uploaded
to a fresh local stack (IndexQueue indexes them; then the records are deleted). Both runs use the
stack's workers (``--workers``, also ReindexMaxConcurrency); prints one JSON line per run and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.datasets import _encode_jpeg, distractor
from harmony_local.importer import upload_files
from harmony_local.stack.server import LocalStack, StackConfig, find_template

SEED = 11


def drop_records(s3: Any, bucket: str) -> int:
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="index/records/"):
        for o in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
            n += 1
    return n


def run(images: int, workers: int, log: Any = print) -> dict[str, Any]:
    files = {f"catalog/bench/{i:05d}.jpg": _encode_jpeg(distractor(SEED, i), 85) for i in range(images)}
    with tempfile.TemporaryDirectory(prefix="harmony-reindex-bench-") as tmp:
        cfg = StackConfig(
            template=find_template(),
            workdir=Path(tmp),
            bucket="harmony-reindex-bench",
            max_concurrency=workers,
            parameter_overrides={"ReindexMaxConcurrency": str(workers)},
        )
        stack = LocalStack(cfg, echo=lambda _m: None).start()
        try:
            s3, bucket = stack.client(), cfg.bucket
            upload_files(s3, bucket, files)
            stack.wait_idle(1800)
            out: dict[str, Any] = {"images": images, "workers": workers}

            drop_records(s3, bucket)
            t0 = time.perf_counter()
            inv = stack.invoke("IndexFunction", {"action": "reindex", "queued": False})
            single_s = time.perf_counter() - t0
            assert inv.ok and inv.result["reindexed"] == {"indexed": images}, inv
            out["single_call"] = {"s": round(single_s, 2), "images_per_s": round(images / single_s, 1)}
            log(json.dumps({"run": "single_call", **out["single_call"]}))

            drop_records(s3, bucket)
            t0 = time.perf_counter()
            inv = stack.invoke("IndexFunction", {"action": "reindex", "queued": True})
            assert inv.ok and inv.result["queued"], inv
            job = inv.result["id"]
            while True:
                st = stack.invoke("IndexFunction", {"action": "reindex_status", "id": job}).result
                if st["state"] in ("done", "failed"):
                    break
                time.sleep(0.05)
            planned_s = time.perf_counter() - t0
            assert st["counts"] == {"indexed": images}, st
            out["planned"] = {
                "s": round(planned_s, 2),
                "images_per_s": round(images / planned_s, 1),
                "slices": st["slices"],
            }
            log(json.dumps({"run": "planned", **out["planned"]}))
            out["planned_vs_single"] = round(single_s / planned_s, 2)
            return out
        finally:
            stack.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2, help="stack workers per function (and ReindexMaxConcurrency)")
    args = ap.parse_args(argv)
    out = run(args.images, args.workers, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
