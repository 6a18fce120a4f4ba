"""Lambda functions run like Lambda runs them, without containers.

Each function gets its own worker **processes** (one per concurrent invocation, kept warm like
an execution environment): the template's Environment only (plus the variables Lambda sets),
``sys.path`` = the function's CodeUri then each layer (``/var/task``, ``/opt/python``), the
handler imported by its template name (``app.lambda_handler``) so a wrong Handler fails the
same way. An invocation longer than the template's Timeout kills the worker ("Task timed out").
Module state (the SearchFunction's warm index) lives across invocations of the same worker.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import multiprocessing as mp
import os
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

from .template import ACCOUNT_ID, REGION, FunctionSpec

# Variables of the parent process a worker keeps (the interpreter and locale, not the user's
# AWS or HARMONY settings: Lambda has only what the template gives it).
_KEEP = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "VIRTUAL_ENV",
    "LD_LIBRARY_PATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "PYTHONHASHSEED",
    "SYSTEMROOT",
)


def lambda_environment(spec: FunctionSpec, extra: dict[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in _KEEP if k in os.environ}
    env.update(
        {
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_LAMBDA_FUNCTION_NAME": spec.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(int(spec.timeout)),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "local/[$LATEST]harmony-local",
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
            "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001",
            "LAMBDA_TASK_ROOT": str(spec.code_uri),
            "LAMBDA_RUNTIME_DIR": "/var/runtime",
            "_HANDLER": spec.handler,
            "AWS_SAM_LOCAL": "true",  # what sam local sets; Powertools then skips X-Ray
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(spec.environment)
    # Then the embedded S3's credentials and endpoint, as `sam local --env-vars` overrides the
    # template (which declares AWS_ENDPOINT_URL_S3 empty for exactly this purpose).
    env.update(extra)
    return env


@dataclass
class LambdaContext:
    """The context object Lambda passes to a handler (the attributes Powertools and handlers read)."""

    function_name: str = "harmony-local"
    memory_limit_in_mb: int = 128
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    deadline: float = field(default_factory=lambda: time.time() + 30.0)  # epoch seconds
    function_version: str = "$LATEST"
    log_stream_name: str = "local/[$LATEST]harmony-local"
    identity: Any = None
    client_context: Any = None

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.time()) * 1000))


def _isolate(python_path: list[str], project_root: str | None) -> None:
    """sys.path as Lambda's: the function's code and layers, then the runtime's packages — no
    other folder of the project (such as an editable install of it)."""
    if project_root:
        root, runtime = Path(project_root), Path(sys.prefix).resolve()

        def project_folder(entry: str) -> bool:
            path = Path(entry or ".").resolve()
            return path.is_relative_to(root) and not path.is_relative_to(runtime)

        sys.path[:] = [p for p in sys.path if not project_folder(p)]
    sys.path[:0] = python_path
    importlib.invalidate_caches()


def _init_error(kind: str, message: str) -> dict[str, Any]:
    trace = traceback.format_exc().splitlines() if sys.exc_info()[0] else []
    return {"errorType": kind, "errorMessage": message, "stackTrace": trace}


def _worker_main(conn: Connection, spec: dict[str, Any], env: dict[str, str], log_path: str | None) -> None:
    """Entry point of a worker process (spawned: a fresh interpreter, like a cold start)."""
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        # the worker's own stdout/stderr for its whole life, as Lambda sends them to its log
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(env)
    _isolate(spec["python_path"], spec["project_root"])
    os.chdir(spec["python_path"][0])
    module_name, _, func_name = spec["handler"].rpartition(".")
    handler = init_error = None
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - reported like Lambda's Runtime.ImportModuleError
        init_error = _init_error("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc!r}")
    else:
        handler = getattr(module, func_name, None)
        if not callable(handler):
            init_error = _init_error(
                "Runtime.HandlerNotFound", f"Handler '{func_name}' missing on module '{module_name}'"
            )
    if init_error is not None:
        print(json.dumps(init_error), flush=True)
    conn.send(("ready", init_error))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        event_json, request_id, deadline = msg
        if init_error is not None:
            conn.send(("error", init_error))
            continue
        print(f"START RequestId: {request_id} Version: $LATEST", flush=True)
        started = time.perf_counter()
        try:
            context = LambdaContext(spec["name"], spec["memory"], request_id, deadline)
            assert handler is not None  # init_error is set otherwise
            result = handler(json.loads(event_json), context)
            reply: tuple[str, Any] = ("ok", json.dumps(result))  # Lambda serialises the result: a non-JSON result fails
        except Exception as exc:  # noqa: BLE001 - the handler's error goes back to the caller
            reply = (
                "error",
                {
                    "errorType": type(exc).__name__,
                    "errorMessage": str(exc),
                    "stackTrace": traceback.format_exc().splitlines(),
                },
            )
            print(json.dumps(reply[1]), flush=True)
        ms = (time.perf_counter() - started) * 1000
        print(f"END RequestId: {request_id}\nREPORT RequestId: {request_id}\tDuration: {ms:.2f} ms", flush=True)
        conn.send(reply)


class InvokeError(Exception):
    def __init__(self, function: str, payload: dict) -> None:
        super().__init__(f"{function}: {payload.get('errorType')}: {payload.get('errorMessage')}")
        self.function = function
        self.payload = payload


class _Worker:
    def __init__(self, ctx: SpawnContext, spec: FunctionSpec, env: dict[str, str], log_path: str | None) -> None:
        self.conn, child = ctx.Pipe()
        payload = {
            "name": spec.name,
            "handler": spec.handler,
            "memory": spec.memory,
            "python_path": spec.python_path(),
            "project_root": str(spec.project_root or ""),
        }
        self.proc = ctx.Process(
            target=_worker_main, args=(child, payload, env, log_path), name=f"lambda-{spec.name}", daemon=True
        )
        self.proc.start()
        child.close()
        self.ready = False
        self.init_error: dict | None = None
        # The start-up (wait_warm) and a request that arrives meanwhile may both wait for the
        # same "ready" message: one of them must not read the pipe while the other does, or the
        # second waits forever for a message that already came (a request hung at start-up).
        self._ready_lock = threading.Lock()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if not self._ready_lock.acquire(timeout=timeout):
            raise TimeoutError("the function did not initialise in time")
        try:
            if self.ready:
                return
            if not self.conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("the function did not initialise in time")
            _, self.init_error = self.conn.recv()
            self.ready = True
        finally:
            self._ready_lock.release()

    def kill(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(None)
        self.proc.join(timeout=1)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=2)
        self.conn.close()


@dataclass
class Invocation:
    function: str
    request_id: str
    source: str  # "api GET /search", "s3 ObjectCreated:Put catalog/x.jpg", ...
    ok: bool
    ms: float
    result: Any = None
    error: dict[str, Any] = field(default_factory=dict)  # the error payload when not ok
    # (eventName, key) of each S3 event record the invocation carried (directly or in SQS messages)
    s3_events: tuple[tuple[str, str], ...] = ()


class FunctionPool:
    """Warm workers of one function; up to ``max_concurrency`` invocations at once."""

    INIT_TIMEOUT = 10.0  # Lambda's init phase limit

    def __init__(
        self, spec: FunctionSpec, env: dict[str, str], *, log_dir: Path | None, max_concurrency: int = 2
    ) -> None:
        self.spec = spec
        self.env = env
        self.log_path = str(log_dir / f"{spec.name}.log") if log_dir else None
        self._ctx = mp.get_context("spawn")
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._closed = False

    def _new_worker(self) -> _Worker:
        w = _Worker(self._ctx, self.spec, self.env, self.log_path)
        with self._lock:
            self._all.append(w)
        return w

    def prewarm(self) -> None:
        with self._lock:
            need = not self._idle
        if need:
            w = self._new_worker()
            with self._lock:
                self._idle.append(w)

    def wait_warm(self) -> None:
        with self._lock:
            workers = list(self._idle)
        for w in workers:
            w.wait_ready(self.INIT_TIMEOUT + 30)  # the first spawn also imports numpy/OpenCV

    def invoke(self, event: dict) -> Any:
        """The handler's result (JSON round-tripped), or InvokeError."""
        if self._closed:
            raise InvokeError(self.spec.name, {"errorType": "Stopped", "errorMessage": "the stack is stopping"})
        request_id = str(uuid.uuid4())
        with self._slots:
            with self._lock:
                w = self._idle.pop() if self._idle else None
            if w is None:
                w = self._new_worker()
            try:
                w.wait_ready(self.INIT_TIMEOUT + 30)
            except TimeoutError:
                self._discard(w)
                raise InvokeError(
                    self.spec.name, {"errorType": "Runtime.InitTimeout", "errorMessage": "init did not finish in time"}
                ) from None
            deadline = time.time() + self.spec.timeout
            w.conn.send((json.dumps(event), request_id, deadline))
            if not w.conn.poll(self.spec.timeout + 0.5):
                self._discard(w)
                raise InvokeError(
                    self.spec.name,
                    {
                        "errorType": "Sandbox.Timedout",
                        "errorMessage": f"{request_id} Task timed out after {self.spec.timeout:.2f} seconds",
                    },
                )
            try:
                status, payload = w.conn.recv()
            except (EOFError, OSError):
                self._discard(w)
                raise InvokeError(
                    self.spec.name, {"errorType": "Runtime.ExitError", "errorMessage": "the function's process exited"}
                ) from None
            with self._lock:
                if self._closed:
                    pass
                else:
                    self._idle.append(w)
        if status == "ok":
            return json.loads(payload)
        raise InvokeError(self.spec.name, payload)

    def _discard(self, w: _Worker) -> None:
        with self._lock:
            if w in self._all:
                self._all.remove(w)
        w.kill()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._all, self._idle = list(self._all), [], []
        for w in workers:
            w.kill()
