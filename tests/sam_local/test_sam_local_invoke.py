"""Real `sam local invoke` of every function in template.yaml, against moto's S3 server.

Skipped unless HARMONY_SAM_LOCAL=1. Run it through tools/sam-local/test.sh (or
`make sam-local-test`), which builds the local Lambda image, runs `sam build` and then this
module inside tools/sam-local/run-in-netns.sh: a private network namespace holding a podman
service (DOCKER_HOST) and a moto server (HARMONY_MOTO_ENDPOINT for this process,
HARMONY_MOTO_CONTAINER_ENDPOINT for the Lambda containers).

What it does, for each function of the template:
  * S3-triggered functions: each S3 event (events/*.json with Records[].eventSource aws:s3)
    that the function's S3 trigger accepts (event name pattern, key prefix/suffix filter), or
    the files named in EVENTS below. The event's bucket is rewritten to the moto bucket that
    stands for the template's bucket; for ObjectCreated a real image (tests/fixtures/images,
    picked by name) is uploaded at the event's key first, for ObjectRemoved the key is made
    absent. The invocation must return without error; an ObjectCreated invocation must write
    something to S3; CHECKS below adds per-event expectations.
  * API-triggered functions: each API Gateway event whose path/method match one of the
    function's Api events. The response must be statusCode 200 with a JSON body, and a search
    response (path contains "search") must carry a `results` list. A JSON body {"url": ...}
    is pointed at a local HTTP server serving the fixtures (the namespace has no internet)
    when the template declares HARMONY_ALLOW_PRIVATE_URLS; otherwise the function must answer
    with a handled JSON error (4xx/5xx with {"error": ...}), not crash.
Order: ObjectCreated cases, then ObjectRemoved, then API cases (so a search sees what the
S3-triggered functions indexed).

Env (set by run-in-netns.sh / test.sh):
  HARMONY_SAM_LOCAL=1, DOCKER_HOST, HARMONY_MOTO_ENDPOINT, HARMONY_MOTO_CONTAINER_ENDPOINT,
  HARMONY_SAM (sam executable), HARMONY_SAM_TEMPLATE (built template,
  default <repo>/.aws-sam/build/template.yaml), HARMONY_SAM_BUCKET_PREFIX (moto bucket name
  prefix, default harmony-sam-local), HARMONY_SAM_INVOKE_TIMEOUT (s, default 600).
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import glob
import http.server
import io
import json
import os
import re
import shutil
import struct
import subprocess
import threading
import time
import urllib.parse
import zlib
from pathlib import Path

import pytest

from harmony_local.stack.template import load_yaml

REPO = Path(__file__).resolve().parents[2]

if os.environ.get("HARMONY_SAM_LOCAL") != "1":
    pytest.skip(
        "sam local invoke tests need podman and moto: run tools/sam-local/test.sh (HARMONY_SAM_LOCAL=1)",
        allow_module_level=True,
    )

import boto3  # noqa: E402
import yaml  # noqa: E402

SOURCE_TEMPLATE = REPO / "template.yaml"
BUILT_TEMPLATE = Path(os.environ.get("HARMONY_SAM_TEMPLATE", REPO / ".aws-sam" / "build" / "template.yaml"))
SAM = os.environ.get("HARMONY_SAM") or str(REPO / ".tools" / "sam" / "bin" / "sam")
BUCKET_PREFIX = os.environ.get("HARMONY_SAM_BUCKET_PREFIX", "harmony-sam-local")
INVOKE_TIMEOUT = int(os.environ.get("HARMONY_SAM_INVOKE_TIMEOUT", "600"))
MOTO = os.environ.get("HARMONY_MOTO_ENDPOINT", "")
MOTO_FOR_CONTAINERS = os.environ.get("HARMONY_MOTO_CONTAINER_ENDPOINT", "")
FIXTURES = REPO / "tests" / "fixtures" / "images"
TIMINGS_FILE = os.environ.get("HARMONY_SAM_TIMINGS")  # optional: one JSON line per invoke

# Event files per function logical id, invoked in addition to the ones matched automatically
# (S3 events by the function's S3 triggers, API events by path + method). Use it for events
# of other shapes (e.g. a direct-invoke payload); those must just not raise. Repo-relative.
EVENTS: dict[str, list[str]] = {}

# Event files run before the others of their kind (the catalog must be indexed before a
# query is answered).
RUN_FIRST = ["s3-catalog-put.json"]

# Env var names that the test points at moto (as seen from inside the Lambda container).
ENDPOINT_VARS = re.compile(r"^(AWS_ENDPOINT_URL(_S3)?|.*S3_ENDPOINT.*|.*ENDPOINT_URL.*)$")
# Set to "1" when the template declares it, so URL queries may reach the local image server.
ALLOW_PRIVATE_URLS_VAR = "HARMONY_ALLOW_PRIVATE_URLS"


# --------------------------------------------------------------------------- template
def load_template(path: Path) -> dict:
    return load_yaml(path)


def _resources(tpl: dict) -> dict:
    return tpl.get("Resources") or {}


def functions(tpl: dict) -> dict[str, dict]:
    return {
        lid: r
        for lid, r in _resources(tpl).items()
        if r.get("Type") in ("AWS::Serverless::Function", "AWS::Lambda::Function")
    }


def buckets(tpl: dict) -> list[str]:
    return [lid for lid, r in _resources(tpl).items() if r.get("Type") == "AWS::S3::Bucket"]


def env_vars(tpl: dict, lid: str) -> dict:
    glob_vars = (((tpl.get("Globals") or {}).get("Function") or {}).get("Environment") or {}).get("Variables") or {}
    own = ((functions(tpl)[lid].get("Properties") or {}).get("Environment") or {}).get("Variables") or {}
    return {**glob_vars, **own}


def function_events(tpl: dict, lid: str) -> list[dict]:
    ev = (functions(tpl)[lid].get("Properties") or {}).get("Events") or {}
    return [dict(e, _name=name) for name, e in ev.items()]


def moto_bucket_name(logical_id: str) -> str:
    name = f"{BUCKET_PREFIX}-{logical_id}".lower()
    return re.sub(r"[^a-z0-9.-]", "-", name)[:63]


def _bucket_of_value(tpl: dict, v) -> str | None:
    """The bucket logical id that an env value / event property names, if any."""
    bl = buckets(tpl)
    if isinstance(v, dict):
        if v.get("Ref") in bl:
            return v["Ref"]
        sub = v.get("Fn::Sub")
        text = sub if isinstance(sub, str) else (sub[0] if isinstance(sub, list) and sub else "")
        for b in bl:
            if "${" + b + "}" in str(text):
                return b
        att = v.get("Fn::GetAtt")
        if isinstance(att, list) and att and att[0] in bl:
            return att[0]
    return None


def _s3_rules(props: dict) -> tuple[list[str], str, str]:
    events = props.get("Events") or []
    events = [events] if isinstance(events, str) else list(events)
    prefix = suffix = ""
    rules = (((props.get("Filter") or {}).get("S3Key") or {}).get("Rules")) or []
    for r in rules:
        name = str(r.get("Name", "")).lower()
        if name == "prefix":
            prefix = str(r.get("Value", ""))
        elif name == "suffix":
            suffix = str(r.get("Value", ""))
    return events, prefix, suffix


def _s3_trigger_accepts(props: dict, ev: dict) -> bool:
    patterns, prefix, suffix = _s3_rules(props)
    for rec in ev.get("Records", []):
        name = "s3:" + str(rec.get("eventName", ""))
        key = urllib.parse.unquote_plus(rec["s3"]["object"]["key"])
        if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return False
        if not (key.startswith(prefix) and key.endswith(suffix)):
            return False
    return True


# --------------------------------------------------------------------------- events
def event_kind(ev: dict) -> str | None:
    recs = ev.get("Records")
    if isinstance(recs, list) and recs and recs[0].get("eventSource") == "aws:s3":
        return "s3-removed" if "ObjectRemoved" in str(recs[0].get("eventName")) else "s3"
    if "httpMethod" in ev or ("requestContext" in ev and ("rawPath" in ev or "path" in ev)):
        return "api"
    return None


def _api_path_method(ev: dict) -> tuple[str, str]:
    if "httpMethod" in ev:
        return ev.get("resource") or ev.get("path") or "", ev["httpMethod"].upper()
    http_ = (ev.get("requestContext") or {}).get("http") or {}
    return ev.get("rawPath") or "", (http_.get("method") or "").upper()


def _path_matches(template_path: str, event_path: str) -> bool:
    if template_path == event_path:
        return True
    rx = re.escape(template_path)
    rx = re.sub(r"\\\{[^}]*\\\+\\\}", ".*", rx)  # {proxy+}
    rx = re.sub(r"\\\{[^}]*\\\}", "[^/]+", rx)  # {id}
    return re.match("^" + rx + "$", event_path) is not None


def all_event_files() -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(REPO / "events" / "**" / "*.json"), recursive=True))


def cases(tpl: dict) -> list[tuple[str, str, str]]:
    """(kind, logical id, event file relative to the repo), in run order."""
    out: list[tuple[str, str, str]] = []
    files = []
    for p in all_event_files():
        try:
            files.append((p, json.loads(p.read_text(encoding="utf-8"))))
        except (OSError, ValueError):
            continue
    for lid in functions(tpl):
        for rel in EVENTS.get(lid, []):
            ev = json.loads((REPO / rel).read_text(encoding="utf-8"))
            out.append((event_kind(ev) or "other", lid, rel))
        fev = function_events(tpl, lid)
        for p, ev in files:
            kind = event_kind(ev)
            rel = str(p.relative_to(REPO))
            for e in fev:
                props = e.get("Properties") or {}
                if (kind, lid, rel) in out:
                    break
                if kind in ("s3", "s3-removed") and e.get("Type") == "S3":
                    if _s3_trigger_accepts(props, ev):
                        out.append((kind, lid, rel))
                        break
                elif kind == "api" and e.get("Type") in ("Api", "HttpApi"):
                    path, method = _api_path_method(ev)
                    tm = str(props.get("Method", "any")).upper()
                    if _path_matches(str(props.get("Path", "")), path) and tm in ("ANY", method):
                        out.append((kind, lid, rel))
                        break
    order = {"s3": 0, "s3-removed": 1, "other": 2, "api": 3}

    def first(rel: str) -> int:
        name = Path(rel).name
        return RUN_FIRST.index(name) if name in RUN_FIRST else len(RUN_FIRST)

    return sorted(out, key=lambda c: (order.get(c[0], 2), first(c[2])))


# --------------------------------------------------------------------------- images
def _tiny_png(w: int = 64, h: int = 48) -> bytes:
    rows = b"".join(
        b"\x00" + b"".join(bytes(((x * 4) % 256, (y * 5) % 256, ((x + y) * 3) % 256)) for x in range(w))
        for y in range(h)
    )

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def fixture_images() -> list[tuple[str, bytes]]:
    """Real images: tests/fixtures/images/*, else scikit-image's bundled photos (CC0), else
    a generated PNG."""
    out = []
    if FIXTURES.is_dir():
        for p in sorted(FIXTURES.iterdir()):
            if p.suffix.lower() in _IMAGE_EXT:
                out.append((p.name, p.read_bytes()))
    if not out:
        try:
            from PIL import Image
            from skimage import data

            for name, fmt in (("chelsea", "JPEG"), ("astronaut", "PNG"), ("coffee", "JPEG")):
                buf = io.BytesIO()
                Image.fromarray(getattr(data, name)()).save(buf, format=fmt)
                out.append((f"{name}.{'jpg' if fmt == 'JPEG' else 'png'}", buf.getvalue()))
        except Exception:  # noqa: BLE001 - any failure: fall back to a generated image
            out = []
    if not out:
        out = [("generated.png", _tiny_png())]
    return out


def _norm_ext(name: str) -> str:
    return Path(name).suffix.lower().replace(".jpeg", ".jpg").replace(".tif", ".tiff").replace(".tifff", ".tiff")


def pick_image(key: str, images: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    """The fixture for an S3 key / URL path: same file name; else the longest fixture stem
    that starts the key's stem (queries/chelsea-query.jpg -> chelsea.jpg), same extension
    preferred; else the first fixture with the same extension; else the first one."""
    base = Path(urllib.parse.urlparse(key).path if "://" in key else key).name
    stem, ext = Path(base).stem.lower(), _norm_ext(base)
    for name, data in images:
        if name.lower() == base.lower():
            return name, data
    cands = [(n, d) for n, d in images if stem.startswith(Path(n).stem.lower())]
    cands.sort(key=lambda nd: (-len(Path(nd[0]).stem), _norm_ext(nd[0]) != ext))
    if cands:
        return cands[0]
    for name, data in images:
        if _norm_ext(name) == ext:
            return name, data
    return images[0]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tpl() -> dict:
    if not SOURCE_TEMPLATE.exists():
        pytest.fail(f"{SOURCE_TEMPLATE} does not exist")
    if not BUILT_TEMPLATE.exists():
        pytest.fail(f"{BUILT_TEMPLATE} does not exist: run `sam build` (tools/sam-local/test.sh does)")
    return load_template(SOURCE_TEMPLATE)


@pytest.fixture(scope="module")
def s3():
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
def images() -> list[tuple[str, bytes]]:
    return fixture_images()


@pytest.fixture(scope="module")
def moto_buckets(tpl, s3) -> dict[str, str]:
    """bucket logical id -> moto bucket name (created empty)."""
    names = {}
    for b in buckets(tpl) or ["Bucket"]:
        name = moto_bucket_name(b)
        try:
            s3.create_bucket(Bucket=name)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        names[b] = name
    return names


@pytest.fixture(scope="module")
def image_server(images):
    """An HTTP server for URL queries, on all addresses of this private namespace (the
    Lambda container reaches it at podman's bridge gateway). Serves pick_image(path)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            _name, data = pick_image(self.path, images)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    gw = urllib.parse.urlparse(MOTO_FOR_CONTAINERS).hostname
    yield f"http://{gw}:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _declares(tpl: dict, var: str) -> set[str]:
    return {lid for lid in functions(tpl) if var in env_vars(tpl, lid)}


@pytest.fixture(scope="module")
def env_file(tpl, moto_buckets, tmp_path_factory) -> Path:
    """--env-vars file: every declared bucket var -> its moto bucket, every endpoint var ->
    moto as seen from the container, HARMONY_ALLOW_PRIVATE_URLS -> 1."""
    overrides = {}
    missing_endpoint = []
    for lid in functions(tpl):
        vars_ = env_vars(tpl, lid)
        o = {}
        for k, v in vars_.items():
            b = _bucket_of_value(tpl, v)
            if b:
                o[k] = moto_buckets[b]
            elif ENDPOINT_VARS.match(k):
                o[k] = MOTO_FOR_CONTAINERS
            elif k == ALLOW_PRIVATE_URLS_VAR:
                o[k] = "1"
        if not any(ENDPOINT_VARS.match(k) for k in vars_):
            missing_endpoint.append(lid)
        overrides[lid] = o
    if missing_endpoint:
        pytest.fail(
            "template.yaml declares no S3 endpoint env var for "
            + ", ".join(missing_endpoint)
            + ". `sam local invoke --env-vars` only overrides variables the template declares, so"
            " the functions cannot be pointed at moto. Declare AWS_ENDPOINT_URL_S3 with an empty"
            ' value (Globals.Function.Environment.Variables: AWS_ENDPOINT_URL_S3: "" - botocore'
            " ignores an empty value, so deployed functions use real S3)."
        )
    p = tmp_path_factory.mktemp("sam-env") / "env.json"
    p.write_text(json.dumps(overrides, indent=2))
    return p


def _all_objects(s3, names) -> dict[tuple[str, str], str]:
    out = {}
    for name in names:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for o in page.get("Contents", []):
                out[(name, o["Key"])] = o["ETag"]
    return out


def sam_invoke(lid: str, event_path: Path, env_file: Path):
    cmd = [
        SAM,
        "local",
        "invoke",
        lid,
        "-t",
        str(BUILT_TEMPLATE),
        "-e",
        str(event_path),
        "--env-vars",
        str(env_file),
        "--skip-pull-image",
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=INVOKE_TIMEOUT, check=False)
    dt = time.monotonic() - t0
    if TIMINGS_FILE:
        with open(TIMINGS_FILE, "a", encoding="utf-8") as f:
            f.write(
                json.dumps({"function": lid, "event": event_path.name, "seconds": round(dt, 2), "rc": proc.returncode})
                + "\n"
            )
    print(f"sam local invoke {lid} -e {event_path.name}: {dt:.1f} s, rc={proc.returncode}")
    resp = None
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            resp = json.loads(line.strip())
        except ValueError:
            continue
        break
    return resp, proc.stdout, proc.stderr, dt


def _fail_msg(what: str, stdout: str, stderr: str) -> str:
    return f"{what}\n--- stdout ---\n{stdout[-4000:]}\n--- stderr ---\n{stderr[-8000:]}"


# --------------------------------------------------------------------------- per-event checks
# event file name -> check(resp, ctx) run after the generic assertions; ctx has s3, buckets
# (logical id -> moto name), written [(bucket, key)], payload (API body JSON), event.
def _check_catalog_put(resp, ctx):
    assert any(k.startswith("index/records/") for _, k in ctx["written"]), (
        f"no index record written under index/records/: {ctx['written']}"
    )
    actions = [r.get("action") for r in (resp or {}).get("results", [])]
    assert actions and all(a in ("indexed", "unchanged") for a in actions), resp


def _check_catalog_delete(resp, ctx):
    actions = [r.get("action") for r in (resp or {}).get("results", [])]
    assert actions and all(a in ("removed", "absent") for a in actions), resp


def _check_query_put(resp, ctx):
    res = [(b, k) for b, k in ctx["written"] if k.startswith("results/") and k.endswith(".json")]
    assert res, f"no results/*.json written: {ctx['written']}"
    doc = json.loads(ctx["s3"].get_object(Bucket=res[0][0], Key=res[0][1])["Body"].read())
    assert "error" not in doc, doc
    assert isinstance(doc.get("results"), list) and doc["results"], doc
    assert "chelsea" in doc["results"][0]["key"], doc["results"][0]


def _check_search_catalog_hit(resp, ctx):
    results = ctx["payload"]["results"]
    assert results, ctx["payload"]
    assert "chelsea" in results[0]["key"], results[0]


CHECKS = {
    "s3-catalog-put.json": _check_catalog_put,
    "s3-catalog-delete.json": _check_catalog_delete,
    "s3-query-put.json": _check_query_put,
    "api-search-s3.json": _check_search_catalog_hit,
    "api-search-url.json": _check_search_catalog_hit,
}


# --------------------------------------------------------------------------- tests
def _cases_for_collection():
    try:
        return cases(load_template(SOURCE_TEMPLATE))
    except (OSError, yaml.YAMLError):
        return []


_CASES = _cases_for_collection()


def test_sam_available():
    assert shutil.which(SAM) or os.path.exists(SAM), f"sam not found at {SAM}"


def test_template_has_functions_and_cases():
    assert SOURCE_TEMPLATE.exists(), f"{SOURCE_TEMPLATE} missing"
    t = load_template(SOURCE_TEMPLATE)
    fns = functions(t)
    assert fns, "template.yaml has no AWS::Serverless::Function"
    uncovered = sorted(set(fns) - {lid for _, lid, _ in _CASES})
    assert not uncovered, (
        f"functions with no event to invoke them with: {uncovered}; add events/*.json matching "
        "their Events (S3 event name + key filter / API path + method) or list files in EVENTS"
    )


def _rewrite_url(event: dict, server: str) -> tuple[dict, bool]:
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
        raw = base64.b64decode(body) if ev.get("isBase64Encoded") else body.encode()
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("url"), str):
        doc["url"] = server + "/" + Path(urllib.parse.urlparse(doc["url"]).path).name
        raw = json.dumps(doc).encode()
        ev["body"] = base64.b64encode(raw).decode() if ev.get("isBase64Encoded") else raw.decode()
        changed = True
    return ev, changed


@pytest.mark.parametrize("kind,lid,event_rel", _CASES, ids=[f"{lid}-{Path(rel).stem}" for _, lid, rel in _CASES])
def test_sam_local_invoke(kind, lid, event_rel, tpl, s3, moto_buckets, env_file, images, image_server, tmp_path):
    event = json.loads((REPO / event_rel).read_text(encoding="utf-8"))
    name = Path(event_rel).name
    seeded = set()
    url_refused_expected = False
    if kind in ("s3", "s3-removed"):
        # The moto bucket standing for the function's trigger bucket; the event points at it.
        trig = None
        for e in function_events(tpl, lid):
            if e.get("Type") == "S3":
                trig = _bucket_of_value(tpl, (e.get("Properties") or {}).get("Bucket"))
                if trig:
                    break
        bucket = moto_buckets.get(trig) if trig else next(iter(moto_buckets.values()))
        event = copy.deepcopy(event)
        for rec in event["Records"]:
            rec["s3"]["bucket"]["name"] = bucket
            rec["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
            key = urllib.parse.unquote_plus(rec["s3"]["object"]["key"])
            if kind == "s3":
                _fname, data = pick_image(key, images)
                put = s3.put_object(Bucket=bucket, Key=key, Body=data)
                rec["s3"]["object"]["size"] = len(data)
                rec["s3"]["object"]["eTag"] = put["ETag"].strip('"')
                seeded.add((bucket, key))
            else:
                s3.delete_object(Bucket=bucket, Key=key)
    elif kind == "api":
        event, has_url = _rewrite_url(event, image_server)
        url_refused_expected = has_url and lid not in _declares(tpl, ALLOW_PRIVATE_URLS_VAR)
    ev_path = tmp_path / name
    ev_path.write_text(json.dumps(event))

    before = _all_objects(s3, moto_buckets.values())
    resp, out, err, _dt = sam_invoke(lid, ev_path, env_file)
    after = _all_objects(s3, moto_buckets.values())
    written = sorted(k for k, etag in after.items() if before.get(k) != etag and k not in seeded)

    assert resp is not None, _fail_msg("no JSON response from sam local invoke", out, err)
    if isinstance(resp, dict):
        assert "errorType" not in resp and "errorMessage" not in resp, _fail_msg(
            f"function raised: {resp.get('errorType')}: {resp.get('errorMessage')}", out, err
        )
    ctx = {"s3": s3, "buckets": moto_buckets, "written": written, "payload": None, "event": event}

    if kind == "s3":
        assert written, _fail_msg("the S3-triggered function wrote nothing to S3", out, err)
    elif kind == "api":
        assert isinstance(resp, dict) and "statusCode" in resp, _fail_msg("not an API Gateway response", out, err)
        body = resp.get("body") or ""
        if resp.get("isBase64Encoded"):
            body = base64.b64decode(body).decode("utf-8", "replace")
        try:
            payload = json.loads(body)
        except ValueError:
            pytest.fail(_fail_msg(f"statusCode {resp['statusCode']}, body is not JSON: {body[:500]!r}", out, err))
        ctx["payload"] = payload
        if url_refused_expected:
            # No HARMONY_ALLOW_PRIVATE_URLS in the template: the local URL must be refused
            # cleanly (the namespace has no internet for the event's real URL).
            assert 400 <= resp["statusCode"] < 600 and isinstance(payload, dict) and "error" in payload, _fail_msg(
                f"URL query: expected a handled error, got {resp['statusCode']}: {body[:500]}", out, err
            )
            return
        assert resp["statusCode"] == 200, _fail_msg(f"statusCode {resp['statusCode']}: {body[:1000]}", out, err)
        path, _m = _api_path_method(event)
        if "search" in path.lower() or "search" in event_rel.lower():
            assert isinstance(payload, dict) and isinstance(payload.get("results"), list), _fail_msg(
                f"search response has no `results` list: {str(payload)[:500]}", out, err
            )
    check = CHECKS.get(name)
    if check:
        try:
            check(resp, ctx)
        except AssertionError as exc:
            pytest.fail(_fail_msg(f"{name}: {exc}", out, err))
