"""SearchFunction: POST /search and GET /search behind API Gateway (REST), and the web page.

The handler turns the request into a query source and search parameters and hands both to
harmony_aws.service; request forms and the answer's shape: harmony_aws/sources.py, service.py.
"""

import base64
import re
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, CORSConfig, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.models import Components, OpenAPI, RequestBody, Schema
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from harmony_aws import runtime
from harmony_aws.catalog_ops import DEFAULT_LIMIT, MAX_CURSOR_LENGTH, MAX_KEY_BYTES, MAX_LIMIT
from harmony_aws.errors import BadRequestError, error_body
from harmony_aws.sources import MAX_URL_LENGTH, ImageUrl, QuerySource, source_from_body
from harmony_image import DEFAULT_K, MAX_K, MAX_SCORE, MIN_SCORE, HarmonyError, Scoring
from harmony_image.duplicates import KeepRule

logger = Logger()
tracer = Tracer()
metrics = Metrics()

_BINARY = {"schema": {"type": "string", "format": "binary"}}
SEARCH_BODY = RequestBody.model_validate(
    {
        "required": True,
        "description": (
            "The query image: the file's bytes as the body (JPEG, PNG, WebP, BMP, TIFF or GIF; the bytes "
            'decide, the content type is a hint), multipart field "file", or JSON with exactly one of '
            '"url", "s3", "image_base64". Raw bodies up to about 4.4 MB (Lambda\'s 6 MB request limit '
            "counts the base64 event); larger images by URL or S3."
        ),
        "content": {
            "image/*": _BINARY,
            "application/octet-stream": _BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "minProperties": 1,
                    "maxProperties": 1,
                    "properties": {
                        "url": {
                            "type": "string",
                            "maxLength": MAX_URL_LENGTH,
                            "example": "https://example.com/shoe.jpg",
                        },
                        "s3": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["key"],
                            "properties": {
                                "key": {"type": "string", "maxLength": 1024, "example": "queries/shoe.jpg"},
                                "bucket": {"type": "string", "description": "default: the catalog bucket"},
                            },
                        },
                        "image_base64": {"type": "string", "format": "byte"},
                    },
                },
                "examples": {
                    "url": {"value": {"url": "https://example.com/shoe.jpg"}},
                    "s3": {"value": {"s3": {"key": "queries/shoe.jpg"}}},
                },
            },
        },
    }
)
ERROR_SCHEMA = Schema.model_validate(
    {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    }
)
ERROR_RESPONSES: dict[int, Any] = {
    status: {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for status, text in {
        400: "bad request: empty body, invalid JSON, URL or S3 reference refused",
        404: "the S3 key or the URL was not found",
        413: "too large: the body, the file, its pixels or the memory decoding it takes",
        415: "not an image, or an unsupported format",
        422: "truncated or corrupt image; invalid parameters",
        502: "the URL could not be fetched (or sent less than its Content-Length)",
        504: "the URL did not finish within the fetch deadline",
    }.items()
}


class SearchResolver(APIGatewayRestResolver):
    """The resolver, with what the handler reads itself documented in the OpenAPI document: the
    POST body (read raw, not as a validated parameter) and the error shape.

    A route ending in ``/<key>`` takes the rest of the path, slashes included, as ``key`` (the
    template's greedy ``{key+}``); Powertools' own path parameters stop at a slash."""

    @staticmethod
    def _compile_regex(rule: str, base_regex: str = "^{}/*$") -> re.Pattern[str]:
        if rule.endswith("/<key>"):
            return re.compile("^" + re.escape(rule[: -len("<key>")]) + "(?P<key>.+?)/*$")
        compiled: re.Pattern[str] = APIGatewayRestResolver._compile_regex(rule)
        return compiled

    def get_openapi_schema(self, **kwargs: Any) -> OpenAPI:
        schema = super().get_openapi_schema(**kwargs)
        post = schema.paths["/search"].post if schema.paths and "/search" in schema.paths else None
        if post is not None:
            post.requestBody = SEARCH_BODY
        components = schema.components or Components()
        components.schemas = {**(components.schemas or {}), "Error": ERROR_SCHEMA}
        schema.components = components
        return schema


# CORS: the methods of the routes (DELETE included) and the Location of a started job
app = SearchResolver(
    enable_validation=True, cors=CORSConfig(allow_origin="*", max_age=300, expose_headers=["Location"])
)
app.enable_swagger(path="/openapi", title="Harmony-Image search API", version="1.0.0")

K = Annotated[int, Query(ge=1, le=MAX_K, description=f"number of results (1-{MAX_K})")]
ScoringParam = Annotated[Scoring | None, Query(description="scoring: default or seed")]
MinScore = Annotated[float | None, Query(ge=MIN_SCORE, le=MAX_SCORE, description="drop results scoring below this")]

# The web page (one static file, see web/index.html), served at GET / with relative API URLs.
PAGE = Path(__file__).parent / "web" / "index.html"
PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src * data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'"
)


def _json_error(status: int, code: str, message: str) -> Response:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=error_body(code, message))


def _body_bytes() -> bytes:
    ev = app.current_event
    body = ev.body or ""
    if not ev.is_base64_encoded:
        return body.encode("utf-8", "surrogatepass")  # an event's JSON may carry a lone surrogate
    try:
        return base64.b64decode(body, validate=True)
    except ValueError as exc:
        raise BadRequestError(f"the request body is marked base64 but is not valid base64: {exc}") from exc


def _search(source: QuerySource, k: int, scoring: Scoring | None, min_score: float | None) -> dict[str, Any]:
    started = time.perf_counter()
    params = runtime.settings().search_params(k, scoring, min_score)
    out = runtime.search_service().search(source, params, started=started)
    metrics.add_metric(name="QueryLatency", unit=MetricUnit.Milliseconds, value=out["took_ms"])
    metrics.add_metric(name="CatalogSize", unit=MetricUnit.Count, value=out["catalog_size"])
    logger.info(
        "search",
        extra={
            "took_ms": out["took_ms"],
            "catalog_size": out["catalog_size"],
            "results": len(out["results"]),
            "query_sha256": out["query"]["sha256"],
        },
    )
    return out


@app.get("/", include_in_schema=False)
def index_page():  # no return annotation: validation would try to model Response
    return Response(
        status_code=200,
        content_type="text/html; charset=utf-8",
        body=PAGE.read_text("utf-8"),
        headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP},
    )


@app.post(
    "/search",
    summary="Search with an image (raw body, multipart field `file`, or JSON url/s3/image_base64)",
    responses={200: {"description": "the most similar catalog images"}, **ERROR_RESPONSES},
)
@tracer.capture_method
def post_search(k: K = DEFAULT_K, scoring: ScoringParam = None, min_score: MinScore = None) -> dict[str, Any]:
    source = source_from_body(_body_bytes(), app.current_event.headers.get("content-type"))
    return _search(source, k, scoring, min_score)


@app.get(
    "/search",
    summary="Search with the image at `url`",
    responses={200: {"description": "the most similar catalog images"}, **ERROR_RESPONSES},
)
@tracer.capture_method
def get_search(
    url: Annotated[str, Query(min_length=1, max_length=MAX_URL_LENGTH)],
    k: K = DEFAULT_K,
    scoring: ScoringParam = None,
    min_score: MinScore = None,
) -> dict[str, Any]:
    return _search(ImageUrl(url), k, scoring, min_score)


CATALOG_ERRORS = {s: ERROR_RESPONSES[s] for s in (400, 422)}


@app.get(
    "/catalog",
    summary="List catalog objects: key, size, source URL, indexed or not; one page at a time",
    responses={
        200: {
            "description": (
                '{"prefix", "items": [{"key": "catalog/<name>", "name", "size", "last_modified", '
                '"source_url" (null when none), "indexed"}], "count", "next_cursor" (null on the last page)}'
            )
        },
        **CATALOG_ERRORS,
    },
)
@tracer.capture_method
def list_catalog(
    prefix: Annotated[str, Query(max_length=MAX_KEY_BYTES, description="only keys under catalog/<prefix>")] = "",
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"keys per page (1-{MAX_LIMIT})")] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, Query(max_length=MAX_CURSOR_LENGTH, description="the previous page's next_cursor (opaque)")
    ] = None,
) -> dict[str, Any]:
    return runtime.catalog_ops().list_page(prefix, limit=limit, cursor=cursor or None)


@app.delete(
    "/catalog/<key>",
    summary="Delete catalog/<key> and its index record (key URL-encoded, slashes allowed)",
    responses={
        200: {"description": '{"deleted": "catalog/<key>", "object": "deleted", "record": "removed" | "absent"}'},
        400: ERROR_RESPONSES[400],
        404: {"description": "no such catalog key", "content": ERROR_RESPONSES[404]["content"]},
    },
)
@tracer.capture_method
def delete_catalog(key: str) -> dict[str, Any]:
    # API Gateway (REST) passes path parameters as sent, percent-encoded: decoded here, once.
    raw = (app.current_event.path_parameters or {}).get("key") or key
    try:
        rel = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise BadRequestError("the key is not percent-encoded UTF-8") from None
    out = runtime.catalog_ops().delete(rel)
    logger.info("catalog delete", extra=out)
    return out


DUPLICATES_JOB = (
    '{"id", "state": "queued" | "running" | "done" | "failed", "keys", "slices", "slices_done", "min_score", '
    '"keep", "created_at"; when done "report": {"id", "groups": [{"keep", "members": [{"key", "url", "score", '
    '"sha256", "width", "height"}], "pairs": [{"a", "b", "score"}]}], "images", "took_s", ...}; when failed "error"}'
)


@app.post(
    "/duplicates",
    summary="Start a duplicate report of the whole catalog (a job; follow it at GET /duplicates/{id})",
    responses={202: {"description": DUPLICATES_JOB}, 422: ERROR_RESPONSES[422]},
)
@tracer.capture_method
def start_duplicates(
    min_score: Annotated[
        float | None, Query(ge=MIN_SCORE, le=MAX_SCORE, description="pairs scoring this or more are duplicates")
    ] = None,
    keep: Annotated[KeepRule, Query(description="which member a group keeps: largest, oldest or shortest key")] = (
        "largest"
    ),
    mutual: Annotated[
        bool, Query(description="pairs only when each image finds the other (fewer false pairs)")
    ] = False,
) -> Response[dict[str, Any]]:
    job = runtime.duplicate_jobs().start(min_score=min_score, keep=keep, mutual=mutual)
    logger.info("duplicates job started", extra={k: job[k] for k in ("id", "state", "keys", "slices")})
    return Response(
        status_code=202,
        content_type=content_types.APPLICATION_JSON,
        body=job,
        headers={"Location": f"duplicates/{job['id']}"},
    )


@app.get(
    "/duplicates/<job_id>",
    summary="A duplicate-report job: its state, and the report once done (`latest`: the newest report)",
    responses={
        200: {"description": DUPLICATES_JOB + '; for "latest" before any report: {"id": null, "report": null}'},
        400: ERROR_RESPONSES[400],
        404: {"description": "no such job", "content": ERROR_RESPONSES[404]["content"]},
    },
)
@tracer.capture_method
def get_duplicates(job_id: str) -> dict[str, Any]:
    jobs = runtime.duplicate_jobs()
    return jobs.latest() if job_id == "latest" else jobs.status(job_id)


@app.exception_handler(HarmonyError)
def handle_harmony_error(exc: HarmonyError) -> Response:
    if exc.status >= 500:
        logger.exception("request failed", extra={"code": exc.code})
    else:
        logger.info("request refused", extra={"code": exc.code, "status": exc.status, "reason": exc.message})
    metrics.add_metric(name="RequestErrors", unit=MetricUnit.Count, value=1)
    return _json_error(exc.status, exc.code, exc.message)


@app.exception_handler(RequestValidationError)
def handle_validation_error(exc: RequestValidationError) -> Response:
    msgs = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "body"))
        msgs.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    metrics.add_metric(name="RequestErrors", unit=MetricUnit.Count, value=1)
    return _json_error(422, "validation_error", "; ".join(msgs) or "invalid request")


@app.not_found
def handle_not_found(exc: Exception) -> Response:
    return _json_error(404, "not_found", f"no route {app.current_event.http_method} {app.current_event.path}")


@app.exception_handler(Exception)
def handle_unexpected(exc: Exception) -> Response:
    logger.exception("unexpected error")
    return _json_error(500, "internal_error", "internal error; see the function's logs (correlation id in the request)")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
