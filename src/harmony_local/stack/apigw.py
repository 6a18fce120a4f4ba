"""HTTP request <-> API Gateway REST (v1) proxy event / Lambda proxy response.

The event has the shape ``sam local generate-event apigateway aws-proxy`` makes (and API Gateway
sends): resource, path, httpMethod, headers + multiValueHeaders, queryStringParameters +
multiValueQueryStringParameters, pathParameters, stageVariables, requestContext, body,
isBase64Encoded. A body is base64 (``isBase64Encoded: true``) when its Content-Type matches the
API's BinaryMediaTypes, else UTF-8 text — as API Gateway does, so a binary upload that the
template does not declare binary arrives mangled here too (and a warning says so).
"""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

from .template import ACCOUNT_ID, media_type_matches


def build_event(
    *,
    method: str,
    raw_path: str,
    headers: list[tuple[str, str]],
    body: bytes,
    resource: str,
    path_params: dict[str, str],
    stage: str,
    binary_media_types: tuple[str, ...],
    source_ip: str,
    host: str,
) -> tuple[dict, str | None]:
    """(event, warning) for one HTTP request."""
    split = urlsplit(raw_path)
    path = split.path or "/"
    mv_headers: dict[str, list[str]] = {}
    for k, v in headers:
        mv_headers.setdefault(k, []).append(v)
    single = {k: vs[-1] for k, vs in mv_headers.items()}
    mvq: dict[str, list[str]] = {}
    for k, v in parse_qsl(split.query, keep_blank_values=True):
        mvq.setdefault(k, []).append(v)
    ctype = next((v for k, v in single.items() if k.lower() == "content-type"), None)
    warning = None
    if not body:
        body_field, b64 = None, False
    elif media_type_matches(ctype, binary_media_types):
        body_field, b64 = base64.b64encode(body).decode("ascii"), True
    else:
        try:
            body_field = body.decode("utf-8")
        except UnicodeDecodeError:
            body_field = body.decode("utf-8", "replace")
            warning = (
                f"binary body with Content-Type {ctype!r} that is not in the API's BinaryMediaTypes "
                f"{list(binary_media_types)}: API Gateway passes it as text, so it arrives damaged"
            )
        b64 = False
    now = datetime.now(UTC)
    request_id = str(uuid.uuid4())
    event = {
        "body": body_field,
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "isBase64Encoded": b64,
        "queryStringParameters": {k: v[-1] for k, v in mvq.items()} or None,
        "multiValueQueryStringParameters": mvq or None,
        "pathParameters": path_params or None,
        "stageVariables": None,
        "headers": single,
        "multiValueHeaders": mv_headers,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "resourceId": "local0",
            "stage": stage,
            "requestId": request_id,
            "extendedRequestId": request_id,
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(time.time() * 1000),
            "path": f"/{stage}{path}",
            "resourcePath": resource,
            "httpMethod": method,
            "apiId": "harmonylocal",
            "protocol": "HTTP/1.1",
            "domainName": host,
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "accessKey": None,
                "sourceIp": source_ip,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": single.get("User-Agent") or single.get("user-agent") or "",
                "user": None,
                "apiKey": None,
                "apiKeyId": None,
            },
        },
    }
    return event, warning


class BadLambdaResponseError(Exception):
    pass


def parse_response(result: object) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) from a Lambda proxy integration result; BadLambdaResponseError if malformed."""
    if not isinstance(result, dict):
        raise BadLambdaResponseError(f"the function returned {type(result).__name__}, not an object")
    try:
        status = int(result.get("statusCode", 200))
    except (TypeError, ValueError):
        raise BadLambdaResponseError(f"statusCode {result.get('statusCode')!r} is not a number") from None
    headers: list[tuple[str, str]] = []
    seen: set[str] = set()
    for k, vs in (result.get("multiValueHeaders") or {}).items():
        for v in vs if isinstance(vs, list) else [vs]:
            headers.append((k, str(v)))
        seen.add(k.lower())
    for k, v in (result.get("headers") or {}).items():
        if k.lower() not in seen:
            headers.append((k, str(v)))
    body = result.get("body")
    if body is None:
        data = b""
    elif not isinstance(body, str):
        raise BadLambdaResponseError("body must be a string")
    elif result.get("isBase64Encoded"):
        data = base64.b64decode(body)
    else:
        data = body.encode("utf-8")
    if not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(("Content-Type", "application/json"))
    return status, headers, data
