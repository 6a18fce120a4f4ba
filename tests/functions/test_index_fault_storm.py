"""The index under S3 faults: an event storm through a fault-injecting proxy (tests/faultproxy.py)
in front of moto's server, delivered to the real IndexFunction handler.

Storm (scaled from the issue's 1,000 uploads / 100 overwrites / 200 deletes to STORM below, the
same proportions, so that it fits CI's time): catalog uploads (a few of them not images, or
truncated in the bucket itself), overwrites and deletes, made one after the other by the test
straight on moto; each change's S3 event (events/s3-catalog-put.json / -delete.json) is
delivered one to three times (at-least-once), after a random delay (so out of order), by 8
threads, and now and then once more *before* the change it announces. Each delivery is an
asynchronous Lambda invocation: a failed one is retried twice, then goes to the dead-letter
queue (a list here).

The function reaches S3 only through the proxy, which answers a share of the requests with 500
InternalError (half of them after the write happened), 503 SlowDown, a delay, or a connection cut
in the middle of the answer. At 0% the records must equal the bucket exactly with nothing dead-
lettered; at 10% and 30% every difference between records and bucket (a missing, stale or extra
record) must belong to a key with an event in the dead-letter queue: nothing lost silently.

Then the repair path under the same faults: `{"action": "reindex"}` (the documented redrive)
must leave the records equal to the bucket, except keys it reports as failed; and a warm index
read through the proxy must serve only correct records and say how many it is missing, until a
refresh succeeds and the flag clears.

    .venv/bin/pytest tests/functions/test_index_fault_storm.py -s    # prints one summary line per rate
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import boto3
import cv2
import numpy as np
import pytest

from harmony_aws import runtime
from harmony_aws.errors import StorageError
from harmony_aws.reader import RETRY_SECONDS
from harmony_aws.sources import ImageBytes
from harmony_image import ImageFeatures, SearchParams
from harmony_local.stack.lambdas import LambdaContext
from tests.faultproxy import FaultProxy
from tests.support import all_keys, s3_event

STORM = {"uploads": 200, "overwrites": 20, "deletes": 40}
WORKERS = 8
LAMBDA_RETRIES = 2  # Lambda's default for asynchronous invocations
RETRY_DELAYS = (0.2, 0.5)  # Lambda waits about 1 and 2 minutes; scaled down
RECORDS = "index/records/"


def make_image(seed: int) -> bytes:
    """A small JPEG of random shapes, different for every seed."""
    rng = np.random.default_rng(seed)
    h, w = 150, 200
    img = np.full((h, w, 3), rng.integers(0, 255, 3), np.uint8)
    for _ in range(12):
        colour = tuple(int(x) for x in rng.integers(0, 255, 3))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.rectangle(img, p1, p2, colour, -1)
        else:
            cv2.circle(img, p1, int(rng.integers(5, 40)), colour, -1)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return bytes(buf.tobytes())


@dataclass
class Content:
    data: bytes
    image: bool  # a usable image: it must be indexed

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def make_content(rng: random.Random, seed: int) -> Content:
    r = rng.random()
    if r < 0.03:
        return Content(b"not an image, seed %d" % seed, image=False)
    data = make_image(seed)
    if r < 0.05:  # truncated in the bucket itself: a real truncated image, never indexed
        return Content(data[: len(data) // 2], image=False)
    return Content(data, image=True)


@dataclass
class Storm:
    """The changes, in the order they are made: (op, key, content)."""

    changes: list[tuple[str, str, Content | None]] = field(default_factory=list)
    final: dict[str, Content] = field(default_factory=dict)


def plan_storm(seed: int, uploads: int, overwrites: int, deletes: int) -> Storm:
    rng = random.Random(seed)
    keys = [f"catalog/storm/{i:04d} é+{rng.randrange(1000)}.jpg" for i in range(uploads)]
    timed: list[tuple[float, str, str, Content | None]] = []
    last: dict[str, float] = {}
    for i, key in enumerate(keys):
        t = rng.random()
        timed.append((t, "put", key, make_content(rng, i)))
        last[key] = t
    for j, key in enumerate(rng.sample(keys, overwrites)):
        t = rng.uniform(last[key], 1.0)
        timed.append((t, "put", key, make_content(rng, uploads + j)))
        last[key] = t
    for key in rng.sample(keys, deletes):
        timed.append((rng.uniform(last[key], 1.0), "delete", key, None))
    storm = Storm()
    for _, op, key, content in sorted(timed, key=lambda x: x[0]):
        storm.changes.append((op, key, content))
        if content is None:
            storm.final.pop(key, None)
        else:
            storm.final[key] = content
    return storm


@dataclass
class LambdaSim:
    """Asynchronous invocations of one handler: each failed one retried LAMBDA_RETRIES times, then
    dead-lettered."""

    handler: Any
    invocations: int = 0
    failures: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def deliver(self, event: dict[str, Any], delay: float = 0.0) -> None:
        time.sleep(delay)
        for attempt in range(LAMBDA_RETRIES + 1):
            with self.lock:
                self.invocations += 1
            try:
                self.handler(copy.deepcopy(event), LambdaContext("IndexFunction", 1769))
                return
            except Exception as exc:  # noqa: BLE001 - Lambda retries whatever the function raised
                with self.lock:
                    self.failures += 1
                    name = type(exc).__name__
                    self.errors[name] = self.errors.get(name, 0) + 1
                if attempt < LAMBDA_RETRIES:
                    time.sleep(RETRY_DELAYS[attempt])
        with self.lock:
            self.dead_letters.append(event)

    def dead_keys(self) -> set[str]:
        return {unquote(r["s3"]["object"]["key"].replace("+", " ")) for ev in self.dead_letters for r in ev["Records"]}


def run_storm(storm: Storm, sim: LambdaSim, direct: Any, bucket: str, seed: int) -> None:
    rng = random.Random(seed + 1)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = []
        for op, key, content in storm.changes:
            name = "s3-catalog-put.json" if op == "put" else "s3-catalog-delete.json"
            event = s3_event(name, bucket, key)
            if rng.random() < 0.05:  # a delivery that overtakes the change it announces
                futures.append(pool.submit(sim.deliver, event, 0.0))
            if content is not None:
                direct.put_object(Bucket=bucket, Key=key, Body=content.data)
            else:
                direct.delete_object(Bucket=bucket, Key=key)
            for _ in range(rng.choice([1, 1, 2, 3])):
                futures.append(pool.submit(sim.deliver, event, rng.random() * 0.03))
        for f in futures:
            f.result()


@dataclass
class Diff:
    missing: set[str]
    stale: set[str]
    extra: set[str]

    @property
    def keys(self) -> set[str]:
        return self.missing | self.stale | self.extra


def compare(storm: Storm, direct: Any, bucket: str) -> Diff:
    """Records (read straight from moto) against the bucket's final state."""
    expected = {k: c for k, c in storm.final.items() if c.image}
    etags = all_keys(direct, bucket, "catalog/")
    for key, c in storm.final.items():  # the bucket really is what the storm says
        assert etags[key] == f'"{hashlib.md5(c.data).hexdigest()}"', key
    assert set(etags) == set(storm.final)
    got: dict[str, tuple[str, str]] = {}
    for rk in all_keys(direct, bucket, RECORDS):
        r = direct.get_object(Bucket=bucket, Key=rk)
        key = unquote(r["Metadata"]["catalog-key"])
        got[key] = (ImageFeatures.from_bytes(r["Body"].read()).sha256, r["Metadata"]["source-etag"])
    missing = set(expected) - set(got)
    extra = set(got) - set(expected)
    stale = {k for k in set(got) & set(expected) if got[k] != (expected[k].sha256, etags[k])}
    return Diff(missing, stale, extra)


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3])
def test_event_storm_under_s3_faults(rate, moto_server_url, s3_server, index_fn, monkeypatch):
    seed = {0.0: 11, 0.1: 12, 0.3: 13}[rate]
    bucket = s3_server.harmony_bucket
    direct = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_server_url)
    storm = plan_storm(seed, **STORM)
    with FaultProxy(moto_server_url, rate=rate, seed=seed) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)  # the function sees S3 through the proxy
        runtime.reset()
        sim = LambdaSim(index_fn.lambda_handler)
        t0 = time.perf_counter()
        run_storm(storm, sim, direct, bucket, seed)
        storm_s = time.perf_counter() - t0
        diff = compare(storm, direct, bucket)
        dead = sim.dead_keys()
        summary = {
            "rate": rate,
            "changes": len(storm.changes),
            "invocations": sim.invocations,
            "failed_invocations": sim.failures,
            "errors": sim.errors,
            "dead_lettered_events": len(sim.dead_letters),
            "missing": len(diff.missing),
            "stale": len(diff.stale),
            "extra": len(diff.extra),
            "unaccounted": sorted(diff.keys - dead),
            "proxy": dict(proxy.counts),
            "storm_s": round(storm_s, 1),
        }
        print("STORM", json.dumps(summary, ensure_ascii=False))
        assert not diff.keys - dead, f"records differ from the bucket with no dead-lettered event: {summary}"
        if rate == 0:
            assert diff.keys == set() and sim.dead_letters == [] and sim.failures == 0, summary

        # The redrive: a reindex under the same faults. Whatever it does not repair, it reports.
        reports = []
        for _ in range(3):  # as an operator would run it again while it reports failures
            # each run a new invocation, in a new execution environment: botocore's retry quota,
            # spent by the storm, is per client (a run that cannot even list fails loudly: the
            # operator sees the error and runs it again)
            runtime.reset()
            ctx = LambdaContext("IndexFunction", 1769, deadline=time.time() + 600)
            try:
                out = index_fn.lambda_handler({"action": "reindex"}, ctx)
            except StorageError as exc:
                print("REINDEX RUN FAILED", exc.message)
                continue
            reports.append(out)
            assert out["attempted"] == out["keys"] and out["resume_after"] is None, out
            assert out["complete"] == (out["failed"] == []), out
            assert sum(out["reindexed"].values()) == out["keys"], out
            if out["complete"]:
                break
        assert reports, "no reindex run could list the bucket"
        diff = compare(storm, direct, bucket)
        failed = {f["key"] for f in reports[-1]["failed"]}
        n_images = sum(c.image for c in storm.final.values())
        summary = {
            "rate": rate,
            "reindex": [{**r["reindexed"], "s": r["seconds"]} for r in reports],
            "missing": len(diff.missing),
            "stale": len(diff.stale),
            "extra": len(diff.extra),
            "unaccounted": sorted(diff.keys - failed),
        }
        print("REINDEX", json.dumps(summary, ensure_ascii=False))
        assert not diff.keys - failed, f"records differ from the bucket, not reported by reindex: {summary}"
        if rate == 0:
            assert reports[0]["reindexed"] == {"unchanged": n_images, "skipped": len(storm.final) - n_images}

        # The read path under the same faults: a cold index serves what it could read, flagged.
        records = {}
        for rk in all_keys(direct, bucket, RECORDS):
            r = direct.get_object(Bucket=bucket, Key=rk)
            records[unquote(r["Metadata"]["catalog-key"])] = ImageFeatures.from_bytes(r["Body"].read()).sha256
        runtime.reset()
        service = runtime.search_service(bucket)
        answer = service.search(ImageBytes(make_image(0)), SearchParams())  # no 500: served, maybe flagged
        index, status = service.reader.index(), service.reader.status
        served = {k: index.get(k).features.sha256 for k in index.keys()}  # noqa: SIM118
        summary = {"rate": rate, "cold_status": status, "served": len(served), "records": len(records)}
        assert served.items() <= records.items(), "a record served with features that are not its own"
        assert status == {"complete": len(served) == len(records), "missing": len(records) - len(served)}, summary
        assert answer["catalog_size"] == len(served)
        proxy.rate = 0.0  # S3 recovers: the next refresh, within RETRY_SECONDS, clears the flag
        time.sleep(RETRY_SECONDS if not status["complete"] else 0)
        index = service.reader.index()
        summary["after_recovery"] = service.reader.status
        print("READER", json.dumps(summary, ensure_ascii=False))
        assert service.reader.status == {"complete": True, "missing": 0}, summary
        assert {k: index.get(k).features.sha256 for k in index.keys()} == records  # noqa: SIM118
