"""Template-driven local invoke: every function of template.yaml, run the way Lambda runs it.

Handler, CodeUri, Environment (Globals + function) and Layers come from template.yaml through
the project's one template reader (harmony_local.stack.template) and run in the one Lambda-like
runner (harmony_local.stack.lambdas): a fresh process whose environment is exactly the
template's (plus what `sam local invoke --env-vars` would override: the S3 endpoint), whose
``sys.path`` is CodeUri and the layers' folders and none of the project's other folders. So a
wrong handler path, CodeUri, layer or env var name in the template fails here. S3 is moto's
HTTP server.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from harmony_local.stack.lambdas import FunctionPool, InvokeError, lambda_environment
from harmony_local.stack.server import CREDENTIALS
from harmony_local.stack.template import FunctionSpec, Template, load_yaml, template_from_doc
from tests.support import EVENTS, REPO, TEMPLATE, all_keys, load_event, put_catalog, served_images

CATALOG = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]


def template_for(doc: dict[str, Any], bucket: str) -> Template:
    """The template with its bucket standing for the test bucket (as --env-vars would set it)."""
    return template_from_doc(doc, base=REPO, bucket_name=bucket)


def invoke(spec: FunctionSpec, events: list[dict[str, Any]], endpoint: str, **overrides: str) -> list[Any]:
    """Each event's result (or the InvokeError), in one warm worker, like sequential invocations."""
    extra = {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": endpoint}
    extra.update({k: v for k, v in overrides.items() if k in spec.environment})  # only declared names
    pool = FunctionPool(spec, lambda_environment(spec, extra), log_dir=None, max_concurrency=1)
    out: list[Any] = []
    try:
        for event in events:
            try:
                out.append(pool.invoke(event))
            except InvokeError as exc:
                out.append(exc)
    finally:
        pool.close()
    return out


def api_ok(result: Any) -> dict[str, Any]:
    assert isinstance(result, dict), result
    assert result["statusCode"] == 200, result
    body = result["body"]
    if result.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return json.loads(body)


def events_for(template: Template, function: str) -> list[str]:
    """events/*.json that the function's triggers accept (S3 events, SQS batches of S3
    notifications from a queue it reads, API routes)."""
    fn = template.functions[function]
    out = []
    for p in sorted(EVENTS.glob("*.json")):
        ev = json.loads(p.read_text())
        if "Records" in ev:
            if template.delivers(function, ev):
                out.append(p.name)
        elif "httpMethod" in ev and any(r.match(ev["httpMethod"], ev["path"]) is not None for r in fn.routes):
            out.append(p.name)
    return out


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_yaml(TEMPLATE)


@pytest.fixture
def world(s3_server: Any, images: dict[str, bytes], doc: dict[str, Any]) -> tuple[Any, str, Template]:
    bucket = s3_server.harmony_bucket
    put_catalog(s3_server, bucket, images, names=CATALOG)
    return s3_server, bucket, template_for(doc, bucket)


def point(ev: dict[str, Any], bucket: str, key: str | None = None) -> dict[str, Any]:
    ev = copy.deepcopy(ev)
    for rec in ev.get("Records", []):
        rec["s3"]["bucket"]["name"] = bucket
        rec["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
        if key is not None:
            rec["s3"]["object"]["key"] = key
    return ev


def point_sqs(ev: dict[str, Any], bucket: str, keys: list[str] | None = None) -> dict[str, Any]:
    """An SQS batch of S3 notifications pointed at ``bucket`` (message i at ``keys[i]``)."""
    ev = copy.deepcopy(ev)
    for i, msg in enumerate(ev["Records"]):
        body = json.loads(msg["body"])
        if "Records" in body:
            msg["body"] = json.dumps(point(body, bucket, keys[i] if keys else None))
    return ev


def test_every_function_has_events(doc: dict[str, Any]) -> None:
    template = template_for(doc, "b")
    assert sorted(template.functions) == ["DuplicatesFunction", "IndexFunction", "QueryDropFunction", "SearchFunction"]
    # IndexQueue's S3 notifications, and ReindexQueue's slices of a planned reindex and items of
    # a planned compaction
    assert events_for(template, "IndexFunction") == [
        "sqs-catalog-put-delete.json",
        "sqs-compact-item.json",
        "sqs-reindex-slice.json",
        "sqs-s3-test-event.json",
    ]
    # DuplicatesQueue's messages: slices that POST /duplicates sends (the flow: test below)
    assert events_for(template, "DuplicatesFunction") == ["sqs-duplicates-slice.json"]
    assert events_for(template, "QueryDropFunction") == ["s3-query-put.json"]
    assert events_for(template, "SearchFunction") == [
        "api-search-s3.json",
        "api-search-upload.json",
        "api-search-url.json",
    ]


def test_all_functions_from_template(
    world: tuple[Any, str, Template], images: dict[str, bytes], moto_server_url: str
) -> None:
    s3, bucket, template = world
    # IndexFunction: an IndexQueue batch of the catalog's notifications, then the events/ batches
    # (chelsea.jpg again: unchanged; a delete of a key never there: absent; S3's test message)
    batch = load_event("sqs-catalog-put-delete.json")
    batch["Records"] = [
        {**batch["Records"][0], "messageId": n, "body": json.dumps(load_event("s3-catalog-put.json"))} for n in CATALOG
    ]
    evs = [point_sqs(batch, bucket, [f"catalog/{n}" for n in CATALOG])]
    evs += [point_sqs(load_event(n), bucket) for n in events_for(template, "IndexFunction")]
    out = invoke(template.functions["IndexFunction"], evs, moto_server_url)
    assert out == [{"batchItemFailures": []}] * len(evs), out
    records = all_keys(s3, bucket, "index/records/")
    assert len(records) == len(CATALOG)
    out = invoke(template.functions["IndexFunction"], evs, moto_server_url)  # delivered again
    assert out == [{"batchItemFailures": []}] * len(evs) and all_keys(s3, bucket, "index/records/") == records

    # SearchFunction: upload, S3 reference, URL (served locally; private URLs allowed for the test)
    with served_images(images) as srv:
        evs = []
        for name in events_for(template, "SearchFunction"):
            ev = load_event(name)
            if name == "api-search-url.json":
                ev["body"] = base64.b64encode(json.dumps({"url": f"{srv}/coffee__resize_half.png"}).encode()).decode()
            evs.append(ev)
        out = invoke(template.functions["SearchFunction"], evs, moto_server_url, HARMONY_ALLOW_PRIVATE_URLS="1")
    tops = [api_ok(r)["results"][0]["key"] for r in out]
    assert tops == ["catalog/chelsea.jpg", "catalog/chelsea.jpg", "catalog/coffee.jpg"]

    # QueryDrop
    s3.put_object(Bucket=bucket, Key="queries/chelsea-query.jpg", Body=images["chelsea__hflip.jpg"])
    out = invoke(
        template.functions["QueryDropFunction"], [point(load_event("s3-query-put.json"), bucket)], moto_server_url
    )
    assert isinstance(out[0], dict), out
    doc = json.loads(s3.get_object(Bucket=bucket, Key="results/chelsea-query.jpg.json")["Body"].read())
    assert doc["results"][0]["key"] == "catalog/chelsea.jpg"


def test_duplicate_report_through_the_template(
    world: tuple[Any, str, Template], images: dict[str, bytes], moto_server_url: str
) -> None:
    """POST /duplicates (SearchFunction) sends its slices to an SQS queue (moto), each is handed
    to DuplicatesFunction as the SQS event source would, and GET /duplicates/{id} gives the
    report: the planted copy of chelsea.jpg in one group with it, nothing else."""
    import boto3

    from harmony_aws import runtime

    s3, bucket, template = world
    s3.put_object(Bucket=bucket, Key="catalog/copies/chelsea.jpg", Body=images["chelsea.jpg"])
    writer = runtime.record_writer(bucket)
    for key in [*(f"catalog/{n}" for n in CATALOG), "catalog/copies/chelsea.jpg"]:
        writer.reconcile(key)
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto_server_url)
    queue = sqs.create_queue(QueueName=f"{bucket}-duplicates")["QueueUrl"]
    sqs_env = {"AWS_ENDPOINT_URL_SQS": moto_server_url, "HARMONY_DUPLICATES_QUEUE_URL": queue}

    start = copy.deepcopy(load_event("api-search-url.json"))
    start.update(httpMethod="POST", path="/duplicates", resource="/duplicates", body=None, isBase64Encoded=False)
    start["requestContext"].update(httpMethod="POST", resourcePath="/duplicates", path="/v1/duplicates")
    start["queryStringParameters"] = start["multiValueQueryStringParameters"] = None
    (started,) = invoke(template.functions["SearchFunction"], [start], moto_server_url, **sqs_env)
    assert started["statusCode"] == 202, started
    job = json.loads(started["body"])

    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"])
    batches = []
    for m in messages["Messages"]:
        ev = load_event("sqs-duplicates-slice.json")
        ev["Records"][0].update(messageId=m["MessageId"], receiptHandle=m["ReceiptHandle"], body=m["Body"])
        batches.append(ev)
    assert len(batches) == job["slices"] == 1
    out = invoke(template.functions["DuplicatesFunction"], batches, moto_server_url, **sqs_env)
    assert out == [{"batchItemFailures": []}], out

    get = copy.deepcopy(start)
    get.update(httpMethod="GET", path=f"/duplicates/{job['id']}", resource="/duplicates/{id}")
    get["requestContext"].update(httpMethod="GET", resourcePath="/duplicates/{id}")
    get["pathParameters"] = {"id": job["id"]}
    (done,) = invoke(template.functions["SearchFunction"], [get], moto_server_url, **sqs_env)
    report = api_ok(done)["report"]
    assert [(g["keep"], [m["key"] for m in g["members"]]) for g in report["groups"]] == [
        ("catalog/chelsea.jpg", ["catalog/chelsea.jpg", "catalog/copies/chelsea.jpg"])
    ]
    assert report["images"] == len(CATALOG) + 1


def _broken(doc: dict[str, Any], how: str) -> dict[str, Any]:
    t = copy.deepcopy(doc)
    fn = t["Resources"]["SearchFunction"]["Properties"]
    if how == "handler":
        fn["Handler"] = "app.handler"
    elif how == "module":
        fn["Handler"] = "main.lambda_handler"
    elif how == "codeuri":
        fn["CodeUri"] = "functions/query_drop/"
    elif how == "env":
        v = fn["Environment"]["Variables"]
        v["HARMONY_BUCKET_NAME"] = v.pop("HARMONY_BUCKET")
    elif how == "env-typo-optional":
        v = fn["Environment"]["Variables"]
        v["HARMONY_INDEX_TTL_SECOND"] = v.pop("HARMONY_INDEX_TTL_SECONDS")
    elif how == "layer":
        t["Resources"]["EngineLayer"]["Properties"]["ContentUri"] = "layers/deps/"
    return t


@pytest.mark.parametrize(
    "how,expect",
    [
        ("handler", "Runtime.HandlerNotFound"),  # Handler names a function app.py does not have
        ("module", "Runtime.ImportModuleError"),  # Handler names a module CodeUri does not have
        ("codeuri", "KeyError"),  # another function's code: not an API handler
        ("env", "misconfigured"),  # HARMONY_BUCKET renamed
        ("env-typo-optional", "misconfigured"),  # an optional setting misspelt
        ("layer", "Runtime.ImportModuleError"),  # EngineLayer pointing at the wrong directory
    ],
)
def test_broken_template_fails(
    world: tuple[Any, str, Template], doc: dict[str, Any], moto_server_url: str, how: str, expect: str
) -> None:
    _, bucket, _ = world
    spec = template_for(_broken(doc, how), bucket).functions["SearchFunction"]
    (result,) = invoke(spec, [load_event("api-search-upload.json")], moto_server_url)
    if isinstance(result, InvokeError):
        got = result.payload["errorType"]
    else:
        assert result["statusCode"] == 500, f"{how}: template error went unnoticed: {result}"
        got = json.loads(result["body"])["error"]["code"]
    assert got == expect, result
