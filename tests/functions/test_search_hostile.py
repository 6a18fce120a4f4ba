"""SearchFunction against what users and attackers really send: bodies whose content type lies or
is missing, JSON nested 100,000 deep, S3 keys of 100,000 characters or with a lone surrogate,
non-ASCII URLs, banners; then hypothesis over the request parsing and the whole API Gateway event
-> response path. Nothing may answer 500."""

from __future__ import annotations

import base64
import copy
import http.server
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harmony_aws.sources import ImageBytes, ImageUrl, S3Object, source_from_body
from harmony_image import HarmonyError
from tests.functions.test_search_function import api_event, call
from tests.hostile import encoded, photo
from tests.support import BUCKET, image_bytes, serving

JPEG = image_bytes("chelsea.jpg")
# thousands of requests without a search: Powertools warns each time that no metric was added
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


def _error(status: int, body: dict[str, Any], want_status: int, want_code: str) -> None:
    assert status == want_status, body
    assert body["error"]["code"] == want_code, body
    assert body["error"]["message"]


# --------------------------------------------------------------------------- content type is a hint
def test_jpeg_sent_as_form_urlencoded_is_an_image(s3, search_fn, lambda_context):
    """`curl --data-binary @photo.jpg` sends application/x-www-form-urlencoded: once API Gateway
    passes it as bytes (the type in BinaryMediaTypes), the bytes decide."""
    ev = api_event(body=JPEG, content_type="application/x-www-form-urlencoded")
    assert ev["isBase64Encoded"] is True
    status, body = call(search_fn, lambda_context, ev)
    assert status == 200, body
    assert (body["query"]["width"], body["query"]["height"]) == (320, 213)


@pytest.mark.parametrize("ctype", ["application/json", "text/plain", None, "multipart/form-data; boundary=x"])
def test_image_bytes_win_over_the_content_type(s3, search_fn, lambda_context, ctype):
    status, body = call(search_fn, lambda_context, api_event(body=JPEG, content_type=ctype))
    assert status == 200, body


def test_binary_body_passed_as_text_says_why(s3, search_fn, lambda_context):
    """What API Gateway does to a binary body whose type is not in BinaryMediaTypes: UTF-8 text,
    invalid bytes replaced. The answer names the cause and the fix."""
    mangled = JPEG.decode("utf-8", "replace")
    ev = api_event(body=mangled, content_type="application/x-www-form-urlencoded")
    status, body = call(search_fn, lambda_context, ev)
    _error(status, body, 415, "not_an_image")
    assert "arrived as text" in body["error"]["message"] and "image/jpeg" in body["error"]["message"]


def test_json_without_its_content_type_is_json(s3, search_fn, lambda_context):
    """`curl -d '{"s3": ...}'` (no -H) is form-urlencoded too."""
    s3.put_object(Bucket=BUCKET, Key="queries/q.jpg", Body=JPEG)
    doc = json.dumps({"s3": {"key": "queries/q.jpg"}})
    for ev in (
        api_event(body=doc, content_type="application/x-www-form-urlencoded"),
        api_event(body=doc.encode(), content_type="application/x-www-form-urlencoded"),  # base64
        api_event(body="  \n" + doc, content_type=None),
    ):
        status, body = call(search_fn, lambda_context, ev)
        assert status == 200, body


# --------------------------------------------------------------------------- parsing limits
def test_deeply_nested_json_is_400(s3, search_fn, lambda_context):
    for doc in ("[" * 100_000 + "]" * 100_000, '{"url": ' + "[" * 100_000 + "]" * 100_000 + "}"):
        status, body = call(search_fn, lambda_context, api_event(body=doc, content_type="application/json"))
        _error(status, body, 400, "invalid_json")
        assert "nested too deeply" in body["error"]["message"]


def test_s3_key_of_100000_characters_is_422(s3, search_fn, lambda_context):
    doc = json.dumps({"s3": {"key": "catalog/" + "a" * 100_000}})
    status, body = call(search_fn, lambda_context, api_event(body=doc, content_type="application/json"))
    _error(status, body, 422, "validation_error")
    assert "1024" in body["error"]["message"] and len(body["error"]["message"]) < 500


@pytest.mark.parametrize("b64", [False, True])
def test_s3_key_with_a_lone_surrogate_is_422(s3, search_fn, lambda_context, b64):
    doc = '{"s3": {"key": "catalog/\\ud800.jpg"}}'  # valid JSON text, not valid UTF-8 once decoded
    ev = api_event(body=doc.encode() if b64 else doc, content_type="application/json")
    status, body = call(search_fn, lambda_context, ev)
    _error(status, body, 422, "validation_error")
    assert '"s3.key"' in body["error"]["message"]


def test_lone_surrogate_in_the_event_body_itself_is_not_a_500(s3, search_fn, lambda_context):
    """An event whose body string holds a lone surrogate (JSON allows "\\ud800" in the event)."""
    for ctype in ("application/json", "image/jpeg", None):
        status, body = call(search_fn, lambda_context, api_event(body='{"url": "\ud800"}', content_type=ctype))
        assert 400 <= status < 500, body


MULTIPART = "multipart/form-data; boundary=b"


@pytest.mark.parametrize(
    "body, ctype, message",
    [
        (b"--b\r\n\r\nx\r\n" * 500_000 + b"--b--\r\n", MULTIPART, "more than 64 parts"),
        (
            b"".join(
                b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1) for i in range(20_000)
            ),
            "multipart/form-data; boundary=b0",
            "fields sent: none",
        ),
        (b"--b\r\n" + b"X-A: b\r\n" * 700_000 + b"\r\nx\r\n--b--\r\n", MULTIPART, "8,192 bytes of headers"),
    ],
    ids=["500000-parts", "nested-20000-deep", "5-MB-of-headers"],
)
def test_hostile_multipart_is_400_at_once(s3, search_fn, lambda_context, body, ctype, message):
    """The standard library's MIME parser took over a minute on the first and recursed until
    RecursionError (500) on the second."""
    t0 = time.perf_counter()
    status, doc = call(search_fn, lambda_context, api_event(body=body, content_type=ctype))
    _error(status, doc, 400, "bad_request")
    assert message in doc["error"]["message"]
    assert time.perf_counter() - t0 < 2


def test_multipart_file_field_is_found(s3, search_fn, lambda_context):
    fields = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n'
    encoded_file = base64.b64encode(JPEG)
    for part in (
        b'Content-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n' + JPEG,
        b'Content-Disposition: form-data; name="file"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + encoded_file,
    ):
        body = fields + b"--b\r\n" + part + b"\r\n--b--\r\n"
        status, doc = call(search_fn, lambda_context, api_event(body=body, content_type=MULTIPART))
        assert status == 200, doc


def test_error_messages_stay_small(s3, search_fn, lambda_context):
    """400,000 unknown JSON keys made a 17 MB message: over Lambda's 6 MB response limit (a 502)."""
    doc = json.dumps({f"k{i}": 0 for i in range(400_000)})
    t0 = time.perf_counter()
    status, body = call(search_fn, lambda_context, api_event(body=doc, content_type="application/json"))
    assert time.perf_counter() - t0 < 2  # pydantic made an error object per key: 5 s, half a GB
    _error(status, body, 422, "validation_error")
    assert len(body["error"]["message"]) < 1000 and "(and 399,997 more)" in body["error"]["message"]
    doc = json.dumps({"s3": {"key": "k", "x" * 1_000_000: 1}})
    status, body = call(search_fn, lambda_context, api_event(body=doc, content_type="application/json"))
    assert status == 422 and len(body["error"]["message"]) < 1000


# --------------------------------------------------------------------------- URLs
@pytest.fixture
def cafe_server() -> Iterator[str]:
    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/caf%C3%A9.jpg":
                self.send_response(200)
                self.send_header("Content-Length", str(len(JPEG)))
                self.end_headers()
                self.wfile.write(JPEG)
            elif self.path == "/redirect":
                self.wfile.write(b"HTTP/1.1 302 Found\r\nLocation: /caf\xc3\xa9.jpg\r\nContent-Length: 0\r\n\r\n")
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

    with serving(H) as url:
        yield url


@pytest.mark.parametrize("path", ["/café.jpg", "/redirect"])
def test_non_ascii_urls_are_fetched(s3, search_fn, lambda_context, cafe_server, monkeypatch, path):
    monkeypatch.setenv("HARMONY_ALLOW_PRIVATE_URLS", "1")
    doc = json.dumps({"url": cafe_server + path})
    status, body = call(search_fn, lambda_context, api_event(body=doc, content_type="application/json"))
    assert status == 200, body
    status, body = call(search_fn, lambda_context, api_event("GET", query={"url": cafe_server + path}))
    assert status == 200, body


def test_non_ascii_host_is_looked_up_as_idna(s3, search_fn, lambda_context, monkeypatch):
    asked = _no_network(monkeypatch)
    doc = json.dumps({"url": "http://☃.example/x.jpg"})
    status, body = call(search_fn, lambda_context, api_event(body=doc, content_type="application/json"))
    _error(status, body, 502, "fetch_failed")
    assert asked == ["xn--n3h.example"]


# --------------------------------------------------------------------------- banners
@pytest.mark.parametrize("size", [(1000, 2), (2, 1000), (3000, 1)])
def test_banners_are_answered(s3, search_fn, index_fn, lambda_context, size):
    from tests.support import s3_event

    s3.put_object(Bucket=BUCKET, Key="catalog/chelsea.jpg", Body=JPEG)
    index_fn.lambda_handler(s3_event("s3-catalog-put.json", BUCKET, "catalog/chelsea.jpg"), lambda_context)
    for scoring in ("default", "seed"):
        ev = api_event(body=encoded(".png", photo(*size)), content_type="image/png", query={"scoring": scoring})
        status, body = call(search_fn, lambda_context, ev)
        assert status == 200, body
        assert (body["query"]["width"], body["query"]["height"]) == size and len(body["results"]) == 1


# --------------------------------------------------------------------------- the OpenAPI document
def test_openapi_documents_the_post_body_and_errors(s3, search_fn, lambda_context):
    status, doc = call(search_fn, lambda_context, api_event("GET", path="/openapi", query={"format": "json"}))
    assert status == 200
    post = doc["paths"]["/search"]["post"]
    content = post["requestBody"]["content"]
    assert {"image/*", "application/octet-stream", "multipart/form-data", "application/json"} <= set(content)
    assert set(content["application/json"]["schema"]["properties"]) == {"url", "s3", "image_base64"}
    assert content["multipart/form-data"]["schema"]["required"] == ["file"]
    assert {"400", "413", "415", "422", "502", "504"} <= set(post["responses"])
    assert doc["components"]["schemas"]["Error"]["required"] == ["error"]


# --------------------------------------------------------------------------- fuzzing
CONTENT_TYPES = st.sampled_from(
    [
        None,
        "",
        "image/jpeg",
        "application/json",
        "text/json",
        "application/vnd.x+json",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data",
        "multipart/form-data; boundary=b",
        'multipart/form-data; boundary="a b"',
    ]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
QUERY_DOCS = st.fixed_dictionaries(
    {},
    optional={
        "url": st.one_of(st.text(max_size=60), st.just("http://☃.invalid/x.jpg"), JSON_VALUES),
        "s3": st.one_of(
            st.fixed_dictionaries({}, optional={"key": st.text(max_size=60) | JSON_VALUES, "bucket": JSON_VALUES}),
            JSON_VALUES,
        ),
        "image_base64": st.one_of(
            st.text(max_size=60), st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode())
        ),
        "extra": JSON_VALUES,
    },
)
BODIES = st.one_of(
    st.binary(max_size=300),
    QUERY_DOCS.map(lambda d: json.dumps(d).encode()),
    JSON_VALUES.map(lambda d: json.dumps(d).encode()),
    st.sampled_from(
        [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00", b"BM"]
    ).flatmap(lambda magic: st.binary(max_size=200).map(lambda tail: magic + tail)),
    st.binary(max_size=200).map(
        lambda b: b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + b + b"\r\n--b--\r\n"
    ),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES, ctype=CONTENT_TYPES)
def test_fuzz_source_from_body(body: bytes, ctype: str | None) -> None:
    """A source, or a 4xx HarmonyError: nothing else comes out of any body."""
    try:
        source = source_from_body(body, ctype)
    except HarmonyError as exc:
        assert 400 <= exc.status < 500 and exc.code and exc.message
        return
    assert isinstance(source, ImageBytes | ImageUrl | S3Object)
    if isinstance(source, ImageBytes):
        assert source.data


def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse every host lookup and return the hosts asked for. Loopback lookups go through
    unrecorded: they are the test servers' (moto's), which other tests' background work (segment
    downloads, retried S3 calls) may still be reaching while this test runs."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: Any, **kw: Any) -> Any:
        if host in ("127.0.0.1", "localhost", "::1"):
            return real(host, *args, **kw)
        asked.append(host)
        raise socket.gaierror(-2, "no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


EVENT_PATHS = st.sampled_from(["/search", "/search", "/", "/openapi", "/nowhere", "/search/", "//search"])
QUERIES = st.none() | st.dictionaries(
    st.sampled_from(["k", "scoring", "min_score", "url", "format", "x"]), st.text(max_size=20), max_size=4
)


@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["POST", "GET", "POST", "PUT", "OPTIONS", "HEAD"]),
    path=EVENT_PATHS,
    body=st.none() | BODIES,
    as_text=st.booleans(),
    ctype=CONTENT_TYPES,
    query=QUERIES,
    headers=st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=3),
)
def test_fuzz_api_gateway_events(
    s3, search_fn, lambda_context, monkeypatch, method, path, body, as_text, ctype, query, headers
) -> None:
    """Events as API Gateway could send them (bodies as text or base64, any header, query or
    path): a well-formed proxy response, never a 500."""
    _no_network(monkeypatch)
    payload: bytes | str | None = body
    if body is not None and as_text:
        payload = body.decode("utf-8", "replace")
    ev = api_event(method, body=payload, content_type=ctype, query=query or None, path=path)
    ev["headers"] = {**(ev["headers"] or {}), **headers}
    ev["multiValueHeaders"] = {k: [v] for k, v in ev["headers"].items()}
    resp = search_fn.lambda_handler(copy.deepcopy(ev), lambda_context)
    assert isinstance(resp["statusCode"], int) and resp["statusCode"] != 500 and resp["statusCode"] < 600, resp
    assert isinstance(resp.get("body", ""), str)
    if resp["statusCode"] >= 400 and "json" in str(resp.get("headers", {}).get("Content-Type", "")):
        doc = json.loads(resp["body"])
        assert set(doc) == {"error"} or "message" in doc, doc


@pytest.mark.parametrize("function", ["search", "index", "query_drop"])
def test_handlers_load_the_engine_before_opencv(function):
    """OPENCV_IO_MAX_IMAGE_PIXELS only works if harmony_image sets it before OpenCV loads: true
    for every handler as Lambda imports it (a fresh interpreter, the handler's module first)."""
    import subprocess
    import sys

    from tests.support import REPO

    code = (
        "import importlib.util, os, sys\n"
        f"spec = importlib.util.spec_from_file_location('app', {str(REPO / 'functions' / function / 'app.py')!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "import harmony_image.decode as d\n"
        "print(d.OPENCV_GUARD, os.environ.get('OPENCV_IO_MAX_IMAGE_PIXELS'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split() == ["True", "40000000"], out.stderr[-2000:]
