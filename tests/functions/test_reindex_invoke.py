"""`{"action": "reindex"}` (events/index-reindex.json) as README documents it, run by the
template-driven Lambda runner: IndexFunction finds its bucket in the HARMONY_BUCKET the template
declares (`sam local invoke --env-vars` / the deployed stack set it), reports what it did, and a
second run finds everything up to date."""

from __future__ import annotations

from typing import Any

from harmony_local.stack.lambdas import InvokeError
from harmony_local.stack.template import load_yaml
from tests.functions.test_template_invoke import invoke, template_for
from tests.support import CATALOG_NAMES, TEMPLATE, all_keys, load_event, put_catalog


def test_reindex_event_from_the_template(s3_server: Any, images: dict[str, bytes], moto_server_url: str) -> None:
    bucket = s3_server.harmony_bucket
    put_catalog(s3_server, bucket, images, names=CATALOG_NAMES[:3])
    spec = template_for(load_yaml(TEMPLATE), bucket).functions["IndexFunction"]
    # the template spells out the deployed bucket name; the reader maps it to the local bucket
    assert spec.environment["HARMONY_BUCKET"] == bucket
    event = load_event("index-reindex.json")
    assert event == {"action": "reindex"}
    first, second = invoke(spec, [event, event], moto_server_url, HARMONY_BUCKET=bucket)
    for out in (first, second):
        assert isinstance(out, dict), out
        assert (out["complete"], out["failed"], out["keys"], out["attempted"]) == (True, [], 3, 3), out
    assert first["reindexed"] == {"indexed": 3} and second["reindexed"] == {"unchanged": 3}
    assert len(all_keys(s3_server, bucket, "index/records/")) == 3
    # without an override, the variable the template declares names the same bucket
    (out,) = invoke(spec, [event], moto_server_url)
    assert isinstance(out, dict) and out["reindexed"] == {"unchanged": 3}, out
    # and a bucket that does not exist is a clear failure, not an empty success
    (out,) = invoke(spec, [event], moto_server_url, HARMONY_BUCKET="no-such-bucket-here")
    assert isinstance(out, InvokeError) and "does not exist" in out.payload["errorMessage"], out
