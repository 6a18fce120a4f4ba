"""Scale (issue 11): indexing, compaction, cold start from S3 and sharded queries, side by side
with the per-record design, on an S3 served by moto's HTTP server.

    python -m benchmarks.scale [--images 10000] [--shards 4] [--queries 60] [--out FILE.json]
    python -m benchmarks.scale --catalog DIR --queries-dir DIR --shards N --out FILE.json

Without ``--catalog`` the catalog is the benchmark's package set (benchmarks/datasets.py: real
photos plus generated distractors) and its queries. Steps, all through the real adapters:

1. upload the catalog and index it (``RecordWriter.reconcile`` per key, 8 threads): images/s;
2. **per-record cold start** (the design before segments): a fresh ``IndexReader`` lists the
   records and GETs each one;
3. compact into ``--shards`` shards (``Compactor``): images/s;
4. **segment cold start**, per shard: a fresh reader with an empty segment cache (manifest,
   segments, folded-record lists, then the record listing);
5. queries: the per-record (unsharded) index's ``default`` top-5 against the shards' searched in
   parallel (one thread per shard) and merged: p50/p99 of the fan-out and how often the merged
   top-5 (and top-1) is the unsharded one. Each shard shortlists and verifies its own
   candidates, so shards verify more candidates in all than one index does: below the first
   place (the copy, when there is one) the merged list can differ, with higher scores.

Memory per image is the process RSS growth over the cold start divided by the images (both
designs measured in their own child process, so that one does not inflate the other).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "harmony-scale"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def catalog_and_queries(args: argparse.Namespace) -> tuple[list[tuple[str, Path]], list[Path]]:
    if args.catalog:
        cat = [(str(p.relative_to(args.catalog)), p) for p in _files(Path(args.catalog))][: args.images or None]
        queries = _files(Path(args.queries_dir))[: args.queries]
        return cat, queries
    from benchmarks.datasets import build, evenly_spaced

    originals = len(build(distractors=0).originals)
    bench = build(distractors=max(0, args.images - originals))
    cat = bench.catalog(args.images)
    names = evenly_spaced(sorted(bench.queries), args.queries)
    return cat, [bench.query_path(q) for q in names]


# --------------------------------------------------------------------------- child: one cold start
def child(mode: str, shards: int, cache: str) -> dict[str, Any]:
    from harmony_aws.reader import IndexReader
    from harmony_aws.s3 import Bucket
    from harmony_aws.urls import ResultUrls

    b = Bucket(BUCKET)
    before = rss_mb()
    t0 = time.perf_counter()
    readers = []
    if mode == "records":
        readers.append(IndexReader(b, ResultUrls(b, presign_seconds=900), ttl=1e9, cache_dir=cache))
    else:
        for i in range(shards):
            shard = (i, shards) if shards > 1 else None
            readers.append(IndexReader(b, ResultUrls(b, presign_seconds=900), ttl=1e9, cache_dir=cache, shard=shard))
    per_shard = []
    for r in readers:
        s0 = time.perf_counter()
        index = r.index()
        index.packed()
        per_shard.append({"seconds": round(time.perf_counter() - s0, 3), "images": len(index), **r.last_refresh})
    seconds = time.perf_counter() - t0
    images = sum(p["images"] for p in per_shard)
    return {
        "mode": mode,
        "seconds": round(seconds, 3),
        "images": images,
        "rss_mb": round(rss_mb() - before, 1),
        "rss_bytes_per_image": round((rss_mb() - before) * 1024 * 1024 / max(1, images)),
        "shards": per_shard,
    }


def _cold(mode: str, shards: int, cache: str) -> dict[str, Any]:
    out = subprocess.run(  # noqa: S603 - this module, with arguments it made
        [sys.executable, "-m", "benchmarks.scale", "--child", mode, "--shards", str(shards), "--cache", cache],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict[str, Any]:
    from moto.server import ThreadedMotoServer

    from harmony_aws.reader import IndexReader
    from harmony_aws.records import RecordWriter
    from harmony_aws.s3 import Bucket, s3_client
    from harmony_aws.segments import Compactor
    from harmony_aws.urls import ResultUrls
    from harmony_image import DEFAULT_MAX_PIXELS, SearchParams, extract_features, merge_results

    catalog, queries = catalog_and_queries(args)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL_S3=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",  # noqa: S106 - moto's fixed test credentials
        AWS_DEFAULT_REGION="us-east-1",
    )
    client = s3_client()
    client.create_bucket(Bucket=BUCKET)
    bucket = Bucket(BUCKET, client)
    writer = RecordWriter(bucket, max_pixels=DEFAULT_MAX_PIXELS, max_image_bytes=20 * 1024 * 1024)
    log = args.log

    t0 = time.perf_counter()

    def upload_and_index(item: tuple[str, Path]) -> str:
        key = "catalog/" + item[0]
        client.put_object(Bucket=BUCKET, Key=key, Body=item[1].read_bytes())
        return writer.reconcile(key).action

    with ThreadPoolExecutor(max_workers=8) as pool:
        actions = list(pool.map(upload_and_index, catalog))
    index_s = time.perf_counter() - t0
    log(f"[scale] indexed {len(catalog)} images in {index_s:.0f} s ({actions.count('indexed')} indexed)")

    records_cold = _cold("records", 1, tempfile.mkdtemp(prefix="harmony-scale-"))
    log(f"[scale] per-record cold start: {records_cold['seconds']} s")
    t0 = time.perf_counter()
    compaction = Compactor(bucket, shards=args.shards).compact()
    compact_s = time.perf_counter() - t0
    log(f"[scale] compacted into {compaction.segments} segments in {compact_s:.1f} s")
    segments_cold = _cold("segments", args.shards, tempfile.mkdtemp(prefix="harmony-scale-"))
    log(f"[scale] segment cold start ({args.shards} shards): {segments_cold['seconds']} s")
    seg_bytes = sum(o["Size"] for o in bucket.objects("index/segments/") if o["Key"].endswith(".seg"))
    rec_bytes = sum(o["Size"] for o in bucket.objects("index/records/"))

    cache = tempfile.mkdtemp(prefix="harmony-scale-")
    unsharded = IndexReader(bucket, ResultUrls(bucket, presign_seconds=900), ttl=1e9, cache_dir=cache + "/none")
    whole = unsharded.index()
    shard_readers = [
        IndexReader(bucket, ResultUrls(bucket, presign_seconds=900), ttl=1e9, cache_dir=cache, shard=(i, args.shards))
        for i in range(args.shards)
    ]
    shard_indexes = [r.index() for r in shard_readers]
    params = SearchParams(k=5)
    same = same_top1 = 0
    recall = []
    fan_ms, whole_ms = [], []
    with ThreadPoolExecutor(max_workers=args.shards) as pool:
        for q in queries:
            feats = extract_features(q.read_bytes())
            s0 = time.perf_counter()
            exhaustive = whole.search(feats, params)
            whole_ms.append((time.perf_counter() - s0) * 1000)
            s0 = time.perf_counter()
            merged = merge_results(list(pool.map(lambda ix, f=feats: ix.search(f, params), shard_indexes)), k=params.k)
            fan_ms.append((time.perf_counter() - s0) * 1000)
            want = [r.key for r in exhaustive]
            got = [r.key for r in merged]
            same += got == want
            same_top1 += got[:1] == want[:1]
            recall.append(len(set(got) & set(want)) / max(1, len(want)))
    p = np.percentile
    return {
        "images": len(catalog),
        "shards": args.shards,
        "queries": len(queries),
        "cpu": _cpu(),
        "index_images_per_s": round(len(catalog) / index_s, 1),
        "compaction_images_per_s": round(len(catalog) / compact_s, 1),
        "s3_bytes_per_image": {"records": round(rec_bytes / len(catalog)), "segments": round(seg_bytes / len(catalog))},
        "memory_bytes_per_image": segments_cold["rss_bytes_per_image"],
        "memory_bytes_per_image_records": records_cold["rss_bytes_per_image"],
        "cold_start_s": segments_cold["seconds"],
        "cold_start_s_per_shard": [s["seconds"] for s in segments_cold["shards"]],
        "cold_start_s_records": records_cold["seconds"],
        "p50_ms": round(float(p(fan_ms, 50)), 1),
        "p99_ms": round(float(p(fan_ms, 99)), 1),
        "p50_ms_unsharded": round(float(p(whole_ms, 50)), 1),
        "p99_ms_unsharded": round(float(p(whole_ms, 99)), 1),
        "recall_vs_exhaustive": round(float(np.mean(recall)), 4),
        "same_top5_as_unsharded": round(same / max(1, len(queries)), 4),
        "same_top1_as_unsharded": round(same_top1 / max(1, len(queries)), 4),
    }


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000, help="catalog size (package set; or a cap on --catalog)")
    ap.add_argument("--catalog", type=Path, help="a folder of catalog images instead of the package set")
    ap.add_argument("--queries-dir", type=Path, help="with --catalog: a folder of query images")
    ap.add_argument("--queries", type=int, default=60, help="queries run (evenly spread over the set)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument("--child", choices=["records", "segments"], help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.shards, args.cache)))
        return
    if args.catalog and not args.queries_dir:
        ap.error("--catalog needs --queries-dir")
    args.log = lambda msg: print(msg, file=sys.stderr, flush=True)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
