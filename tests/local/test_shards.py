"""A sharded catalog on the local stack (template parameter ShardIds=0,1): IndexFunction compacts
the records into two shards' segments, SearchFunction fans each query out to ShardFunction0 and
ShardFunction1 (made by the template's Fn::ForEach) through the stack's Lambda Invoke API
(default scoring: a shortlist round, then a verification round) and merges; the answers are
exactly those of the unsharded stack (the session's ``stack``) on the same sample catalog."""

from __future__ import annotations

import json

import boto3
import numpy as np
import pytest
from botocore.config import Config

from harmony_aws.layout import shard_of
from tests.support import CATALOG_NAMES, QUERY_VARIANTS, image_bytes, request_json

SHARDS = 2


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    from tests.support import app_stack

    workdir = tmp_path_factory.mktemp("sharded")
    with app_stack(
        workdir, bucket="harmony-sharded", parameter_overrides={"ShardIds": ",".join(map(str, range(SHARDS)))}
    ) as st:
        yield st


def lambda_client(stack):
    return boto3.client(
        "lambda",
        endpoint_url=stack.url.rstrip("/"),
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 0}, read_timeout=120),
    )


def invoke(stack, function: str, payload: dict) -> tuple[dict, dict]:
    r = lambda_client(stack).invoke(FunctionName=function, Payload=json.dumps(payload).encode())
    return r, json.loads(r["Payload"].read())


def _search(stack, name: str, k: int = 5):
    return request_json(
        f"{stack.url}search?k={k}", image_bytes(name), method="POST", headers={"Content-Type": "image/jpeg"}
    )


def test_the_template_makes_one_function_per_shard(sharded, stack):
    assert {f"ShardFunction{i}" for i in range(SHARDS)} <= set(sharded.template.functions)
    assert not any(f.startswith("ShardFunction") for f in stack.template.functions)  # ShardIds=0: none
    env = sharded.template.functions["SearchFunction"].environment
    # SearchFunction invokes the functions by the names the template gives them
    assert (env["HARMONY_SHARD_FUNCTIONS"], env["HARMONY_SHARDS"]) == ("harmony-local-shard-{shard}", "2")
    assert [sharded.template.functions[f"ShardFunction{i}"].function_name for i in range(SHARDS)] == [
        "harmony-local-shard-0",
        "harmony-local-shard-1",
    ]
    assert sharded.template.functions["ShardFunction1"].environment["HARMONY_SHARD"] == "1/2"


def test_sharded_search_answers_as_the_unsharded_one(sharded, stack):
    r, report = invoke(sharded, "IndexFunction", {"action": "compact"})
    assert "FunctionError" not in r, report
    assert report["won"] and report["records"] == len(CATALOG_NAMES) and report["segments"] >= SHARDS
    before = len(sharded.invocations)
    for q in QUERY_VARIANTS + [f"../catalog/{n}" for n in CATALOG_NAMES[:3]]:
        name = q.removeprefix("../catalog/")
        status, got = _search(sharded, name)
        status0, want = _search(stack, name)
        assert status == status0 == 200, got
        assert got["catalog_size"] == want["catalog_size"] == len(CATALOG_NAMES)
        assert got["index"] == {"complete": True, "missing": 0}
        fields = ("key", "score", "ssim", "orb", "sha256")  # URLs are presigned for each stack's bucket
        assert [[r[f] for f in fields] for r in got["results"]] == [[r[f] for f in fields] for r in want["results"]]
    shard_calls = [i for i in sharded.invocations[before:] if i.function.startswith("ShardFunction")]
    assert {i.function for i in shard_calls} == {"ShardFunction0", "ShardFunction1"}
    assert all(i.ok for i in shard_calls)


def test_a_shard_answers_only_its_keys_and_refuses_other_shards(sharded):
    from harmony_aws.fanout import shard_request
    from harmony_image import SearchParams, extract_features

    feats = extract_features(image_bytes("chelsea__hflip.jpg"))
    for i in range(SHARDS):
        r, answer = invoke(sharded, f"ShardFunction{i}", shard_request(i, SHARDS, feats, SearchParams(k=9)))
        assert "FunctionError" not in r and answer["results"], answer
        assert all(shard_of(x["key"], SHARDS) == i for x in answer["results"])
    _, refused = invoke(sharded, "ShardFunction0", shard_request(1, SHARDS, feats, SearchParams()))
    assert refused["status"] == 400 and "serves shard" in refused["error"]["message"]
    _, bad = invoke(sharded, "ShardFunction0", {"shard": 0, "shards": SHARDS, "params": {}, "query": {"features": "x"}})
    assert bad["status"] == 400 and bad["error"]["code"] == "bad_request"


def test_a_shard_answers_both_rounds_through_the_invoke_api(sharded):
    from harmony_aws.fanout import shard_request
    from harmony_image import SearchParams, extract_features
    from harmony_image.index import Shortlist
    from harmony_image.scoring import FirstPass

    feats, params = extract_features(image_bytes("chelsea__hflip.jpg")), SearchParams(k=5)
    r, first = invoke(sharded, "ShardFunction1", shard_request(1, SHARDS, feats, params, phase="shortlist"))
    assert "FunctionError" not in r and first["shortlist"]["keys"], first
    assert all(shard_of(key, SHARDS) == 1 for key in first["shortlist"]["keys"])
    got = first["shortlist"]
    first_pass = FirstPass(*(np.array(got[f]) for f in ("looks", "votes", "detail_votes", "regions", "crops")))
    part = Shortlist(tuple(got["keys"]), first_pass)
    _, second = invoke(
        sharded, "ShardFunction1", shard_request(1, SHARDS, feats, params, phase="verify", shortlist=part)
    )
    assert second["verified"]["keys"] == sorted(part.keys) and len(second["verified"]["ssim"]) == 2, second


def test_the_invoke_api_answers_like_lambdas(sharded):
    client = lambda_client(sharded)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="NoSuchFunction", Payload=b"{}")
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        client.invoke(FunctionName="ShardFunction0", Payload=b"{not json")
    for name in ("harmony-local-shard-1", "arn:aws:lambda:us-east-1:123456789012:function:harmony-local-shard-1"):
        r = client.invoke(FunctionName=name, Payload=b'{"shard": 5}')  # its FunctionName, or its ARN
        assert "FunctionError" not in r and json.loads(r["Payload"].read())["status"] == 400
    arn = "arn:aws:lambda:us-east-1:123456789012:function:ShardFunction1-local"  # its !Ref here
    r = client.invoke(FunctionName=arn, Payload=b'{"shard": 5}')
    assert "FunctionError" not in r and json.loads(r["Payload"].read())["status"] == 400


def test_a_failed_shard_flags_the_answer_and_all_failed_is_an_error(sharded):
    from harmony_aws.fanout import ShardFailedError, ShardFanOut
    from harmony_image import SearchParams, extract_features

    feats = extract_features(image_bytes("chelsea__hflip.jpg"))
    client = lambda_client(sharded)
    results, size, status = ShardFanOut(client, ("ShardFunction0", "NoSuchFunction")).search(feats, SearchParams())
    assert status["complete"] is False and status["failed_shards"] == [1]
    assert 0 < size < len(CATALOG_NAMES) and all(shard_of(r.key, SHARDS) == 0 for r in results)
    with pytest.raises(ShardFailedError, match="every shard failed"):
        ShardFanOut(client, ("Nope0", "Nope1")).search(feats, SearchParams())
