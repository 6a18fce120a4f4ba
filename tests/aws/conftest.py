"""Fixtures of the adapter tests."""

from __future__ import annotations

import pytest

from harmony_aws.s3 import Bucket
from tests.support import BUCKET, CATALOG_NAMES, put_catalog, record_writer


@pytest.fixture(params=["mock_aws", "moto_server"])
def bucket(request, images):
    """(client, bucket name) with the sample catalog uploaded and indexed (one record each), in
    moto in-process and behind moto's HTTP server."""
    if request.param == "mock_aws":
        client, name = request.getfixturevalue("s3"), BUCKET
    else:
        client = request.getfixturevalue("s3_server")
        name = client.harmony_bucket
    put_catalog(client, name, images)
    writer = record_writer(Bucket(name))
    for n in CATALOG_NAMES:
        assert writer.reconcile("catalog/" + n).action == "indexed"
    return client, name
