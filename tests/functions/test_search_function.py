"""SearchFunction (functions/search/app.py) through API Gateway proxy events from events/*.json,
over a catalog of real photos in moto (in-process, and one class against moto's HTTP server)."""

from __future__ import annotations

import base64
import copy
import json
from urllib.parse import parse_qs, urlsplit

import pytest

from harmony_aws.layout import record_key
from tests.hostile import png_claiming
from tests.support import BUCKET, CATALOG_NAMES, all_keys, load_event, put_catalog, s3_event, served_images

RESULT_FIELDS = {"url", "key", "score", "ssim", "orb", "sha256"}


def api_event(
    method="POST",
    body: bytes | str | None = None,
    content_type: str | None = None,
    query: dict | None = None,
    path="/search",
) -> dict:
    ev = copy.deepcopy(load_event("api-search-upload.json"))
    ev["httpMethod"] = method
    ev["path"] = path
    ev["resource"] = path
    ev["requestContext"]["httpMethod"] = method
    ev["requestContext"]["resourcePath"] = path
    headers = {k: v for k, v in ev["headers"].items() if k.lower() != "content-type"}
    if content_type:
        headers["Content-Type"] = content_type
    ev["headers"] = headers
    ev["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
    ev["queryStringParameters"] = query
    ev["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()} if query else None
    if body is None:
        ev["body"], ev["isBase64Encoded"] = None, False
    elif isinstance(body, bytes):
        ev["body"], ev["isBase64Encoded"] = base64.b64encode(body).decode(), True
    else:
        ev["body"], ev["isBase64Encoded"] = body, False
    return ev


def call(search_fn, lambda_context, ev) -> tuple[int, dict]:
    resp = search_fn.lambda_handler(ev, lambda_context)
    body = resp["body"]
    if resp.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return resp["statusCode"], json.loads(body)


def multipart(fields: dict[str, tuple[str | None, bytes, str | None]]) -> tuple[bytes, str]:
    boundary = "----harmonyBoundary7MA4YWxkTrZu0gW"
    out = b""
    for name, (filename, data, ctype) in fields.items():
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


@pytest.fixture
def catalog(s3, images, index_fn, lambda_context, monkeypatch):
    """The catalog photos in moto, indexed by the IndexFunction from S3 put events."""
    put_catalog(s3, BUCKET, images, metadata={"coffee.jpg": {"source-url": "https://example.com/coffee.jpg"}})
    for n in CATALOG_NAMES:
        out = index_fn.lambda_handler(s3_event("s3-catalog-put.json", BUCKET, "catalog/" + n), lambda_context)
        assert out["results"][0]["action"] == "indexed"
    return s3


@pytest.fixture
def image_server(images):
    with served_images(images) as url:
        yield url


def test_an_unreadable_record_is_left_out_and_flagged(catalog, search_fn, lambda_context):
    """One damaged record costs its image, not the search: the answer says the index is incomplete."""
    catalog.put_object(
        Bucket=BUCKET,
        Key=record_key("catalog/coffee.jpg"),
        Body=b"not a feature record",
        Metadata={"catalog-key": "catalog/coffee.jpg"},
    )
    status, body = call(search_fn, lambda_context, load_event("api-search-upload.json"))
    assert status == 200, body
    assert body["index"] == {"complete": False, "missing": 1}
    assert body["catalog_size"] == len(CATALOG_NAMES) - 1
    assert "catalog/coffee.jpg" not in [r["key"] for r in body["results"]]
    assert body["results"][0]["key"] == "catalog/chelsea.jpg"


# --------------------------------------------------------------------------- happy paths
def test_upload_event_from_events_dir(catalog, search_fn, lambda_context):
    status, body = call(search_fn, lambda_context, load_event("api-search-upload.json"))
    assert status == 200, body
    assert set(body) == {"query", "results", "catalog_size", "took_ms", "index"}
    assert body["index"] == {"complete": True, "missing": 0}
    assert set(body["query"]) == {"sha256", "width", "height"}
    assert (body["query"]["width"], body["query"]["height"]) == (48, 32)
    assert body["catalog_size"] == len(CATALOG_NAMES)
    assert len(body["results"]) == 3  # k=3 in the event
    assert all(set(r) == RESULT_FIELDS for r in body["results"])
    assert body["results"][0]["key"] == "catalog/chelsea.jpg"


@pytest.mark.parametrize(
    "query,expected",
    [
        ("chelsea__hflip.jpg", "catalog/chelsea.jpg"),
        ("astronaut__jpeg_q20.jpg", "catalog/astronaut.jpg"),
        ("rocket__brighter.jpg", "catalog/rocket.jpg"),
        ("chelsea__crop_center_80.jpg", "catalog/chelsea.jpg"),
    ],
)
def test_raw_upload_finds_the_original(catalog, search_fn, lambda_context, images, query, expected):
    status, body = call(search_fn, lambda_context, api_event(body=images[query], content_type="image/jpeg"))
    assert status == 200, body
    assert body["results"][0]["key"] == expected
    assert len(body["results"]) == 5


def test_identical_bytes_score_one_and_seed_scoring(catalog, search_fn, lambda_context, images):
    for scoring in ("default", "seed"):
        status, body = call(
            search_fn,
            lambda_context,
            api_event(body=images["moon.jpg"], content_type="image/jpeg", query={"scoring": scoring, "k": "2"}),
        )
        assert status == 200
        top = body["results"][0]
        assert top["key"] == "catalog/moon.jpg" and top["score"] == pytest.approx(1.0, abs=1e-6)
        assert len(body["results"]) == 2


def test_min_score_keeps_only_copies(catalog, search_fn, lambda_context, images):
    """min_score=0.5 is the documented "same image or a copy" threshold of default scoring."""
    status, body = call(
        search_fn,
        lambda_context,
        api_event(body=images["chelsea__hflip.jpg"], content_type="image/jpeg", query={"min_score": "0.5"}),
    )
    assert status == 200, body
    assert [r["key"] for r in body["results"]] == ["catalog/chelsea.jpg"]
    status, body = call(
        search_fn,
        lambda_context,
        api_event(body=images["chelsea__hflip.jpg"], content_type="image/jpeg", query={"min_score": "0"}),
    )
    assert len(body["results"]) == 5


def test_result_urls_source_url_else_presigned(catalog, search_fn, lambda_context, images):
    status, body = call(
        search_fn, lambda_context, api_event(body=images["coffee.jpg"], content_type="image/png", query={"k": "50"})
    )
    assert status == 200
    urls = {r["key"]: r["url"] for r in body["results"]}
    assert urls["catalog/coffee.jpg"] == "https://example.com/coffee.jpg"
    pres = urlsplit(urls["catalog/chelsea.jpg"])
    assert pres.path.endswith("/catalog/chelsea.jpg") and "X-Amz-Signature" in parse_qs(pres.query)
    assert len(body["results"]) == len(CATALOG_NAMES)  # k=50: every distinct catalog image


def test_multipart_upload(catalog, search_fn, lambda_context, images):
    data, ctype = multipart(
        {"note": (None, b"hi", None), "file": ("q.jpg", images["chelsea__hflip.jpg"], "image/jpeg")}
    )
    status, body = call(search_fn, lambda_context, api_event(body=data, content_type=ctype))
    assert status == 200, body
    assert body["results"][0]["key"] == "catalog/chelsea.jpg"


def test_json_image_base64_and_s3_reference(catalog, search_fn, lambda_context, images):
    b64 = base64.b64encode(images["camera.jpg"]).decode()
    status, body = call(
        search_fn, lambda_context, api_event(body=json.dumps({"image_base64": b64}), content_type="application/json")
    )
    assert status == 200 and body["results"][0]["key"] == "catalog/camera.jpg"
    status, body = call(search_fn, lambda_context, load_event("api-search-s3.json"))
    assert status == 200 and body["results"][0]["key"] == "catalog/chelsea.jpg"
    catalog.put_object(Bucket=BUCKET, Key="queries/q.jpg", Body=images["coins.jpg"])
    status, body = call(
        search_fn,
        lambda_context,
        api_event(body=json.dumps({"s3": {"bucket": BUCKET, "key": "queries/q.jpg"}}), content_type="application/json"),
    )
    assert status == 200 and body["results"][0]["key"] == "catalog/coins.jpg"


def test_url_queries_with_opt_in(catalog, search_fn, lambda_context, image_server, monkeypatch):
    monkeypatch.setenv("HARMONY_ALLOW_PRIVATE_URLS", "1")
    ev = load_event("api-search-url.json")
    ev["body"] = base64.b64encode(json.dumps({"url": f"{image_server}/rocket__brighter.jpg"}).encode()).decode()
    assert ev["isBase64Encoded"] is True  # as `sam local generate-event` writes it
    status, body = call(search_fn, lambda_context, ev)
    assert status == 200, body
    assert body["results"][0]["key"] == "catalog/rocket.jpg"
    status, body = call(
        search_fn, lambda_context, api_event("GET", query={"url": f"{image_server}/astronaut__jpeg_q20.jpg", "k": "1"})
    )
    assert status == 200 and [r["key"] for r in body["results"]] == ["catalog/astronaut.jpg"]
    status, body = call(search_fn, lambda_context, api_event("GET", query={"url": f"{image_server}/nope.jpg"}))
    assert status == 404 and body["error"]["code"] == "url_not_found"


def test_warm_index_picks_up_new_images(catalog, search_fn, index_fn, lambda_context, images, monkeypatch):
    monkeypatch.setenv("HARMONY_INDEX_TTL_SECONDS", "0")
    from harmony_aws import runtime

    runtime.reset()
    call(search_fn, lambda_context, api_event(body=images["moon.jpg"], content_type="image/jpeg"))
    reader = runtime.search_service().reader
    assert reader.last_refresh["loaded"] == len(CATALOG_NAMES)
    call(search_fn, lambda_context, api_event(body=images["moon.jpg"], content_type="image/jpeg"))
    assert reader.last_refresh["loaded"] == 0  # warm: nothing reloaded
    catalog.put_object(Bucket=BUCKET, Key="catalog/new/coffee copy.jpg", Body=images["coffee__resize_half.png"])
    index_fn.lambda_handler(s3_event("s3-catalog-put.json", BUCKET, "catalog/new/coffee copy.jpg"), lambda_context)
    _status, body = call(
        search_fn, lambda_context, api_event(body=images["coffee__resize_half.png"], content_type="image/png")
    )
    assert body["catalog_size"] == len(CATALOG_NAMES) + 1
    assert body["results"][0]["key"] == "catalog/new/coffee copy.jpg"


def test_metrics_and_correlation_id(catalog, search_fn, lambda_context, images, capsys):
    call(search_fn, lambda_context, api_event(body=images["moon.jpg"], content_type="image/jpeg"))
    out = capsys.readouterr().out
    emf = [json.loads(line) for line in out.splitlines() if '"_aws"' in line]
    names = {m["Name"] for doc in emf for d in doc["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert {"QueryLatency", "CatalogSize"} <= names


# --------------------------------------------------------------------------- errors
def _assert_error(status, body, want_status, want_code):
    assert status == want_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == want_code
    assert body["error"]["message"]


@pytest.mark.parametrize(
    "make,ctype,status,code",
    [
        (lambda im: b"this is plain text, not an image", "image/jpeg", 415, "not_an_image"),
        (lambda im: b"", "image/jpeg", 400, "empty_image"),
        (lambda im: None, "image/jpeg", 400, "empty_image"),
        (lambda im: im["chelsea.jpg"][: len(im["chelsea.jpg"]) // 2], "image/jpeg", 422, "truncated_image"),
        (lambda im: png_claiming(50_000, 50_000), "image/png", 413, "image_too_large"),
        (lambda im: im["chelsea.jpg"] + b"\0" * (6 * 1024 * 1024), "image/jpeg", 413, "payload_too_large"),
        (lambda im: b"%PDF-1.4\n%\xe2\xe3", "application/octet-stream", 415, "not_an_image"),
        (lambda im: "{not json", "application/json", 400, "invalid_json"),
        (
            lambda im: json.dumps({"url": "http://a/x.jpg", "image_base64": "AA=="}),
            "application/json",
            422,
            "validation_error",
        ),
        (lambda im: json.dumps({"foo": 1}), "application/json", 422, "validation_error"),
        (lambda im: json.dumps([1, 2]), "application/json", 422, "validation_error"),
        (lambda im: json.dumps({"image_base64": "@@@"}), "application/json", 400, "bad_request"),
        (lambda im: json.dumps({"image_base64": ""}), "application/json", 400, "empty_image"),
        (
            lambda im: json.dumps({"url": "http://169.254.169.254/latest/meta-data/"}),
            "application/json",
            400,
            "url_refused",
        ),
        (lambda im: json.dumps({"url": "http://localhost/x.jpg"}), "application/json", 400, "url_refused"),
        (lambda im: json.dumps({"url": "file:///etc/passwd"}), "application/json", 400, "url_refused"),
        (lambda im: json.dumps({"s3": {"key": "catalog/missing.jpg"}}), "application/json", 404, "s3_object_not_found"),
        (
            lambda im: json.dumps({"s3": {"bucket": "someone-elses", "key": "catalog/chelsea.jpg"}}),
            "application/json",
            400,
            "s3_reference_refused",
        ),
        (
            lambda im: json.dumps({"s3": {"key": "index/records/x.npz"}}),
            "application/json",
            400,
            "s3_reference_refused",
        ),
        (lambda im: json.dumps({"s3": {"key": ""}}), "application/json", 422, "validation_error"),
        (lambda im: multipart({"image": ("a.jpg", im["chelsea.jpg"], "image/jpeg")}), None, 400, "bad_request"),
        (lambda im: multipart({"file": ("a.jpg", b"", "image/jpeg")}), None, 400, "empty_image"),
    ],
)
def test_bad_inputs_are_clear_4xx_and_write_nothing(
    catalog, search_fn, lambda_context, images, make, ctype, status, code
):
    body = make(images)
    if isinstance(body, tuple):
        body, ctype = body
    before = all_keys(catalog, BUCKET)
    got_status, got = call(search_fn, lambda_context, api_event(body=body, content_type=ctype))
    _assert_error(got_status, got, status, code)
    assert all_keys(catalog, BUCKET) == before


@pytest.mark.parametrize(
    "query,where",
    [
        ({"k": "0"}, "k"),
        ({"k": "51"}, "k"),
        ({"k": "many"}, "k"),
        ({"scoring": "best"}, "scoring"),
        ({"min_score": "2"}, "min_score"),
    ],
)
def test_bad_query_parameters_are_422(catalog, search_fn, lambda_context, images, query, where):
    status, body = call(
        search_fn, lambda_context, api_event(body=images["moon.jpg"], content_type="image/jpeg", query=query)
    )
    _assert_error(status, body, 422, "validation_error")
    assert where in body["error"]["message"]


def test_get_without_url_is_422_and_unknown_route_404(catalog, search_fn, lambda_context):
    status, body = call(search_fn, lambda_context, api_event("GET"))
    _assert_error(status, body, 422, "validation_error")
    status, body = call(search_fn, lambda_context, api_event("GET", path="/nowhere"))
    _assert_error(status, body, 404, "not_found")


def test_empty_catalog_returns_empty_results(s3, search_fn, lambda_context, images):
    status, body = call(search_fn, lambda_context, api_event(body=images["moon.jpg"], content_type="image/jpeg"))
    assert status == 200 and body["results"] == [] and body["catalog_size"] == 0


def test_missing_bucket_setting_is_500_json(s3, search_fn, lambda_context, images, monkeypatch):
    monkeypatch.delenv("HARMONY_BUCKET")
    status, body = call(search_fn, lambda_context, api_event(body=images["moon.jpg"], content_type="image/jpeg"))
    _assert_error(status, body, 500, "misconfigured")
    assert "HARMONY_BUCKET" in body["error"]["message"]


class TestAgainstMotoServer:
    """The same function against moto's HTTP server (real S3 endpoint, AWS_ENDPOINT_URL_S3)."""

    def test_index_then_search(self, s3_server, images, index_fn, search_fn, lambda_context):
        bucket = s3_server.harmony_bucket
        put_catalog(s3_server, bucket, images, names=CATALOG_NAMES[:5])
        for n in CATALOG_NAMES[:5]:
            index_fn.lambda_handler(s3_event("s3-catalog-put.json", bucket, "catalog/" + n), lambda_context)
        status, body = call(
            search_fn, lambda_context, api_event(body=images["chelsea__hflip.jpg"], content_type="image/jpeg")
        )
        assert status == 200 and body["results"][0]["key"] == "catalog/chelsea.jpg"
        url = body["results"][0]["url"]
        assert url.startswith(s3_server.meta.endpoint_url)
        import urllib.request

        with urllib.request.urlopen(url, timeout=5) as r:  # the presigned URL really works
            assert r.read() == images["chelsea.jpg"]
        status, body = call(
            search_fn,
            lambda_context,
            api_event(
                body=json.dumps({"s3": {"bucket": bucket, "key": "catalog/missing.jpg"}}),
                content_type="application/json",
            ),
        )
        _assert_error(status, body, 404, "s3_object_not_found")


def test_openapi_document(s3, search_fn, lambda_context):
    status, body = call(search_fn, lambda_context, api_event("GET", path="/openapi", query={"format": "json"}))
    assert status == 200
    assert body["info"]["title"] == "Harmony-Image search API"
    post = body["paths"]["/search"]["post"]
    assert {p["name"] for p in post["parameters"]} == {"k", "scoring", "min_score"}
    assert {p["name"] for p in body["paths"]["/search"]["get"]["parameters"]} == {"url", "k", "scoring", "min_score"}
