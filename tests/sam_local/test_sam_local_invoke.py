"""Real `sam local invoke` of every function in template.yaml, against moto's S3 server.

Skipped unless HARMONY_SAM_LOCAL=1. Run it through tools/sam-local/test.sh (or
`make sam-local-test`), which builds the local Lambda image, runs `sam build` and then this
module inside tools/sam-local/run-in-netns.sh: a private network namespace holding a podman
service (DOCKER_HOST) and a moto server (HARMONY_MOTO_ENDPOINT for this process,
HARMONY_MOTO_CONTAINER_ENDPOINT for the Lambda containers).

What it does, for each function of the template:
  * S3-triggered functions: for each S3 event (events/*.json with Records[].eventSource
    aws:s3, or the files named in EVENTS below), the event's bucket is rewritten to the moto
    bucket that stands for the template's bucket, a real image is uploaded at the event's
    key, the function is invoked and must return without error and write something to S3
    (plus the EXPECT_WRITES prefixes, when given).
  * API-triggered functions: each API Gateway event whose path/method match one of the
    function's Api events is invoked; the response must be statusCode 200 with a JSON body,
    and a search response (path contains "search") must carry a `results` list.
S3 cases run before API cases, so a search sees what the ingest functions indexed.

Env (set by run-in-netns.sh / test.sh):
  HARMONY_SAM_LOCAL=1, DOCKER_HOST, HARMONY_MOTO_ENDPOINT, HARMONY_MOTO_CONTAINER_ENDPOINT,
  HARMONY_SAM (sam executable), HARMONY_SAM_TEMPLATE (built template,
  default <repo>/.aws-sam/build/template.yaml), HARMONY_SAM_BUCKET_PREFIX (moto bucket name
  prefix, default harmony-sam-local), HARMONY_SAM_INVOKE_TIMEOUT (s, default 600).
"""

from __future__ import annotations

import base64
import copy
import glob
import io
import json
import os
import re
import shutil
import struct
import subprocess
import time
import urllib.parse
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

if os.environ.get("HARMONY_SAM_LOCAL") != "1":
    pytest.skip(
        "sam local invoke tests need podman and moto: run tools/sam-local/test.sh "
        "(HARMONY_SAM_LOCAL=1)",
        allow_module_level=True,
    )

import boto3  # noqa: E402
import yaml  # noqa: E402

SOURCE_TEMPLATE = REPO / "template.yaml"
BUILT_TEMPLATE = Path(
    os.environ.get("HARMONY_SAM_TEMPLATE", REPO / ".aws-sam" / "build" / "template.yaml")
)
SAM = os.environ.get("HARMONY_SAM") or str(REPO / ".tools" / "sam" / "bin" / "sam")
BUCKET_PREFIX = os.environ.get("HARMONY_SAM_BUCKET_PREFIX", "harmony-sam-local")
INVOKE_TIMEOUT = int(os.environ.get("HARMONY_SAM_INVOKE_TIMEOUT", "600"))
MOTO = os.environ.get("HARMONY_MOTO_ENDPOINT", "")
MOTO_FOR_CONTAINERS = os.environ.get("HARMONY_MOTO_CONTAINER_ENDPOINT", "")
FIXTURES = REPO / "tests" / "fixtures" / "images"
TIMINGS_FILE = os.environ.get("HARMONY_SAM_TIMINGS")  # optional: append one JSON line per invoke

# Explicit event files per function logical id, in addition to (or instead of) the ones
# matched automatically by event kind. Paths are relative to the repo.
EVENTS: dict[str, list[str]] = {}
# Key prefixes that an S3-triggered function must have written (in any test bucket) after
# its invocation, per logical id. Without an entry, "wrote at least one object" is checked.
EXPECT_WRITES: dict[str, list[str]] = {}

# Env var names that the test points at moto (as seen from inside the Lambda container).
ENDPOINT_VARS = re.compile(r"^(AWS_ENDPOINT_URL(_S3)?|.*S3_ENDPOINT.*|.*ENDPOINT_URL.*)$")


# --------------------------------------------------------------------------- template
class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short tags (!Ref, !GetAtt, !Sub ...) into the
    long form ({"Ref": x}, {"Fn::GetAtt": x}, ...)."""


def _cfn_tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_CfnLoader) or {}


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
    glob_vars = (
        ((tpl.get("Globals") or {}).get("Function") or {}).get("Environment") or {}
    ).get("Variables") or {}
    own = ((functions(tpl)[lid].get("Properties") or {}).get("Environment") or {}).get(
        "Variables"
    ) or {}
    return {**glob_vars, **own}


def function_events(tpl: dict, lid: str) -> list[dict]:
    ev = (functions(tpl)[lid].get("Properties") or {}).get("Events") or {}
    return [dict(e, _name=name) for name, e in ev.items()]


def _ref(v):
    if isinstance(v, dict) and "Ref" in v:
        return v["Ref"]
    return None


def moto_bucket_name(logical_id: str) -> str:
    name = f"{BUCKET_PREFIX}-{logical_id}".lower()
    return re.sub(r"[^a-z0-9.-]", "-", name)[:63]


def _bucket_of_value(tpl: dict, v) -> str | None:
    """The bucket logical id that an env value / event property names, if any."""
    bl = buckets(tpl)
    r = _ref(v)
    if r in bl:
        return r
    if isinstance(v, dict):
        sub = v.get("Fn::Sub")
        text = sub if isinstance(sub, str) else (sub[0] if isinstance(sub, list) and sub else "")
        for b in bl:
            if "${" + b + "}" in str(text):
                return b
        att = v.get("Fn::GetAtt")
        if isinstance(att, list) and att and att[0] in bl:
            return att[0]
    return None


# --------------------------------------------------------------------------- events
def event_kind(ev: dict) -> str | None:
    recs = ev.get("Records")
    if isinstance(recs, list) and recs and recs[0].get("eventSource") == "aws:s3":
        return "s3"
    if "httpMethod" in ev or ("requestContext" in ev and ("rawPath" in ev or "path" in ev)):
        return "api"
    return None


def _api_path_method(ev: dict) -> tuple[str, str]:
    if "httpMethod" in ev:
        return ev.get("resource") or ev.get("path") or "", ev["httpMethod"].upper()
    http = (ev.get("requestContext") or {}).get("http") or {}
    return ev.get("rawPath") or "", (http.get("method") or "").upper()


def _path_matches(template_path: str, event_path: str) -> bool:
    if template_path == event_path:
        return True
    rx = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template_path)) + "$"
    rx = rx.replace(r"\{proxy\+\}", ".*")
    return re.match(rx, event_path) is not None


def all_event_files() -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(REPO / "events" / "**" / "*.json"), recursive=True))


def cases(tpl: dict) -> list[tuple[str, str, str]]:
    """(kind, logical id, event file relative to the repo), S3 cases first."""
    out: list[tuple[str, str, str]] = []
    files = []
    for p in all_event_files():
        try:
            files.append((p, json.loads(p.read_text(encoding="utf-8"))))
        except (OSError, ValueError):
            continue
    for lid in functions(tpl):
        chosen: list[tuple[str, str]] = []
        for rel in EVENTS.get(lid, []):
            ev = json.loads((REPO / rel).read_text(encoding="utf-8"))
            chosen.append((event_kind(ev) or "other", rel))
        if lid not in EVENTS:
            fev = function_events(tpl, lid)
            types = {e.get("Type") for e in fev}
            for p, ev in files:
                kind = event_kind(ev)
                rel = str(p.relative_to(REPO))
                if kind == "s3" and "S3" in types:
                    chosen.append((kind, rel))
                elif kind == "api" and types & {"Api", "HttpApi"}:
                    path, method = _api_path_method(ev)
                    for e in fev:
                        if e.get("Type") not in ("Api", "HttpApi"):
                            continue
                        props = e.get("Properties") or {}
                        tm = str(props.get("Method", "any")).upper()
                        if _path_matches(str(props.get("Path", "")), path) and tm in (
                            "ANY",
                            method,
                        ):
                            chosen.append((kind, rel))
                            break
        out += [(k, lid, rel) for k, rel in chosen]
    order = {"s3": 0, "other": 1, "api": 2}
    return sorted(out, key=lambda c: order.get(c[0], 1))


# --------------------------------------------------------------------------- images
def _tiny_png(w: int = 64, h: int = 48) -> bytes:
    rows = b"".join(
        b"\x00" + bytes(((x * 4) % 256, (y * 5) % 256, ((x + y) * 3) % 256) * 1 for x in range(w))
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


def fixture_images() -> list[tuple[str, bytes]]:
    """A few real images: tests/fixtures/images/*, else scikit-image's bundled photos
    (CC0), else a generated PNG."""
    out = []
    if FIXTURES.is_dir():
        for p in sorted(FIXTURES.iterdir()):
            if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"):
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


def _pick_image(key: str, images: list[tuple[str, bytes]]) -> bytes:
    ext = Path(key).suffix.lower().replace(".jpeg", ".jpg")
    for name, data in images:
        if Path(name).suffix.lower().replace(".jpeg", ".jpg") == ext:
            return data
    return images[0][1]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tpl() -> dict:
    if not SOURCE_TEMPLATE.exists():
        pytest.fail(f"{SOURCE_TEMPLATE} does not exist")
    if not BUILT_TEMPLATE.exists():
        pytest.fail(f"{BUILT_TEMPLATE} does not exist: run `sam build` first (tools/sam-local/test.sh does)")
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
def moto_buckets(tpl, s3, images) -> dict[str, str]:
    """bucket logical id -> moto bucket name; each created, seeded with the images under
    `seed/`."""
    names = {}
    for b in buckets(tpl) or ["Bucket"]:
        name = moto_bucket_name(b)
        try:
            s3.create_bucket(Bucket=name)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        for fname, data in images[:2]:
            s3.put_object(Bucket=name, Key=f"seed/{fname}", Body=data)
        names[b] = name
    return names


@pytest.fixture(scope="module")
def env_file(tpl, moto_buckets, tmp_path_factory) -> Path:
    """--env-vars file: every declared bucket var -> its moto bucket, every endpoint var ->
    moto as seen from the container."""
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
        if not any(ENDPOINT_VARS.match(k) for k in vars_):
            missing_endpoint.append(lid)
        overrides[lid] = o
    if missing_endpoint:
        pytest.fail(
            "template.yaml declares no S3 endpoint env var for "
            + ", ".join(missing_endpoint)
            + ". `sam local invoke --env-vars` only overrides variables the template declares, so"
            " the functions cannot be pointed at moto. Declare AWS_ENDPOINT_URL_S3 with an empty"
            ' value (Globals.Function.Environment.Variables: AWS_ENDPOINT_URL_S3: "" — botocore'
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


def sam_invoke(lid: str, event_path: Path, env_file: Path) -> tuple[dict | list | None, str, str, float]:
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
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=INVOKE_TIMEOUT, check=False
    )
    dt = time.monotonic() - t0
    if TIMINGS_FILE:
        with open(TIMINGS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"function": lid, "event": event_path.name, "seconds": round(dt, 2),
                                "rc": proc.returncode}) + "\n")
    print(f"sam local invoke {lid} -e {event_path.name}: {dt:.1f} s, rc={proc.returncode}")
    resp = None
    for line in reversed(proc.stdout.strip().splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            resp = json.loads(line)
        except ValueError:
            continue
        break
    return resp, proc.stdout, proc.stderr, dt


def _fail_msg(what: str, stdout: str, stderr: str) -> str:
    return f"{what}\n--- stdout ---\n{stdout[-4000:]}\n--- stderr ---\n{stderr[-6000:]}"


# --------------------------------------------------------------------------- tests
def _cases_for_collection():
    try:
        t = load_template(SOURCE_TEMPLATE)
    except (OSError, yaml.YAMLError):
        return []
    return cases(t)


_CASES = _cases_for_collection()


def test_template_has_functions_and_cases():
    assert SOURCE_TEMPLATE.exists(), f"{SOURCE_TEMPLATE} missing"
    t = load_template(SOURCE_TEMPLATE)
    fns = functions(t)
    assert fns, "template.yaml has no AWS::Serverless::Function"
    covered = {lid for _, lid, _ in _CASES}
    uncovered = sorted(set(fns) - covered)
    assert not uncovered, (
        f"functions with no event to invoke them with: {uncovered}; add events/*.json matching "
        "their Events (S3 put / API path+method) or list files in EVENTS in this module"
    )


@pytest.mark.parametrize(
    "kind,lid,event_rel", _CASES, ids=[f"{lid}-{Path(rel).stem}" for _, lid, rel in _CASES]
)
def test_sam_local_invoke(kind, lid, event_rel, tpl, s3, moto_buckets, env_file, images, tmp_path):
    event = json.loads((REPO / event_rel).read_text(encoding="utf-8"))
    seeded = None
    if kind == "s3":
        # Point the event at the moto bucket that stands for the function's trigger bucket,
        # and put a real image at the event's key.
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
            data = _pick_image(key, images)
            s3.put_object(Bucket=bucket, Key=key, Body=data)
            rec["s3"]["object"]["size"] = len(data)
            seeded = (bucket, key)
    ev_path = tmp_path / Path(event_rel).name
    ev_path.write_text(json.dumps(event))

    before = _all_objects(s3, moto_buckets.values())
    resp, out, err, _dt = sam_invoke(lid, ev_path, env_file)
    after = _all_objects(s3, moto_buckets.values())

    assert resp is not None, _fail_msg("no JSON response from sam local invoke", out, err)
    if isinstance(resp, dict):
        assert "errorType" not in resp and "errorMessage" not in resp, _fail_msg(
            f"function raised: {resp.get('errorType')}: {resp.get('errorMessage')}", out, err
        )

    if kind == "s3":
        if isinstance(resp, dict) and "statusCode" in resp:
            assert int(resp["statusCode"]) < 400, _fail_msg(f"statusCode {resp['statusCode']}", out, err)
        written = sorted(k for k, etag in after.items() if before.get(k) != etag and k != seeded)
        assert written, _fail_msg("the S3-triggered function wrote nothing to S3", out, err)
        for prefix in EXPECT_WRITES.get(lid, []):
            assert any(key.startswith(prefix) for _, key in written), _fail_msg(
                f"nothing written under {prefix!r}; written: {written}", out, err
            )
    elif kind == "api":
        assert isinstance(resp, dict) and "statusCode" in resp, _fail_msg("not an API Gateway response", out, err)
        assert resp["statusCode"] == 200, _fail_msg(f"statusCode {resp['statusCode']}", out, err)
        body = resp.get("body") or ""
        if resp.get("isBase64Encoded"):
            body = base64.b64decode(body).decode("utf-8", "replace")
        try:
            payload = json.loads(body)
        except ValueError:
            pytest.fail(_fail_msg(f"body is not JSON: {body[:500]!r}", out, err))
        path, _m = _api_path_method(event)
        if "search" in path.lower() or "search" in event_rel.lower():
            assert isinstance(payload, dict) and isinstance(payload.get("results"), list), _fail_msg(
                f"search response has no `results` list: {str(payload)[:500]}", out, err
            )


def test_sam_on_path():
    assert shutil.which(SAM) or os.path.exists(SAM), f"sam not found at {SAM}"
