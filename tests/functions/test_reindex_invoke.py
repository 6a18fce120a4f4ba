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


def test_compact_event_from_the_template(s3_server: Any, images: dict[str, bytes], moto_server_url: str) -> None:
    """`{"action": "compact"}` (events/index-compact.json, also the template's hourly schedule):
    the records folded into segments under a new manifest generation; a second run keeps them."""
    bucket = s3_server.harmony_bucket
    put_catalog(s3_server, bucket, images, names=CATALOG_NAMES[:4])
    spec = template_for(load_yaml(TEMPLATE), bucket).functions["IndexFunction"]
    assert spec.environment["HARMONY_SHARDS"] == "1"
    event = load_event("index-compact.json")
    assert event == {"action": "compact"}
    (first,) = invoke(spec, [event], moto_server_url)
    assert isinstance(first, dict) and first["won"] and first["records"] == 0  # nothing indexed yet
    invoke(spec, [load_event("index-reindex.json")], moto_server_url)
    third, fourth = invoke(spec, [event, event], moto_server_url)
    assert isinstance(third, dict) and (third["won"], third["records"], third["written"]) == (True, 4, 1), third
    assert isinstance(fourth, dict) and (fourth["generation"], fourth["kept"], fourth["written"]) == (
        third["generation"] + 1,
        1,
        0,
    ), fourth
    assert len([k for k in all_keys(s3_server, bucket, "index/segments/") if k.endswith(".seg")]) == 1
