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
   segments, folded-record lists, then the change journal since the manifest's cursor; its LIST
   pages are counted), two ways: segments **downloaded
   whole** before use, and opened as readers do (one GET per segment of its head, the header and
   shortlist tier — the bytes fetched per image are counted —, verification rows by **ranged
   GETs**), each followed by the shard's first query (timed: on a ranged shard it pays the ranged
   GETs of its candidates' verification rows; background downloads off, so that nothing else
   competes);
4b. the **steady state**: once the ingest's changes are older than the journal cursor's margin,
   the next compaction (the schedule's: it folds nothing, moves the cursor past them and trims
   the journal), then the ranged cold start again;
5. queries: the per-record (unsharded) index's ``default`` top-5 against SearchFunction's
   fan-out over the shards (``ShardFanOut``: a shortlist round, then a verification round of the
   catalog's shortlist; each shard answered by a warm process of its own, as each ShardFunction
   is one, through ShardFunction's ``answer_shard``, JSON both ways — no network hop; moto's
   server stopped and the segment files in the page cache, which the one index shares): p50/p99
   of the fan-out, what one shard spends per query (both rounds), and how often the merged top-5
   (and top-1) is the unsharded one — by construction always, with the same scores (``top5_max_score_diff``).

Memory per image is the process RSS growth over the cold start divided by the images (each
design and way measured in its own child process, so that one does not inflate another):
``memory_bytes_per_image`` the ranged cold start's, ``..._downloaded`` that of segments
downloaded whole (as a warm reader has them), ``..._records`` the per-record design's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.memory import memory_mb
from benchmarks.runners import machine
from harmony_aws.journal import CURSOR_MARGIN_SECONDS, OVERLAP_SECONDS
from harmony_local.catalog import IMAGE_SUFFIXES

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "harmony-scale"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def catalog_and_queries(
    args: argparse.Namespace,
) -> tuple[list[tuple[str, Path]], list[Path], dict[Path, str | None]]:
    """(catalog key, file), query files, and query -> its original's catalog key where known
    (the package set; None: not in the catalog)."""
    if args.catalog:
        cat = [(str(p.relative_to(args.catalog)), p) for p in _files(Path(args.catalog))][: args.images or None]
        queries = _files(Path(args.queries_dir))[: args.queries]
        return cat, queries, {}
    from benchmarks.datasets import build, evenly_spaced

    originals = len(build(distractors=0).originals)
    bench = build(distractors=max(0, args.images - originals))
    cat = bench.catalog(args.images)
    names = evenly_spaced(sorted(bench.queries), args.queries)
    truth = {bench.query_path(q): ("catalog/" + t if t else None) for q, t in bench.truth(names).items()}
    return cat, [bench.query_path(q) for q in names], truth


# --------------------------------------------------------------------------- child: one cold start
def child(mode: str, shards: int, cache: str, query: str) -> dict[str, Any]:
    """A cold start per shard (``mode``: records, segments downloaded whole, or ranged), each
    followed by that shard's first ``default`` query; RSS growth over the cold starts."""
    from harmony_aws.reader import IndexReader
    from harmony_aws.s3 import Bucket
    from harmony_aws.urls import ResultUrls
    from harmony_image import SearchParams, extract_features

    b = Bucket(BUCKET)
    fetched = [0, 0]  # bytes and requests of ranged GETs
    read_range, read = b.read_range, b.read

    def counting(key: str, start: int, stop: int, **kw: Any) -> bytes:
        fetched[0] += stop - start
        fetched[1] += 1
        return read_range(key, start, stop, **kw)

    def counting_heads(key: str, **kw: Any) -> tuple[bytes, Any]:
        data, head = read(key, **kw)
        if key.endswith(".head"):  # a segment's header and shortlist tier
            fetched[0] += len(data)
            fetched[1] += 1
        return data, head

    b.read_range = counting  # type: ignore[method-assign]
    b.read = counting_heads  # type: ignore[method-assign]
    lists = [0]  # ListObjectsV2 pages (one call each)

    def listed(**_: Any) -> None:
        lists[0] += 1

    b.client.meta.events.register("before-parameter-build.s3.ListObjectsV2", listed)
    features = extract_features(Path(query).read_bytes())
    before = memory_mb()["VmRSS"]
    t0 = time.perf_counter()
    readers = []
    how = {"ranged": mode == "ranged", "background": False}
    if mode == "records":
        readers.append(IndexReader(b, ResultUrls(b, presign_seconds=900), ttl=1e9, cache_dir=cache))
    else:
        for i in range(shards):
            shard = (i, shards) if shards > 1 else None
            urls = ResultUrls(b, presign_seconds=900)
            readers.append(IndexReader(b, urls, ttl=1e9, cache_dir=f"{cache}/shard-{i}", shard=shard, **how))
    per_shard = []
    for r in readers:
        s0, f0, l0 = time.perf_counter(), fetched[0], lists[0]
        index = r.index()
        index.packed()
        seconds, f1 = time.perf_counter() - s0, fetched[0]
        per_shard.append(
            {"seconds": round(seconds, 3), "images": len(index), "fetched_bytes": f1 - f0, "list_pages": lists[0] - l0}
        )
        per_shard[-1].update(r.last_refresh)
    seconds = time.perf_counter() - t0
    grown = memory_mb()["VmRSS"] - before
    for r, p in zip(readers, per_shard, strict=True):  # each shard's first query, after every cold start
        index, (f0, g0) = r.index(), fetched
        q0 = time.perf_counter()
        index.search(features, SearchParams(k=5))
        p["first_query_ms"] = round((time.perf_counter() - q0) * 1000, 1)
        p["first_query_fetched_bytes"], p["first_query_gets"] = fetched[0] - f0, fetched[1] - g0
        p["first_query_rows"] = len(r.segments.rows)  # images whose verification rows it read
    images = sum(p["images"] for p in per_shard)
    # after the first queries: with what they derive (region thumbnails, vote keys) and the
    # verification rows they read (a bounded cache)
    serving = memory_mb()["VmRSS"] - before
    tier = sum(r.index().packed().shortlist_nbytes for r in readers)
    return {
        "mode": mode,
        "seconds": round(seconds, 3),
        "images": images,
        "rss_mb": round(grown, 1),
        "rss_bytes_per_image": round(grown * 1024 * 1024 / max(1, images)),
        "rss_bytes_per_image_serving": round(serving * 1024 * 1024 / max(1, images)),
        "shortlist_tier_bytes_per_image": round(tier / max(1, images)),
        "shards": per_shard,
    }


def _cold(mode: str, shards: int, cache: str, query: Path) -> dict[str, Any]:
    out = subprocess.run(  # noqa: S603 - this module, with arguments it made
        [
            *(sys.executable, "-m", "benchmarks.scale", "--child", mode, "--shards", str(shards)),
            *("--cache", cache, "--query", str(query)),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- the run
def _shard_worker(conn: Any, shard: tuple[int, int], cache: str) -> None:
    """A warm ShardFunction: its shard's reader, loaded from S3 (its segment files in ``cache``),
    then each request answered as ShardFunction answers it (``answer_shard``), JSON both ways:
    payload bytes in; the answer's bytes, the milliseconds it took and the pages it read from disk
    (major page faults) out. None ends it."""
    from harmony_aws.fanout import answer_shard
    from harmony_aws.reader import IndexReader
    from harmony_aws.s3 import Bucket
    from harmony_aws.urls import ResultUrls

    bucket = Bucket(BUCKET)
    reader = IndexReader(
        bucket, ResultUrls(bucket, presign_seconds=900), ttl=1e9, cache_dir=cache, shard=shard, ranged=False
    )
    reader.index()
    conn.send("ready")
    while (payload := conn.recv()) is not None:
        f0, s0 = _major_faults(), time.perf_counter()
        try:
            body, error = json.dumps(answer_shard(json.loads(payload), reader)).encode(), None
        except Exception as exc:  # noqa: BLE001 - answered as Lambda answers a function's error
            body, error = json.dumps({"errorMessage": f"{type(exc).__name__}: {exc}"}).encode(), "Unhandled"
        conn.send((body, error, (time.perf_counter() - s0) * 1000, _major_faults() - f0))


class _ShardWorkers:
    """One process per shard (:func:`_shard_worker`), as each ShardFunction is a process of its own
    on Lambda (its own interpreter lock); started, and their readers loaded, before the clock
    starts. :meth:`client` answers SearchFunction's ``ShardFanOut`` through them."""

    def __init__(self, caches: list[str]) -> None:
        shards = len(caches)
        context = multiprocessing.get_context("spawn")  # not a fork of this process's threads
        self._conns: dict[str, Any] = {}
        self._procs: list[Any] = []
        for i in range(shards):
            mine, theirs = context.Pipe()
            proc = context.Process(target=_shard_worker, args=(theirs, (i, shards), caches[i]), daemon=True)
            proc.start()
            self._conns[f"Shard{i}"], self._procs = mine, [*self._procs, proc]
        self._locks = {name: threading.Lock() for name in self._conns}
        for name, conn in self._conns.items():
            if conn.recv() != "ready":
                raise RuntimeError(f"{name} did not load")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._conns)

    def ask(self, name: str, payload: bytes) -> tuple[bytes, str | None, float, int]:
        """The answer of shard ``name`` to ``payload``: its bytes, its function error (or None), the
        milliseconds it took in the shard's process and the pages it read from disk."""
        with self._locks[name]:
            self._conns[name].send(payload)
            answer: tuple[bytes, str | None, float, int] = self._conns[name].recv()
            return answer

    def client(self, *, one_at_a_time: bool = False) -> _WorkersClient:
        return _WorkersClient(self, one_at_a_time=one_at_a_time)

    def close(self) -> None:
        for conn in self._conns.values():
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


class _WorkersClient:
    """boto3's Lambda ``invoke``, answered by :class:`_ShardWorkers`; the milliseconds each shard
    spent and the pages it read from disk since :meth:`clear`. ``one_at_a_time``: each answer has
    the machine's cores to itself, as a ShardFunction has its own on Lambda (else the shards
    answer at once and share them)."""

    def __init__(self, workers: _ShardWorkers, *, one_at_a_time: bool) -> None:
        self.workers = workers
        self.spent_ms: dict[str, float] = {}
        self.faults = 0
        self._lock = threading.Lock()
        self._turn: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if one_at_a_time else contextlib.nullcontext()
        )

    def clear(self) -> None:
        with self._lock:
            self.spent_ms, self.faults = {}, 0

    def invoke(self, *, FunctionName: str, Payload: bytes) -> dict[str, Any]:  # noqa: N803 - boto3's names
        with self._turn:
            body, error, spent_ms, faults = self.workers.ask(FunctionName, Payload)
        with self._lock:
            self.spent_ms[FunctionName] = self.spent_ms.get(FunctionName, 0.0) + spent_ms
            self.faults += faults
        answer: dict[str, Any] = {"StatusCode": 200, "Payload": io.BytesIO(body)}
        if error:
            answer["FunctionError"] = error
        return answer


class S3Server:
    """moto's S3 server in a process of its own (as S3 is not in its clients' process: it gets
    its own interpreter lock), on a free local port: :attr:`url`, and :meth:`stop`."""

    def __init__(self) -> None:
        from harmony_local.stack.server import free_port

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._proc = subprocess.Popen(  # noqa: S603 - moto's server module, with a port chosen here
            [sys.executable, "-m", "moto.server", "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # it logs every request
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto's server did not start on {self.url}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server (and give back the memory it holds every object in); again: nothing."""
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=30)


@contextlib.contextmanager
def s3_server_process() -> Iterator[S3Server]:
    """An :class:`S3Server`, stopped on exit."""
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


def _major_faults() -> int:
    """This process's major page faults so far: pages read from disk, here the verification rows
    of memory-mapped segments that were not in the page cache."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_majflt


def _available_gb() -> float | None:
    """The kernel's estimate of memory available without swapping (MemAvailable), GB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return round(int(line.split()[1]) / 1e6, 1)
    except OSError:
        pass
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark; its segment caches (up to twice the segments' bytes) are removed at the end."""
    with s3_server_process() as server, tempfile.TemporaryDirectory(prefix="harmony-scale-") as work:
        return _run(args, server, Path(work))


def _in_page_cache(folder: Path) -> float:
    """Read every segment file under ``folder`` through (into the page cache, as a warm shard has
    them once its read-ahead is done: :meth:`harmony_aws.segments.SegmentCache.read_ahead`); GB read."""
    read = 0
    for path in sorted(folder.rglob("*.seg")):
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(16 * 1024 * 1024):
                read += len(chunk)
    return read / 1e9


def _queries(queries: list[Path], truth: dict[Path, str | None], whole: Any, workers: _ShardWorkers) -> dict[str, Any]:
    """Each query's ``default`` top-5 from one index (``whole``, in this process), from
    SearchFunction's fan-out over the shards' ``workers`` answering at once, and from the same with
    one shard answering at a time: times, the pages each read from disk, and how the answers agree."""
    from harmony_aws.fanout import ShardFanOut
    from harmony_image import SearchParams, extract_features

    fan_client, alone_client = workers.client(), workers.client(one_at_a_time=True)
    fan, alone = ShardFanOut(fan_client, workers.names), ShardFanOut(alone_client, workers.names)
    params = SearchParams(k=5)
    warm_up = extract_features(queries[0].read_bytes())
    whole.search(warm_up, params)
    fan.search(warm_up, params)
    alone.search(warm_up, params)
    same = same_top1 = 0
    found = {"one index": 0, "shards": 0}
    copies = sum(1 for q in queries if truth.get(q))
    recall = []
    fan_ms: list[float] = []
    whole_ms: list[float] = []
    shard_ms: list[float] = []
    alone_ms: list[float] = []
    score_diff = 0.0
    faults: dict[str, list[int]] = {"one index": [], "fan-out": [], "shard alone": []}
    available_gb = _available_gb()
    for q in queries:
        feats = extract_features(q.read_bytes())
        f0, s0 = _major_faults(), time.perf_counter()
        exhaustive = whole.search(feats, params)
        whole_ms.append((time.perf_counter() - s0) * 1000)
        faults["one index"].append(_major_faults() - f0)
        fan_client.clear()
        s0 = time.perf_counter()
        merged, _, _ = fan.search(feats, params)
        fan_ms.append((time.perf_counter() - s0) * 1000)
        faults["fan-out"].append(fan_client.faults)
        shard_ms.extend(fan_client.spent_ms.values())  # what each ShardFunction spent on this query
        alone_client.clear()
        alone.search(feats, params)
        faults["shard alone"].append(alone_client.faults)
        alone_ms.extend(alone_client.spent_ms.values())
        want = [r.key for r in exhaustive]
        got = [r.key for r in merged]
        same += got == want
        same_top1 += got[:1] == want[:1]
        if got == want:
            score_diff = max([score_diff, *(abs(a.score - b.score) for a, b in zip(merged, exhaustive, strict=True))])
        if truth.get(q):
            found["one index"] += want[:1] == [truth[q]]
            found["shards"] += got[:1] == [truth[q]]
        recall.append(len(set(got) & set(want)) / max(1, len(want)))
    p = np.percentile
    return {
        "p50_ms": round(float(p(fan_ms, 50)), 1),
        "p99_ms": round(float(p(fan_ms, 99)), 1),
        "p50_ms_one_shard": round(float(p(shard_ms, 50)), 1),
        "p99_ms_one_shard": round(float(p(shard_ms, 99)), 1),
        "major_faults_per_query": {name: int(np.median(values)) for name, values in faults.items()},
        "memory_available_gb_at_queries": available_gb,
        "p50_ms_shard_alone": round(float(p(alone_ms, 50)), 1),
        "p99_ms_shard_alone": round(float(p(alone_ms, 99)), 1),
        "p50_ms_unsharded": round(float(p(whole_ms, 50)), 1),
        "p99_ms_unsharded": round(float(p(whole_ms, 99)), 1),
        "recall_vs_exhaustive": round(float(np.mean(recall)), 4),
        "same_top5_as_unsharded": round(same / max(1, len(queries)), 4),
        "same_top1_as_unsharded": round(same_top1 / max(1, len(queries)), 4),
        "top5_max_score_diff": score_diff,
        "copies": copies,
        "copies_found_top1": found,
        "shard_workers": "processes",
    }


def _run(args: argparse.Namespace, server: S3Server, work: Path) -> dict[str, Any]:
    from harmony_aws.reader import IndexReader
    from harmony_aws.records import RecordWriter
    from harmony_aws.s3 import Bucket, s3_client
    from harmony_aws.segments import CompactionReport, Compactor
    from harmony_aws.urls import ResultUrls
    from harmony_image import DEFAULT_MAX_PIXELS, kernels

    catalog, queries, truth = catalog_and_queries(args)
    os.environ.update(
        AWS_ENDPOINT_URL_S3=server.url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",  # noqa: S106 - moto's fixed test credentials
        AWS_DEFAULT_REGION="us-east-1",
    )
    client = s3_client()
    client.create_bucket(Bucket=BUCKET)
    bucket = Bucket(BUCKET, client)
    writer = RecordWriter(bucket, max_pixels=DEFAULT_MAX_PIXELS, max_image_bytes=20 * 1024 * 1024, shards=args.shards)
    log = args.log

    t0 = time.perf_counter()

    def upload_and_index(item: tuple[str, Path]) -> str:
        key = "catalog/" + item[0]
        client.put_object(Bucket=BUCKET, Key=key, Body=item[1].read_bytes())
        return writer.reconcile(key).action

    with ThreadPoolExecutor(max_workers=8) as pool:
        actions = list(pool.map(upload_and_index, catalog))
    index_s = time.perf_counter() - t0
    indexed_at = time.time()  # the journal's last entry is stamped before this
    log(f"[scale] indexed {len(catalog)} images in {index_s:.0f} s ({actions.count('indexed')} indexed)")

    records_cold = None  # the per-record design: every record GET at cold start, ~180 KiB an image
    if not args.skip_records:
        records_cold = _cold("records", 1, str(work / "cold-records"), queries[0])
        log(f"[scale] per-record cold start: {records_cold['seconds']} s")

    def compact() -> tuple[CompactionReport, float]:
        """A compaction's report and seconds."""
        t0 = time.perf_counter()
        report = Compactor(bucket, shards=args.shards).compact()
        return report, time.perf_counter() - t0

    compaction, compact_s = compact()
    log(f"[scale] compacted into {compaction.segments} segments in {compact_s:.1f} s")
    segments_cold = _cold("segments", args.shards, str(work / "cold-downloaded"), queries[0])
    log(f"[scale] segment cold start, downloaded whole ({args.shards} shards): {segments_cold['seconds']} s")
    ranged_cold = _cold("ranged", args.shards, str(work / "cold-ranged"), queries[0])
    log(f"[scale] segment cold start, ranged GETs ({args.shards} shards): {ranged_cold['seconds']} s")
    settle = indexed_at + CURSOR_MARGIN_SECONDS + 1 - time.time()
    if settle > 0:
        log(f"[scale] waiting {settle:.0f} s for the ingest's changes to be older than the cursor's margin")
        time.sleep(settle)
    recompaction, recompact_s = compact()
    log(f"[scale] the next compaction: {recompaction.written} segments written, {recompact_s:.1f} s")
    steady_cold = _cold("ranged", args.shards, str(work / "cold-steady"), queries[0])
    log(f"[scale] steady-state cold start ({args.shards} shards): {steady_cold['seconds']} s")
    segment_files = [(o["Key"], o["Size"]) for o in bucket.objects("index/segments/")]  # one listing
    seg_bytes = sum(size for key, size in segment_files if key.endswith(".seg"))
    head_bytes = sum(size for key, size in segment_files if key.endswith(".head"))
    rec_bytes = sum(o["Size"] for o in bucket.objects("index/records/"))
    list_s = []  # a cold reader lists every record: the best of three listings, per page
    for _ in range(1 if args.skip_records else 3):
        l0 = time.perf_counter()
        bucket.etags("index/records/")
        list_s.append(time.perf_counter() - l0)
    list_page_ms = min(list_s) * 1000 / -(-len(catalog) // LIST_PAGE)

    # warm readers (segments downloaded whole before use, as a reader has them after a while): the
    # one index's folder, and a folder a shard holding links to its files (a reader removes the
    # files its segments do not name), so that every reader maps one copy on disk and in the page cache
    cache = work / "warm"
    unsharded = IndexReader(bucket, ResultUrls(bucket, presign_seconds=900), ttl=1e9, cache_dir=cache, ranged=False)
    whole = unsharded.index()
    caches = [work / f"warm-shard-{i}" for i in range(args.shards)]
    for folder in caches:
        folder.mkdir()
        for path in cache.glob("*.seg"):
            os.link(path, folder / path.name)
    workers = _ShardWorkers([str(folder) for folder in caches])  # each loads its shard's reader from its folder
    try:
        # Warm readers ask S3 for nothing: moto's server, which holds every object in memory (more
        # than half of this machine's at 100k), stops here, so that the segment files stay in the
        # page cache as they do in a shard's own function.
        server.stop()
        page_cache_gb = _in_page_cache(cache)
        log(f"[scale] S3 server stopped; {page_cache_gb:.1f} GB of segment files read into the page cache")
        warm = _queries(queries, truth, whole, workers)
    finally:
        workers.close()
    before: dict[str, Any] = {}  # the per-record design's figures, when measured
    if records_cold is not None:
        before = {
            "memory_bytes_per_image_records": records_cold["rss_bytes_per_image"],
            "cold_start_s_records": records_cold["seconds"],
            "cold_list_pages_records": records_cold["shards"][0]["list_pages"],
        }
    return {
        "images": len(catalog),
        "shards": args.shards,
        "queries": len(queries),
        "cpu": (host := machine())["cpu"],
        "cores": host["cores"],
        "cursor_margin_s": CURSOR_MARGIN_SECONDS,
        "index_images_per_s": round(len(catalog) / index_s, 1),
        "compaction_images_per_s": round(len(catalog) / compact_s, 1),
        "compaction_journal_skipped": compaction.journal_skipped,
        "s3_bytes_per_image": {
            "records": round(rec_bytes / len(catalog)),
            "segments": round(seg_bytes / len(catalog)),
            "heads": round(head_bytes / len(catalog)),
        },
        "memory_bytes_per_image": ranged_cold["rss_bytes_per_image"],
        "memory_bytes_per_image_downloaded": segments_cold["rss_bytes_per_image"],
        "memory_bytes_per_image_serving": ranged_cold["rss_bytes_per_image_serving"],
        "shortlist_tier_bytes_per_image": ranged_cold["shortlist_tier_bytes_per_image"],
        "cold_start_s": ranged_cold["seconds"],
        "cold_start_s_per_shard": [s["seconds"] for s in ranged_cold["shards"]],
        "cold_start_s_downloaded": segments_cold["seconds"],
        "cold_start_s_per_shard_downloaded": [s["seconds"] for s in segments_cold["shards"]],
        "shortlist_bytes_per_image_fetched": round(
            sum(s["fetched_bytes"] for s in ranged_cold["shards"]) / len(catalog)
        ),
        "get_mb_s_measured": round(seg_bytes / 1e6 / max(1e-9, segments_cold["seconds"]), 1),
        "first_query_ms_cold": [s["first_query_ms"] for s in ranged_cold["shards"]],
        "first_query_bytes_cold": [s["first_query_fetched_bytes"] for s in ranged_cold["shards"]],
        "first_query_gets_cold": [s["first_query_gets"] for s in ranged_cold["shards"]],
        "first_query_rows_cold": [s["first_query_rows"] for s in ranged_cold["shards"]],
        "first_query_ms_downloaded": [s["first_query_ms"] for s in segments_cold["shards"]],
        "list_page_ms_measured": round(list_page_ms, 1),
        "cold_list_pages_per_shard": [s["list_pages"] for s in ranged_cold["shards"]],
        "cold_journal_entries_per_shard": [s.get("journal_entries") for s in ranged_cold["shards"]],
        "cold_listing_ms_per_shard": [s.get("listing_ms") for s in ranged_cold["shards"]],
        "cold_segments_ms_per_shard": [s.get("segments_ms") for s in ranged_cold["shards"]],
        "cold_listing_ms_per_shard_downloaded": [s.get("listing_ms") for s in segments_cold["shards"]],
        "recompaction_s": round(recompact_s, 1),
        "recompaction_written": recompaction.written,
        "recompaction_journal_trimmed": recompaction.journal_trimmed,
        "cold_start_s_per_shard_steady": [s["seconds"] for s in steady_cold["shards"]],
        "cold_list_pages_per_shard_steady": [s["list_pages"] for s in steady_cold["shards"]],
        "cold_journal_entries_per_shard_steady": [s.get("journal_entries") for s in steady_cold["shards"]],
        "cold_listing_ms_per_shard_steady": [s.get("listing_ms") for s in steady_cold["shards"]],
        "cold_segments_ms_per_shard_steady": [s.get("segments_ms") for s in steady_cold["shards"]],
        **before,
        **warm,
        "segment_files_gb_in_page_cache": round(page_cache_gb, 2),
        "kernel": kernels.IMPLEMENTATION,
        "s3_server": "moto, its own process",
    }


# --------------------------------------------------------------------------- the model (docs/SCALE.md)
# Prices (us-east-1, on-demand, x86) as published on the AWS pricing pages; read 2025-06 (this
# machine has no internet to read them again). Change them here and rerun to update the model.
PRICES_READ = "2025-06"
LAMBDA_GB_S = 0.0000166667  # $ per GB-second
LAMBDA_REQUEST = 0.20 / 1e6  # $ per invocation
APIGW_REQUEST = 3.50 / 1e6  # $ per REST API request (first 333M a month)
S3_GB_MONTH = 0.023
S3_GET = 0.0004 / 1000
S3_PUT = 0.005 / 1000
SHARD_IMAGES = 50_000  # images per shard in the model (one ShardFunction each)
SEARCH_GB, SHARD_GB = 3.008, 3.008  # the template's SearchMemorySize and ShardMemorySize defaults
INVOKE_MS = 15.0  # one synchronous Lambda invoke's own overhead inside a region (assumed)
S3_MB_S = 90.0  # one S3 GET stream's throughput from Lambda, MB/s (assumed; ~85-100 is commonly seen)
SEGMENT_STREAMS = 4  # segments downloaded at once (harmony_aws.reader.SEGMENT_WORKERS)
LIST_PAGE = 1000  # keys per ListObjectsV2 page
S3_FIRST_BYTE_MS = 30.0  # a small ranged GET's time to first byte inside a region (assumed)
RANGED_GETS_AT_ONCE = 32  # harmony_aws.segments.RANGE_WORKERS
LIST_RANGES = 32  # harmony_aws.reader.LIST_RANGES: ranges of the record listing listed at once
CHANGES_PER_HOUR = 10_000  # catalog uploads, overwrites and deletes an hour (assumed, at any catalog size)
COMPACTION_HOURS = 1.0  # the template's compaction schedule (hourly)
INDEX_TTL_S = 10.0  # the template's IndexRefreshSeconds default: a warm reader's refresh interval
ROW_RANGES = 5  # byte ranges per image's verification rows (one per array; neighbours coalesce)
DUPLICATE_SLICES_AT_ONCE = 4  # the template's DuplicatesMaxConcurrency default
FAN_OUT_ROUNDS = 2  # default scoring's invokes per shard and query (harmony_aws.fanout: shortlist, verify)
LAMBDA_MB_PER_VCPU = 1769  # Lambda gives a function one vCPU's worth of CPU time at 1,769 MB, in proportion
MEASURED_CORES = 2  # the cores a run's JSON was measured on when it does not say (this project's machines)


def shard_answer_ms(m: dict[str, Any]) -> tuple[float, float]:
    """A shard's answer, p50 and p99 ms, as one ShardFunction gives it: measured with the
    machine's cores to itself. Runs before that was measured timed only the shards answering at
    once (with one shard, the same thing)."""
    if "p50_ms_shard_alone" in m:
        return m["p50_ms_shard_alone"], m["p99_ms_shard_alone"]
    return m["p50_ms_one_shard"], m["p99_ms_one_shard"]


def _cores(m: dict[str, Any]) -> int:
    """The cores ``m`` was measured on."""
    return int(m.get("cores") or MEASURED_CORES)


def lambda_slowdown(m: dict[str, Any]) -> float:
    """How much longer a ShardFunction (SHARD_GB) takes than ``m``'s machine: the kernels' threads
    (up to 4) use every core the run had, and a function of SHARD_GB gets SHARD_GB / 1.769 GB of a
    vCPU's time (CPU-bound: the search time scales with it; never faster than measured)."""
    return max(1.0, min(4, _cores(m)) / (SHARD_GB * 1000 / LAMBDA_MB_PER_VCPU))


def measured_shard(shard: dict[str, Any] | None) -> dict[str, Any] | None:
    """``shard``'s figures when they are those of one shard of the model's SHARD_IMAGES (a
    ``--shards 1`` run, make bench-scale-50k), else None."""
    if shard is None or shard["shards"] != 1 or shard["images"] != SHARD_IMAGES:
        return None
    return shard


def model(m: dict[str, Any], images: int, *, shard: dict[str, Any] | None = None) -> dict[str, Any]:
    """1M / 10M from the measured per-shard figures: shards of SHARD_IMAGES. A shard's search time
    and memory are those measured on one shard of SHARD_IMAGES (``shard``, see
    :func:`measured_shard`) when given, and so are the throughputs of its reads; else its search
    time is linear in the images a shard holds (fitted through ``m``'s one-shard answer and
    unsharded medians). Search times are :func:`shard_answer_ms`, times :func:`lambda_slowdown`."""
    if (big := measured_shard(shard)) is not None:
        shard_p50, shard_p99 = shard_answer_ms(big)
        tail = shard_p99 / max(1e-9, shard_p50)
        memory = big["memory_bytes_per_image"]
    else:
        small, large = m["images"] / m["shards"], m["images"]
        one_p50, one_p99 = shard_answer_ms(m)
        slope = max(0.0, (m["p50_ms_unsharded"] - one_p50) / max(1.0, large - small))
        base = one_p50 - slope * small
        shard_p50 = base + slope * SHARD_IMAGES
        tail = one_p99 / max(1e-9, one_p50)
        memory = m["memory_bytes_per_image"]
    shard_p50 *= lambda_slowdown(big if big is not None else m)
    shards = -(-images // SHARD_IMAGES)
    p50 = shard_p50 + FAN_OUT_ROUNDS * INVOKE_MS  # shard_p50: both rounds of one shard
    p99 = shard_p50 * tail + FAN_OUT_ROUNDS * INVOKE_MS  # the slowest of the shards decides
    gb_s = (SEARCH_GB * p99 + shards * SHARD_GB * shard_p50) / 1000
    per_1000 = 1000 * (gb_s * LAMBDA_GB_S + (FAN_OUT_ROUNDS * shards + 1) * LAMBDA_REQUEST + APIGW_REQUEST)
    bytes_per_image = m["s3_bytes_per_image"]["records"] + m["s3_bytes_per_image"]["segments"]
    idle = images * bytes_per_image / 1e9 * S3_GB_MONTH + 730 * shards * 2 * S3_GET  # storage + hourly compaction reads
    segment_mb = SHARD_IMAGES * m["s3_bytes_per_image"]["segments"] / 1e6
    # A duplicate report queries every image once: a search without API Gateway's share.
    report_usd = images / 1000 * (per_1000 - 1000 * APIGW_REQUEST)
    report_hours = images * p50 / 1000 / DUPLICATE_SLICES_AT_ONCE / 3600
    return {
        "duplicate_report_usd": round(report_usd),
        "duplicate_report_hours": round(report_hours, 1),
        "images": images,
        "shards": shards,
        "concurrency_per_query": shards + 1,
        "shard_p50_ms": round(shard_p50),
        "p50_ms": round(p50),
        "p99_ms": round(p99),
        "usd_per_1000_queries": round(per_1000, 3),
        "usd_idle_month": round(idle, 2),
        "shard_memory_mb": round(SHARD_IMAGES * memory / 1e6),
        "shard_segments_mb": round(segment_mb),
        "shard_cold_start_s": round(segment_mb / (S3_MB_S * SEGMENT_STREAMS), 1),
        **_ranged_model(big if big is not None else m, images),
    }


def _ranged_model(m: dict[str, Any], images: int) -> dict[str, Any]:
    """A shard's cold start with ranged GETs (readers' default): its segments' header and
    shortlist tier at S3's throughput (as many streams as the whole-download model) and at the GET
    throughput measured here; and the record listing a cold reader makes (every shard's records:
    one LIST page per 1,000, in LIST_RANGES ranges listed at once, at the page time measured
    here). Empty for figures of a run before ranged GETs were measured."""
    fetched = m.get("shortlist_bytes_per_image_fetched")
    if not fetched:
        return {}
    shortlist_mb = SHARD_IMAGES * fetched / 1e6
    out = {
        "shard_shortlist_mb": round(shortlist_mb),
        "shard_cold_start_s_ranged": round(shortlist_mb / (S3_MB_S * SEGMENT_STREAMS), 1),
        "shard_cold_start_s_ranged_measured_throughput": round(shortlist_mb / m["get_mb_s_measured"], 1),
    }
    if m.get("list_page_ms_measured"):  # LIST_RANGES ranges at once, each page after page
        per_range = -(-images // LIST_RANGES)
        pages = -(-per_range // LIST_PAGE)
        out["record_listing_s"] = round(pages * m["list_page_ms_measured"] / 1000, 1)

        # with the journal: the entries since the manifest's cursor (a compaction interval and the
        # cursor's margin), page after page, of its shard's folder (a page at least); a warm
        # refresh: those since the last one (and the overlap)
        def list_pages(entries: float) -> int:
            return max(1, -(-round(entries) // LIST_PAGE))

        def seconds(n: int) -> float:
            return round(n * m["list_page_ms_measured"] / 1000, 2)

        window = CHANGES_PER_HOUR * (COMPACTION_HOURS + CURSOR_MARGIN_SECONDS / 3600)
        shards = max(1, -(-images // SHARD_IMAGES))
        per_shard, whole = list_pages(window / shards), list_pages(window)  # whole: one journal for every shard
        out["journal_pages"], out["journal_listing_s"] = per_shard, seconds(per_shard)
        out["journal_pages_unpartitioned"], out["journal_listing_s_unpartitioned"] = whole, seconds(whole)
        out["refresh_pages"] = list_pages(CHANGES_PER_HOUR / 3600 * (INDEX_TTL_S + OVERLAP_SECONDS) / shards)
    if m.get("first_query_rows_cold"):
        # the measured rows of a query; in a 50k shard (49 segments) they seldom neighbour: no coalescing
        rows = max(m["first_query_rows_cold"])
        query_bytes = rows * (m["s3_bytes_per_image"]["segments"] - fetched)
        rounds = -(-rows * ROW_RANGES // RANGED_GETS_AT_ONCE)
        transfer_ms = query_bytes / 1e6 / (S3_MB_S * SEGMENT_STREAMS) * 1000
        out["first_query_gets"] = rows * ROW_RANGES
        out["first_query_extra_ms"] = round(rounds * S3_FIRST_BYTE_MS + transfer_ms)
    return out


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _serving_rows(m: dict[str, Any]) -> list[list[str]]:
    """The memory rows after the first query (runs before issue 11's hashed votes did not record them)."""
    if "memory_bytes_per_image_serving" not in m:
        return []
    kib = 1024
    return [
        [
            "… after the first query: RSS growth (with the verification rows it read, a cache of at most "
            "128 MiB a process) / the shortlist tier's own arrays (with the region thumbnails and vote keys the "
            "first query derives)",
            f"{m['memory_bytes_per_image_serving'] / kib:.1f} / {m['shortlist_tier_bytes_per_image'] / kib:.1f} KiB",
        ]
    ]


def _cold_rows(m: dict[str, Any]) -> list[list[str]]:
    """The measured rows of the ranged cold start (none for figures of an earlier run)."""
    if "cold_start_s_downloaded" not in m:
        return []
    kib = 1024
    return [
        [
            "… of which segments: ranged GETs (what readers do) / downloaded whole",
            "",
            f"shortlist tier only, {m['shortlist_bytes_per_image_fetched'] / kib:.1f} KiB per image fetched / "
            f"{m['cold_start_s_downloaded']:.1f} s all shards, "
            f"{max(m['cold_start_s_per_shard_downloaded']):.1f} s the slowest ({m['get_mb_s_measured']:.0f} MB/s)",
        ],
        [
            "a cold shard's first query: ranged / downloaded whole",
            "",
            f"{max(m['first_query_ms_cold']):.0f} ms the slowest shard (its candidates' verification rows: "
            f"{max(m['first_query_rows_cold'])} images, {max(m['first_query_gets_cold'])} ranged GETs, "
            f"{max(m['first_query_bytes_cold']) / 1e6:.1f} MB; moto reads the whole object for each) / "
            f"{max(m['first_query_ms_downloaded']):.0f} ms",
        ],
    ]


def _ranged_rows(m: dict[str, Any], big: list[dict[str, Any]]) -> list[list[str]]:
    if "shard_shortlist_mb" not in big[0]:
        return []
    rows = [
        ["a shard's shortlist tiers (read at cold start)", *(f"{r['shard_shortlist_mb']:,} MB" for r in big)],
        [
            f"a shard's cold start, ranged GETs ({S3_MB_S:.0f} MB/s x {SEGMENT_STREAMS} GETs)",
            *(f"{r['shard_cold_start_s_ranged']} s" for r in big),
        ],
        [
            f"… at the download throughput a reader got here ({m['get_mb_s_measured']:.0f} MB/s, moto)",
            *(f"{r['shard_cold_start_s_ranged_measured_throughput']} s" for r in big),
        ],
    ]
    if "first_query_gets" in big[0]:
        rows.append(
            [
                f"a cold shard's first query: + ranged GETs of its rows ({RANGED_GETS_AT_ONCE} at once, "
                f"{S3_FIRST_BYTE_MS:.0f} ms to first byte assumed)",
                *(f"+{r['first_query_extra_ms']} ms ({r['first_query_gets']} GETs)" for r in big),
            ]
        )
    if "journal_listing_s" in big[0]:
        rows.append(
            [
                f"+ a cold shard's change journal since the manifest's cursor: its shard's folder "
                f"({CHANGES_PER_HOUR:,} changes an hour assumed, compacted every {COMPACTION_HOURS:g} h, cursor "
                f"{CURSOR_MARGIN_SECONDS // 60} min before; {LIST_PAGE:,} entries a page, "
                f"{m['list_page_ms_measured']:.0f} ms a page measured here; was: one journal of every shard's "
                f"changes, and before it the listing of every record in {LIST_RANGES} ranges at once)",
                *(
                    f"{r['journal_listing_s']} s ({r['journal_pages']} page{'s' if r['journal_pages'] > 1 else ''}; "
                    f"was {r['journal_listing_s_unpartitioned']} s, {r['record_listing_s']} s)"
                    for r in big
                ),
            ]
        )
        rows.append(
            [
                f"a warm reader's refresh (every {INDEX_TTL_S:g} s): HEAD of the manifest + LIST of the journal",
                *(f"{r['refresh_pages']} page" + ("s" if r["refresh_pages"] > 1 else "") for r in big),
            ]
        )
    elif "record_listing_s" in big[0]:
        rows.append(
            [
                f"+ a cold reader's listing of every record ({LIST_RANGES} ranges at once, {LIST_PAGE:,} "
                f"keys a page, {m['list_page_ms_measured']:.0f} ms a page measured here)",
                *(f"{r['record_listing_s']} s" for r in big),
            ]
        )
    return rows


def _journal_measured(m: dict[str, Any]) -> str:
    """The LIST pages the cold readers made in this run (none for figures of an earlier run)."""
    if not m.get("cold_list_pages_per_shard"):
        return ""
    entries = [e for e in m["cold_journal_entries_per_shard"] if e is not None]
    return (
        f" Measured here: {max(m['cold_list_pages_per_shard'])} LIST pages the slowest shard"
        + (f" ({max(entries):,} entries)" if entries else "")
        + (
            f", against {m['cold_list_pages_records']} for a reader listing every record."
            if "cold_list_pages_records" in m
            else "."
        )
    )


COLD_START_TARGET_S = 3.0  # issue 11: a 50k-image shard's cold start from S3 (moto's server here)
P50_TARGET_MS = 300.0  # issue 11: warm p50 at 100k images with fan-out, on this machine's 2 cores
SAME_TOP5_TARGET = 0.99  # issue 11: share of queries whose top-5 is one unsharded index's
MODEL_P50_TARGET_MS = 1000.0  # issue 11: 1M images modelled at <= 1 s p50 warm
MODEL_USD_TARGET = 1.0  # issue 11: ... and <= $1 per 1,000 queries


def _model_targets(million: dict[str, Any]) -> str:
    """Issue 11's targets for the 1M model, judged on its row."""
    return _table(
        ["target (1M images, modelled)", "modelled", "met"],
        [
            [
                f"warm p50 ≤ {MODEL_P50_TARGET_MS / 1000:.0f} s",
                f"{million['p50_ms']} ms",
                "yes" if million["p50_ms"] <= MODEL_P50_TARGET_MS else "no",
            ],
            [
                f"≤ ${MODEL_USD_TARGET:.0f} per 1,000 queries",
                f"${million['usd_per_1000_queries']}",
                "yes" if million["usd_per_1000_queries"] <= MODEL_USD_TARGET else "no",
            ],
        ],
    )


def _what_was_listed(shard: dict[str, Any], entries: int) -> str:
    """Which journal entries a one-shard run's cold start right after the ingest listed."""
    if shard.get("compaction_journal_skipped"):
        skipped = shard["compaction_journal_skipped"]
        return (
            f"the changes after the compaction's cursor, which it moved past the {skipped:,} entries its segments fold"
        )
    if entries >= shard["images"]:
        return "the whole catalog was indexed within the cursor's margin"
    return f"the ingest's changes of its last {shard['cursor_margin_s'] // 60} min, the cursor's margin"


def _shard_section(shard: dict[str, Any], command: str) -> str:
    """The section of a one-shard run (make bench-scale-50k): what a shard of the model's size
    costs measured, not modelled."""
    kib = 1024
    cold = shard["cold_start_s"]
    listing = (shard.get("cold_listing_ms_per_shard") or [0.0])[0] / 1000
    entries = (shard.get("cold_journal_entries_per_shard") or [None])[0]
    pages = (shard.get("cold_list_pages_per_shard") or [0])[0]
    segments_ms = (shard.get("cold_segments_ms_per_shard") or [None])[0]
    rest = cold - listing
    skipped = shard.get("compaction_journal_skipped", 0)  # entries the compaction's cursor moved past
    judged, when, steady_rows = rest, "once its changes are older than the journal's cursor", []
    if shard.get("cold_start_s_per_shard_steady"):
        steady, steady_listing, steady_ms, steady_pages = _slowest_cold_start(shard, "_steady")
        judged, when = steady, "in the steady state, measured after the next compaction"
        steady_rows = [
            [
                f"cold start in the steady state (after the next compaction, {shard['recompaction_s']:.0f} s: the "
                f"cursor past the ingest's changes): listing the journal ({steady_pages} LIST "
                f"page{'s' if steady_pages != 1 else ''}) / the manifest and segment heads",
                f"{steady:.1f} s ({steady_listing:.1f} / {(steady_ms or 0.0) / 1000:.1f} s)",
            ]
        ]
    met = "met" if judged <= COLD_START_TARGET_S else "not met"
    right_after = "met" if cold <= COLD_START_TARGET_S else "not met"
    after_ingest = (
        f"the compaction having moved its cursor past the {skipped:,} entries of the ingest its segments fold"
        if skipped
        else "when a cold reader lists the ingest's changes in the journal"
    )
    rows = [
        [
            "cold start: manifest, each segment's header and shortlist tier "
            + ("(a GET of its head each)" if shard["s3_bytes_per_image"].get("heads") else "(a ranged GET each)")
            + ", the change journal",
            f"{cold:.1f} s",
        ],
        [
            f"… of which listing the journal ({entries:,} entries, {pages} LIST page{'s' if pages != 1 else ''}: "
            f"{_what_was_listed(shard, entries)})"
            if entries is not None
            else "… of which listing",
            f"{listing:.1f} s",
        ],
        *(
            []
            if steady_rows  # measured, not estimated
            else [
                [
                    "… the rest: a cold start once the catalog's changes are older than the cursor (less a LIST "
                    "page or so)",
                    f"{rest:.1f} s",
                ]
            ]
        ),
        *(
            [
                [
                    "… … of which the manifest, each segment's header and shortlist tier and the list of the "
                    "records it folds",
                    f"{segments_ms / 1000:.1f} s",
                ]
            ]
            if segments_ms is not None
            else []
        ),
        *steady_rows,
        ["shortlist tier fetched per image", f"{shard['shortlist_bytes_per_image_fetched'] / kib:.1f} KiB"],
        [
            "cold start, segments downloaded whole",
            f"{shard['cold_start_s_downloaded']:.1f} s ({shard['get_mb_s_measured']:.0f} MB/s)",
        ],
        [
            "process memory per image (RSS growth): ranged / downloaded whole",
            f"{shard['memory_bytes_per_image'] / kib:.1f} / {shard['memory_bytes_per_image_downloaded'] / kib:.1f} KiB",
        ],
        *_serving_rows(shard),
        [
            "a cold shard's first query (ranged; its candidates' verification rows)",
            f"{shard['first_query_ms_cold'][0]:.0f} ms ({shard['first_query_rows_cold'][0]} images, "
            f"{shard['first_query_gets_cold'][0]} GETs)",
        ],
        [
            "warm `default` query, p50 / p99 (the shard's ShardFunction answer)",
            "{:.0f} / {:.0f} ms".format(*shard_answer_ms(shard)),
        ],
        [
            "copies found at the first place",
            f"{shard['copies_found_top1']['shards']} of {shard['copies']}",
        ],
        [
            "indexing (upload + reconcile, 8 threads) / compaction",
            f"{shard['index_images_per_s']:.0f} / {shard['compaction_images_per_s']:.0f} images/s",
        ],
    ]
    return f"""## Measured here: one shard of {shard["images"]:,} images

Written by `{command}` (make bench-scale-50k) on {shard["cpu"]} (kernels `{shard["kernel"]}`),
S3 server {_s3_server(shard)}, {shard["queries"]} queries; the per-record design is not measured
at this size (its cold start GETs every record and holds ~180 KiB an image: ~9 GB).

{_table(["", f"one shard of {shard['images']:,} images"], rows)}

Issue 11's target, a {shard["images"]:,}-image shard's cold start ≤ {COLD_START_TARGET_S:.0f} s from
moto's server: {judged:.1f} s {when} ({met}); {cold:.1f} s
right after indexing the catalog ({right_after}), {after_ingest}
(a LIST page took {1000 * listing / max(1, pages):.0f} ms on moto's server here, which goes through
every key of the bucket for each page).
"""


LARGE_HEADING = "## Measured at issue 11's size"


def _of_shard(m: dict[str, Any], key: str, shard: int) -> Any:
    """Shard ``shard``'s value of a per-shard figure; None where a run's JSON does not have it."""
    values = m.get(key) or []
    return values[shard] if shard < len(values) else None


def _slowest_cold_start(m: dict[str, Any], suffix: str = "") -> tuple[float, float, float | None, int | None]:
    """The slowest shard's cold start (of the figures ending ``suffix``: "" right after the
    ingest, "_steady" after the next compaction): seconds, seconds listing its journal, ms of
    the manifest and segments and LIST pages (None where a run's JSON does not have them)."""
    seconds = max(m[f"cold_start_s_per_shard{suffix}"])
    at = m[f"cold_start_s_per_shard{suffix}"].index(seconds)
    listing = (_of_shard(m, f"cold_listing_ms_per_shard{suffix}", at) or 0.0) / 1000
    return (
        seconds,
        listing,
        _of_shard(m, f"cold_segments_ms_per_shard{suffix}", at),
        _of_shard(m, f"cold_list_pages_per_shard{suffix}", at),
    )


def _large_section(large: dict[str, Any], command: str) -> str:
    """The section of a sharded run at issue 11's measured size (make bench-scale-100k)."""
    per_shard = large["images"] // large["shards"]
    p50, same = large["p50_ms"], large["same_top5_as_unsharded"]
    slowest, listing, segments, _ = _slowest_cold_start(large)
    heads = large["s3_bytes_per_image"].get("heads")
    of_segments = (
        f", {segments / 1000:.1f} s the manifest and its segments"
        + (
            " (one GET of each one's head)"
            if heads
            else " (one ranged GET of each one's start, for which moto reads the whole object)"
        )
        if segments is not None
        else ""
    )
    cold_rows = [
        [
            f"a {per_shard:,}-image shard's cold start ≤ {COLD_START_TARGET_S:.0f} s from moto's server, "
            "right after the ingest",
            f"{slowest:.1f} s the slowest shard, of which {listing:.1f} s listing its journal "
            f"(the ingest's last changes, inside the cursor's margin){of_segments}",
            "yes" if slowest <= COLD_START_TARGET_S else "no",
        ]
    ]
    if large.get("cold_start_s_per_shard_steady"):
        steady, steady_listing, steady_ms, pages = _slowest_cold_start(large, "_steady")
        steady_segments = (steady_ms or 0.0) / 1000
        cold_rows.append(
            [
                f"… the same, in the steady state (after the next compaction: the cursor past the ingest's "
                f"changes; it took {large['recompaction_s']:.0f} s, folded nothing, trimmed "
                f"{large['recompaction_journal_trimmed']:,} journal entries)",
                f"{steady:.1f} s the slowest shard: {steady_listing:.1f} s listing its journal ({pages} LIST "
                f"page{'s' if pages != 1 else ''}), {steady_segments:.1f} s the manifest and its segments",
                "yes" if steady <= COLD_START_TARGET_S else "no",
            ]
        )
    targets = _table(
        ["target", "measured", "met"],
        [
            [
                f"warm p50 with fan-out ≤ {P50_TARGET_MS:.0f} ms on this machine's 2 cores",
                f"{p50:.0f} ms (each shard's answer {large['p50_ms_one_shard']:.0f} ms; here the "
                f"{large['shards']} shards share 2 cores, on Lambda each has its own"
                + (
                    f": one shard's answer with the cores to itself {large['p50_ms_shard_alone']:.0f} ms)"
                    if "p50_ms_shard_alone" in large
                    else ")"
                ),
                "yes" if p50 <= P50_TARGET_MS else "no",
            ],
            [
                f"top-5 identical to one index's (exhaustive `default`) on ≥ {SAME_TOP5_TARGET:.0%} of queries",
                f"{same:.0%}",
                "yes" if same >= SAME_TOP5_TARGET else "no",
            ],
            *cold_rows,
        ],
    )
    return f"""{LARGE_HEADING}: {large["images"]:,} images, {large["shards"]} shards

Written by `{command}` (make bench-scale-100k) on {large["cpu"]} (kernels `{large["kernel"]}`),
S3 server {_s3_server(large)}, {large["queries"]} queries; the per-record design is not measured
at this size (its cold start GETs every record and holds ~180 KiB an image).{_before_hashed_votes(large)}

{_measured_table(large)}

Copies found at the first place ({large["copies"]} queries whose original is in the catalog): one
index {large["copies_found_top1"]["one index"]}, shards merged {large["copies_found_top1"]["shards"]}.
Indexing (upload + reconcile, 8 threads): {large["index_images_per_s"]:.0f} images/s; compaction:
{large["compaction_images_per_s"]:.0f} images/s.

Issue 11's targets at this size:

{targets}
"""


def _before_hashed_votes(m: dict[str, Any]) -> str:
    """A note for runs of an earlier engine, told by the figures they did not record yet: before the
    keypoint votes went through hash keys (the memory after the first query) and before the
    compaction moved the journal cursor (the entries it moved past)."""
    earlier = []
    if "memory_bytes_per_image_serving" not in m:
        earlier.append(
            "before the keypoint votes went through hash keys (docs/SCORING.md): its query times are "
            "those of the vote over every pair"
        )
    if "compaction_journal_skipped" not in m:
        earlier.append(
            "before the compaction moved the journal cursor past what it folds: its cold start right "
            "after the ingest lists the ingest's last changes"
        )
    if not earlier:
        return ""
    return f"\n**Measured at an earlier engine**, {'; and '.join(earlier)}. `make bench-scale-100k` measures it again."


def _s3_server(m: dict[str, Any]) -> str:
    if "s3_server" in m:
        return m["s3_server"] + ", on this machine"
    return "moto's, a thread of the benchmark's process, on this machine"  # runs before the separate process


def _shard_basis(m: dict[str, Any], shard: dict[str, Any] | None) -> str:
    if (big := measured_shard(shard)) is not None:
        basis = (
            f"A shard's search time (p50, p99) and memory per image are those measured on one shard of "
            f"{SHARD_IMAGES:,} images (above)"
        )
    else:
        big = m
        basis = (
            "A shard's search time is fitted linearly through the measured medians of one shard's answer "
            "and of one index; p99 scales by the measured one-shard p99/p50"
        )
    slowdown = lambda_slowdown(big)
    if slowdown > 1:
        basis += (
            f", times {slowdown:.2f}: a {SHARD_GB * 1000:.0f} MB function gets "
            f"{SHARD_GB * 1000 / LAMBDA_MB_PER_VCPU:.2f} vCPU of CPU time ({LAMBDA_MB_PER_VCPU:,} MB a vCPU), the "
            f"run had {_cores(big)} cores"
        )
    return basis


def _shard_answers(m: dict[str, Any]) -> str:
    """Each shard's answer, p50 / p99: all of the run's shards answering at once and, when the run
    timed it, one shard's with the cores to itself (with one shard they are the same)."""
    at_once = f"{m['p50_ms_one_shard']:.0f} / {m['p99_ms_one_shard']:.0f} ms"
    if m["shards"] == 1:
        return f"each shard's answer {at_once}"
    if "p50_ms_shard_alone" not in m:
        return f"each shard's answer {at_once} (the {m['shards']} at once)"
    alone = f"{m['p50_ms_shard_alone']:.0f} / {m['p99_ms_shard_alone']:.0f} ms"
    return (
        f"each shard's answer, the {m['shards']} at once, {at_once}; "
        f"one shard's answer with the cores to itself {alone}"
    ) + _faults(m)


def _faults(m: dict[str, Any]) -> str:
    """Pages a query read from disk, when the run counted them."""
    if "major_faults_per_query" not in m:
        return ""
    f = m["major_faults_per_query"]
    memory = m.get("memory_available_gb_at_queries")
    counted = f"one index {f['one index']}, fan-out {f['fan-out']}, one shard alone {f['shard alone']}" + (
        f"; {memory} GB of memory available when the queries began" if memory is not None else ""
    )
    if _shards_as_processes(m):
        return (
            f" (pages read from disk a query, median: {counted}. The one index and the shards map the same "
            "segment files, which each reader reads ahead into the page cache as it opens them — as a shard's "
            "own function does — with moto's server stopped before the queries)"
        )
    return (
        " (pages read from disk a query, median — the verification rows of memory-mapped segments not in "
        f"the page cache: {counted}; one shard alone runs after the fan-out on the same shards' files, the one "
        "index on a copy of its own, with moto's server holding every object in memory)"
    )


def _shards_as_processes(m: dict[str, Any]) -> bool:
    """Whether each shard answered from a process of its own (runs since ff0aa02, which also read
    the segment files ahead and stopped moto's server before the queries)."""
    return bool(m.get("shard_workers") == "processes")


def _answered_by(m: dict[str, Any]) -> str:
    if _shards_as_processes(m):
        return "each shard answered by a warm process of its own, as each ShardFunction is one"
    return "each shard answered in this process, a thread each"


def _measured_table(m: dict[str, Any]) -> str:
    """A sharded run's figures beside the per-record design's (not measured when it was skipped)."""
    workers = "processes" if _shards_as_processes(m) else "threads"
    kib = 1024
    slowest = max(m["cold_start_s_per_shard"])
    return _table(
        ["", "per-record design (before)", "segments + shards"],
        [
            [
                "cold start (index load from S3)",
                f"{m['cold_start_s_records']:.1f} s" if "cold_start_s_records" in m else "not measured",
                f"{m['cold_start_s']:.1f} s all shards, {slowest:.1f} s the slowest",
            ],
            *_cold_rows(m),
            [
                "process memory per image (RSS growth)",
                f"{m['memory_bytes_per_image_records'] / kib:.1f} KiB"
                if "memory_bytes_per_image_records" in m
                else "not measured",
                f"{m['memory_bytes_per_image'] / kib:.1f} KiB"
                + (
                    f" (segments downloaded whole: {m['memory_bytes_per_image_downloaded'] / kib:.1f} KiB)"
                    if "memory_bytes_per_image_downloaded" in m
                    else ""
                ),
            ],
            *[[label, "", value] for label, value in _serving_rows(m)],
            [
                "S3 bytes per image",
                f"{m['s3_bytes_per_image']['records'] / kib:.0f} KiB (records)",
                f"+ {m['s3_bytes_per_image']['segments'] / kib:.0f} KiB (segments)"
                + (
                    f" + {m['s3_bytes_per_image']['heads'] / kib:.1f} KiB (their heads)"
                    if m["s3_bytes_per_image"].get("heads")
                    else ""
                ),
            ],
            [
                "warm `default` query, p50 / p99",
                f"{m['p50_ms_unsharded']:.0f} / {m['p99_ms_unsharded']:.0f} ms (one index)",
                f"{m['p50_ms']:.0f} / {m['p99_ms']:.0f} ms (fan-out, {workers} on {_cores(m)} cores); "
                + _shard_answers(m),
            ],
            [
                "top-5 identical to one index's",
                "",
                f"{m['same_top5_as_unsharded']:.0%} of queries (top-1: {m['same_top1_as_unsharded']:.0%}); "
                f"recall of its top-5 {m['recall_vs_exhaustive']:.0%}",
            ],
        ],
    )


def write_doc(
    path: Path,
    m: dict[str, Any],
    command: str,
    *,
    shard: dict[str, Any] | None = None,
    shard_command: str = "",
    large: dict[str, Any] | None = None,
    large_command: str = "",
) -> None:
    """docs/SCALE.md from ``m`` (a sharded run) and, when given, ``shard`` (one shard of the
    model's size: its section, and the model's shard figures) and ``large`` (a sharded run at
    issue 11's measured size: its section)."""
    big = [model(m, n, shard=shard) for n in (1_000_000, 10_000_000)]
    measured = _measured_table(m)
    modelled = _table(
        ["", "1M", "10M"],
        [
            ["shards (ShardFunctions)", *(str(r["shards"]) for r in big)],
            ["concurrent executions per query", *(str(r["concurrency_per_query"]) for r in big)],
            ["warm p50 / p99", *(f"{r['p50_ms']} / {r['p99_ms']} ms" for r in big)],
            ["cost per 1,000 queries", *(f"${r['usd_per_1000_queries']}" for r in big)],
            ["cost per idle month (S3 storage, hourly compaction)", *(f"${r['usd_idle_month']}" for r in big)],
            ["memory per shard (shortlist tier + overhead)", *(f"{r['shard_memory_mb']} MB" for r in big)],
            ["a shard's segments (all of them)", *(f"{r['shard_segments_mb']:,} MB" for r in big)],
            [
                f"a shard's cold start, segments downloaded whole ({S3_MB_S:.0f} MB/s x {SEGMENT_STREAMS} GETs)",
                *(f"{r['shard_cold_start_s']} s" for r in big),
            ],
            *_ranged_rows(measured_shard(shard) or m, big),
            [
                f"a duplicate report ({DUPLICATE_SLICES_AT_ONCE} slices at once): time, cost",
                *(f"{r['duplicate_report_hours']} h, ${r['duplicate_report_usd']:,}" for r in big),
            ],
        ],
    )
    text = f"""# Scale

Written by `{command} --doc docs/SCALE.md` (benchmarks/scale.py) on {m["cpu"]}
(kernels `{m["kernel"]}`), 2 cores shared with the S3 server ({_s3_server(m)}).

## Measured here: {m["images"]:,} images, {m["shards"]} shards, {m["queries"]} queries

{measured}

Copies found at the first place (queries whose original is in the catalog, {m["copies"]} of
them): one index {m["copies_found_top1"]["one index"]}, shards merged {m["copies_found_top1"]["shards"]}.

Indexing (upload + `RecordWriter.reconcile`, 8 threads): {m["index_images_per_s"]:.0f} images/s.
Compaction: {m["compaction_images_per_s"]:.0f} images/s in one call (`Compactor.compact`;
IndexFunction's compaction with more than 2,048 records to fold is planned instead: one segment
per invocation through ReindexQueue; README, Bulk ingest).

The fan-out is SearchFunction's `ShardFanOut` ({_answered_by(m)}, JSON both
ways): a shortlist round (each shard's best rows by each first-pass vote, cut to the
catalog's shortlist), then a verification round (each shard verifies its rows of that shortlist, given all of it
and returns the per-row evidence; detail choice, calibration and ranking run over all of it), so
its answer is one index's by construction: largest score difference in an identical top-5
{m.get("top5_max_score_diff", 0.0):.1e}.

{_shard_section(shard, shard_command) if shard else ""}
{_large_section(large, large_command) + chr(10) if large else ""}## Modelled: 1M and 10M images

Shards of {SHARD_IMAGES:,} images, one ShardFunction each ({SHARD_GB * 1000:.0f} MB), all invoked in
parallel by SearchFunction ({SEARCH_GB * 1000:.0f} MB). {_shard_basis(m, shard)}; each of the fan-out's
{FAN_OUT_ROUNDS} rounds adds an invoke of {INVOKE_MS:.0f} ms.
Prices (us-east-1, on demand, read {PRICES_READ}):
Lambda ${LAMBDA_GB_S * 1e6:.2f} per 1M GB-s and ${LAMBDA_REQUEST * 1e6:.2f} per 1M requests, API
Gateway REST ${APIGW_REQUEST * 1e6:.2f} per 1M, S3 ${S3_GB_MONTH}/GB-month. Step Functions is not
used (bulk work runs on SQS-fed Lambda batches).

{modelled}

{_model_targets(big[0])}

The duplicate report's row queries every image once through the sharded search (each query
as above, without API Gateway). DuplicatesFunction does not fan out over shards yet: it loads
the whole index, which holds up to about one shard's worth of images; its measured throughput
is in docs/BENCHMARKS.md ("Duplicate report").

A cold shard reads only each segment's head — a copy of its header and shortlist tier, one
GET (If-Match the manifest's ETag) — and answers; each query's shortlisted rows'
verification data (~110 KB per image) comes by ranged GETs, all of a query's at once, while the
whole files stream to /tmp in the background (then queries and `seed` read the local mapping).
Measured here, a cold shard's first query is bound by moto's server, which reads a segment's
whole object for every ranged GET (S3 does not): the model prices it from the rows it reads.
A cold reader finds the records newer than the segments in the change journal: every record
write and delete puts one small entry in its shard's folder of `index/journal/`, named by time,
and the manifest names a cursor {CURSOR_MARGIN_SECONDS // 60} min before its compaction began
listing the records, moved on when it publishes past the entries that name what its segments
hold; a shard's reader lists its folder after it (LIST pages that follow its
shard's changes, not the catalog's size) and reads only the records whose entries name a version
it does not serve.{_journal_measured(m)} Writers partition by the manifest's shard count, and
before the first compaction (no manifest) by the deployment's, so a catalog indexed before it (as
in these runs) has its entries split by shard too.
Before the journal it listed every record (of all shards): at 10M images most of a cold start.
"""
    path.write_text(text)


def update_large_section(path: Path, large: dict[str, Any], command: str) -> None:
    """Put the section of ``large`` (make bench-scale-100k) into an existing docs/SCALE.md in place
    of its earlier one, the rest as it is: the runs behind the rest need not be at hand."""
    text = path.read_text()
    head, modelled, tail = text.partition("## Modelled")
    if not modelled:
        raise SystemExit(f"{path} has no '## Modelled' section: write the whole doc with --from-json first")
    start = head.find(LARGE_HEADING)
    path.write_text((head if start < 0 else head[:start]) + _large_section(large, command) + "\n" + modelled + tail)


def _skip_records_command(figures: dict[str, Any], out: Path) -> str:
    """The command that wrote ``figures`` to ``out`` (a run without the per-record design)."""
    return (
        f"python -m benchmarks.scale --images {figures['images']} --shards {figures['shards']} "
        f"--queries {figures['queries']} --skip-records --out {out}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000, help="catalog size (package set; or a cap on --catalog)")
    ap.add_argument("--catalog", type=Path, help="a folder of catalog images instead of the package set")
    ap.add_argument("--queries-dir", type=Path, help="with --catalog: a folder of query images")
    ap.add_argument("--queries", type=int, default=60, help="queries run (evenly spread over the set)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument(
        "--skip-records",
        action="store_true",
        help="do not measure the per-record design (its cold start GETs every record and holds ~180 KiB an image)",
    )
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument("--doc", type=Path, help="write docs/SCALE.md (the figures and the 1M/10M model) here")
    ap.add_argument("--from-json", type=Path, help="no run: write --doc from the figures of an earlier --out")
    ap.add_argument(
        "--shard-json",
        type=Path,
        help="with --doc: the figures of a one-shard run (make bench-scale-50k) for its section and the model",
    )
    ap.add_argument(
        "--large-json",
        type=Path,
        help="with --doc: the figures of a sharded run at 100,000 images (make bench-scale-100k) for its section",
    )
    ap.add_argument(
        "--update-doc",
        action="store_true",
        help="no run: put the --large-json run's section into the existing --doc, leaving the rest as it is",
    )
    ap.add_argument("--child", choices=["records", "segments", "ranged"], help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--query", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.shards, args.cache, args.query)))
        return
    if args.catalog and not args.queries_dir:
        ap.error("--catalog needs --queries-dir")
    if args.update_doc:
        if not (args.doc and args.large_json):
            ap.error("--update-doc needs --doc and --large-json")
        figures = json.loads(args.large_json.read_text())
        update_large_section(args.doc, figures, _skip_records_command(figures, args.large_json))
        return
    args.log = lambda msg: print(msg, file=sys.stderr, flush=True)
    result = json.loads(args.from_json.read_text()) if args.from_json else run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.doc:
        command = (
            f"python -m benchmarks.scale --images {result['images']} --shards {result['shards']} "
            f"--queries {result['queries']}"
        )
        shard = json.loads(args.shard_json.read_text()) if args.shard_json else None
        shard_command = _skip_records_command(shard, args.shard_json) if shard else ""
        large = json.loads(args.large_json.read_text()) if args.large_json else None
        large_command = _skip_records_command(large, args.large_json) if large else ""
        write_doc(
            args.doc,
            result,
            command,
            shard=shard,
            shard_command=shard_command,
            large=large,
            large_command=large_command,
        )


if __name__ == "__main__":
    main()
