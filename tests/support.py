"""What the tests share: where things are, the test images, events, S3 and HTTP helpers.

Pytest fixtures built on these live in tests/conftest.py.
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import importlib.util
import json
import logging
import os
import sys
import threading
import time as _real_time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote_plus

import pytest

from harmony_aws.records import RecordWriter
from harmony_aws.s3 import Bucket
from harmony_image import DEFAULT_MAX_PIXELS, SearchParams, extract_features

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "template.yaml"
FIXTURES = REPO / "tests" / "fixtures" / "images"
SAMPLES = REPO / "src" / "harmony_local" / "samples"
EVENTS = REPO / "events"
TOY_TEMPLATE = REPO / "tests" / "local" / "toy" / "template.yaml"
BUCKET = "harmony-test-bucket"

# -------------------------------------------------------------------------- images
# Catalog originals are named after the photo; ``<photo>__<transform>.<ext>`` is a query whose
# right answer is ``<photo>.jpg``; other files exercise the decoder (tests/fixtures/README.md).
_IMAGE_DIRS = (FIXTURES, SAMPLES / "catalog", SAMPLES / "queries")


def image_path(name: str) -> Path:
    for folder in _IMAGE_DIRS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no test image {name} in {', '.join(str(d) for d in _IMAGE_DIRS)}")


def image_bytes(name: str) -> bytes:
    return image_path(name).read_bytes()


def all_images() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for folder in _IMAGE_DIRS for p in sorted(folder.iterdir()) if p.is_file()}


CATALOG_NAMES = sorted(p.name for p in (SAMPLES / "catalog").iterdir() if p.suffix == ".jpg")
QUERY_VARIANTS = sorted(name for name in all_images() if "__" in name)

# -------------------------------------------------------------------------- events and handlers


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def s3_event(name: str, bucket: str, key: str | None = None, event_name: str | None = None) -> dict[str, Any]:
    """events/<name> pointed at ``bucket`` (and ``key``, URL-encoded as S3 sends it)."""
    ev = copy.deepcopy(load_event(name))
    for rec in ev["Records"]:
        rec["s3"]["bucket"]["name"] = bucket
        rec["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
        if key is not None:
            rec["s3"]["object"]["key"] = quote_plus(key, safe="/")
        if event_name is not None:
            rec["eventName"] = event_name
    return ev


def receive_all(q: dict[str, Any], url: str | None = None) -> list[dict[str, Any]]:
    """Every message visible now in the queue ``q`` (``{"client": sqs, "url": ...}``; or in the
    one at ``url``), with its attributes (the receive count)."""
    out: list[dict[str, Any]] = []
    while True:
        got = q["client"].receive_message(
            QueueUrl=url or q["url"], MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
        )
        if not got.get("Messages"):
            return out
        out += got["Messages"]


def sqs_delivery(event: str, message: dict[str, Any]) -> dict[str, Any]:
    """events/``event`` (one SQS record: the functions' BatchSize is 1) carrying ``message`` as
    ReceiveMessage returned it: its id, receipt handle, body and its MD5, receive count."""
    ev = copy.deepcopy(load_event(event))
    rec = ev["Records"][0]
    rec.update(messageId=message["MessageId"], receiptHandle=message["ReceiptHandle"], body=message["Body"])
    rec["md5OfBody"] = hashlib.md5(message["Body"].encode(), usedforsecurity=False).hexdigest()
    rec["attributes"]["ApproximateReceiveCount"] = message["Attributes"]["ApproximateReceiveCount"]
    return ev


def deliver(handler: Any, ctx: Any, q: dict[str, Any], message: dict[str, Any], *, event: str) -> dict[str, Any]:
    """One delivery of ``message`` to ``handler`` as Lambda's SQS event source makes it: deleted
    unless the answer reports it failed, and then back in the queue (its visibility timeout is
    over at once here)."""
    out = dict(handler.lambda_handler(sqs_delivery(event, message), ctx))
    if not out["batchItemFailures"]:
        q["client"].delete_message(QueueUrl=q["url"], ReceiptHandle=message["ReceiptHandle"])
    else:
        q["client"].change_message_visibility(
            QueueUrl=q["url"], ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    return out


def load_function(name: str) -> ModuleType:
    """functions/<name>/app.py as a module of its own (each function's module is `app`)."""
    modname = f"harmony_fn_{name}"
    if modname not in sys.modules:
        spec = importlib.util.spec_from_file_location(modname, REPO / "functions" / name / "app.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
    return sys.modules[modname]


# -------------------------------------------------------------------------- S3


def all_keys(client: Any, bucket: str, prefix: str = "") -> dict[str, str]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["ETag"]
    return out


def as_older_manifest(client: Any, bucket: str) -> None:
    """Rewrite index/segments.json as code before the change journal wrote it: no journal cursor
    (nor the journal's shard counts)."""
    body = json.loads(client.get_object(Bucket=bucket, Key="index/segments.json")["Body"].read())
    assert body.pop("journal_cursor", None), "the manifest had no journal cursor"
    body.pop("journal_shards", None)
    client.put_object(Bucket=bucket, Key="index/segments.json", Body=json.dumps(body).encode())


class ShiftedClock:
    """The ``time`` module of a host whose clock runs ``seconds`` ahead (negative: behind)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def time(self) -> float:
        return _real_time.time() + self.seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(_real_time, name)


def record_writer(bucket: Bucket, *, shards: int = 1) -> RecordWriter:
    """The index's write path for ``bucket`` with the deployed size limits (and ``shards``)."""
    return RecordWriter(bucket, max_pixels=DEFAULT_MAX_PIXELS, max_image_bytes=20 * 1024 * 1024, shards=shards)


def answers(index: Any, images: dict[str, bytes]) -> list[list[tuple[str, float]]]:
    """Top-5 (key, score) of every query variant, both scorings: what two indexes must agree on."""
    out = []
    for q in QUERY_VARIANTS:
        feats = extract_features(images[q])
        for scoring in ("default", "seed"):
            out.append([(r.key, r.score) for r in index.search(feats, SearchParams(k=5, scoring=scoring))])
    return out


def put_catalog(
    client: Any,
    bucket: str,
    images: dict[str, bytes],
    names: list[str] = CATALOG_NAMES,
    prefix: str = "catalog/",
    metadata: dict[str, dict[str, str]] | None = None,
) -> None:
    for n in names:
        client.put_object(Bucket=bucket, Key=prefix + n, Body=images[n], Metadata=(metadata or {}).get(n, {}))


# -------------------------------------------------------------------------- HTTP and the local stack


@contextmanager
def serving(handler: Any) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (a free port) with ``handler`` (a BaseHTTPRequestHandler
    class, or a callable making one); yields its base URL, shuts it down after."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@contextmanager
def served_images(images: dict[str, bytes]) -> Iterator[str]:
    """``images`` over HTTP, each at /<name> (404 for any other path): a URL query's source."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:
            data = images.get(self.path.lstrip("/"))
            self.send_response(200 if data else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            if data:
                self.wfile.write(data)

    with serving(Handler) as url:
        yield url


def request(
    url: str, data: bytes | None = None, *, method: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def request_json(url: str, data: bytes | None = None, **kw: Any) -> tuple[int, dict[str, Any]]:
    status, _, body = request(url, data, **kw)
    return status, json.loads(body or b"{}")


def start_stack(template: Path, workdir: Path, **kw: Any) -> Any:
    from harmony_local.stack.server import LocalStack, StackConfig

    cfg = StackConfig(template=template, port=0, workdir=workdir, **kw)
    # A stack lives for the whole session and its threads report S3 events at any time: to the
    # log, which pytest keeps apart, never to stdout, which a CLI test may be capturing.
    return LocalStack(cfg, echo=logging.getLogger("harmony_local.stack").info).start()


@contextmanager
def app_stack(workdir: Path, *, bucket: str, **kw: Any) -> Iterator[Any]:
    """The repository's template.yaml on a local stack (``kw``: StackConfig's, e.g.
    ``parameter_overrides``), the sample catalog uploaded (and indexed by IndexFunction)."""
    template = Path(os.environ.get("HARMONY_LOCAL_TEMPLATE") or TEMPLATE)
    if not template.is_file():
        pytest.skip(f"{template} does not exist (the SAM template of the app)")
    st = start_stack(template, workdir, bucket=bucket, **kw)
    try:
        st.seed_catalog()
        yield st
    finally:
        st.stop()
