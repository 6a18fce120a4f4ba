"""``python -m harmony_local`` (and ``harmony serve``): the local stack from the command line.

    serve  [--port 3000] ...        start the stack, seed the sample catalog, print the URL, stay up
    demo   [--serve | --exit-after-demo] ...
                                    the same, then search a sample query through the HTTP API and
                                    drop one into queries/ (printing the top 5 and results/<key>.json);
                                    stays up when interactive (a TTY) or with --serve
    put FILE KEY / get KEY / ls [PREFIX]
                                    the embedded bucket of a running stack (from .harmony-local/stack.json)

Exit status: 0 ok, 1 a step failed, 2 usage or start-up errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import LocalStack

DEFAULT_PORT = 3000  # what `sam local start-api` uses
STATE_FILE = "stack.json"


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``serve`` (also used by ``harmony serve``)."""
    p.add_argument(
        "--template", type=Path, default=None, help="template.yaml (default: here or above, else the repository's)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"API/page port (default {DEFAULT_PORT}; 0 = any free port)"
    )
    p.add_argument("--s3-port", type=int, default=0, help="embedded S3 port (default: a free port)")
    p.add_argument("--bucket", default="harmony-local", help="embedded bucket name (default harmony-local)")
    p.add_argument(
        "--workdir", type=Path, default=Path(".harmony-local"), help="logs and state (default .harmony-local)"
    )
    p.add_argument("--no-seed", action="store_true", help="do not upload the bundled sample catalog")
    p.add_argument(
        "--function-logs", action="store_true", help="show the functions' own logs here instead of in workdir/logs"
    )
    p.add_argument("--concurrency", type=int, default=2, help="warm workers per function (default 2)")
    p.add_argument("--parameter-overrides", nargs="*", default=[], metavar="KEY=VALUE", help="template parameters")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harmony_local", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="start the local stack and stay up")
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)
    p = sub.add_parser("demo", help="start the stack, index the samples, print the top 5 for a sample query")
    add_serve_arguments(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--serve", action="store_true", help="stay up after the demo (default when interactive)")
    g.add_argument(
        "--exit-after-demo", action="store_true", help="stop after the demo (default without a TTY, e.g. CI)"
    )
    p.set_defaults(func=run_demo)
    p = sub.add_parser("put", help="upload FILE to KEY in the running stack's bucket")
    p.add_argument("file", type=Path)
    p.add_argument("key")
    p.add_argument("--workdir", type=Path, default=Path(".harmony-local"))
    p.set_defaults(func=run_put)
    p = sub.add_parser("get", help="print the object KEY of the running stack's bucket")
    p.add_argument("key")
    p.add_argument("--workdir", type=Path, default=Path(".harmony-local"))
    p.set_defaults(func=run_get)
    p = sub.add_parser("ls", help="list the running stack's bucket")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("--workdir", type=Path, default=Path(".harmony-local"))
    p.set_defaults(func=run_ls)
    return parser


# --------------------------------------------------------------------------- start / stop
def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_stack(args: argparse.Namespace) -> LocalStack:
    from .server import LocalStack, StackConfig

    port = args.port
    if port and not _port_free(args.host, port):
        print(f"harmony-local: port {port} is busy; using a free one", file=sys.stderr)
        port = 0
    overrides = dict(kv.split("=", 1) for kv in args.parameter_overrides if "=" in kv)
    cfg = StackConfig(
        template=args.template,
        host=args.host,
        port=port,
        s3_port=args.s3_port,
        bucket=args.bucket,
        workdir=args.workdir,
        max_concurrency=max(1, args.concurrency),
        function_logs=args.function_logs,
        parameter_overrides=overrides,
    )
    stack = LocalStack(cfg).start()
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / STATE_FILE).write_text(
        json.dumps({"api": stack.url, "s3": stack.s3_endpoint, "bucket": cfg.bucket, "pid": os.getpid()}, indent=2)
    )
    if not args.no_seed:
        t0 = time.perf_counter()
        print(f"seeding s3://{cfg.bucket}/catalog/ with the sample catalog (IndexFunction indexes each upload) ...")
        n = stack.seed_catalog()
        print(f"catalog: {n} images uploaded and indexed in {time.perf_counter() - t0:.1f} s")
    return stack


def _banner(stack: LocalStack) -> None:
    b = stack.config.bucket
    print(
        f"""
  Web page and API:  {stack.url}
    curl -s -X POST --data-binary @photo.jpg -H 'Content-Type: image/jpeg' '{stack.url}search?k=5'
  Embedded S3:       {stack.s3_endpoint}  bucket {b}  (browse: {stack.s3_endpoint}/moto-api/)
    python -m harmony_local put photo.jpg catalog/photo.jpg   -> IndexFunction indexes it
    python -m harmony_local put photo.jpg queries/photo.jpg   -> QueryDrop writes results/photo.jpg.json
    python -m harmony_local get results/photo.jpg.json
    (or: aws --endpoint-url {stack.s3_endpoint} s3 cp photo.jpg s3://{b}/catalog/)
  Ctrl-C stops.
""",
        flush=True,
    )


def _stay_up(stack: LocalStack) -> int:
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = signal.signal(signal.SIGTERM, _on_signal)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
    return 0


def _shutdown(stack: LocalStack, workdir: Path) -> None:
    print("stopping ...", flush=True)
    stack.stop()
    with contextlib.suppress(FileNotFoundError):
        (workdir / STATE_FILE).unlink()


def run_serve(args: argparse.Namespace) -> int:
    stack = start_stack(args)
    try:
        _banner(stack)
        return _stay_up(stack)
    finally:
        _shutdown(stack, args.workdir)


# --------------------------------------------------------------------------- demo
def http_search(url: str, data: bytes, content_type: str, k: int = 5) -> tuple[int, dict]:
    req = urllib.request.Request(  # noqa: S310 - the stack's own http:// URL
        f"{url}search?k={k}", data=data, method="POST", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 - the stack's own http:// URL
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def print_results(doc: dict) -> None:
    for rank, r in enumerate(doc.get("results", []), 1):
        print(f"  {rank}. {r['score']:.4f}  ssim {r['ssim']:.3f}  orb {r['orb']:.3f}  {r['key']}")


def run_demo(args: argparse.Namespace) -> int:
    import mimetypes

    from ..demo import sample_queries

    stay = args.serve or (not args.exit_after_demo and sys.stdin.isatty() and sys.stdout.isatty())
    try:
        stack = start_stack(args)
    except Exception as exc:  # noqa: BLE001 - a start-up failure is reported, not a traceback
        print(f"harmony-local: could not start the stack: {exc}", file=sys.stderr)
        return 2
    rc = 0
    try:
        query = next((q for q in sample_queries() if q.name.startswith("chelsea")), sample_queries()[0])
        ctype = mimetypes.guess_type(query.name)[0] or "application/octet-stream"
        status, doc = http_search(stack.url, query.read_bytes(), ctype)
        print(f"\nPOST {stack.url}search  ({query.name}, {ctype}) -> {status}")
        if status != 200:
            print(f"  error: {doc}")
            rc = 1
        else:
            print(f"  {len(doc['results'])} results in {doc['took_ms']:.0f} ms from {doc['catalog_size']} images:")
            print_results(doc)
        # the S3 flow: a query dropped under queries/ is answered in results/<key>.json
        s3 = stack.client()
        qkey = f"queries/{query.name}"
        s3.put_object(Bucket=stack.config.bucket, Key=qkey, Body=query.read_bytes(), ContentType=ctype)
        print(f"\ndropped s3://{stack.config.bucket}/{qkey} ...")
        stack.wait_idle(60)
        rkey = f"results/{query.name}.json"
        try:
            answer = json.loads(s3.get_object(Bucket=stack.config.bucket, Key=rkey)["Body"].read())
            top = answer.get("results", [{}])[0] if answer.get("results") else {}
            print(
                f"  -> s3://{stack.config.bucket}/{rkey}: {len(answer.get('results', []))} results, "
                f"best {top.get('key')} ({top.get('score', 0):.4f})"
            )
        except Exception as exc:  # noqa: BLE001
            print(f"  no answer at {rkey}: {exc}")
            rc = 1
        if stay:
            _banner(stack)
            _stay_up(stack)
        else:
            print(f"\nThe stack ran at {stack.url} (run `python -m harmony_local serve` to keep it up).")
    finally:
        _shutdown(stack, args.workdir)
    return rc


# --------------------------------------------------------------------------- bucket helpers
def _client_of(workdir: Path) -> tuple[Any, str]:
    import boto3

    state_path = workdir / STATE_FILE
    if not state_path.is_file():
        raise SystemExit(f"no running stack ({state_path} missing): start one with `python -m harmony_local serve`")
    state = json.loads(state_path.read_text())
    from .server import CREDENTIALS, REGION

    client = boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url=state["s3"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    return client, state["bucket"]


def run_put(args: argparse.Namespace) -> int:
    import mimetypes

    s3, bucket = _client_of(args.workdir)
    ctype = mimetypes.guess_type(args.file.name)[0] or "application/octet-stream"
    s3.put_object(Bucket=bucket, Key=args.key, Body=args.file.read_bytes(), ContentType=ctype)
    print(f"uploaded {args.file} -> s3://{bucket}/{args.key}")
    return 0


def run_get(args: argparse.Namespace) -> int:
    s3, bucket = _client_of(args.workdir)
    try:
        body = s3.get_object(Bucket=bucket, Key=args.key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        print(f"s3://{bucket}/{args.key} does not exist (yet)", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(body)
    if not body.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    return 0


def run_ls(args: argparse.Namespace) -> int:
    s3, bucket = _client_of(args.workdir)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=args.prefix):
        for o in page.get("Contents", []):
            print(f"{o['Size']:>10}  {o['Key']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FileNotFoundError as exc:
        print(f"harmony-local: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
