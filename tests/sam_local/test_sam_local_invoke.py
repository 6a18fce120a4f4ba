"""Real `sam local invoke` of every function in template.yaml, against moto's S3 server.

Skipped unless HARMONY_SAM_LOCAL=1. Run it through tools/sam-local/test.sh (or
`make sam-local-test`), which builds the local Lambda image, runs `sam build` and then this
module inside tools/sam-local/run-in-netns.sh: a private network namespace holding a podman
service (DOCKER_HOST) and a moto server (HARMONY_MOTO_ENDPOINT for this process,
HARMONY_MOTO_CONTAINER_ENDPOINT for the Lambda containers).

The template is read with harmony_local.stack.template from the *built* template (the one sam
invokes, whose code and layers are sam build's output), with every bucket resolved to the moto
bucket; its functions must be template.yaml's.

What it does, for each function of the template:
  * S3-triggered functions: each S3 event (events/*.json with Records[].eventSource aws:s3)
    that one of the function's S3 triggers accepts (S3Trigger.matches: event name pattern,
    key prefix/suffix), or the files named in EXTRA_EVENTS below. The event's bucket is
    rewritten to the moto bucket; for ObjectCreated a real image (tests.support's images,
    picked by name) is uploaded at the event's key first, for ObjectRemoved the key is made
    absent. The invocation must return without error; an ObjectCreated invocation must write
    something to S3; CHECKS below adds per-event expectations.
  * SQS-triggered functions: each SQS batch (Records[].eventSource aws:sqs) that the template
    delivers to the function (Template.delivers: a queue it reads, S3 notifications the bucket
    sends there, or S3's test message); each message's S3 records seeded as above. The answer
    must report no batch item failures.
  * API-triggered functions: each API Gateway event whose path and method match one of the
    function's routes (ApiRoute.match). The response must be statusCode 200 with a JSON body,
    and a search response (path or file name contains "search") must carry a `results` list.
    A JSON body {"url": ...} (or ?url=) is pointed at a local HTTP server serving the test
    images (the namespace has no internet) when the function's environment declares
    HARMONY_ALLOW_PRIVATE_URLS; otherwise the function must answer with a handled JSON error
    (4xx/5xx with {"error": ...}), not crash.
Order: ObjectCreated cases, then ObjectRemoved, then API cases (so a search sees what the
S3-triggered functions indexed).

Env (set by run-in-netns.sh / test.sh):
  HARMONY_SAM_LOCAL=1, DOCKER_HOST, HARMONY_MOTO_ENDPOINT, HARMONY_MOTO_CONTAINER_ENDPOINT,
  HARMONY_SAM (sam executable), HARMONY_SAM_TEMPLATE (built template,
  default <repo>/.aws-sam/build/template.yaml), HARMONY_SAM_BUCKET (the moto bucket, default
  harmony-sam-local), HARMONY_SAM_INVOKE_TIMEOUT (s, default 600), HARMONY_SAM_TIMINGS
  (optional file: one JSON line per invoke).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harmony_local.stack.template import FunctionSpec, Template, load_template
from tests.support import EVENTS, REPO, TEMPLATE, all_keys, load_event, s3_event

if os.environ.get("HARMONY_SAM_LOCAL") != "1":
    pytest.skip(
        "sam local invoke tests need podman and moto: run tools/sam-local/test.sh (HARMONY_SAM_LOCAL=1)",
        allow_module_level=True,
    )

import boto3

BUILT_TEMPLATE = Path(os.environ.get("HARMONY_SAM_TEMPLATE") or REPO / ".aws-sam" / "build" / "template.yaml")
SAM = os.environ.get("HARMONY_SAM") or str(REPO / ".tools" / "sam" / "bin" / "sam")
MOTO_BUCKET = os.environ.get("HARMONY_SAM_BUCKET", "harmony-sam-local")
INVOKE_TIMEOUT = int(os.environ.get("HARMONY_SAM_INVOKE_TIMEOUT", "600"))
MOTO = os.environ.get("HARMONY_MOTO_ENDPOINT", "")
MOTO_FOR_CONTAINERS = os.environ.get("HARMONY_MOTO_CONTAINER_ENDPOINT", "")
TIMINGS_FILE = os.environ.get("HARMONY_SAM_TIMINGS")

# Event files (under events/) per function logical id, invoked in addition to the ones matched
# by the function's S3 triggers and routes. Use it for events of other shapes (e.g. a
# direct-invoke payload); those must just not raise.
# IndexFunction also takes S3 events directly (its handler keeps that path). DuplicatesFunction's
# messages are slices of a job, not S3 notifications: the event's job is not in the bucket, so
# the slice is dropped (no batch item failure).
EXTRA_EVENTS: dict[str, list[str]] = {
    "IndexFunction": ["s3-catalog-put.json", "s3-catalog-delete.json", "index-reindex.json", "index-compact.json"],
    "DuplicatesFunction": ["sqs-duplicates-slice.json"],
}

# Event files run before the others of their kind (the catalog must be indexed before a
# query is answered).
RUN_FIRST = ["s3-catalog-put.json"]

# Env var names that the test points at moto (as seen from inside the Lambda container).
ENDPOINT_VARS = re.compile(r"^(AWS_ENDPOINT_URL(_S3)?|.*S3_ENDPOINT.*|.*ENDPOINT_URL.*)$")
# The fan-out's Lambda endpoint (SearchFunction): not moto's.
LAMBDA_ENDPOINT_VAR = "AWS_ENDPOINT_URL_LAMBDA"
# Set to "1" when the function declares it, so URL queries may reach the local image server.
ALLOW_PRIVATE_URLS_VAR = "HARMONY_ALLOW_PRIVATE_URLS"

Event = dict[str, Any]
Case = tuple[str, str, str]  # (kind, function logical id, event file under events/)


def read_template() -> Template:
    """The built template as sam local invoke sees it; every bucket resolves to the moto bucket."""
    return load_template(BUILT_TEMPLATE, bucket_name=MOTO_BUCKET)


# --------------------------------------------------------------------------- events
def event_kind(ev: Event) -> str | None:
    recs = ev.get("Records")
    if isinstance(recs, list) and recs and recs[0].get("eventSource") == "aws:s3":
        return "s3-removed" if "ObjectRemoved" in str(recs[0].get("eventName")) else "s3"
    if isinstance(recs, list) and recs and recs[0].get("eventSource") == "aws:sqs":
        return "sqs"
    if "httpMethod" in ev or ("requestContext" in ev and ("rawPath" in ev or "path" in ev)):
        return "api"
    return None


def s3_key(record: dict[str, Any]) -> str:
    return urllib.parse.unquote_plus(record["s3"]["object"]["key"])


def api_path_method(ev: Event) -> tuple[str, str]:
    if "httpMethod" in ev:
        return ev.get("resource") or ev.get("path") or "", ev["httpMethod"].upper()
    http_ = (ev.get("requestContext") or {}).get("http") or {}
    return ev.get("rawPath") or "", (http_.get("method") or "").upper()


def triggers(fn: FunctionSpec, kind: str, ev: Event) -> bool:
    """Would the function's S3 triggers / API routes deliver ``ev`` to it?"""
    if kind in ("s3", "s3-removed"):
        return any(all(t.matches(r["eventName"], s3_key(r)) for r in ev["Records"]) for t in fn.s3_triggers)
    if kind == "api":
        path, method = api_path_method(ev)
        return any(route.match(method, path) is not None for route in fn.routes)
    return False


def cases(tpl: Template) -> list[Case]:
    """(kind, logical id, event file), in run order."""
    events = {name: load_event(name) for name in sorted(str(p.relative_to(EVENTS)) for p in EVENTS.rglob("*.json"))}
    out: list[Case] = []
    for lid, fn in tpl.functions.items():
        out += [(event_kind(load_event(name)) or "other", lid, name) for name in EXTRA_EVENTS.get(lid, [])]
        for name, ev in events.items():
            kind = event_kind(ev)
            if kind and (tpl.delivers(lid, ev) if kind == "sqs" else triggers(fn, kind, ev)):
                out.append((kind, lid, name))
    order = {"s3": 0, "sqs": 0, "s3-removed": 1, "other": 2, "api": 3}
    first = {name: i for i, name in enumerate(RUN_FIRST)}
    return sorted(dict.fromkeys(out), key=lambda c: (order[c[0]], first.get(Path(c[2]).name, len(RUN_FIRST))))


# --------------------------------------------------------------------------- images
def _ext(name: str) -> str:
    ext = Path(name).suffix.lower()
    return {".jpeg": ".jpg", ".tif": ".tiff"}.get(ext, ext)


def pick_image(key: str, images: dict[str, bytes]) -> bytes:
    """The test image for an S3 key / URL path: same file name; else the longest image stem
    that starts the key's stem (queries/chelsea-query.jpg -> chelsea.jpg), same extension
    preferred; else the first image with the same extension; else the first one."""
    base = Path(urllib.parse.urlparse(key).path if "://" in key else key).name
    stem, ext = Path(base).stem.lower(), _ext(base)
    exact = [n for n in images if n.lower() == base.lower()]
    prefixes = sorted(
        (n for n in images if stem.startswith(Path(n).stem.lower())),
        key=lambda n: (-len(Path(n).stem), _ext(n) != ext),
    )
    same_ext = [n for n in images if _ext(n) == ext]
    return images[(exact or prefixes or same_ext or list(images))[0]]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tpl() -> Template:
    if not BUILT_TEMPLATE.exists():
        pytest.fail(f"{BUILT_TEMPLATE} does not exist: run `sam build` (tools/sam-local/test.sh does)")
    return read_template()


@pytest.fixture(scope="module")
def moto_s3() -> Any:
    assert MOTO and MOTO_FOR_CONTAINERS and os.environ.get("DOCKER_HOST"), (
        "run inside tools/sam-local/run-in-netns.sh (DOCKER_HOST, HARMONY_MOTO_ENDPOINT, "
        "HARMONY_MOTO_CONTAINER_ENDPOINT)"
    )
    return boto3.client(
        "s3",
        endpoint_url=MOTO,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )


@pytest.fixture(scope="module")
def moto_bucket(moto_s3: Any) -> str:
    """The moto bucket standing for the template's bucket (created empty)."""
    with contextlib.suppress(moto_s3.exceptions.BucketAlreadyOwnedByYou):
        moto_s3.create_bucket(Bucket=MOTO_BUCKET)
    return MOTO_BUCKET


@pytest.fixture(scope="module")
def image_server(images: dict[str, bytes]) -> Iterator[str]:
    """An HTTP server for URL queries, on all addresses of this private namespace (the
    Lambda container reaches it at podman's bridge gateway). Serves pick_image(path)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = pick_image(self.path, images)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://{urllib.parse.urlparse(MOTO_FOR_CONTAINERS).hostname}:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def env_overrides(fn: FunctionSpec, bucket: str = MOTO_BUCKET) -> dict[str, str]:
    """Every variable naming the bucket -> its value with the moto bucket, every endpoint
    variable but Lambda's -> moto as seen from the container, HARMONY_ALLOW_PRIVATE_URLS -> 1.
    (AWS_ENDPOINT_URL_LAMBDA stays the template's: only a test serving the Invoke API sets it.)"""
    out = {}
    for name, value in fn.environment.items():
        if bucket in value:
            out[name] = value
        elif name == LAMBDA_ENDPOINT_VAR:
            continue
        elif ENDPOINT_VARS.match(name):
            out[name] = MOTO_FOR_CONTAINERS
        elif name == ALLOW_PRIVATE_URLS_VAR:
            out[name] = "1"
    return out


@pytest.fixture(scope="module")
def env_file(tpl: Template, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The --env-vars file: env_overrides() of every function."""
    missing = [lid for lid, fn in tpl.functions.items() if not any(ENDPOINT_VARS.match(k) for k in fn.environment)]
    if missing:
        pytest.fail(
            "template.yaml declares no S3 endpoint env var for "
            + ", ".join(missing)
            + ". `sam local invoke --env-vars` only overrides variables the template declares, so"
            " the functions cannot be pointed at moto. Declare AWS_ENDPOINT_URL_S3 with an empty"
            ' value (Globals.Function.Environment.Variables: AWS_ENDPOINT_URL_S3: "" - botocore'
            " ignores an empty value, so deployed functions use real S3)."
        )
    path = tmp_path_factory.mktemp("sam-env") / "env.json"
    path.write_text(json.dumps({lid: env_overrides(fn) for lid, fn in tpl.functions.items()}, indent=2))
    return path


# --------------------------------------------------------------------------- invoking
@dataclass
class Invocation:
    resp: Any  # the last JSON line sam printed, None if none
    stdout: str
    stderr: str
    written: list[str] = field(default_factory=list)  # keys the function put or changed in the bucket
    payload: Any = None  # an API response's JSON body

    def why(self, what: str) -> str:
        return f"{what}\n--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-8000:]}"


def sam_invoke(lid: str, event_path: Path, env_file: Path) -> Invocation:
    cmd = [SAM, "local", "invoke", lid, "-t", str(BUILT_TEMPLATE), "-e", str(event_path)]
    cmd += ["--env-vars", str(env_file), "--skip-pull-image"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=INVOKE_TIMEOUT, check=False)
    dt = time.monotonic() - t0
    if TIMINGS_FILE:
        with open(TIMINGS_FILE, "a", encoding="utf-8") as f:
            timing = {"function": lid, "event": event_path.name, "seconds": round(dt, 2), "rc": proc.returncode}
            f.write(json.dumps(timing) + "\n")
    print(f"sam local invoke {lid} -e {event_path.name}: {dt:.1f} s, rc={proc.returncode}")
    resp = None
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            resp = json.loads(line.strip())
        except ValueError:
            continue
        break
    return Invocation(resp, proc.stdout, proc.stderr)


def seed_s3_event(name: str, kind: str, s3: Any, bucket: str, images: dict[str, bytes]) -> tuple[Event, set[str]]:
    """events/<name> pointed at ``bucket``; ObjectCreated keys uploaded (a picked image),
    ObjectRemoved keys deleted. Returns the event and the keys uploaded."""
    event, seeded = s3_event(name, bucket), set()
    for rec in event["Records"]:
        key = s3_key(rec)
        if kind == "s3":
            data = pick_image(key, images)
            put = s3.put_object(Bucket=bucket, Key=key, Body=data)
            rec["s3"]["object"].update(size=len(data), eTag=put["ETag"].strip('"'))
            seeded.add(key)
        else:
            s3.delete_object(Bucket=bucket, Key=key)
    return event, seeded


def seed_sqs_event(name: str, s3: Any, bucket: str, images: dict[str, bytes]) -> tuple[Event, set[str]]:
    """events/<name>, an SQS batch: each message's S3 notification pointed at ``bucket`` and
    seeded like seed_s3_event (S3's test message left as it is)."""
    event, seeded = load_event(name), set[str]()
    for msg in event["Records"]:
        body = json.loads(msg["body"])
        for rec in body.get("Records", []):
            rec["s3"]["bucket"].update(name=bucket, arn=f"arn:aws:s3:::{bucket}")
            key = s3_key(rec)
            if "ObjectRemoved" in rec["eventName"]:
                s3.delete_object(Bucket=bucket, Key=key)
                seeded.discard(key)
            else:
                data = pick_image(key, images)
                put = s3.put_object(Bucket=bucket, Key=key, Body=data)
                rec["s3"]["object"].update(size=len(data), eTag=put["ETag"].strip('"'))
                seeded.add(key)
        msg["body"] = json.dumps(body)
    return event, seeded


def rewrite_url(event: Event, server: str) -> tuple[Event, bool]:
    """Point a JSON {"url": ...} body (or a ?url= query) at the local image server."""
    ev = copy.deepcopy(event)
    changed = False
    qs = ev.get("queryStringParameters") or {}
    if "url" in qs:
        qs["url"] = server + "/" + Path(urllib.parse.urlparse(qs["url"]).path).name
        if ev.get("multiValueQueryStringParameters"):
            ev["multiValueQueryStringParameters"]["url"] = [qs["url"]]
        changed = True
    body = ev.get("body") or ""
    try:
        doc = json.loads(base64.b64decode(body) if ev.get("isBase64Encoded") else body.encode())
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("url"), str):
        doc["url"] = server + "/" + Path(urllib.parse.urlparse(doc["url"]).path).name
        raw = json.dumps(doc).encode()
        ev["body"] = base64.b64encode(raw).decode() if ev.get("isBase64Encoded") else raw.decode()
        changed = True
    return ev, changed


# --------------------------------------------------------------------------- per-event checks
# event file name -> check(invocation, s3 client, bucket), run after the generic assertions.
def _check_catalog_put(inv: Invocation, s3: Any, bucket: str) -> None:
    assert any(k.startswith("index/records/") for k in inv.written), (
        f"no index record written under index/records/: {inv.written}"
    )
    actions = [r.get("action") for r in (inv.resp or {}).get("results", [])]
    assert actions and all(a in ("indexed", "unchanged") for a in actions), inv.resp


def _check_catalog_delete(inv: Invocation, s3: Any, bucket: str) -> None:
    actions = [r.get("action") for r in (inv.resp or {}).get("results", [])]
    assert actions and all(a in ("removed", "absent") for a in actions), inv.resp


def _check_catalog_queue(inv: Invocation, s3: Any, bucket: str) -> None:
    # the batch's put has a record of the object as it is now (written now, or by an earlier case
    # of the same image), its delete leaves no record
    kept = {}
    for k in all_keys(s3, bucket, "index/records/"):
        meta = s3.head_object(Bucket=bucket, Key=k)["Metadata"]
        kept[urllib.parse.unquote(meta["catalog-key"])] = meta["source-etag"].strip('"')
    etag = s3.head_object(Bucket=bucket, Key="catalog/chelsea.jpg")["ETag"].strip('"')
    assert kept.get("catalog/chelsea.jpg") == etag and "catalog/old photo.jpg" not in kept, kept


def _check_query_put(inv: Invocation, s3: Any, bucket: str) -> None:
    results = [k for k in inv.written if k.startswith("results/") and k.endswith(".json")]
    assert results, f"no results/*.json written: {inv.written}"
    doc = json.loads(s3.get_object(Bucket=bucket, Key=results[0])["Body"].read())
    assert "error" not in doc, doc
    assert isinstance(doc.get("results"), list) and doc["results"], doc
    assert "chelsea" in doc["results"][0]["key"], doc["results"][0]


def _check_reindex(inv: Invocation, s3: Any, bucket: str) -> None:
    # {"action": "reindex"} finds its bucket in the template's HARMONY_BUCKET (pointed at moto)
    resp = inv.resp or {}
    assert resp.get("complete") is True and resp.get("failed") == [], resp
    catalog = [k for k in all_keys(s3, bucket, "catalog/") if not k.endswith("manifest.json")]
    assert resp.get("keys", 0) >= len(catalog) >= 1, (resp, catalog)


def _check_compact(inv: Invocation, s3: Any, bucket: str) -> None:
    # {"action": "compact"}: the records folded into segments, the manifest published
    resp = inv.resp or {}
    assert resp.get("won") is True and resp.get("generation", 0) >= 1, resp
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="index/segments.json")["Body"].read())
    assert manifest["generation"] == resp["generation"], manifest
    assert sum(seg["images"] for seg in manifest["segments"]) == resp["records"] - resp["rejected"], (manifest, resp)


def _check_search_catalog_hit(inv: Invocation, s3: Any, bucket: str) -> None:
    results = inv.payload["results"]
    assert results, inv.payload
    assert "chelsea" in results[0]["key"], results[0]


CHECKS: dict[str, Callable[[Invocation, Any, str], None]] = {
    "s3-catalog-put.json": _check_catalog_put,
    "s3-catalog-delete.json": _check_catalog_delete,
    "s3-query-put.json": _check_query_put,
    "sqs-catalog-put-delete.json": _check_catalog_queue,
    "index-reindex.json": _check_reindex,
    "index-compact.json": _check_compact,
    "api-search-s3.json": _check_search_catalog_hit,
    "api-search-url.json": _check_search_catalog_hit,
}


# --------------------------------------------------------------------------- tests
_CASES = cases(read_template()) if BUILT_TEMPLATE.exists() else []


def test_sam_available() -> None:
    assert shutil.which(SAM) or os.path.exists(SAM), f"sam not found at {SAM}"


def test_template_has_functions_and_cases(tpl: Template) -> None:
    assert tpl.functions, f"{BUILT_TEMPLATE} has no AWS::Serverless::Function"
    assert sorted(tpl.functions) == sorted(load_template(TEMPLATE).functions), (
        f"{BUILT_TEMPLATE} is not a build of {TEMPLATE}: run `sam build`"
    )
    # The template model resolves every AWS::S3::Bucket to the one local (moto) bucket.
    assert len(tpl.buckets) <= 1, f"one moto bucket cannot stand for the buckets {tpl.buckets}"
    uncovered = sorted(set(tpl.functions) - {lid for _, lid, _ in _CASES})
    assert not uncovered, (
        f"functions with no event to invoke them with: {uncovered}; add events/*.json matching "
        "their Events (S3 event name + key filter / API path + method) or list files in EXTRA_EVENTS"
    )


@pytest.mark.parametrize("kind,lid,event_name", _CASES, ids=[f"{lid}-{Path(n).stem}" for _, lid, n in _CASES])
def test_sam_local_invoke(
    kind: str,
    lid: str,
    event_name: str,
    tpl: Template,
    moto_s3: Any,
    moto_bucket: str,
    env_file: Path,
    images: dict[str, bytes],
    image_server: str,
    tmp_path: Path,
) -> None:
    event, seeded = load_event(event_name), set[str]()
    url_refused_expected = False
    if kind in ("s3", "s3-removed"):
        event, seeded = seed_s3_event(event_name, kind, moto_s3, moto_bucket, images)
    elif kind == "sqs":
        event, seeded = seed_sqs_event(event_name, moto_s3, moto_bucket, images)
    elif kind == "api":
        event, has_url = rewrite_url(event, image_server)
        url_refused_expected = has_url and ALLOW_PRIVATE_URLS_VAR not in tpl.functions[lid].environment
    ev_path = tmp_path / Path(event_name).name
    ev_path.write_text(json.dumps(event))

    before = all_keys(moto_s3, moto_bucket)
    inv = sam_invoke(lid, ev_path, env_file)
    after = all_keys(moto_s3, moto_bucket)
    inv.written = sorted(k for k, etag in after.items() if before.get(k) != etag and k not in seeded)

    resp = inv.resp
    assert resp is not None, inv.why("no JSON response from sam local invoke")
    if isinstance(resp, dict):
        assert "errorType" not in resp and "errorMessage" not in resp, inv.why(
            f"function raised: {resp.get('errorType')}: {resp.get('errorMessage')}"
        )
    if kind == "s3":
        assert inv.written, inv.why("the S3-triggered function wrote nothing to S3")
    elif kind == "sqs":
        assert resp == {"batchItemFailures": []}, inv.why(f"batch item failures: {resp}")
    elif kind == "api":
        assert isinstance(resp, dict) and "statusCode" in resp, inv.why("not an API Gateway response")
        body = resp.get("body") or ""
        if resp.get("isBase64Encoded"):
            body = base64.b64decode(body).decode("utf-8", "replace")
        try:
            inv.payload = json.loads(body)
        except ValueError:
            pytest.fail(inv.why(f"statusCode {resp['statusCode']}, body is not JSON: {body[:500]!r}"))
        if url_refused_expected:
            # No HARMONY_ALLOW_PRIVATE_URLS in the template: the local URL must be refused
            # cleanly (the namespace has no internet for the event's real URL).
            assert 400 <= resp["statusCode"] < 600 and isinstance(inv.payload, dict) and "error" in inv.payload, (
                inv.why(f"URL query: expected a handled error, got {resp['statusCode']}: {body[:500]}")
            )
            return
        assert resp["statusCode"] == 200, inv.why(f"statusCode {resp['statusCode']}: {body[:1000]}")
        if "search" in api_path_method(event)[0].lower() or "search" in event_name.lower():
            assert isinstance(inv.payload, dict) and isinstance(inv.payload.get("results"), list), inv.why(
                f"search response has no `results` list: {str(inv.payload)[:500]}"
            )
    check = CHECKS.get(Path(event_name).name)
    if check:
        try:
            check(inv, moto_s3, moto_bucket)
        except AssertionError as exc:
            pytest.fail(inv.why(f"{event_name}: {exc}"))
