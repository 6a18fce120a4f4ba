"""``python -m harmony_local`` (and ``harmony serve``): the local stack from the command line.

    serve  [--port 3000] ...        start the stack, seed the sample catalog, print the URL, stay up
    demo   [--serve | --exit-after-demo] ...
                                    the same, then search a sample query through the HTTP API and
                                    drop one into queries/ (printing the top 5 and results/<key>.json);
                                    stays up when interactive (a TTY) or with --serve
    put FILE|DIR KEY / get KEY / ls [PREFIX] / rm KEY... [--recursive]
                                    the embedded bucket of a running stack, found from any directory:
                                    each running stack leaves a state file in a per-user folder
                                    ($XDG_RUNTIME_DIR/harmony-local, else ~/.cache/harmony-local/run),
                                    one per API port; --port picks one when several run
    import DIR [--prefix P]         bulk ingest: upload every file of DIR under catalog/P, wait until
                                    IndexQueue drains, count indexed / not images / failed
    status                          the stack's queues: waiting, in flight, dead letters
    redrive [QUEUE]                 move a queue's dead letters back into it (default: IndexQueue's)

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
STATE_FILE = "stack.json"  # also written into --workdir


def state_dir() -> Path:
    """Where running stacks leave their state: per user, so that any directory finds them."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "harmony-local"
    return Path.home() / ".cache" / "harmony-local" / "run"


def _state_path(api_url: str) -> Path:
    port = api_url.rstrip("/").rsplit(":", 1)[-1]
    return state_dir() / f"stack-{port}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_stacks() -> list[dict[str, Any]]:
    """The state of every running stack of this user (stale files of dead ones are removed)."""
    out = []
    folder = state_dir()
    for path in sorted(folder.glob("stack-*.json")) if folder.is_dir() else []:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and isinstance(state.get("pid"), int) and _alive(state["pid"]):
            out.append(state)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return out


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

    def which_stack(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", type=int, default=None, help="the API port of the stack (when several run)")
        p.add_argument("--workdir", type=Path, default=None, help="the stack's --workdir (instead of --port)")

    p = sub.add_parser("put", help="upload FILE to KEY (or every file of DIR under the prefix KEY)")
    p.add_argument("file", type=Path, metavar="FILE|DIR")
    p.add_argument("key", help="the key; for a folder, the prefix (catalog/)")
    p.add_argument("--all", action="store_true", help="with a folder: also hidden files and folders (.harmony/)")
    which_stack(p)
    p.set_defaults(func=run_put)
    p = sub.add_parser("get", help="print the object KEY of the running stack's bucket")
    p.add_argument("key")
    which_stack(p)
    p.set_defaults(func=run_get)
    p = sub.add_parser("ls", help="list the running stack's bucket")
    p.add_argument("prefix", nargs="?", default="")
    which_stack(p)
    p.set_defaults(func=run_ls)
    p = sub.add_parser("rm", help="delete objects (IndexFunction drops deleted catalog/ images from the index)")
    p.add_argument("keys", nargs="+", metavar="KEY")
    p.add_argument("--recursive", action="store_true", help="delete everything under each KEY as a prefix")
    which_stack(p)
    p.set_defaults(func=run_rm)
    p = sub.add_parser("import", help="bulk ingest: upload a folder under catalog/, wait for the index, count")
    add_import_arguments(p)
    which_stack(p)
    p.set_defaults(func=run_import)
    p = sub.add_parser("status", help="the running stack's queues: waiting, in flight, dead letters")
    which_stack(p)
    p.set_defaults(func=run_status)
    p = sub.add_parser("redrive", help="move a queue's dead letters back into it (aws sqs start-message-move-task)")
    p.add_argument("queue", nargs="?", default=None, help="the queue's logical id (default: the catalog's queue)")
    which_stack(p)
    p.set_defaults(func=run_redrive)
    return parser


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``import`` (also used by ``harmony import DIR --stack``)."""
    p.add_argument("folder", type=Path, metavar="DIR", help="a folder of images (hidden files and folders left out)")
    p.add_argument("--prefix", default="", help="upload under catalog/PREFIX (default: catalog/ itself)")
    p.add_argument("--workers", type=int, default=16, help="concurrent uploads (default 16)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the queue to drain (default 3600)")


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
    write_state(stack, args.workdir)
    if not args.no_seed:
        t0 = time.perf_counter()
        print(f"seeding s3://{cfg.bucket}/catalog/ with the sample catalog (IndexFunction indexes each upload) ...")
        n = stack.seed_catalog()
        print(f"catalog: {n} images uploaded and indexed in {time.perf_counter() - t0:.1f} s")
    return stack


def write_state(stack: LocalStack, workdir: Path) -> dict[str, Any]:
    """Leave the running stack's address (and its queues) where the bucket commands find it:
    ``workdir/stack.json`` and the per-user state folder."""
    state = {
        "api": stack.url,
        "s3": stack.s3_endpoint,
        "bucket": stack.config.bucket,
        "pid": os.getpid(),
        "workdir": str(Path(workdir).resolve()),
        "queues": stack.queue_urls,  # the template's queues (logical id -> URL in the embedded SQS)
        "dead_letter_queues": stack.dead_letter_of(),
        "catalog_queue": stack.catalog_queue(),
    }
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / STATE_FILE).write_text(json.dumps(state, indent=2))
    shared = _state_path(stack.url)
    shared.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shared.write_text(json.dumps(state, indent=2))
    return state


def _banner(stack: LocalStack) -> None:
    b = stack.config.bucket
    print(
        f"""
  Web page and API:  {stack.url}
    curl -s -X POST --data-binary @photo.jpg -H 'Content-Type: image/jpeg' '{stack.url}search?k=5'
  Embedded S3:       {stack.s3_endpoint}  bucket {b}  (browse: {stack.s3_endpoint}/moto-api/)
    python -m harmony_local put photo.jpg catalog/photo.jpg   -> IndexFunction indexes it
    python -m harmony_local put ./my-catalog catalog/         -> a whole folder (not its .harmony/)
    python -m harmony_local put photo.jpg queries/photo.jpg   -> QueryDrop writes results/photo.jpg.json
    python -m harmony_local get results/photo.jpg.json
    python -m harmony_local rm catalog/photo.jpg              -> IndexFunction drops it
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
    for path in (workdir / STATE_FILE, _state_path(stack.url)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


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
    finally:
        _shutdown(stack, args.workdir)
    if not stay:
        message = (
            f"\nThe demo is done and the local stack has STOPPED: {stack.url} no longer answers.\n"
            "It stops by itself when there is no terminal (CI, a pipe, `make demo` without a TTY).\n"
            "To keep it up: `python -m harmony_local demo --serve`, `python -m harmony_local serve`, or\n"
            "`make local-stack`; `make demo` in a terminal stays up until Ctrl-C."
        )
        print(message, flush=True)
        if not sys.stderr.isatty() or not sys.stdout.isatty():
            print("harmony-local: the demo's stack has stopped (no terminal); see above to keep it up", file=sys.stderr)
    return rc


# --------------------------------------------------------------------------- bucket helpers
class NoStackError(Exception):
    """No running stack to talk to (or several and no way to choose)."""


def find_stack(port: int | None = None, workdir: Path | None = None) -> dict[str, Any]:
    """The state of the running stack meant: by --workdir, by --port, or the only one running."""
    if workdir is not None:
        path = workdir / STATE_FILE
        if not path.is_file():
            raise NoStackError(f"no running stack with --workdir {workdir} ({path} missing)")
        state: dict[str, Any] = json.loads(path.read_text())
        if not _alive(int(state.get("pid", 0))):
            raise NoStackError(f"the stack of {path} (pid {state.get('pid')}) is not running any more")
        return state
    stacks = running_stacks()
    if port is not None:
        stacks = [s for s in stacks if s["api"].rstrip("/").endswith(f":{port}")]
    if len(stacks) == 1:
        return stacks[0]
    if not stacks:
        where = f" on port {port}" if port is not None else ""
        raise NoStackError(
            f"no running stack{where} (looked in {state_dir()}): start one with `python -m harmony_local serve`"
        )
    listing = ", ".join(f"{s['api']} (--port {s['api'].rstrip('/').rsplit(':', 1)[-1]})" for s in stacks)
    raise NoStackError(f"{len(stacks)} stacks are running: {listing}; say which with --port")


def _client_of(args: argparse.Namespace) -> tuple[Any, str]:
    import boto3

    state = find_stack(getattr(args, "port", None), getattr(args, "workdir", None))
    from .server import CREDENTIALS, REGION

    client = boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url=state["s3"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    return client, state["bucket"]


def _files_of(folder: Path, include_hidden: bool) -> list[Path]:
    """The files under ``folder``, without hidden files and folders (.harmony/ holds the CLI's
    index, not images) unless asked."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and (include_hidden or not any(part.startswith(".") for part in rel.parts)):
            out.append(path)
    return out


def run_put(args: argparse.Namespace) -> int:
    import mimetypes

    source: Path = args.file
    if not source.exists():
        print(f"harmony-local: {source} does not exist", file=sys.stderr)
        return 2
    s3, bucket = _client_of(args)
    if source.is_dir():
        prefix = args.key if args.key.endswith("/") or not args.key else args.key + "/"
        files = _files_of(source, args.all)
        if not files:
            print(f"harmony-local: {source} holds no files to upload", file=sys.stderr)
            return 1
        for path in files:
            key = prefix + path.relative_to(source).as_posix()
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), ContentType=ctype)
            print(f"uploaded {path} -> s3://{bucket}/{key}")
        print(f"{len(files)} files uploaded under s3://{bucket}/{prefix}")
        return 0
    ctype = mimetypes.guess_type(source.name)[0] or "application/octet-stream"
    key = args.key + source.name if args.key.endswith("/") else args.key
    s3.put_object(Bucket=bucket, Key=key, Body=source.read_bytes(), ContentType=ctype)
    print(f"uploaded {source} -> s3://{bucket}/{key}")
    return 0


def run_get(args: argparse.Namespace) -> int:
    s3, bucket = _client_of(args)
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
    s3, bucket = _client_of(args)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=args.prefix):
        for o in page.get("Contents", []):
            print(f"{o['Size']:>10}  {o['Key']}")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    s3, bucket = _client_of(args)
    missing = 0
    for key in args.keys:
        if args.recursive:
            keys = [
                o["Key"]
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
                for o in page.get("Contents", [])
            ]
        else:
            try:
                s3.head_object(Bucket=bucket, Key=key)
                keys = [key]
            except s3.exceptions.ClientError:
                keys = []
        if not keys:
            print(f"s3://{bucket}/{key} does not exist", file=sys.stderr)
            missing += 1
        for k in keys:
            s3.delete_object(Bucket=bucket, Key=k)
            print(f"deleted s3://{bucket}/{k}")
    return 1 if missing else 0


def _clients_of(state: dict[str, Any]) -> tuple[Any, Any]:
    import boto3

    from .server import CREDENTIALS, REGION

    kw = {
        "region_name": REGION,
        "endpoint_url": state["s3"],
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }
    return boto3.client("s3", **kw), boto3.client("sqs", **kw)


def run_import(args: argparse.Namespace) -> int:
    from ..importer import Progress, folder_files, index_report, upload_files, wait_drained

    folder: Path = args.folder
    if not folder.is_dir():
        print(f"harmony-local: {folder} is not a folder", file=sys.stderr)
        return 2
    state = find_stack(getattr(args, "port", None), getattr(args, "workdir", None))
    queue = state.get("catalog_queue")
    if not queue:
        print("harmony-local: the stack's template sends catalog/ uploads to no queue", file=sys.stderr)
        return 2
    s3, sqs = _clients_of(state)
    bucket = state["bucket"]
    prefix = "catalog/" + (args.prefix.strip("/") + "/" if args.prefix.strip("/") else "")
    files = {prefix + path.relative_to(folder).as_posix(): path for path in folder_files(folder)}
    if not files:
        print(f"harmony-local: {folder} holds no files to upload", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    print(f"uploading {len(files)} files to s3://{bucket}/{prefix} ...", file=sys.stderr, flush=True)
    upload_files(s3, bucket, files, workers=args.workers, progress=Progress("uploaded"))
    uploaded_s = time.perf_counter() - t0
    waiting = Progress(f"indexing ({queue})")
    total = len(files)
    wait_drained(
        sqs,
        state["queues"][queue],
        timeout=args.timeout,
        progress=lambda left: waiting(max(0, total - left), total, f"- {left} messages left "),
    )
    dlq = state.get("dead_letter_queues", {}).get(queue)
    report = index_report(s3, sqs, bucket, sorted(files), state["queues"].get(dlq) if dlq else None)
    report.upload_seconds, report.seconds = uploaded_s, time.perf_counter() - t0
    for key in report.failed_keys[:20]:
        print(f"  failed: {key}", file=sys.stderr)
    for key in report.not_image_keys[:20]:
        print(f"  not an image: {key}", file=sys.stderr)
    print(report.line(), flush=True)
    if report.failed:
        print(
            f"the failed keys' messages are in {dlq}: fix the cause, then `python -m harmony_local redrive {queue}`",
            file=sys.stderr,
        )
    return 1 if report.failed else 0


def run_status(args: argparse.Namespace) -> int:
    from .server import _depth

    state = find_stack(getattr(args, "port", None), getattr(args, "workdir", None))
    _, sqs = _clients_of(state)
    dead = set(state.get("dead_letter_queues", {}).values())
    print(f"stack {state['api']}  S3 {state['s3']}  bucket {state['bucket']}")
    for name, url in sorted(state.get("queues", {}).items()):
        d = _depth(sqs, url)
        what = "dead letters" if name in dead else "waiting"
        print(f"  {name:<28} {what} {d['visible']:>6}   in flight {d['in_flight']:>6}")
    return 0


def run_redrive(args: argparse.Namespace) -> int:
    from .server import move_messages

    state = find_stack(getattr(args, "port", None), getattr(args, "workdir", None))
    queue = args.queue or state.get("catalog_queue")
    dlq = state.get("dead_letter_queues", {}).get(queue)
    if not dlq:
        print(f"harmony-local: {queue} has no dead-letter queue in the stack's template", file=sys.stderr)
        return 2
    _, sqs = _clients_of(state)
    moved = move_messages(sqs, state["queues"][dlq], state["queues"][queue])
    print(f"moved {moved} messages from {dlq} back to {queue}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, NoStackError) as exc:
        print(f"harmony-local: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
