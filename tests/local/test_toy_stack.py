"""harmony_local's own behaviour, on a toy template (fast handlers without numpy): the API
Gateway event and response mapping, routing from the template, Lambda-like isolation, errors,
timeouts, and S3 triggers with prefix/suffix filters."""

from __future__ import annotations

import base64
import json
import time

import pytest

from harmony_local.stack.server import s3_record
from harmony_local.stack.template import TemplateError, load_template, media_type_matches, template_from_doc
from tests.support import TOY_TEMPLATE, request, request_json


def test_template_is_read_like_sam():
    t = load_template(TOY_TEMPLATE, bucket_name="b1", parameter_overrides={"Mode": "loud"})
    echo = t.functions["EchoFunction"]
    assert echo.handler == "app.echo" and echo.code_uri == TOY_TEMPLATE.parent / "echo"
    assert echo.timeout == 3 and t.functions["SlowFunction"].timeout == 1
    assert echo.environment == {
        "TOY_GLOBAL": "g",
        "TOY_MODE": "LOUD",
        "TOY_BUCKET": "b1",
        "TOY_ARN": "arn:aws:s3:::b1/x",
    }
    assert [(r.method, r.path, r.rest_api) for r in echo.routes] == [
        ("ANY", "/echo/{name}", "Api"),
        ("GET", "/files/{proxy+}", "Api"),
    ]
    api = t.apis["Api"]
    assert api.stage == "dev" and set(api.binary_media_types) == {"image~1*", "application~1octet-stream"}
    (trig,) = t.s3_triggers
    assert trig.matches("ObjectCreated:Put", "in/a.jpg") and trig.matches("ObjectRemoved:Delete", "in/b/c.jpg")
    assert not trig.matches("ObjectCreated:Put", "in/a.png") and not trig.matches("ObjectCreated:Put", "out/a.jpg")
    # routing: an exact path wins over a parameterised one
    route, params = t.route_for("GET", "/echo/binary")
    assert route.function == "BinaryFunction" and params == {}
    route, params = t.route_for("DELETE", "/echo/x")
    assert route.function == "EchoFunction" and params == {"name": "x"}
    assert t.route_for("GET", "/files/a/b.txt")[1] == {"proxy": "a/b.txt"}
    assert t.route_for("POST", "/files/a") is None
    assert media_type_matches("image/jpeg; q=1", ("image~1*",)) and not media_type_matches("text/plain", ("image~1*",))


def _looped(names: object, *, fragment_key: str = "Fn${Name}") -> dict:
    """A template whose functions come from Fn::ForEach over ``names`` (a list, or a !Ref)."""
    fn = {
        "Type": "AWS::Serverless::Function",
        "Properties": {
            "Handler": "app.echo",
            "CodeUri": "echo/",
            "FunctionName": {"Fn::Sub": "${AWS::StackName}-&{Name}"},
            "Environment": {
                "Variables": {
                    "WHO": {"Ref": "Name"},
                    "OF": {"Fn::Sub": ["${Name}/${N}", {"N": {"Fn::Length": {"Ref": "Names"}}}]},
                    "Fn::ForEach::Vars": ["Other", ["a", "b"], {"PAIR_${Other}": {"Fn::Sub": "${Name}${Other}"}}],
                }
            },
        },
    }
    return {
        "Parameters": {"Names": {"Type": "CommaDelimitedList", "Default": "x,y"}},
        "Resources": {"Fn::ForEach::Fns": ["Name", names, {fragment_key: fn}]},
    }


def test_fn_foreach_and_fn_length_are_expanded_as_cloudformation_does():
    t = template_from_doc(_looped({"Ref": "Names"}), base=TOY_TEMPLATE.parent)
    assert sorted(t.functions) == ["Fnx", "Fny"]  # the parameter's default
    t = template_from_doc(_looped({"Ref": "Names"}), base=TOY_TEMPLATE.parent, parameter_overrides={"Names": "p, q,r"})
    assert sorted(t.functions) == ["Fnp", "Fnq", "Fnr"]
    q = t.functions["Fnq"]
    assert q.function_name == "harmony-local-q" and t.function_named("harmony-local-q") == "Fnq"
    assert q.environment == {"WHO": "q", "OF": "q/3", "PAIR_a": "qa", "PAIR_b": "qb"}
    assert sorted(template_from_doc(_looped(["1", "2"]), base=TOY_TEMPLATE.parent).functions) == ["Fn1", "Fn2"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_looped({"Ref": "Nope"}), "a collection must be a list or a !Ref to a list parameter"),
        (_looped({"Ref": "Names"}, fragment_key="SameName"), "SameName is made twice"),
        ({"Resources": {"Fn::ForEach::Bad": ["X", ["a"]]}}, "takes \\[identifier, collection, fragment\\]"),
    ],
)
def test_a_malformed_fn_foreach_is_named(doc, message):
    with pytest.raises(TemplateError, match=message):
        template_from_doc(doc, base=TOY_TEMPLATE.parent)


def test_api_event_shape_binary_body(toy):
    jpeg = b"\xff\xd8\xff\xe0binary\x00\xff"
    status, headers, body = request(
        f"{toy.url}echo/bob?k=3&k=4&x=", jpeg, method="POST", headers={"Content-Type": "image/jpeg", "X-Multi": "v"}
    )
    assert status == 201 and headers["X-Toy"] == "1"
    doc = json.loads(body)
    ev = doc["event"]
    assert ev["resource"] == "/echo/{name}" and ev["path"] == "/echo/bob" and ev["httpMethod"] == "POST"
    assert ev["isBase64Encoded"] is True and base64.b64decode(ev["body"]) == jpeg
    assert ev["pathParameters"] == {"name": "bob"}
    assert ev["queryStringParameters"] == {"k": "4", "x": ""}
    assert ev["multiValueQueryStringParameters"] == {"k": ["3", "4"], "x": [""]}
    assert ev["headers"]["Content-Type"] == "image/jpeg" and ev["multiValueHeaders"]["X-Multi"] == ["v"]
    rc = ev["requestContext"]
    assert rc["stage"] == "dev" and rc["resourcePath"] == "/echo/{name}" and rc["path"] == "/dev/echo/bob"
    assert rc["identity"]["sourceIp"] == "127.0.0.1" and rc["requestId"]
    assert ev["stageVariables"] is None
    # Lambda-like: the template's environment, the handler's folder as cwd, the context
    assert doc["env"]["_HANDLER"] == "app.echo" and doc["env"]["AWS_LAMBDA_FUNCTION_NAME"] == "EchoFunction"
    assert doc["env"]["AWS_ENDPOINT_URL_S3"] == toy.s3_endpoint
    assert doc["cwd"] == str(TOY_TEMPLATE.parent / "echo")
    assert 0 < doc["context"]["remaining_ms"] <= 3000


def test_text_body_and_multi_value_response_headers(toy):
    status, _headers, body = request(
        f"{toy.url}echo/t", json.dumps({"a": 1}).encode(), method="PUT", headers={"Content-Type": "application/json"}
    )
    assert status == 201
    ev = json.loads(body)["event"]
    assert ev["isBase64Encoded"] is False and json.loads(ev["body"]) == {"a": 1}
    status, _, body = request(f"{toy.url}echo/binary")
    assert status == 200 and body == base64.b64decode("iVBORw0KGgo=")


def test_no_route_is_403_like_api_gateway(toy):
    assert request_json(f"{toy.url}nowhere") == (403, {"message": "Missing Authentication Token"})


def test_handler_errors_become_502(toy):
    assert request_json(f"{toy.url}boom") == (502, {"message": "Internal server error"})
    assert request_json(f"{toy.url}missing") == (502, {"message": "Internal server error"})
    bad = [i for i in toy.invocations if i.function == "MissingFunction"]
    # what Lambda reports when the module imports but has no such function
    assert bad and bad[-1].error["errorType"] == "Runtime.HandlerNotFound"


def test_timeout_kills_the_invocation(toy):
    t0 = time.perf_counter()
    assert request_json(f"{toy.url}slow") == (502, {"message": "Internal server error"})
    assert time.perf_counter() - t0 < 4  # the template's Timeout (1 s), not the handler's 5 s sleep
    inv = [i for i in toy.invocations if i.function == "SlowFunction"][-1]
    assert "timed out" in inv.error["errorMessage"]


def test_s3_trigger_filters_and_event_shape(toy):
    s3 = toy.client()
    b = toy.config.bucket
    s3.put_object(Bucket=b, Key="in/my photo+1.jpg", Body=b"x")
    s3.put_object(Bucket=b, Key="in/skip.png", Body=b"x")  # suffix filter
    s3.put_object(Bucket=b, Key="other/a.jpg", Body=b"x")  # prefix filter
    toy.wait_idle(30)
    s3.delete_object(Bucket=b, Key="in/my photo+1.jpg")
    toy.wait_idle(30)
    seen = [
        json.loads(s3.get_object(Bucket=b, Key=o["Key"])["Body"].read())
        for o in s3.list_objects_v2(Bucket=b, Prefix="seen/").get("Contents", [])
    ]
    assert [r["eventName"] for r in seen] == ["ObjectCreated:Put", "ObjectRemoved:Delete"]
    put = seen[0]
    assert put["eventSource"] == "aws:s3" and put["awsRegion"] == "us-east-1"
    assert put["s3"]["bucket"]["name"] == b and put["s3"]["bucket"]["arn"] == f"arn:aws:s3:::{b}"
    assert put["s3"]["object"]["key"] == "in/my+photo%2B1.jpg"  # S3's encoding: "/" kept, space "+"
    assert put["s3"]["object"]["size"] == 1 and put["s3"]["object"]["eTag"]
    for field in ("userIdentity", "requestParameters", "responseElements"):
        assert field in put


def test_s3_record_completion():
    rec = s3_record(
        {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "a%2Fb+c.jpg"}}}
    )
    assert rec["s3"]["object"]["key"] == "a/b+c.jpg" and rec["s3"]["object"]["sequencer"]
    assert rec["s3"]["bucket"]["ownerIdentity"]["principalId"]
