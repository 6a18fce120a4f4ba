"""Template-driven local invoke: every function of template.yaml, run the way Lambda runs it.

Handler, CodeUri, Environment (Globals + function) and Layers are read from template.yaml; the
handler is imported by name from CodeUri with the layer directories on sys.path (the engine
layer's ContentUri; the deps layer's packages come from this venv — its build is tested in
tests/aws/test_layers.py) and invoked with events/*.json in a fresh process whose environment
is exactly the template's, with the values overridden that `sam local invoke --env-vars` would
override (bucket -> the test bucket, AWS_ENDPOINT_URL_S3 -> moto's server). So a wrong handler
path, CodeUri, layer or env var name in the template fails here. S3 is moto's HTTP server.
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.aws.test_template import load_template
from tests.aws_fixtures import EVENTS, REPO, all_keys, put_catalog

RUNNER = Path(__file__).with_name("lambda_runner.py")
CATALOG = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]


def resolve(value, tpl: dict, bucket: str):
    """A template value as `sam local` resolves it: Ref to a parameter -> its default, Ref to the
    bucket -> the test bucket (what --env-vars would set), plain strings as they are."""
    if isinstance(value, dict) and "Ref" in value:
        ref = value["Ref"]
        if ref in tpl.get("Parameters", {}):
            return str(tpl["Parameters"][ref].get("Default", ""))
        if tpl["Resources"].get(ref, {}).get("Type") == "AWS::S3::Bucket":
            return bucket
        raise AssertionError(f"cannot resolve Ref {ref}")
    if isinstance(value, (dict, list)):
        raise AssertionError(f"unsupported intrinsic in environment: {value}")
    return str(value)


def function_spec(tpl: dict, lid: str, bucket: str, endpoint: str, overrides: dict | None = None) -> dict:
    fn = tpl["Resources"][lid]["Properties"]
    glob = tpl.get("Globals", {}).get("Function", {})
    env_decl = {**(glob.get("Environment", {}).get("Variables", {})), **(fn.get("Environment", {}).get("Variables", {}))}
    env = {k: resolve(v, tpl, bucket) for k, v in env_decl.items()}
    if "AWS_ENDPOINT_URL_S3" in env:  # as sam local --env-vars would (only declared names)
        env["AWS_ENDPOINT_URL_S3"] = endpoint
    for k, v in (overrides or {}).items():
        if k in env:
            env[k] = v
    layers = []
    for ref in fn.get("Layers", glob.get("Layers", [])):
        layer = tpl["Resources"][ref["Ref"]]["Properties"]
        d = REPO / layer["ContentUri"]
        assert d.is_dir(), f"layer {ref['Ref']} ContentUri {d} does not exist"
        layers.append(str(d / "python") if (d / "python").is_dir() else str(d))
    handler = fn.get("Handler", glob.get("Handler"))
    code_uri = REPO / fn["CodeUri"]
    return {"name": lid, "code_uri": str(code_uri), "handler": handler, "layers": layers, "env": env,
            "runtime": fn.get("Runtime", glob.get("Runtime")), "repo": str(REPO)}


def invoke(spec: dict, events: list[dict], tmp_path: Path) -> dict:
    spec = {**spec, "events": events, "out": str(tmp_path / f"out-{spec['name']}.json")}
    spec_path = tmp_path / f"spec-{spec['name']}.json"
    spec_path.write_text(json.dumps(spec))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        # what the Lambda service sets
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_LAMBDA_FUNCTION_NAME": spec["name"], "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec['runtime']}", "_HANDLER": spec["handler"] or "",
        "AWS_SAM_LOCAL": "true",  # as under `sam local`: Powertools Tracer stays off (no X-Ray daemon)
        **spec["env"],
    }
    r = subprocess.run([sys.executable, str(RUNNER), str(spec_path)], env=env, capture_output=True, text=True,
                       timeout=180, cwd="/")
    assert Path(spec["out"]).exists(), f"runner crashed:\n{r.stderr[-3000:]}"
    return json.loads(Path(spec["out"]).read_text())


def api_ok(result: dict) -> dict:
    assert result["ok"], result
    resp = result["response"]
    assert resp["statusCode"] == 200, resp
    body = resp["body"]
    if resp.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return json.loads(body)


def events_for(tpl: dict, lid: str) -> list[str]:
    """events/*.json that match the function's Events (S3 prefix / API path+method)."""
    out = []
    fn_events = tpl["Resources"][lid]["Properties"].get("Events", {}).values()
    for p in sorted(EVENTS.glob("*.json")):
        ev = json.loads(p.read_text())
        for e in fn_events:
            props = e["Properties"]
            if e["Type"] == "S3" and "Records" in ev:
                prefix = next(r["Value"] for r in props["Filter"]["S3Key"]["Rules"] if r["Name"] == "prefix")
                kind = props["Events"].split(":")[1]
                rec = ev["Records"][0]
                if rec["s3"]["object"]["key"].startswith(prefix) and rec["eventName"].startswith(kind):
                    out.append(p.name)
                    break
            if e["Type"] == "Api" and "httpMethod" in ev:
                if ev["path"] == props["Path"] and ev["httpMethod"].lower() == props["Method"].lower():
                    out.append(p.name)
                    break
    return out


@pytest.fixture(scope="module")
def tpl():
    return load_template()


@pytest.fixture
def world(s3_server, images, tpl):
    bucket = s3_server.harmony_bucket
    put_catalog(s3_server, bucket, images, names=CATALOG)
    return s3_server, bucket


def point(ev: dict, bucket: str) -> dict:
    ev = copy.deepcopy(ev)
    for rec in ev.get("Records", []):
        rec["s3"]["bucket"]["name"] = bucket
        rec["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    return ev


def s3_put(key: str, bucket: str) -> dict:
    ev = point(json.loads((EVENTS / "s3-catalog-put.json").read_text()), bucket)
    ev["Records"][0]["s3"]["object"]["key"] = key
    return ev


def test_every_function_has_events(tpl):
    fns = [lid for lid, r in tpl["Resources"].items() if r["Type"] == "AWS::Serverless::Function"]
    assert sorted(fns) == ["IndexFunction", "QueryDropFunction", "SearchFunction"]
    assert events_for(tpl, "IndexFunction") == ["s3-catalog-delete.json", "s3-catalog-put.json"]
    assert events_for(tpl, "QueryDropFunction") == ["s3-query-put.json"]
    assert events_for(tpl, "SearchFunction") == ["api-search-s3.json", "api-search-upload.json", "api-search-url.json"]


def test_all_functions_from_template(world, tpl, images, tmp_path, moto_server_url):
    s3, bucket = world
    # IndexFunction: the catalog, then the events/ put and delete
    spec = function_spec(tpl, "IndexFunction", bucket, moto_server_url)
    evs = [s3_put(f"catalog/{n}", bucket) for n in CATALOG]
    evs += [point(json.loads((EVENTS / n).read_text()), bucket) for n in events_for(tpl, "IndexFunction")]
    out = invoke(spec, evs, tmp_path)
    assert out["init"] == "ok", out
    assert out["engine_from"].startswith(str(REPO / "layers" / "engine"))
    actions = [r["response"]["results"][0]["action"] if r["ok"] else r for r in out["results"]]
    assert actions == ["indexed"] * len(CATALOG) + ["absent", "unchanged"], actions
    assert len(all_keys(s3, bucket, "index/records/")) == len(CATALOG)

    # SearchFunction: upload, S3 reference, URL (served locally; private URLs allowed for the test)
    srv = _serve(images)
    try:
        spec = function_spec(tpl, "SearchFunction", bucket, moto_server_url,
                             overrides={"HARMONY_ALLOW_PRIVATE_URLS": "1"})
        evs = []
        for name in events_for(tpl, "SearchFunction"):
            ev = json.loads((EVENTS / name).read_text())
            if name == "api-search-url.json":
                ev["body"] = base64.b64encode(json.dumps({"url": f"{srv}/coffee__resize_half.png"}).encode()).decode()
            evs.append(ev)
        out = invoke(spec, evs, tmp_path)
    finally:
        _stop(srv)
    assert out["init"] == "ok", out
    tops = [api_ok(r)["results"][0]["key"] for r in out["results"]]
    assert tops == ["catalog/chelsea.jpg", "catalog/chelsea.jpg", "catalog/coffee.jpg"]

    # QueryDrop
    s3.put_object(Bucket=bucket, Key="queries/chelsea-query.jpg", Body=images["chelsea__hflip.jpg"])
    spec = function_spec(tpl, "QueryDropFunction", bucket, moto_server_url)
    out = invoke(spec, [point(json.loads((EVENTS / "s3-query-put.json").read_text()), bucket)], tmp_path)
    assert out["init"] == "ok" and out["results"][0]["ok"], out
    doc = json.loads(s3.get_object(Bucket=bucket, Key="results/chelsea-query.jpg.json")["Body"].read())
    assert doc["results"][0]["key"] == "catalog/chelsea.jpg"


def _broken(tpl: dict, lid: str, how: str) -> dict:
    t = copy.deepcopy(tpl)
    fn = t["Resources"][lid]["Properties"]
    if how == "handler":
        fn["Handler"] = "app.handler"
    elif how == "module":
        fn["Handler"] = "main.lambda_handler"
    elif how == "codeuri":
        fn["CodeUri"] = "functions/query_drop/" if lid != "QueryDropFunction" else "functions/search/"
    elif how == "env":
        v = fn["Environment"]["Variables"]
        v["HARMONY_BUCKET_NAME"] = v.pop("HARMONY_BUCKET")
    elif how == "env-typo-optional":
        v = fn["Environment"]["Variables"]
        v["HARMONY_INDEX_TTL_SECOND"] = v.pop("HARMONY_INDEX_TTL_SECONDS")
    elif how == "layer":
        t["Resources"]["EngineLayer"]["Properties"]["ContentUri"] = "layers/deps/"
    return t


@pytest.mark.parametrize("how,expect", [
    ("handler", "AttributeError"),            # Handler names a function app.py does not have
    ("module", "ModuleNotFoundError"),        # Handler names a module CodeUri does not have
    ("codeuri", "KeyError"),                  # another function's code: not an API handler
    ("env", "misconfigured"),                 # HARMONY_BUCKET renamed
    ("env-typo-optional", "misconfigured"),   # an optional setting misspelt
    ("layer", "ModuleNotFoundError"),         # EngineLayer pointing at the wrong directory
])
def test_broken_template_fails(world, tpl, tmp_path, moto_server_url, how, expect):
    _, bucket = world
    t = _broken(tpl, "SearchFunction", how)
    spec = function_spec(t, "SearchFunction", bucket, moto_server_url)
    out = invoke(spec, [json.loads((EVENTS / "api-search-upload.json").read_text())], tmp_path)
    if out["init"] != "ok":
        got = out["errorType"]
    else:
        r = out["results"][0]
        if r["ok"]:
            assert r["response"]["statusCode"] == 500, f"{how}: template error went unnoticed: {r}"
            got = json.loads(r["response"]["body"])["error"]["code"]
        else:
            got = r["errorType"]
    assert got == expect, out


def _serve(images):
    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):  # noqa: N802
            data = images.get(self.path.lstrip("/"))
            self.send_response(200 if data else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            if data:
                self.wfile.write(data)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _SERVERS[f"http://127.0.0.1:{srv.server_address[1]}"] = srv
    return f"http://127.0.0.1:{srv.server_address[1]}"


_SERVERS: dict = {}


def _stop(url):
    srv = _SERVERS.pop(url)
    srv.shutdown()
    srv.server_close()
