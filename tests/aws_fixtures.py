"""Fixtures shared by tests/aws and tests/functions (imported by their conftest.py).

* real images: tests/fixtures/images (else generated from scikit-image's bundled photos);
* moto in-process (``s3``: mock_aws) and moto's server as a real HTTP S3 endpoint
  (``s3_server``: ThreadedMotoServer on 127.0.0.1, reached through AWS_ENDPOINT_URL_S3);
* a Lambda context, events/*.json loaded and pointed at the test bucket, the handlers imported
  from functions/*/app.py.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import socket
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_plus

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "images"
EVENTS = REPO / "events"
BUCKET = "harmony-test-bucket"
CATALOG_NAMES = ["astronaut.jpg", "brick.jpg", "camera.jpg", "chelsea.jpg", "coffee.jpg", "coins.jpg",
                 "immunohistochemistry.jpg", "moon.jpg", "rocket.jpg"]


def _skimage_images() -> dict[str, bytes]:
    import cv2
    from skimage import data

    out = {}
    for name in ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "immunohistochemistry", "moon", "rocket"):
        img = getattr(data, name)()
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        h, w = img.shape[:2]
        s = 320 / max(h, w)
        img = cv2.resize(img, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
        out[f"{name}.jpg"] = cv2.imencode(".jpg", img)[1].tobytes()
    return out


def load_images() -> dict[str, bytes]:
    if FIXTURES.is_dir() and any(FIXTURES.iterdir()):
        return {p.name: p.read_bytes() for p in sorted(FIXTURES.iterdir()) if p.is_file()}
    return _skimage_images()


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    return load_images()


# --------------------------------------------------------------------------- environment
@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("HARMONY_", "AWS_ENDPOINT_URL")) or k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "harmony-image-test")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "HarmonyImageTest")
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")
    from harmony_aws import runtime

    runtime.reset()
    yield
    runtime.reset()


@dataclass
class LambdaContext:
    function_name: str = "harmony-test"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:harmony-test"
    memory_limit_in_mb: int = 2048
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/harmony-test"
    log_stream_name: str = "2026/01/01/[$LATEST]test"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


@pytest.fixture
def lambda_context() -> LambdaContext:
    return LambdaContext()


# --------------------------------------------------------------------------- S3
@pytest.fixture
def s3(monkeypatch):
    """moto in-process: the bucket exists and HARMONY_BUCKET names it."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        monkeypatch.setenv("HARMONY_BUCKET", BUCKET)
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server_url():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_server(moto_server_url, monkeypatch):
    """moto's server as a real HTTP S3 endpoint (AWS_ENDPOINT_URL_S3), a fresh bucket per test."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server_url)
    bucket = f"harmony-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", region_name="us-east-1")
    assert client.meta.endpoint_url == moto_server_url
    client.create_bucket(Bucket=bucket)
    monkeypatch.setenv("HARMONY_BUCKET", bucket)
    client.harmony_bucket = bucket  # type: ignore[attr-defined]
    yield client


def all_keys(client, bucket: str, prefix: str = "") -> dict[str, str]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["ETag"]
    return out


# --------------------------------------------------------------------------- events
def load_event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


def s3_event(name: str, bucket: str, key: str | None = None, event_name: str | None = None) -> dict:
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


def load_function(name: str):
    """functions/<name>/app.py as a module of its own (each function's module is `app`)."""
    path = REPO / "functions" / name / "app.py"
    modname = f"harmony_fn_{name}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def search_fn():
    mod = load_function("search")
    mod.metrics.clear_metrics()
    return mod


@pytest.fixture
def index_fn():
    mod = load_function("index")
    mod.metrics.clear_metrics()
    return mod


@pytest.fixture
def query_drop_fn():
    mod = load_function("query_drop")
    mod.metrics.clear_metrics()
    return mod


def put_catalog(client, bucket: str, images: dict[str, bytes], names=CATALOG_NAMES, prefix="catalog/", metadata=None):
    for n in names:
        client.put_object(Bucket=bucket, Key=prefix + n, Body=images[n], Metadata=(metadata or {}).get(n, {}))
