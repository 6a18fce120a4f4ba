"""Hostile inputs against the engine and the search API: answer, peak memory and time per case.

    python -m benchmarks.reliability [--before-commit REV | --before DIR] [--only NAME ...]
                                     [--out docs/RELIABILITY.md] [--json FILE]

Every case runs in a fresh worker process (``--child``), like a Lambda worker: the engine is
imported and warmed up (one small image featurised) first, then the worker's peak-RSS mark is
reset (``/proc/self/clear_refs``) and the case runs. Reported: the answer (HTTP status and error
code), the rise of the peak RSS above the warm worker's RSS (VmHWM - VmRSS before), wall time
and CPU time of the whole process.

Three kinds of case:

* ``image``: the hostile files of tests/hostile.py (:data:`tests.hostile.CASES`) through
  ``extract_features`` — what the search service runs on a query's bytes;
* ``fetch``: ``fetch_url`` against a local server that misbehaves (drips, truncates, non-ASCII
  paths and hosts, the resolver pointed at it);
* ``api``: API Gateway proxy events through functions/search/app.py (moto's S3 in-process).

``--before-commit REV`` also runs every case against ``git archive REV`` (src and functions) and
shows both columns; ``--before DIR`` uses a checkout that is already there. ``--out`` writes the
Markdown report (default: print it only).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.baseline import archive

ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT = 90.0
FETCH_CHILD_TIMEOUT = 40.0  # past SearchFunction's 30 s timeout: a fetch still running is "killed"
MB = 1024 * 1024
LAMBDA_RESPONSE_LIMIT = 6 * MB


@dataclass(frozen=True)
class Spec:
    kind: str  # image | fetch | api
    klass: str
    name: str
    status: int
    code: str | None
    note: str = ""


# --------------------------------------------------------------------------- the cases
FETCH_CASES = (
    Spec("fetch", "fetch deadline", "fetch_drip_1_byte_per_2s", 504, "fetch_timeout", "headers, then 1 byte every 2 s"),
    Spec("fetch", "fetch deadline", "fetch_slow_headers", 504, "fetch_timeout", "one header line every 2 s"),
    Spec("fetch", "fetch deadline", "fetch_truncated_body", 502, "fetch_failed", "Content-Length 100000, 5000 sent"),
    Spec("fetch", "non-ascii urls", "fetch_path_cafe", 200, None, "http://host/café.jpg"),
    Spec("fetch", "non-ascii urls", "fetch_redirect_to_cafe", 200, None, "Location: /café.jpg (UTF-8 bytes)"),
    Spec("fetch", "non-ascii urls", "fetch_snowman_host", 200, None, "http://☃.example/img.jpg"),
)

API_CASES = (
    Spec("api", "request parsing", "api_nested_json_100000", 400, "invalid_json", "[[[[... 100,000 deep"),
    Spec("api", "request parsing", "api_s3_key_100000_chars", 422, "validation_error", "a 100,000-character key"),
    Spec("api", "request parsing", "api_s3_key_lone_surrogate", 422, "validation_error", '"catalog/\\ud800.jpg"'),
    Spec("api", "non-ascii urls", "api_url_non_ascii_host", 502, "fetch_failed", '{"url": "http://☃.invalid/x.jpg"}'),
    Spec("api", "content type is a hint", "api_jpeg_as_application_json", 200, None, "a JPEG body labelled JSON"),
    Spec(
        "api",
        "content type is a hint",
        "api_jpeg_form_urlencoded_as_bytes",
        200,
        None,
        "curl --data-binary @photo.jpg (no -H), the type in BinaryMediaTypes",
    ),
    Spec(
        "api",
        "content type is a hint",
        "api_jpeg_form_urlencoded_as_text",
        415,
        "not_an_image",
        "the same, the type not in BinaryMediaTypes (API Gateway passes text)",
    ),
    Spec(
        "api",
        "content type is a hint",
        "api_json_without_content_type",
        502,
        "fetch_failed",
        "curl -d '{\"url\": ...}' (no -H)",
    ),
    Spec("api", "request parsing", "api_multipart_500000_parts", 400, "bad_request", "500,000 empty parts"),
    Spec("api", "request parsing", "api_multipart_nested_20000", 400, "bad_request", "multiparts nested 20,000 deep"),
    Spec(
        "api", "request parsing", "api_json_400000_keys", 422, "validation_error", "an object of 400,000 unknown keys"
    ),
    Spec("api", "banners", "api_banner_png_1000x2", 200, None, "raw image/png body"),
)


def image_specs() -> list[Spec]:
    from tests.hostile import CASES

    return [Spec("image", c.klass, c.name, c.status, c.code, c.note) for c in CASES]


def all_specs() -> list[Spec]:
    return [*image_specs(), *FETCH_CASES, *API_CASES]


def build_input(spec: Spec) -> bytes:
    """The bytes a case feeds the worker (images only; the others build their own)."""
    if spec.kind != "image":
        return b""
    from tests.hostile import CASES

    return next(c for c in CASES if c.name == spec.name).build()


# --------------------------------------------------------------------------- the worker
def _proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _answer_of(exc: BaseException) -> tuple[int, str]:
    status = getattr(exc, "status", None)
    code = getattr(exc, "code", None)
    if isinstance(status, int) and isinstance(code, str):
        return status, code
    return 500, f"{type(exc).__name__}: {str(exc)[:120]}"


def _child(kind: str, name: str, root: Path, input_path: str | None) -> dict[str, Any]:
    sys.path[:0] = [str(root / "src")]
    import harmony_image

    assert Path(harmony_image.__file__).resolve().is_relative_to(root.resolve()), harmony_image.__file__
    from harmony_image import extract_features

    warm = _warm_image()
    extract_features(warm)
    run: Callable[[], tuple[int, str | None]]
    if kind == "image":
        assert input_path
        data = Path(input_path).read_bytes()

        def run() -> tuple[int, str | None]:
            extract_features(data)
            return 200, None

    elif kind == "fetch":
        run = _fetch_case(name)
    else:
        run = _api_case(name, root)
    exact = _reset_peak()
    base_rss = _proc_status("VmRSS")
    base_hwm = _proc_status("VmHWM")
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        status, code = run()
    except BaseException as exc:  # noqa: BLE001 - any failure is the case's answer
        status, code = _answer_of(exc)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = _proc_status("VmHWM") - (base_rss if exact else base_hwm)
    return {"status": status, "code": code, "peak_mb": round(max(0, peak) / MB, 1), "wall_s": wall, "cpu_s": cpu}


def _warm_image() -> bytes:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


# --------------------------------------------------------------------------- fetch cases
class _Server:
    """A local HTTP server that misbehaves on purpose (raw socket writes, one thread per client)."""

    def __init__(self, image: bytes) -> None:
        import socket

        self.image = image
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: Any) -> None:
        with contextlib.suppress(OSError), conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            path = request.split(b" ", 2)[1]
            ok = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n"
            if path == b"/drip":
                conn.sendall(ok + b"Content-Length: 1000\r\n\r\n")
                for _ in range(60):
                    conn.sendall(b"x")
                    time.sleep(2)
            elif path == b"/slow-headers":
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for i in range(60):
                    conn.sendall(b"X-Slow-%d: 1\r\n" % i)
                    time.sleep(2)
            elif path == b"/truncated":
                conn.sendall(ok + b"Content-Length: 100000\r\n\r\n" + self.image[:5000])
            elif path in (b"/caf%C3%A9.jpg", b"/img.jpg"):
                conn.sendall(ok + b"Content-Length: %d\r\n\r\n" % len(self.image) + self.image)
            elif path == b"/redirect-cafe":
                conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /caf\xc3\xa9.jpg\r\nContent-Length: 0\r\n\r\n")
            else:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def _fetch_case(name: str) -> Callable[[], tuple[int, str | None]]:
    from harmony_image.fetch import fetch_url

    server = _Server(_warm_image())
    base = f"http://127.0.0.1:{server.port}"
    urls = {
        "fetch_drip_1_byte_per_2s": f"{base}/drip",
        "fetch_slow_headers": f"{base}/slow-headers",
        "fetch_truncated_body": f"{base}/truncated",
        "fetch_path_cafe": f"{base}/café.jpg",
        "fetch_redirect_to_cafe": f"{base}/redirect-cafe",
        "fetch_snowman_host": f"http://☃.example:{server.port}/img.jpg",
    }
    url = urls[name]

    def run() -> tuple[int, str | None]:
        fetch_url(url, allow_private=True, resolver=lambda host, port: ["127.0.0.1"], timeout=10.0)
        return 200, None

    return run


# --------------------------------------------------------------------------- API cases
def _api_case(name: str, root: Path) -> Callable[[], tuple[int, str | None]]:
    import importlib.util

    env = {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_LOG_LEVEL": "CRITICAL",
        "POWERTOOLS_METRICS_NAMESPACE": "HarmonyReliability",
        "HARMONY_BUCKET": "reliability",
    }
    os.environ.update(env)
    import boto3
    from moto import mock_aws

    mock = mock_aws()
    mock.start()
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="reliability")
    spec = importlib.util.spec_from_file_location("search_app", root / "functions" / "search" / "app.py")
    assert spec and spec.loader
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    from tests.hostile import encoded, photo

    jpeg = encoded(".jpg", photo(320, 240))

    def event(body: bytes | str, content_type: str | None, *, b64: bool) -> dict[str, Any]:
        headers = {"Content-Type": content_type} if content_type else {}
        raw = base64.b64encode(body).decode() if b64 and isinstance(body, bytes) else body
        return {
            "resource": "/search",
            "path": "/search",
            "httpMethod": "POST",
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": None,
            "multiValueQueryStringParameters": None,
            "pathParameters": None,
            "stageVariables": None,
            "requestContext": {"stage": "v1", "requestId": "r", "path": "/v1/search", "httpMethod": "POST"},
            "body": raw,
            "isBase64Encoded": b64,
        }

    deep = '{"url": ' + "[" * 100_000 + "]" * 100_000 + "}"
    events = {
        "api_nested_json_100000": lambda: event(deep, "application/json", b64=False),
        "api_s3_key_100000_chars": lambda: event(
            json.dumps({"s3": {"key": "catalog/" + "a" * 100_000}}), "application/json", b64=False
        ),
        "api_s3_key_lone_surrogate": lambda: event(
            '{"s3": {"key": "catalog/\\ud800.jpg"}}', "application/json", b64=False
        ),
        "api_url_non_ascii_host": lambda: event(
            json.dumps({"url": "http://☃.invalid/x.jpg"}), "application/json", b64=False
        ),
        "api_jpeg_as_application_json": lambda: event(jpeg, "application/json", b64=True),
        "api_jpeg_form_urlencoded_as_bytes": lambda: event(jpeg, "application/x-www-form-urlencoded", b64=True),
        "api_jpeg_form_urlencoded_as_text": lambda: event(
            jpeg.decode("utf-8", "replace"), "application/x-www-form-urlencoded", b64=False
        ),
        "api_json_without_content_type": lambda: event(
            json.dumps({"url": "http://no-such-host.invalid/x.jpg"}), "application/x-www-form-urlencoded", b64=False
        ),
        "api_banner_png_1000x2": lambda: event(encoded(".png", photo(1000, 2)), "image/png", b64=True),
        "api_multipart_500000_parts": lambda: event(
            b"--b\r\n\r\nx\r\n" * 500_000 + b"--b--\r\n", "multipart/form-data; boundary=b", b64=True
        ),
        "api_multipart_nested_20000": lambda: event(
            b"".join(
                b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1) for i in range(20_000)
            ),
            "multipart/form-data; boundary=b0",
            b64=True,
        ),
        "api_json_400000_keys": lambda: event(
            json.dumps({f"k{i}": 0 for i in range(400_000)}), "application/json", b64=False
        ),
    }
    ev = events[name]()

    class Context:
        function_name = "reliability"
        memory_limit_in_mb = 3008
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:reliability"
        aws_request_id = "reliability"

        @staticmethod
        def get_remaining_time_in_millis() -> int:
            return 30_000

    def run() -> tuple[int, str | None]:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            resp = app.lambda_handler(ev, Context())
        text = resp.get("body") or "{}"
        if len(text.encode()) > LAMBDA_RESPONSE_LIMIT:  # Lambda fails the invocation: API Gateway's 502
            return 502, f"response of {len(text.encode()) / MB:.0f} MB > Lambda's 6 MB limit"
        body = json.loads(text)
        err = body.get("error") if isinstance(body, dict) else None
        return int(resp["statusCode"]), (err or {}).get("code")

    return run


# --------------------------------------------------------------------------- the parent
def run_case(spec: Spec, root: Path, data: bytes) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(data)
        f.flush()
        cmd = [sys.executable, "-m", "benchmarks.reliability", "--child", spec.kind, spec.name, "--root", str(root)]
        if spec.kind == "image":
            cmd += ["--input", f.name]
        t0 = time.perf_counter()
        limit = FETCH_CHILD_TIMEOUT if spec.kind == "fetch" else CHILD_TIMEOUT
        try:
            proc = subprocess.run(  # noqa: S603 - this interpreter, this module
                cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit, check=False
            )
        except subprocess.TimeoutExpired:
            return {"status": None, "code": f"still running, killed at {limit:.0f} s", "peak_mb": None, "wall_s": None}
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:100]
            return {
                "status": None,
                "code": f"worker died (exit {proc.returncode}): {tail}",
                "peak_mb": None,
                "wall_s": time.perf_counter() - t0,
            }
        result: dict[str, Any] = json.loads(lines[-1])
        return result


def _cell(text: str, limit: int = 70) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt_answer(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    if r.get("status") is None:
        return _cell(str(r.get("code")))
    return _cell(f"{r['status']}" + (f" {r['code']}" if r.get("code") else ""))


def _fmt_cost(r: dict[str, Any] | None) -> str:
    if r is None or r.get("peak_mb") is None:
        return "" if r is None or r.get("wall_s") is None else f"– / {r['wall_s']:.1f} s"
    return f"{r['peak_mb']:,.0f} MB / {r['wall_s']:.2f} s"


INTRO = """\
# Reliability: hostile inputs

What the search API answers to inputs built to cost it memory and time, or to make it fail:
the answer, how far the worker's peak memory rises and how long it takes. Generated by
`{command}`; the inputs are built by [tests/hostile.py](../tests/hostile.py), and
`tests/engine/test_hostile_inputs.py` and `tests/functions/test_search_hostile.py` assert the
same answers and limits in `make test`.

Targets: no input up to the 6 MB payload limit raises a worker's peak RSS by more than 512 MB or
takes more than 2 s to refuse; a URL fetch ends at its deadline (10 s) whatever the server does;
nothing answers 500.

How it is measured: every case runs in a fresh worker process, like a Lambda execution
environment: the engine is imported and warmed up on a small image first, then the process's
peak-RSS mark is reset (`/proc/self/clear_refs`) and the case runs. *peak* is VmHWM minus the
RSS before the case; *time* is the case's wall time. `image` cases run `extract_features` on the
bytes (what the search service does with a query), `fetch` cases `fetch_url` against a local
server that misbehaves, `api` cases an API Gateway proxy event through `functions/search/app.py`
(moto's S3, an empty catalog).{before}

## The limits behind the answers

* **Pixels**: 40 MP (`HARMONY_MAX_PIXELS`), read from the header before any pixel is decoded —
  of every TIFF page, not just the first.
* **Decoding memory**: 448 MiB (`max_decoded_bytes`), estimated from the header: the decoded
  array (width × height × channels × bytes per sample), the decoder's own buffers beside it
  (TIFF strip or tile buffers, a progressive JPEG's coefficients), the copy OpenCV's Python
  binding makes of every `imdecode` result (measured: the peak is twice the array), and the
  8-bit BGR array made from a 16-bit or float one (converted in bands of rows). An 8-bit 40 MP
  photo takes about 240 MB; a 16-bit RGBA image is accepted up to about 29 MP, a float64 RGBA
  one up to about 7.3 MP.
* **Structure**: PNG chunk lengths must fit in the file and the image data must be able to hold
  the pixels claimed; a TIFF tag stated twice is refused (libtiff keeps the first of two), at most
  64 pages; GIF frames and WebP animation frames inside the screen/canvas, a WebP bitstream the
  size of its canvas; uncompressed BMP rows in the file; a progressive JPEG's scans × pixels
  bounded (each scan walks the whole image again); at most 1,024 JPEG marker segments before
  the image data and 1,024 PNG ancillary chunks (libpng logs a warning for each bad one),
  100,000 GIF blocks, 65,536 WebP chunks, 4,096 tags per TIFF page. After decoding, the array
  must have the header's size.
* **OpenCV's own guard**: `OPENCV_IO_MAX_IMAGE_PIXELS` = 40 MP, set by `harmony_image.decode`
  before it imports `cv2` — OpenCV reads it once, while its library loads, so it only works
  when `harmony_image` is imported before anything else imports `cv2` (true for the Lambda
  handlers and the CLI; `harmony_image.decode.OPENCV_GUARD` says whether it was in time).
  An operator who raises `HARMONY_MAX_PIXELS` above 40 MP must raise this variable too.
* **Fetch**: one deadline (10 s, `HARMONY_FETCH_TIMEOUT_SECONDS`) on the monotonic clock for
  DNS, connecting, TLS, headers and body; a watchdog shuts the socket down when it passes. A
  body shorter than its Content-Length is a 502.
* **Request**: the body is at most 6 MB (API Gateway sends at most 10 MB, Lambda takes a
  6 MB event: a raw image counts base64-encoded, so about 4.4 MB of image fit); JSON nested too
  deeply is a 400, unknown JSON keys are named before pydantic runs; a multipart body is read in
  one pass, at most 64 parts of at most 8 KB of headers each; error messages stay short (an
  answer must fit Lambda's 6 MB response limit, or API Gateway answers 502).

## The cases
"""


def report(
    rows: list[tuple[Spec, int, dict[str, Any], dict[str, Any] | None]],
    before_label: str | None,
    measured: str | None = None,
) -> str:
    command = "python -m benchmarks.reliability" + (f" --before-commit {before_label}" if before_label else "")
    before = (
        f"\n\n*before* is the same case run against commit `{before_label}` (`git archive` of its `src/` and "
        '`functions/`), the code as issue 9 found it; "killed" means the worker was still busy when the '
        "harness stopped it (SearchFunction's own timeout is 30 s)."
        if before_label
        else ""
    )
    out = [INTRO.format(command=command, before=before)]
    head = "| class | case | input | bytes | expected |"
    rule = "|---|---|---|---:|---|"
    if before_label:
        head += " before | before: peak / time |"
        rule += "---|---:|"
    head += " answer | peak / time |"
    rule += "---|---:|"
    out += [head, rule]
    for spec, size, after, earlier in rows:
        expected = f"{spec.status}" + (f" {spec.code}" if spec.code else "")
        line = (
            f"| {spec.klass} | `{spec.name}` | {_cell(spec.note, 90)} | {f'{size:,}' if size else '–'} | {expected} |"
        )
        if before_label:
            line += f" {_fmt_answer(earlier)} | {_fmt_cost(earlier)} |"
        line += f" {_fmt_answer(after)} | {_fmt_cost(after)} |"
        out.append(line)
    out += [
        "",
        f"Measured on {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"{measured or time.strftime('%Y-%m-%d')}; times vary with the machine's load, peaks hardly.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", nargs=2, metavar=("KIND", "NAME"), help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--before", type=Path, help="a checkout (with src/ and functions/) to compare with")
    ap.add_argument("--before-commit", help="compare with this commit (git archive of src and functions)")
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    ap.add_argument("--out", type=Path, help="write the Markdown report here (e.g. docs/RELIABILITY.md)")
    ap.add_argument("--json", type=Path, help="also write the numbers as JSON")
    ap.add_argument("--from-json", type=Path, help="only re-render the report from a --json file (no runs)")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], args.root, args.input)), flush=True)
        return 0
    specs = [s for s in all_specs() if not args.only or s.name in args.only]
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        label = saved["before_label"]
        by_name = {r["name"]: r for r in saved["rows"]}
        rows = [(s, by_name[s.name]["bytes"], by_name[s.name]["after"], by_name[s.name]["before"]) for s in specs]
        text = report(rows, label, saved.get("measured"))
        if args.out:
            args.out.write_text(text)
        else:
            print(text)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        before_root = args.before
        label = None
        if args.before_commit:
            before_root = archive(args.before_commit, Path(tmp), ("src", "functions"))
            label = args.before_commit
        elif before_root:
            label = str(before_root)
        rows = []
        for spec in specs:
            data = build_input(spec)
            after = run_case(spec, ROOT, data)
            before = run_case(spec, before_root, data) if before_root else None
            rows.append((spec, len(data), after, before))
            print(
                f"{spec.name:40} {_fmt_answer(after):40} {_fmt_cost(after):>20}   before: {_fmt_answer(before)} "
                f"{_fmt_cost(before)}",
                file=sys.stderr,
                flush=True,
            )
    measured = time.strftime("%Y-%m-%d")
    text = report(rows, label, measured)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    if args.json:
        doc = {
            "before_label": label,
            "measured": measured,
            "rows": [{"name": s.name, "bytes": n, "after": a, "before": b} for s, n, a, b in rows],
        }
        args.json.write_text(json.dumps(doc, indent=1))
    bad = [s.name for s, _n, a, _b in rows if (a.get("status"), a.get("code")) != (s.status, s.code)]
    if bad:
        print("unexpected answers: " + ", ".join(bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
