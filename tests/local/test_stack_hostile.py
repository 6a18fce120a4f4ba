"""The local stack against clients that misbehave, and its command line from any directory:
requests during start-up, Content-Length that lies, half-sent requests, API Gateway's and
Lambda's payload limits, the stage in the path, put/get/ls/rm finding the running stack, and the
demo saying that its stack stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harmony_local.stack import cli
from harmony_local.stack.lambdas import FunctionPool
from harmony_local.stack.server import MAX_LAMBDA_EVENT, LocalStack, StackConfig, free_port
from tests.support import REPO, TOY_TEMPLATE, request, request_json


def toy_stack(tmp_path: Path, **attrs: Any) -> LocalStack:
    stack = LocalStack(
        StackConfig(template=TOY_TEMPLATE, port=0, workdir=tmp_path, bucket="toy-hostile", max_concurrency=1),
        echo=lambda _msg: None,
    )
    for name, value in attrs.items():
        setattr(stack, name, value)
    return stack


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A toy stack whose read timeouts are short (1 s idle, 2 s for a body)."""
    stack = toy_stack(tmp_path_factory.mktemp("quick"), read_idle_seconds=1.0, read_body_seconds=2.0).start()
    yield stack
    stack.stop()


def raw(url: str, data: bytes, *, read_timeout: float = 10.0) -> bytes:
    """Send ``data`` as it is on a fresh connection; return what comes back until the server closes."""
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return out + b"<still open>"
            if not chunk:
                return out
            out += chunk


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# --------------------------------------------------------------------------- requests that lie
@pytest.mark.parametrize("value", [b"abc", b"-5", b"1e3", b"12, 13", b"\xd9\xa1\xd9\xa2"])
def test_bad_content_length_is_400(quick, value):
    reply = raw(quick.url, b"POST /echo/x HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\n")
    assert status_of(reply) == 400, reply
    assert b'"message": "Bad Request: invalid Content-Length' in reply
    assert request(f"{quick.url}echo/x")[0] == 201  # the server is fine


def test_two_different_content_lengths_are_400(quick):
    reply = raw(quick.url, b"POST /echo/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
    assert status_of(reply) == 400


def test_half_sent_requests_are_closed_after_the_idle_timeout(quick):
    """200 connections that stop halfway through their headers hold nothing for long."""
    host, port = quick.url.split("//", 1)[1].rstrip("/").split(":")
    socks = []
    for _ in range(200):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"POST /echo/x HTTP/1.1\r\nHost: x\r\nContent-Le")
        socks.append(s)
    t0 = time.monotonic()
    try:
        for s in socks:
            assert s.recv(100) == b""  # closed by the server (no answer: the request never ended)
    finally:
        for s in socks:
            s.close()
    assert time.monotonic() - t0 < 5
    assert request(f"{quick.url}echo/x")[0] == 201


def test_a_body_that_trickles_in_is_408(quick):
    host, port = quick.url.split("//", 1)[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /echo/x HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n")
        t0 = time.monotonic()
        reply = b""
        for _ in range(40):  # one byte every 0.2 s: each read is quick, the body never is
            try:
                s.sendall(b"x")
            except OSError:
                break
            time.sleep(0.2)
            s.setblocking(False)
            try:
                reply += s.recv(65536)
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
            if reply:
                break
        assert status_of(reply) == 408 and b"Request Timeout" in reply
        assert time.monotonic() - t0 < 4


def test_chunked_bodies_are_411(quick):
    reply = raw(quick.url, b"POST /echo/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert status_of(reply) == 411


# --------------------------------------------------------------------------- payload limits
def test_over_10_mb_is_api_gateways_413(quick):
    reply = raw(quick.url, b"POST /echo/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10485761\r\n\r\n")
    assert status_of(reply) == 413 and reply.endswith(b'{"message": "Request Too Long"}')


def test_lambdas_6_mb_event_limit_counts_the_base64_body(quick):
    """5.9 MB of image is 7.9 MB of base64 in the event: Lambda refuses it, the function never runs."""
    before = len(quick.invocations)
    big = b"\xff\xd8\xff" + bytes(int(5.9 * 1024 * 1024))
    status, headers, body = request(f"{quick.url}echo/x", big, method="POST", headers={"Content-Type": "image/jpeg"})
    assert status == 413 and json.loads(body) == {"message": "Request Too Long"}
    assert headers["x-harmony-local-reason"] == "lambda-event-too-large"
    assert len(quick.invocations) == before
    fits = bytes(MAX_LAMBDA_EVENT * 3 // 4 - 64 * 1024)  # its base64 and the event's other fields fit
    status, _, body = request(f"{quick.url}echo/x", fits, method="POST", headers={"Content-Type": "image/jpeg"})
    assert status == 201


# --------------------------------------------------------------------------- the stage in the path
def test_stage_prefixed_paths_are_routed(quick):
    """The execute-api URL carries the stage (/dev/echo/x here, /v1/search in the app): the page's
    OpenAPI "Try it out" calls it that way."""
    status, doc = request_json(f"{quick.url}dev/echo/bob")
    assert status == 201
    ev = doc["event"]
    assert ev["path"] == "/echo/bob" and ev["requestContext"]["path"] == "/dev/echo/bob"
    assert ev["pathParameters"] == {"name": "bob"}
    assert request_json(f"{quick.url}dev/nowhere")[0] == 403
    assert request_json(f"{quick.url}prod/echo/bob")[0] == 403  # only the API's own stage


# --------------------------------------------------------------------------- start-up
SLOW_INIT_TEMPLATE = REPO / "tests" / "local" / "slowinit" / "template.yaml"


def test_requests_during_start_up_are_answered(tmp_path):
    """They arrived while the function was still importing and waited on the same worker pipe as
    the start-up did: one of them hung forever (the old wait_ready: one request in six timed out
    here). Now every one is answered once the function is warm."""
    port = free_port()
    stack = LocalStack(
        StackConfig(template=SLOW_INIT_TEMPLATE, port=port, workdir=tmp_path, bucket="slowinit", max_concurrency=2),
        echo=lambda _msg: None,
    )
    results: list[int | str] = []

    def client() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=20) as r:
                    results.append(r.status)
                return
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, ConnectionRefusedError):
                    time.sleep(0.01)  # not listening yet
                    continue
                results.append(repr(exc))
                return
            except TimeoutError as exc:
                results.append(repr(exc))
                return

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    stack.start()
    try:
        for t in threads:
            t.join(40)
        assert results == [200] * 6
    finally:
        stack.stop()


def test_start_up_that_takes_too_long_is_503_with_retry_after(tmp_path, monkeypatch):
    real_wait = FunctionPool.wait_warm
    slept: list[bool] = []

    def slow_wait(self: FunctionPool) -> None:
        if not slept:
            slept.append(True)
            time.sleep(2.0)
        real_wait(self)

    monkeypatch.setattr(FunctionPool, "wait_warm", slow_wait)
    stack = toy_stack(tmp_path, startup_wait=0.3)
    port = free_port()
    stack.config.port = port
    starter = threading.Thread(target=stack.start)
    starter.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                status, headers, body = request(f"http://127.0.0.1:{port}/echo/x")
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        assert status == 503 and headers["Retry-After"] == "5"
        assert json.loads(body) == {"message": "Service Unavailable"}
        starter.join(30)
        assert request(f"http://127.0.0.1:{port}/echo/x")[0] == 201
    finally:
        starter.join(30)
        stack.stop()


# --------------------------------------------------------------------------- the command line
@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "xdg"
    folder.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    return folder


def _register(stack: LocalStack, pid: int | None = None) -> Path:
    """What `serve` writes for a running stack (here: this process's toy stack)."""
    state = {"api": stack.url, "s3": stack.s3_endpoint, "bucket": stack.config.bucket, "pid": pid or os.getpid()}
    path = cli._state_path(stack.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state))
    return path


def test_state_is_kept_per_user(runtime_dir):
    assert cli.state_dir() == runtime_dir / "harmony-local"


def test_put_a_folder_get_ls_rm_from_any_directory(quick, runtime_dir, tmp_path, monkeypatch, capsys):
    _register(quick)
    catalog = tmp_path / "my catalog"
    (catalog / "sub").mkdir(parents=True)
    (catalog / "a.jpg").write_bytes(b"a")
    (catalog / "sub" / "b.png").write_bytes(b"b")
    (catalog / ".harmony").mkdir()
    (catalog / ".harmony" / "index.npz").write_bytes(b"not an image")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli.main(["put", str(catalog), "catalog"]) == 0
    s3 = quick.client()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=quick.config.bucket, Prefix="catalog/").get("Contents", [])}
    assert keys == {"catalog/a.jpg", "catalog/sub/b.png"}  # not the CLI's .harmony/ index
    assert cli.main(["put", str(catalog / "a.jpg"), "queries/"]) == 0
    capsys.readouterr()
    assert cli.main(["get", "queries/a.jpg"]) == 0
    assert capsys.readouterr().out == "a\n"
    assert cli.main(["ls", "catalog/"]) == 0
    assert "catalog/sub/b.png" in capsys.readouterr().out
    assert cli.main(["rm", "queries/a.jpg"]) == 0
    assert cli.main(["rm", "--recursive", "catalog/"]) == 0
    assert "Contents" not in s3.list_objects_v2(Bucket=quick.config.bucket, Prefix="catalog/")
    assert cli.main(["rm", "queries/a.jpg"]) == 1  # gone already: said so
    assert "does not exist" in capsys.readouterr().err


def test_put_of_a_missing_path_and_no_stack_say_so(runtime_dir, tmp_path, capsys):
    assert cli.main(["put", str(tmp_path / "nope.jpg"), "catalog/x.jpg"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x.jpg").write_bytes(b"x")
    assert cli.main(["put", str(tmp_path / "x.jpg"), "catalog/x.jpg"]) == 2
    err = capsys.readouterr().err
    assert "no running stack" in err and "python -m harmony_local serve" in err


def test_stale_state_is_ignored_and_several_stacks_need_a_port(quick, runtime_dir, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = cli.state_dir() / "stack-1.json"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text(json.dumps({"api": "http://127.0.0.1:1/", "s3": "x", "bucket": "b", "pid": int(dead.stdout)}))
    _register(quick)
    assert [s["api"] for s in cli.running_stacks()] == [quick.url]
    assert not stale.exists()
    other = cli.state_dir() / "stack-2.json"
    other.write_text(json.dumps({"api": "http://127.0.0.1:2/", "s3": "x", "bucket": "b", "pid": os.getpid()}))
    assert cli.main(["ls"]) == 2
    assert "2 stacks are running" in capsys.readouterr().err
    port = int(quick.url.rstrip("/").rsplit(":", 1)[1])
    assert cli.main(["ls", "--port", str(port)]) == 0


def _python_m(*args: str, cwd: Path, env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harmony_local", *args], cwd=cwd, env=env, capture_output=True, text=True, **kw
    )


def test_serve_with_a_workdir_is_found_from_another_directory(tmp_path, runtime_dir):
    """`serve --workdir X` used to leave its state in X only: put/get elsewhere said "no running
    stack". The real command line, end to end, on the toy template."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir), "PYTHONPATH": str(REPO)}
    work, other = tmp_path / "work", tmp_path / "other"
    other.mkdir()
    command = [sys.executable, "-m", "harmony_local", "serve", "--template", str(TOY_TEMPLATE)]
    command += ["--port", "0", "--no-seed", "--workdir", str(work)]
    serve = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list((runtime_dir / "harmony-local").glob("stack-*.json")):
            assert serve.poll() is None and time.monotonic() < deadline, serve.stdout.read() if serve.stdout else ""
            time.sleep(0.1)
        (other / "q.jpg").write_bytes(b"query")
        put = _python_m("put", "q.jpg", "queries/q.jpg", cwd=other, env=env, timeout=60)
        assert put.returncode == 0, put.stderr
        got = _python_m("get", "queries/q.jpg", cwd=other, env=env, timeout=60)
        assert got.returncode == 0 and got.stdout == "query\n", got.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
    assert not list((runtime_dir / "harmony-local").glob("stack-*.json"))  # removed on the way out


@pytest.mark.slow
def test_demo_without_a_terminal_says_its_stack_stopped(tmp_path, runtime_dir):
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir), "PYTHONPATH": str(REPO)}
    demo = _python_m(
        "demo",
        "--port",
        "0",
        "--workdir",
        str(tmp_path / "w"),
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "local stack has STOPPED" in demo.stdout and "no longer answers" in demo.stdout
    assert "demo --serve" in demo.stdout
    url = demo.stdout.split("STOPPED: ", 1)[1].split()[0]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


# --------------------------------------------------------------------------- the app's template
def test_openapi_try_it_out_reaches_the_api(stack):
    """The OpenAPI page names its server from the event's stage (/v1, the execute-api URL's
    prefix): the local stack answers there too (it was a 403)."""
    status, doc = request_json(f"{stack.url}openapi?format=json")
    assert status == 200
    server = doc["servers"][0]["url"].rstrip("/")
    api = stack.template.api_of(stack.template.route_for("POST", "/search")[0])
    assert server == f"/{api.stage}"
    assert "requestBody" in doc["paths"]["/search"]["post"]
    jpeg = next((REPO / "src/harmony_local/samples/queries").glob("*.jpg")).read_bytes()
    status, answer = request_json(
        f"{stack.url}{server.lstrip('/')}/search?k=2", jpeg, method="POST", headers={"Content-Type": "image/jpeg"}
    )
    assert status == 200 and len(answer["results"]) == 2


def test_curl_data_binary_without_content_type(stack):
    """curl --data-binary @photo.jpg sends application/x-www-form-urlencoded. Declared binary in
    the template, the bytes arrive and decide (200); not declared, API Gateway (and this stack)
    pass them as text and the answer says why (415)."""
    api = stack.template.api_of(stack.template.route_for("POST", "/search")[0])
    jpeg = next((REPO / "src/harmony_local/samples/queries").glob("*.jpg")).read_bytes()
    status, doc = request_json(
        f"{stack.url}search", jpeg, method="POST", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    if "application~1x-www-form-urlencoded" in api.binary_media_types:
        assert status == 200, doc
    else:
        assert status == 415 and "arrived as text" in doc["error"]["message"], doc
