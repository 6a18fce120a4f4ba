"""The shard fan-out through a real Lambda Invoke API: `sam local start-lambda` through podman.

Skipped unless HARMONY_SAM_LOCAL=1; runs with tests/sam_local/test_sam_local_invoke.py inside
tools/sam-local/run-in-netns.sh (`make sam-local-test`), on the same moto server, in a bucket of
its own.

`sam local start-lambda` serves the built template with ShardIds=0,1 (parameter override) on a port
of the private namespace; the Lambda containers reach it, like moto, at podman's bridge gateway.
The SearchFunction's AWS_ENDPOINT_URL_LAMBDA (declared empty in template.yaml) is set to that
same server in the --env-vars file, so its ShardFanOut invokes ShardFunction0 and ShardFunction1
through it: the functions come from the template's Fn::ForEach (expanded by SAM CLI's
--language-extensions, SAM_CLI_ENABLE_LANGUAGE_EXTENSIONS=1 in tools/sam-local/test.sh), their
names (<stack>-shard-0, -1) from the template (HARMONY_SHARD_FUNCTIONS), the calls from boto3,
the answers from the shard handlers in their own containers. Everything goes through the
handlers' events — the shard protocol between SearchFunction and the shards is not looked at.

  * IndexFunction {"action": "reindex"} then events/index-compact.json fold the sample catalog
    (real photos) into the two shards' segments;
  * SearchFunction, with events/api-search-upload.json carrying an edited copy of a catalog
    photo, answers exactly what a second start-lambda serving the template with ShardIds=0 (the
    unsharded deployment) answers from the same bucket: the copy first with a score of a copy,
    the same ranking, a complete index and no failed shards;
  * a fan-out naming a function the server does not have is flagged (`failed_shards`, the
    other shard's results only), and one where every shard is missing is a 502.

Env: as test_sam_local_invoke.py; HARMONY_SAM_START_TIMEOUT (s, default 60) for a server to
listen.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import CATALOG_NAMES, REPO, all_keys, load_event, put_catalog

if os.environ.get("HARMONY_SAM_LOCAL") != "1":
    pytest.skip(
        "sam local start-lambda tests need podman and moto: run tools/sam-local/test.sh (HARMONY_SAM_LOCAL=1)",
        allow_module_level=True,
    )

import boto3
from botocore.config import Config

from harmony_aws.layout import shard_of
from harmony_image.scoring import SAME_IMAGE_THRESHOLD
from harmony_local.stack.template import load_template
from tests.sam_local.test_sam_local_invoke import (
    BUILT_TEMPLATE,
    INVOKE_TIMEOUT,
    LAMBDA_ENDPOINT_VAR,
    MOTO,
    MOTO_FOR_CONTAINERS,
    SAM,
    env_overrides,
)

SHARDS = 2
BUCKET = "harmony-sam-shards"  # not test_sam_local_invoke's: that one's catalog changes as it runs
START_TIMEOUT = int(os.environ.get("HARMONY_SAM_START_TIMEOUT", "60"))
# Edited copies of catalog photos (tests/fixtures: `<photo>__<edit>`, whose answer is <photo>.jpg).
QUERIES = ["chelsea__crop_center_80.jpg", "rocket__brighter.jpg", "astronaut__jpeg_q20.jpg"]
# What the sharded and the unsharded answers must agree on (a result's `url` is presigned: it
# carries its signing time).
RESULT_FIELDS = ("key", "sha256", "score", "ssim", "orb")
SCORE_ATOL = 1e-9
MISSING = "NoSuchShardFunction"
SHARD_FUNCTIONS = [f"ShardFunction{i}" for i in range(SHARDS)]
# ...and the names SearchFunction invokes them by: template.yaml's <stack>-shard-<n>, where SAM
# CLI's local commands resolve ${AWS::StackName} to "local"
SHARD_NAMES = [f"local-shard-{i}" for i in range(SHARDS)]
# start-lambda's request log: client address, function, status
REQUEST_LOG = re.compile(
    r'^\S+ \S+ (\S+) - - \[[^]]*\] "POST /2015-03-31/functions/([^/]+)/invocations [^"]*" (\d+)', re.M
)


@dataclass
class LambdaServer:
    """A running `sam local start-lambda`: a client for this process, its log."""

    client: Any
    log: Path

    def why(self, what: str) -> str:
        return f"{what}\n--- sam local start-lambda log (tail) ---\n{self.log.read_text(errors='replace')[-8000:]}"

    def invoke(self, function: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The function's answer; fails the test on a function error."""
        t0 = time.monotonic()
        r = self.client.invoke(FunctionName=function, Payload=json.dumps(payload).encode())
        body = json.loads(r["Payload"].read())
        print(f"start-lambda invoke {function}: {time.monotonic() - t0:.1f} s")
        assert "FunctionError" not in r, self.why(f"{function} failed: {body}")
        assert isinstance(body, dict), self.why(f"{function} answered {body!r}")
        return body

    def warm(self, *functions: str) -> None:
        """Start the functions' containers (--warm-containers LAZY keeps them), in parallel, with
        an empty event whose answer does not matter. On this machine a podman cold start takes
        10-20 s; cold shards behind a cold SearchFunction would pass its 30 s timeout, which a
        real Lambda's cold start of a second or two does not approach."""
        with ThreadPoolExecutor(len(functions)) as pool:
            list(pool.map(lambda fn: self.client.invoke(FunctionName=fn, Payload=b"{}")["Payload"].read(), functions))

    def search(self, query: str, images: dict[str, bytes]) -> tuple[int, dict[str, Any]]:
        """SearchFunction's status and JSON body for events/api-search-upload.json with ``query``."""
        event = load_event("api-search-upload.json")
        event["body"] = base64.b64encode(images[query]).decode("ascii")
        event["queryStringParameters"] = {"k": str(len(CATALOG_NAMES))}
        event["multiValueQueryStringParameters"] = {"k": [str(len(CATALOG_NAMES))]}
        resp = self.invoke("SearchFunction", event)
        body = base64.b64decode(resp["body"]) if resp.get("isBase64Encoded") else resp["body"]
        return resp["statusCode"], json.loads(body)

    def invocations(self, function: str) -> int:
        """Invocations of ``function`` that a Lambda container made (not this process) and the
        server answered 200, from its request log."""
        calls = REQUEST_LOG.findall(self.log.read_text(errors="replace"))
        return sum(1 for client, fn, status in calls if fn == function and status == "200" and client != "127.0.0.1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def start_lambda(
    name: str, tmp: Path, *, shards: int, search_env: dict[str, str] | None = None
) -> Iterator[LambdaServer]:
    """`sam local start-lambda` of the built template with ``shards`` shards (ShardIds=0,...), on all addresses
    of the namespace; every function pointed at moto and BUCKET, SearchFunction's Lambda
    endpoint at this server (as the containers see it), plus ``search_env``."""
    port = free_port()
    container_url = f"http://{urllib.parse.urlparse(MOTO_FOR_CONTAINERS).hostname}:{port}"
    shard_ids = ",".join(map(str, range(shards)))
    tpl = load_template(BUILT_TEMPLATE, bucket_name=BUCKET, parameter_overrides={"ShardIds": shard_ids})
    env = {lid: env_overrides(fn, BUCKET) for lid, fn in tpl.functions.items()}
    assert LAMBDA_ENDPOINT_VAR in tpl.functions["SearchFunction"].environment, (
        f"template.yaml must declare SearchFunction's {LAMBDA_ENDPOINT_VAR} (empty) for --env-vars to set it"
    )
    env["SearchFunction"] |= {LAMBDA_ENDPOINT_VAR: container_url, **(search_env or {})}
    env_file = tmp / f"{name}-env.json"
    env_file.write_text(json.dumps(env, indent=2))
    log = tmp / f"{name}-start-lambda.log"
    cmd = [SAM, "local", "start-lambda", "-t", str(BUILT_TEMPLATE), "--parameter-overrides", f"ShardIds={shard_ids}"]
    cmd += ["--host", "0.0.0.0", "--port", str(port), "--env-vars", str(env_file), "--skip-pull-image"]
    cmd += ["--warm-containers", "LAZY"]  # a function's second invocation reuses its container
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    server = LambdaServer(
        boto3.client(
            "lambda",
            endpoint_url=f"http://127.0.0.1:{port}",
            config=Config(read_timeout=INVOKE_TIMEOUT, retries={"max_attempts": 0}),
        ),
        log,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, server.why(f"sam local start-lambda exited with {proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, server.why(f"start-lambda not listening after {START_TIMEOUT} s")
            time.sleep(0.3)
        yield server
    finally:
        proc.send_signal(signal.SIGINT)  # SAM stops its warm containers on Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def moto_s3() -> Any:
    assert MOTO and MOTO_FOR_CONTAINERS and os.environ.get("DOCKER_HOST"), "run inside tools/sam-local/run-in-netns.sh"
    return boto3.client("s3", endpoint_url=MOTO, region_name="us-east-1")


@pytest.fixture(scope="module")
def sharded(moto_s3: Any, images: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LambdaServer]:
    """The two-shard server, over the sample catalog compacted into two shards by IndexFunction."""
    moto_s3.create_bucket(Bucket=BUCKET)
    put_catalog(moto_s3, BUCKET, images)
    with start_lambda("sharded", tmp_path_factory.mktemp("sharded"), shards=SHARDS) as server:
        server.warm(*SHARD_FUNCTIONS)
        yield server


@pytest.fixture(scope="module")
def compacted(sharded: LambdaServer, moto_s3: Any) -> dict[str, Any]:
    """IndexFunction's reindex and compaction, run on the sharded server; the manifest."""
    reindex = sharded.invoke("IndexFunction", {"action": "reindex"})
    assert reindex["complete"] and reindex["keys"] == len(CATALOG_NAMES) and not reindex["failed"], reindex
    report = sharded.invoke("IndexFunction", load_event("index-compact.json"))
    assert report["won"] and report["records"] == len(CATALOG_NAMES) and report["rejected"] == 0, report
    manifest: dict[str, Any] = json.loads(moto_s3.get_object(Bucket=BUCKET, Key="index/segments.json")["Body"].read())
    assert manifest["generation"] == report["generation"], manifest
    return manifest


# --------------------------------------------------------------------------- tests
def test_the_catalog_is_compacted_into_both_shards(compacted: dict[str, Any], moto_s3: Any) -> None:
    per_shard = {i: sum(s["images"] for s in compacted["segments"] if s["shard"] == i) for i in range(SHARDS)}
    want = {i: sum(shard_of(f"catalog/{n}", SHARDS) == i for n in CATALOG_NAMES) for i in range(SHARDS)}
    assert per_shard == want and all(per_shard.values()), (per_shard, compacted)
    assert all(k in all_keys(moto_s3, BUCKET, "index/") for k in (s["key"] for s in compacted["segments"]))


def test_the_fan_out_answers_as_the_unsharded_search(
    sharded: LambdaServer, compacted: dict[str, Any], images: dict[str, bytes], tmp_path: Path
) -> None:
    shard_calls = [sharded.invocations(fn) for fn in SHARD_NAMES]
    with start_lambda("unsharded", tmp_path, shards=1) as unsharded:
        for query in QUERIES:
            status, got = sharded.search(query, images)
            status1, want = unsharded.search(query, images)
            assert status == status1 == 200, sharded.why(f"{query}: {status} {got} / {status1} {want}")
            assert got["index"] == want["index"] == {"complete": True, "missing": 0}, sharded.why(str(got))
            assert got["catalog_size"] == want["catalog_size"] == len(CATALOG_NAMES)
            top = got["results"][0]
            assert top["key"] == "catalog/" + query.split("__")[0] + ".jpg", got["results"]
            assert top["score"] >= SAME_IMAGE_THRESHOLD, top
            got_rows = [[r[f] for f in RESULT_FIELDS] for r in got["results"]]
            want_rows = [[r[f] for f in RESULT_FIELDS] for r in want["results"]]
            assert [row[:2] for row in got_rows] == [row[:2] for row in want_rows], (got_rows, want_rows)
            # the scores as the unsharded ones up to rounding (the shards' evidence is merged in
            # another order): 5e-11 seen
            got_scores = [x for row in got_rows for x in row[2:]]
            assert got_scores == pytest.approx([x for row in want_rows for x in row[2:]], abs=SCORE_ATOL), (
                got_rows,
                want_rows,
            )
        assert sum(unsharded.invocations(fn) for fn in SHARD_FUNCTIONS + SHARD_NAMES) == 0  # ShardIds=0: no fan-out
    # every query went through both shard functions of the same start-lambda server, by the
    # names the template gives them (how many calls a query makes per shard is the fan-out's business)
    after = [sharded.invocations(fn) for fn in SHARD_NAMES]
    assert all(a - b >= len(QUERIES) for a, b in zip(after, shard_calls, strict=True)), sharded.why(
        f"shard invocations by SearchFunction: before {shard_calls}, after {after}"
    )


def test_a_missing_shard_function_flags_the_answer(
    compacted: dict[str, Any], images: dict[str, bytes], tmp_path: Path
) -> None:
    functions = {"HARMONY_SHARD_FUNCTIONS": f"ShardFunction0,{MISSING}"}
    with start_lambda("one-missing", tmp_path, shards=SHARDS, search_env=functions) as server:
        server.warm("ShardFunction0")
        status, got = server.search(QUERIES[0], images)
        assert status == 200, server.why(str(got))
        assert got["index"]["complete"] is False and got["index"]["failed_shards"] == [1], got
        in_shard0 = sum(shard_of(f"catalog/{n}", SHARDS) == 0 for n in CATALOG_NAMES)
        assert got["catalog_size"] == in_shard0 and got["results"], got
        assert all(shard_of(r["key"], SHARDS) == 0 for r in got["results"]), got["results"]
        assert server.invocations("ShardFunction0") >= 1, server.why("SearchFunction did not invoke ShardFunction0")


def test_every_shard_missing_is_a_502(compacted: dict[str, Any], images: dict[str, bytes], tmp_path: Path) -> None:
    functions = {"HARMONY_SHARD_FUNCTIONS": f"{MISSING}0,{MISSING}1"}
    with start_lambda("all-missing", tmp_path, shards=SHARDS, search_env=functions) as server:
        status, got = server.search(QUERIES[0], images)
        assert status == 502 and "error" in got, server.why(f"{status}: {got}")
        assert MISSING in got["error"]["message"], got
