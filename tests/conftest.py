"""Fixtures for every test folder (helpers they use: tests/support.py)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from tests.support import BUCKET, CATALOG_NAMES, TOY_TEMPLATE, all_images, app_stack, load_function, start_stack


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    """Every test image: name -> bytes."""
    return all_images()


@pytest.fixture(scope="session")
def catalog_photos(images: dict[str, bytes]) -> dict[str, bytes]:
    """The catalog originals (the sample catalog): name -> JPEG bytes."""
    return {name: images[name] for name in CATALOG_NAMES}


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No AWS or HARMONY setting of the machine leaks into a test; fresh adapter singletons."""
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


@pytest.fixture
def lambda_context() -> Any:
    from harmony_local.stack.lambdas import LambdaContext

    return LambdaContext(function_name="harmony-test", memory_limit_in_mb=2048)


# -------------------------------------------------------------------------- S3
@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
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
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_server_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_server(moto_server_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's server as a real HTTP S3 endpoint (AWS_ENDPOINT_URL_S3), a fresh bucket per test."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server_url)
    bucket = f"harmony-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", region_name="us-east-1")
    assert client.meta.endpoint_url == moto_server_url
    client.create_bucket(Bucket=bucket)
    monkeypatch.setenv("HARMONY_BUCKET", bucket)
    client.harmony_bucket = bucket
    yield client


# -------------------------------------------------------------------------- handlers
def _handler(name: str) -> ModuleType:
    mod = load_function(name)
    mod.metrics.clear_metrics()
    return mod


@pytest.fixture
def search_fn() -> ModuleType:
    return _handler("search")


@pytest.fixture
def index_fn() -> ModuleType:
    return _handler("index")


@pytest.fixture
def query_drop_fn() -> ModuleType:
    return _handler("query_drop")


# -------------------------------------------------------------------------- local stacks
@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with app_stack(tmp_path_factory.mktemp("harmony-local"), bucket="harmony-local-test") as st:
        yield st


@pytest.fixture(scope="session")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    st = start_stack(TOY_TEMPLATE, tmp_path_factory.mktemp("toy"), bucket="toy-bucket", max_concurrency=1)
    try:
        yield st
    finally:
        st.stop()
