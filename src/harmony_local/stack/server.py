"""The local stack: embedded S3 (moto's server), the template's functions in warm worker
processes, S3 -> function triggers, and an HTTP server in front of the API routes.

S3 triggers go through moto's own bucket notifications: each S3-triggered function gets an SQS
queue in the embedded moto, the bucket's NotificationConfiguration gets one QueueConfiguration
per template S3 event (its Events and S3Key prefix/suffix rules), and a dispatcher thread per
function turns each message into an asynchronous invocation with the S3 event record in the
shape S3 sends (missing fields of moto's record filled in). So a write under a prefix no trigger
watches (``results/``, ``index/``) invokes nothing, exactly as on AWS.

The template's own SQS queues are moto queues too, with their RedrivePolicy (moto moves a
message received maxReceiveCount times to the dead-letter queue) and the bucket's
QueueConfigurations to them. Each ``Type: SQS`` event source is a poller thread, as Lambda's:
batches of up to BatchSize messages (gathered for MaximumBatchingWindowInSeconds), at most
ScalingConfig.MaximumConcurrency (and the stack's workers) at once; after an invocation the
messages it did not report in ``batchItemFailures`` are deleted, a failed invocation deletes
none, and what is not deleted comes back after the visibility timeout. The template's timeout
(780 s for IndexQueue) would hold a failed record back for 13 minutes here: the local stack uses
StackConfig.queue_visibility_timeout instead, unless that is None.

The HTTP server also answers Lambda's Invoke API (``POST /2015-03-31/functions/<name>/invocations``,
RequestResponse, as ``sam local start-lambda`` does), and the functions get it as their
``AWS_ENDPOINT_URL_LAMBDA``: SearchFunction's fan-out reaches the ShardFunctions through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus, unquote, unquote_plus

from .apigw import BadLambdaResponseError, build_event, parse_response
from .lambdas import FunctionPool, Invocation, InvokeError, lambda_environment
from .template import REGION, QueueSpec, SqsTrigger, Template, load_template

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer

MAX_API_BODY = 10 * 1024 * 1024  # API Gateway's payload limit
# Lambda's limit on a synchronous invocation's request: the event JSON, so a binary body counts
# base64-encoded (4/3) — a raw upload of more than about 4.4 MB never reaches the function.
MAX_LAMBDA_EVENT = 6 * 1024 * 1024
_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")
READ_IDLE_SECONDS = 10.0  # a connection that sends nothing for this long is closed
READ_BODY_SECONDS = 30.0  # the whole body must arrive within this
STARTUP_WAIT_SECONDS = 60.0  # a request during start-up waits this long for the functions, then 503
TOO_LONG = {"message": "Request Too Long"}  # API Gateway's answer (its shape, not the API's)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}
ASYNC_ATTEMPTS = 3  # Lambda's asynchronous invocation: the first try and two retries
LOCAL_VISIBILITY_SECONDS = 10.0
"""A template queue's visibility timeout locally (see the module doc): long enough for a batch of
ten camera photos on a slow machine, short enough that a retried record is seen soon."""
SQS_RECEIVE_MAX = 10  # SQS's most messages per ReceiveMessage


def speed_up_moto_sqs() -> None:
    """Make moto's SQS scale to a bulk upload's queue (moto 5.2; local stack only). moto reads the
    time through a datetime round trip (about 8 us) for every message each time it counts a
    queue's messages, and counts them all three times for each message it returns (its retention
    check asks for the queue's attributes, which include the counts): with a thousand messages
    waiting a ReceiveMessage took 0.6 s of CPU, with six thousand several seconds. Here the
    no-argument clock reads time.time() (the same number) and the retention check reads the
    queue's retention period itself."""
    import moto.sqs.models as sqs_models

    if getattr(sqs_models, "_harmony_fast", False):
        return
    slow_unix_time = sqs_models.unix_time

    def unix_time(dt: Any = None) -> float:
        return time.time() if dt is None else slow_unix_time(dt)

    def unix_time_millis(dt: Any = None) -> float:
        return unix_time(dt) * 1000.0

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        retention = int(self.get_queue(queue_name).message_retention_period)
        return bool(retention + message.sent_timestamp / 1000 > time.time())

    setattr(sqs_models, "unix_time", unix_time)  # noqa: B010 - a module's private helper, replaced
    setattr(sqs_models, "unix_time_millis", unix_time_millis)  # noqa: B010
    sqs_models.SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period  # type: ignore[method-assign]
    setattr(sqs_models, "_harmony_fast", True)  # noqa: B010


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def find_template(start: Path | None = None) -> Path:
    """template.yaml in ``start`` (default: the working directory) or a parent, else the repository's."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "template.yaml").is_file():
            return d / "template.yaml"
    repo = Path(__file__).resolve().parents[3] / "template.yaml"
    if repo.is_file():
        return repo
    raise FileNotFoundError("no template.yaml here or above; pass --template")


def s3_record(moto_record: dict) -> dict:
    """moto's S3 event record completed to the shape S3 sends (and `sam local generate-event s3` makes)."""
    rec = json.loads(json.dumps(moto_record))
    rec.setdefault("eventVersion", "2.1")
    rec.setdefault("eventSource", "aws:s3")
    rec.setdefault("awsRegion", REGION)
    rec.setdefault("userIdentity", {"principalId": "AWS:HARMONYLOCAL"})
    rec.setdefault("requestParameters", {"sourceIPAddress": "127.0.0.1"})
    rec.setdefault(
        "responseElements", {"x-amz-request-id": uuid.uuid4().hex[:16].upper(), "x-amz-id-2": uuid.uuid4().hex}
    )
    s3 = rec.setdefault("s3", {})
    bucket = s3.setdefault("bucket", {})
    bucket.setdefault("ownerIdentity", {"principalId": "HARMONYLOCAL"})
    obj = s3.setdefault("object", {})
    if "key" in obj:  # moto percent-encodes "/" too; S3 leaves it (spaces as "+", the rest %XX)
        obj["key"] = quote_plus(unquote_plus(obj["key"]), safe="/")
    obj.setdefault("sequencer", f"{time.time_ns():018X}")
    if str(rec.get("eventName", "")).startswith("ObjectRemoved"):
        obj.pop("size", None)
        obj.pop("eTag", None)
    return rec


@dataclass
class StackConfig:
    template: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    s3_port: int = 0
    bucket: str = "harmony-local"
    workdir: Path = field(default_factory=lambda: Path(".harmony-local"))
    max_concurrency: int = 2
    function_logs: bool = False  # True: function output on this console, else workdir/logs/<fn>.log
    parameter_overrides: dict[str, str] = field(default_factory=dict)
    # seconds before a received, undeleted message of a template queue comes back (None: the template's)
    queue_visibility_timeout: float | None = LOCAL_VISIBILITY_SECONDS
    # the S3 endpoint the functions use (default: the embedded S3), e.g. a fault proxy in front of it
    function_s3_endpoint: str | None = None


@dataclass
class SourceStats:
    """What one SQS event source did: batches and messages handed to the function, messages
    reported failed (batch item failures, or all of a failed invocation), the most batches at once."""

    batches: int = 0
    messages: int = 0
    failed_messages: int = 0
    failed_invocations: int = 0
    running: int = 0
    peak_concurrency: int = 0


class LocalStack:
    def __init__(self, config: StackConfig | None = None, *, echo: Callable[[str], None] | None = print) -> None:
        self.config = config or StackConfig()
        self.echo = echo or (lambda _msg: None)
        self.template: Template = load_template(
            self.config.template or find_template(),
            bucket_name=self.config.bucket,
            parameter_overrides=self.config.parameter_overrides,
        )
        self.invocations: list[Invocation] = []
        self._cond = threading.Condition()
        self._pools: dict[str, FunctionPool] = {}
        self._queues: dict[str, str] = {}  # function -> queue url (S3 triggers)
        self.queue_urls: dict[str, str] = {}  # template queue (logical id) -> url
        self._queue_arns: dict[str, str] = {}
        self._visibility: dict[str, int] = {}  # template queue -> its visibility timeout here (s)
        self._sqs: Any = None  # one SQS client for the event sources (clients are thread-safe)
        self.sqs_stats: dict[str, SourceStats] = {}  # "<function>.<event>" -> what it did
        self._threads: list[threading.Thread] = []
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._inflight = 0
        self._stop = threading.Event()
        self.ready = threading.Event()  # set when every function is warm; requests wait for it
        self.startup_wait = STARTUP_WAIT_SECONDS
        self.read_idle_seconds = READ_IDLE_SECONDS
        self.read_body_seconds = READ_BODY_SECONDS
        self._moto: ThreadedMotoServer | None = None
        self._http: ThreadingHTTPServer | None = None
        self.s3_endpoint = ""
        self.url = ""
        self.page_fallback: Path | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalStack:
        cfg = self.config
        t0 = time.perf_counter()
        self._start_s3()
        self._create_queues(self.client("sqs"))  # before the functions: their environment names the queues
        log_dir = None
        if not cfg.function_logs:
            log_dir = Path(cfg.workdir) / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
        self._bind_http()  # the functions' environment names the stack's Lambda Invoke API
        extra = {
            **CREDENTIALS,
            "AWS_ENDPOINT_URL_S3": cfg.function_s3_endpoint or self.s3_endpoint,
            "AWS_ENDPOINT_URL_SQS": self.s3_endpoint,  # the embedded moto serves SQS too
            "AWS_ENDPOINT_URL_LAMBDA": self.url.rstrip("/"),  # SearchFunction -> ShardFunctions
        }
        for name, spec in self.template.functions.items():
            env = lambda_environment(spec, extra)
            env.update(self._queue_urls_of(env))
            pool = FunctionPool(spec, env, log_dir=log_dir, max_concurrency=cfg.max_concurrency)
            pool.prewarm()  # spawn now; the imports run in parallel with the rest of start()
            self._pools[name] = pool
        self._start_triggers()
        self._start_http()  # listening now: a request that comes early waits for `ready`
        for pool in self._pools.values():
            pool.wait_warm()
        self.ready.set()
        self.echo(
            f"harmony-local: {len(self._pools)} functions warm, S3 {self.s3_endpoint} "
            f"bucket {cfg.bucket}, API {self.url} ({time.perf_counter() - t0:.1f} s)"
            + (f"; function logs in {log_dir}" if log_dir else "")
        )
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for t in self._threads:
            t.join(timeout=5)
        for ex in self._executors.values():
            ex.shutdown(wait=True, cancel_futures=True)
        for pool in self._pools.values():
            pool.close()
        if self._moto is not None:
            self._moto.stop()
            self._moto = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ S3
    def client(self, service: str = "s3") -> Any:
        import boto3

        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def _start_s3(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
        speed_up_moto_sqs()
        port = self.config.s3_port or free_port()
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._moto.start()
        self.s3_endpoint = f"http://127.0.0.1:{port}"
        s3 = self.client()
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=self.config.bucket)

    def _start_triggers(self) -> None:
        triggers = self.template.s3_triggers
        sqs = self._sqs = self.client("sqs")
        configs = []
        for trig in triggers:
            if trig.function not in self._queues:
                qname = f"harmony-local-{trig.function}-{uuid.uuid4().hex[:6]}"
                url = sqs.create_queue(QueueName=qname, Attributes={"VisibilityTimeout": "900"})["QueueUrl"]
                self._queues[trig.function] = url
            arn = sqs.get_queue_attributes(QueueUrl=self._queues[trig.function], AttributeNames=["QueueArn"])[
                "Attributes"
            ]["QueueArn"]
            conf: dict[str, Any] = {"Id": f"{trig.function}-{trig.name}", "QueueArn": arn, "Events": list(trig.events)}
            if trig.rules:
                conf["Filter"] = {"Key": {"FilterRules": [{"Name": k, "Value": v} for k, v in trig.rules]}}
            configs.append(conf)
        for i, note in enumerate(self.template.queue_notifications):
            conf = {"Id": f"{note.queue}-{i}", "QueueArn": self._queue_arns[note.queue], "Events": list(note.events)}
            if note.rules:
                conf["Filter"] = {"Key": {"FilterRules": [{"Name": k, "Value": v} for k, v in note.rules]}}
            configs.append(conf)
        if configs:
            self.client().put_bucket_notification_configuration(
                Bucket=self.config.bucket, NotificationConfiguration={"QueueConfigurations": configs}
            )
        for function, url in self._queues.items():
            self._executors[function] = ThreadPoolExecutor(
                self.config.max_concurrency, thread_name_prefix=f"s3-{function}"
            )
            t = threading.Thread(target=self._dispatch, args=(function, url), name=f"dispatch-{function}", daemon=True)
            t.start()
            self._threads.append(t)
        for source in self.template.sqs_triggers:
            name = f"{source.function}.{source.name}"
            self.sqs_stats[name] = SourceStats()
            self._executors[name] = ThreadPoolExecutor(self.concurrency_of(source), thread_name_prefix=f"sqs-{name}")
            t = threading.Thread(target=self._poll, args=(source,), name=f"poll-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _create_queues(self, sqs: Any) -> None:
        """The template's queues in moto, each dead-letter queue before the queues that use it."""
        todo = dict(self.template.queues)
        while todo:
            ready = [q for q in todo.values() if q.dead_letter is None or q.dead_letter in self._queue_arns]
            if not ready:
                raise ValueError(f"the dead-letter queues of {sorted(todo)} form a loop or are missing")
            for spec in ready:
                del todo[spec.name]
                url = sqs.create_queue(
                    QueueName=f"harmony-local-{spec.name}-{uuid.uuid4().hex[:6]}",
                    Attributes=self._queue_attributes(spec),
                )["QueueUrl"]
                self.queue_urls[spec.name] = url
                self._queue_arns[spec.name] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
                    "Attributes"
                ]["QueueArn"]

    def _queue_urls_of(self, env: dict[str, str]) -> dict[str, str]:
        """The variables of ``env`` set to a template queue's ``!Ref`` (its URL on AWS; the template
        reader's ``<Name>-local``), set to the local queue's URL: a function that sends to a queue
        of the template (SearchFunction -> DuplicatesQueue) sends to the local one."""
        return {
            k: self.queue_urls[v.removesuffix("-local")]
            for k, v in env.items()
            if v.endswith("-local") and v.removesuffix("-local") in self.queue_urls
        }

    def _queue_attributes(self, spec: QueueSpec) -> dict[str, str]:
        visibility = self.config.queue_visibility_timeout
        self._visibility[spec.name] = max(1, round(spec.visibility_timeout if visibility is None else visibility))
        attrs = {"VisibilityTimeout": str(self._visibility[spec.name])}
        if spec.dead_letter is not None and spec.max_receive_count:
            attrs["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": self._queue_arns[spec.dead_letter], "maxReceiveCount": spec.max_receive_count}
            )
        return attrs

    def concurrency_of(self, trig: SqsTrigger) -> int:
        """Batches of an SQS event source run at once: its MaximumConcurrency, within the workers."""
        return max(1, min(trig.max_concurrency or self.config.max_concurrency, self.config.max_concurrency))

    @property
    def dead_letter_queues(self) -> set[str]:
        return {q.dead_letter for q in self.template.queues.values() if q.dead_letter is not None}

    def dead_letter_of(self) -> dict[str, str]:
        """Template queue -> its dead-letter queue (logical ids)."""
        return {q.name: q.dead_letter for q in self.template.queues.values() if q.dead_letter is not None}

    def catalog_queue(self) -> str | None:
        """The template queue the bucket sends catalog/ uploads to (IndexQueue), if any."""
        for note in self.template.queue_notifications:
            if note.matches("ObjectCreated:Put", "catalog/x.jpg"):
                return note.queue
        return None

    def redrive(self, queue: str) -> int:
        """Move every message of ``queue``'s dead-letter queue back into ``queue`` (what
        ``aws sqs start-message-move-task`` does; moto has no such task). Returns how many."""
        dlq = self.dead_letter_of()[queue]
        return move_messages(self.client("sqs"), self.queue_urls[dlq], self.queue_urls[queue])

    def queue_depths(self) -> dict[str, dict[str, int]]:
        """Per template queue: messages waiting (``visible``) and received but not yet deleted
        (``in_flight``: being handled, or failed and waiting for their visibility timeout)."""
        sqs = self.client("sqs")
        return {name: _depth(sqs, url) for name, url in self.queue_urls.items()}

    # ------------------------------------------------------------------ SQS event sources
    def _poll(self, trig: SqsTrigger) -> None:
        sqs = self.client("sqs")
        name = f"{trig.function}.{trig.name}"
        slots = threading.BoundedSemaphore(self.concurrency_of(trig))
        while not self._stop.is_set():
            if not slots.acquire(timeout=0.5):  # no batch is received while none could run
                continue
            try:
                batch = self._receive_batch(sqs, trig)
            except Exception as exc:  # noqa: BLE001 - the server is going away
                slots.release()
                if self._stop.is_set():
                    return
                self.echo(f"harmony-local: reading {trig.queue} failed: {exc}")
                time.sleep(0.5)
                continue
            if not batch:
                slots.release()
                continue
            try:
                self._executors[name].submit(self._run_batch, trig, batch, slots)
            except RuntimeError:  # stopping: the executor is shut down
                slots.release()
                return

    def _keep_invisible(self, queue: str, batch: list[dict[str, Any]], done: threading.Event) -> None:
        """While a batch runs, keep its messages from coming back: the local visibility timeout is
        shorter than the function's (the template's is 6x longer, so Lambda needs no such thing)."""
        visibility = self._visibility[queue]
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": visibility}
            for i, m in enumerate(batch)
        ]
        while not done.wait(max(0.5, visibility / 2)):
            for i in range(0, len(entries), SQS_RECEIVE_MAX):
                with contextlib.suppress(Exception):  # the stack is stopping, or the message is gone
                    self._sqs.change_message_visibility_batch(
                        QueueUrl=self.queue_urls[queue], Entries=entries[i : i + SQS_RECEIVE_MAX]
                    )

    def _receive_batch(self, sqs: Any, trig: SqsTrigger) -> list[dict[str, Any]]:
        """Up to BatchSize messages: a long poll for the first, then whatever else arrives within
        the batching window."""
        url = self.queue_urls[trig.queue]
        out: list[dict[str, Any]] = []
        window_end = None
        while len(out) < trig.batch_size and not self._stop.is_set():
            got = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=min(SQS_RECEIVE_MAX, trig.batch_size - len(out)),
                WaitTimeSeconds=0 if out else 1,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            out += got
            if not out:
                return out
            if window_end is None:
                window_end = time.monotonic() + trig.batching_window
            if not got:
                if time.monotonic() >= window_end:
                    break
                time.sleep(0.05)
        return out

    def _run_batch(self, trig: SqsTrigger, batch: list[dict[str, Any]], slots: threading.BoundedSemaphore) -> None:
        stats = self.sqs_stats[f"{trig.function}.{trig.name}"]
        try:
            event = {"Records": [_sqs_record(m, self._queue_arns[trig.queue]) for m in batch]}
            s3_events = tuple(
                (str(r.get("eventName", "")), unquote_plus(r.get("s3", {}).get("object", {}).get("key", "")))
                for rec in event["Records"]
                for r in _s3_records_of(rec["body"])
            )
            with self._cond:
                stats.batches += 1
                stats.messages += len(batch)
                stats.running += 1
                stats.peak_concurrency = max(stats.peak_concurrency, stats.running)
            running = threading.Event()
            keeper = threading.Thread(target=self._keep_invisible, args=(trig.queue, batch, running), daemon=True)
            keeper.start()
            try:
                inv = self.invoke(
                    trig.function, event, source=f"sqs {trig.queue} {len(batch)} messages", s3_events=s3_events
                )
            finally:
                running.set()
                keeper.join()
                with self._cond:
                    stats.running -= 1
            failed = _failed_ids(inv, batch, report=trig.report_batch_item_failures)
            done = [m for m in batch if m["MessageId"] not in failed]
            with self._cond:
                stats.failed_messages += len(failed)
                stats.failed_invocations += 0 if inv.ok else 1
            sqs = self._sqs
            for i in range(0, len(done), SQS_RECEIVE_MAX):
                entries = [
                    {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]}
                    for j, m in enumerate(done[i : i + SQS_RECEIVE_MAX])
                ]
                sqs.delete_message_batch(QueueUrl=self.queue_urls[trig.queue], Entries=entries)
        except Exception as exc:  # noqa: BLE001 - a poller thread reports, never dies
            if not self._stop.is_set():
                self.echo(f"harmony-local: a {trig.queue} batch failed locally: {type(exc).__name__}: {exc}")
        finally:
            slots.release()
            with self._cond:
                self._cond.notify_all()

    def _dispatch(self, function: str, queue_url: str) -> None:
        sqs = self.client("sqs")
        while not self._stop.is_set():
            try:
                msgs = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                    "Messages", []
                )
            except Exception as exc:  # noqa: BLE001 - the server is going away
                if self._stop.is_set():
                    return
                self.echo(f"harmony-local: reading the {function} queue failed: {exc}")
                time.sleep(0.5)
                continue
            for m in msgs:
                body = json.loads(m["Body"])
                records = [] if body.get("Event") == "s3:TestEvent" else body.get("Records", [])
                # counted in flight before the message leaves the queue, so that wait_idle never
                # sees a moment with the event neither queued nor running
                with self._cond:
                    self._inflight += len(records)
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
                for rec in records:
                    self._executors[function].submit(self._invoke_async, function, {"Records": [s3_record(rec)]})

    def _invoke_async(self, function: str, event: dict) -> None:
        rec = event["Records"][0]
        key = unquote_plus(rec["s3"]["object"].get("key", ""))
        source = f"s3 {rec.get('eventName')} {key}"
        try:
            for attempt in range(1, ASYNC_ATTEMPTS + 1):
                inv = self.invoke(function, event, source=source, s3_events=((str(rec.get("eventName")), key),))
                if inv.ok or self._stop.is_set():
                    break
                if attempt < ASYNC_ATTEMPTS:
                    time.sleep(0.5 * attempt)
        finally:
            with self._cond:
                self._inflight -= 1
                self._cond.notify_all()

    # ------------------------------------------------------------------ invoking
    def invoke(
        self, function: str, event: dict, *, source: str = "direct", s3_events: tuple[tuple[str, str], ...] = ()
    ) -> Invocation:
        t0 = time.perf_counter()
        try:
            result = self._pools[function].invoke(event)
            inv = Invocation(
                function, "", source, True, (time.perf_counter() - t0) * 1000, result=result, s3_events=s3_events
            )
        except InvokeError as exc:
            inv = Invocation(
                function, "", source, False, (time.perf_counter() - t0) * 1000, error=exc.payload, s3_events=s3_events
            )
        with self._cond:
            self.invocations.append(inv)
            self._cond.notify_all()
        if source.startswith(("s3 ", "sqs ")):
            summary = _summarise(inv)
            self.echo(f"  [{function}] {source} -> {summary} ({inv.ms:.0f} ms)")
        return inv

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Block until every S3 event so far has been delivered and handled."""
        sqs = self.client("sqs")
        deadline = time.monotonic() + timeout
        dead = self.dead_letter_queues
        urls = [*self._queues.values(), *(u for q, u in self.queue_urls.items() if q not in dead)]
        while True:
            queued = 0
            for url in urls:
                queued += sum(_depth(sqs, url).values())
            with self._cond:
                if queued == 0 and self._inflight == 0:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"S3 events still pending after {timeout} s ({queued} queued, {self._inflight} running)"
                    )
                self._cond.wait(min(0.1, left))

    def wait_for(self, predicate: Callable[[Invocation], bool], timeout: float = 30.0) -> Invocation:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for inv in self.invocations:
                    if predicate(inv):
                        return inv
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no matching invocation")
                self._cond.wait(left)

    # ------------------------------------------------------------------ sample catalog
    def seed_catalog(
        self, images: dict[str, bytes] | None = None, *, prefix: str = "catalog/", timeout: float = 120.0
    ) -> int:
        """Upload images (default: the engine's bundled samples) and wait until they are indexed."""
        if images is None:
            from ..demo import SAMPLES

            images = {p.name: p.read_bytes() for p in sorted((SAMPLES / "catalog").iterdir()) if p.is_file()}
        s3 = self.client()
        have = {
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.config.bucket, Prefix=prefix)
            for o in page.get("Contents", [])
        }
        n = 0
        for name, data in images.items():
            if prefix + name in have:
                continue
            s3.put_object(Bucket=self.config.bucket, Key=prefix + name, Body=data, ContentType=_guess_type(name))
            n += 1
        self.wait_idle(timeout)
        return n

    # ------------------------------------------------------------------ HTTP
    def _bind_http(self) -> None:
        stack = self

        class Handler(_ApiHandler):
            timeout = stack.read_idle_seconds

        Handler.stack = stack
        self._http = _HttpServer((self.config.host, self.config.port), Handler)
        self._http.daemon_threads = True
        host, port = self._http.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - a comparison, not a bind
        self.url = f"http://{shown}:{port}/"

    def _start_http(self) -> None:
        assert self._http is not None
        if not any(r.match("GET", "/") is not None for r in self.template.routes):
            for spec in self.template.functions.values():
                page = spec.code_uri / "web" / "index.html"
                if page.is_file():
                    self.page_fallback = page
                    self.echo(f"harmony-local: template.yaml has no GET / route; serving {page} at / directly")
                    break
        t = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.2}, name="harmony-local-http", daemon=True
        )
        t.start()
        self._threads.append(t)


def move_messages(sqs: Any, source_url: str, dest_url: str) -> int:
    """Move every message of ``source_url`` to ``dest_url`` (each sent, then deleted)."""
    moved = 0
    while True:
        got = sqs.receive_message(QueueUrl=source_url, MaxNumberOfMessages=SQS_RECEIVE_MAX, VisibilityTimeout=60).get(
            "Messages", []
        )
        if not got:
            return moved
        sqs.send_message_batch(
            QueueUrl=dest_url, Entries=[{"Id": str(i), "MessageBody": m["Body"]} for i, m in enumerate(got)]
        )
        sqs.delete_message_batch(
            QueueUrl=source_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)],
        )
        moved += len(got)


def _depth(sqs: Any, url: str) -> dict[str, int]:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return {
        "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
    }


def _s3_records_of(body: str) -> list[dict[str, Any]]:
    """The S3 event records of a message body ([] for S3's test event or anything else)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    records = doc.get("Records") if isinstance(doc, dict) else None
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def _sqs_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """A received message as a record of Lambda's SQS event; an S3 notification body completed
    to the shape S3 sends (see s3_record)."""
    body = message["Body"]
    records = _s3_records_of(body)
    if records:
        body = json.dumps({"Records": [s3_record(r) for r in records]})
    attrs = message.get("Attributes") or {}
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": body,
        "attributes": {
            k: attrs[k]
            for k in ("ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp")
            if k in attrs
        },
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


def _failed_ids(inv: Invocation, batch: list[dict[str, Any]], *, report: bool) -> set[str]:
    """The messages of a batch that failed, as Lambda reads an invocation: all of them when it
    failed or (with ReportBatchItemFailures) answered something that is not a valid report; else
    the ``batchItemFailures`` it names."""
    every = {m["MessageId"] for m in batch}
    if not inv.ok:
        return every
    if not report:
        return set()
    res = inv.result
    if res is None or (isinstance(res, dict) and res.get("batchItemFailures") in (None, [])):
        return set()
    items = res.get("batchItemFailures") if isinstance(res, dict) else None
    if not isinstance(items, list):
        return every
    ids = {i.get("itemIdentifier") for i in items if isinstance(i, dict)}
    return every if not ids <= every or None in ids else {str(i) for i in ids}


def _summarise(inv: Invocation) -> str:
    if not inv.ok:
        return f"ERROR {inv.error.get('errorType')}: {inv.error.get('errorMessage')}"
    res = inv.result
    if isinstance(res, dict) and isinstance(res.get("batchItemFailures"), list):
        failed = len(res["batchItemFailures"])
        return f"{failed} failed (back after the visibility timeout)" if failed else "ok"
    if isinstance(res, dict) and isinstance(res.get("results"), list):
        parts = []
        for r in res["results"]:
            if isinstance(r, dict):
                bits = [str(r.get("action", ""))]
                if r.get("result_key"):
                    bits.append(f"-> {r['result_key']}")
                if r.get("detail"):
                    bits.append(f"({r['detail']})")
                parts.append(" ".join(bits))
        return "; ".join(parts) or "ok"
    return "ok"


def _guess_type(name: str) -> str:
    import mimetypes

    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class _HttpServer(ThreadingHTTPServer):
    request_queue_size = 128  # listen() backlog: a burst of connections is accepted, not dropped (5)


class _BadRequestError(Exception):
    """The request cannot be read: (status, API Gateway-shaped message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _ApiHandler(BaseHTTPRequestHandler):
    stack: LocalStack
    protocol_version = "HTTP/1.1"
    server_version = "harmony-local"
    # StreamRequestHandler applies it to the socket: an idle connection, or one that stops
    # halfway through its request line or headers, is closed instead of holding a thread forever
    timeout = READ_IDLE_SECONDS

    def log_message(self, fmt: str, *args: Any) -> None:  # the stack prints its own line
        pass

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: dict, extra: Sequence[tuple[str, str]] = ()) -> None:
        self._send(
            status,
            [("Content-Type", "application/json"), ("x-amzn-ErrorType", "LocalError"), *extra],
            json.dumps(doc).encode(),
        )

    def _content_length(self) -> int:
        values = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise _BadRequestError(411, "Length Required")
        if not values:
            return 0
        if len({v.strip() for v in values}) != 1 or not values[0].strip().isdigit() or not values[0].isascii():
            raise _BadRequestError(400, f"Bad Request: invalid Content-Length {', '.join(values)!r}")
        return int(values[0])

    def _read_body(self, n: int) -> bytes:
        """``n`` bytes, all within the stack's read_body_seconds (each read within read_idle_seconds)."""
        idle = self.stack.read_idle_seconds
        deadline = time.monotonic() + self.stack.read_body_seconds
        chunks: list[bytes] = []
        got = 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.connection.settimeout(min(left, idle))
            chunk = self.rfile.read1(min(1 << 16, n - got))
            if not chunk:
                raise ConnectionError("the client closed the connection before sending its body")
            chunks.append(chunk)
            got += len(chunk)
        self.connection.settimeout(idle)
        return b"".join(chunks)

    def _route(self, method: str, path: str) -> tuple[tuple[Any, dict[str, str]] | None, str]:
        """The route for ``path``, also when it starts with its API's stage (``/v1/search``, as
        the execute-api URL has it and the OpenAPI page's "Try it out" calls it)."""
        template = self.stack.template
        for api in template.apis.values():
            prefix = f"/{api.stage}"
            if path == prefix or path.startswith(prefix + "/"):
                inner = path[len(prefix) :] or "/"
                found = template.route_for(method, inner)
                if found is None and method == "HEAD":
                    found = template.route_for("GET", inner)
                if found is not None and template.api_of(found[0]).stage == api.stage:
                    return found, inner
        found = template.route_for(method, path)
        if found is None and method == "HEAD":
            found = template.route_for("GET", path)
        return found, path

    def _lambda_invoke(self, name: str, body: bytes) -> None:
        """Lambda's Invoke API (RequestResponse), as ``sam local start-lambda`` serves it: the
        function by its name, its logical id or an ARN ending in either (``Template.function_named``)."""
        stack = self.stack
        function = stack.template.function_named(name)
        if function is None:
            return self._invoke_error(404, "ResourceNotFoundException", f"Function not found: {name}")
        if len(body) > MAX_LAMBDA_EVENT:
            return self._invoke_error(413, "RequestTooLargeException", "Request must be smaller than 6291456 bytes")
        try:
            event = json.loads(body or b"{}")
        except ValueError:
            return self._invoke_error(400, "InvalidRequestContentException", "Could not parse request body into json")
        inv = stack.invoke(function, event, source="invoke")
        headers = [("Content-Type", "application/json"), ("X-Amz-Executed-Version", "$LATEST")]
        if not inv.ok:
            return self._send(200, [*headers, ("X-Amz-Function-Error", "Unhandled")], json.dumps(inv.error).encode())
        return self._send(200, headers, json.dumps(inv.result).encode())

    def _invoke_error(self, status: int, error_type: str, message: str) -> None:
        body = json.dumps({"Type": "User", "message": message}).encode()
        self._send(status, [("Content-Type", "application/json"), ("x-amzn-ErrorType", error_type)], body)

    def _handle(self) -> None:
        try:
            self._handle_request()
        except _BadRequestError as exc:
            self.close_connection = True
            self._json(exc.status, {"message": exc.message})
            self.stack.echo(f"{self.command} {self.path} -> {exc.status} ({exc.message})")
        except TimeoutError:
            self.close_connection = True
            self._json(408, {"message": "Request Timeout"})
            self.stack.echo(f"{self.command} {self.path} -> 408 (the body did not arrive in time)")
        except ConnectionError:
            self.close_connection = True

    def _handle_request(self) -> None:
        t0 = time.perf_counter()
        stack = self.stack
        path = self.path.split("?", 1)[0]
        query = self.path[len(path) :]
        n = self._content_length()
        if n > MAX_API_BODY:
            self.close_connection = True
            self._json(413, TOO_LONG)
            stack.echo(f"{self.command} {self.path} -> 413 (body of {n:,} bytes > API Gateway's {MAX_API_BODY:,})")
            return None
        body = self._read_body(n) if n else b""
        if not stack.ready.wait(stack.startup_wait):
            self._json(503, {"message": "Service Unavailable"}, [("Retry-After", "5")])
            stack.echo(f"{self.command} {self.path} -> 503 (the functions are still starting)")
            return None
        method = self.command
        invoke = _INVOKE_PATH.match(path)
        if method == "POST" and invoke is not None:
            return self._lambda_invoke(unquote(invoke.group(1)), body)
        found, route_path = self._route(method, path)
        if found is None:
            if stack.page_fallback is not None and method in ("GET", "HEAD") and path in ("/", "/index.html"):
                return self._send(200, [("Content-Type", "text/html; charset=utf-8")], stack.page_fallback.read_bytes())
            if method == "OPTIONS" and (stack.template.has_path(path) or stack.template.has_path(route_path)):
                # API Gateway's CORS mock integration for preflight
                return self._send(
                    200,
                    [
                        ("Access-Control-Allow-Origin", "*"),
                        ("Access-Control-Allow-Methods", "GET,POST,DELETE,OPTIONS"),
                        ("Access-Control-Allow-Headers", "Content-Type,Authorization,X-Api-Key"),
                        ("Content-Type", "application/json"),
                    ],
                    b"{}",
                )
            status = 403 if not (stack.template.has_path(path) or stack.template.has_path(route_path)) else 405
            self._json(status, {"message": "Missing Authentication Token"})
            stack.echo(f"{method} {self.path} -> {status} (no route in template.yaml)")
            return None
        route, params = found
        api = stack.template.api_of(route)
        event, warning = build_event(
            method="GET" if method == "HEAD" and route.method != "HEAD" else method,
            raw_path=route_path + query,
            headers=list(self.headers.items()),
            body=body,
            resource=route.path,
            path_params=params,
            stage=api.stage,
            binary_media_types=api.binary_media_types,
            source_ip=self.client_address[0],
            host=self.headers.get("Host", ""),
        )
        if warning:
            stack.echo(f"harmony-local: WARNING {method} {path}: {warning}")
        size = len(json.dumps(event))
        if size > MAX_LAMBDA_EVENT:
            self._json(413, TOO_LONG, [("x-harmony-local-reason", "lambda-event-too-large")])
            stack.echo(
                f"{method} {self.path} -> 413 (the Lambda event is {size:,} bytes > Lambda's {MAX_LAMBDA_EVENT:,} "
                "request limit; a binary body counts base64-encoded: upload by URL or S3 instead)"
            )
            return None
        inv = stack.invoke(route.function, event, source=f"api {method} {path}")
        if not inv.ok:
            stack.echo(
                f"{method} {self.path} -> 502 [{route.function}] {inv.error.get('errorType')}: "
                f"{inv.error.get('errorMessage')}"
            )
            return self._json(502, {"message": "Internal server error"})
        try:
            status, headers, data = parse_response(inv.result)
        except BadLambdaResponseError as exc:
            stack.echo(f"{method} {self.path} -> 502 [{route.function}] malformed response: {exc}")
            return self._json(502, {"message": "Internal server error"})
        self._send(status, headers, data)
        stack.echo(f"{method} {self.path} -> {status} [{route.function}] {(time.perf_counter() - t0) * 1000:.0f} ms")
        return None

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle  # noqa: N815 - http.server's names
