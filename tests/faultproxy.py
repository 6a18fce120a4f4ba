"""A fault-injecting HTTP proxy for S3 tests: put it between a boto3 client and moto's server.

Each request is forwarded to the upstream (moto) with ``http.client``. With probability
``rate`` a request gets one fault instead of a clean answer, chosen evenly among:

* ``error500``  - ``500 InternalError`` (S3's XML error body); half of these are sent *after* the
  request was forwarded, so the write did happen and the client's retry repeats it;
* ``slowdown``  - ``503 SlowDown`` (S3's throttling answer), not forwarded;
* ``delay``     - the answer is held back 0.05-0.6 s, then sent whole;
* ``cut``       - the request is forwarded, then the connection is closed in the middle of the
  answer, at a random byte: in the status line, in the headers, or in the body.

and, only when asked for by a rule (below), ``cut_body`` (all headers, then half the body),
``corrupt_body`` (the whole answer, one byte of the body changed) and ``denied`` (``403
AccessDenied``, not forwarded: an error botocore does not retry, so the caller fails at once).

Besides the random faults, :meth:`FaultProxy.fail` sets a fault for the requests whose path
contains a string (optionally one method, optionally only the next N): a key that S3 keeps
failing. The proxy speaks HTTP/1.1 with keep-alive like S3, so botocore's connection pool reuses
its connections (and meets cut ones). ``counts`` says what happened; ``rate`` and the rules can
be changed while it runs. Only loopback addresses are used.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

FAULTS = ("error500", "slowdown", "delay", "cut")  # the random ones
RULE_FAULTS = (*FAULTS, "cut_body", "corrupt_body", "denied")
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)


def _s3_error(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        f"<RequestId>FAULTPROXY</RequestId><HostId>faultproxy</HostId></Error>"
    ).encode()


class FaultProxy:
    """``with FaultProxy(upstream, rate=0.1, seed=1) as proxy:`` — ``proxy.url`` is the endpoint."""

    def __init__(self, upstream: str, *, rate: float = 0.0, seed: int = 0, faults: tuple[str, ...] = FAULTS) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname in ("127.0.0.1", "localhost"), "loopback upstreams only"
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.rate = rate
        self.faults = faults
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._rules: list[list[Any]] = []  # [fault, path part, method or None, times left or None]
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            pass

        Handler.proxy = proxy
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="faultproxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ decisions
    def fail(self, fault: str, path_contains: str, *, method: str | None = None, times: int | None = None) -> None:
        """Give ``fault`` to the requests whose path contains ``path_contains`` (URL-encoded, as
        sent), of ``method`` if given, the next ``times`` of them if given (else all)."""
        assert fault in RULE_FAULTS
        with self._lock:
            self._rules.append([fault, path_contains, method, times])

    def heal(self) -> None:
        """No more rules (the random faults stay)."""
        with self._lock:
            self._rules.clear()

    def decide(self, method: str = "", path: str = "") -> tuple[str | None, float]:
        """The fault for the next request (None: a clean answer) and a random number for it."""
        with self._lock:
            self.counts["requests"] += 1
            for rule in self._rules:
                fault, part, meth, times = rule
                if part in path and meth in (None, method) and times != 0:
                    if times is not None:
                        rule[3] = times - 1
                    self.counts[fault] += 1
                    return fault, self._rng.random()
            fault = None
            if self.rate > 0 and self._rng.random() < self.rate:
                fault = self._rng.choice(self.faults)
                self.counts[fault] += 1
            return fault, self._rng.random()


class _Handler(BaseHTTPRequestHandler):
    proxy: FaultProxy
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:
        pass

    _upstream: http.client.HTTPConnection | None = None

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """The request sent upstream on this connection's own keep-alive connection to moto."""
        p = self.proxy
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        send = body if body or self.command in ("PUT", "POST") else None
        for attempt in (1, 2):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(p.upstream_host, p.upstream_port, timeout=60)
            try:
                self._upstream.request(self.command, self.path, body=send, headers=headers)
                resp = self._upstream.getresponse()
                data = resp.read()
                if resp.will_close:
                    self._upstream.close()
                    self._upstream = None
                return resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP], data
            except (http.client.HTTPException, OSError):
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def finish(self) -> None:
        super().finish()
        if self._upstream is not None:
            self._upstream.close()

    def _send_error_xml(self, status: int, code: str, message: str) -> None:
        data = _s3_error(code, message)
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":  # an answer to HEAD has no body, whatever its Content-Length
            self.wfile.write(data)

    def _cut(self, status: int, headers: list[tuple[str, str]], data: bytes, r: float, *, body: bool) -> None:
        """Send the answer up to a random point (in the status line, the headers or the body;
        ``body``: half the body), then drop the connection."""
        out = f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n".encode()
        for k, v in headers:
            out += f"{k}: {v}\r\n".encode()
        out += b"\r\n"
        if body:
            out += data[: len(data) // 2]
        else:
            if self.command != "HEAD":
                out += data
            out = out[: max(1, int(len(out) * r))]
        self.close_connection = True
        try:
            self.wfile.write(out)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _handle(self) -> None:
        try:
            self._proxy_one()
        except OSError as exc:  # the client went away first (it timed out, or gave up)
            self.close_connection = True
            with self.proxy._lock:
                self.proxy.counts[
                    f"client_gone:{type(exc).__name__}:{self.command}:{getattr(self, '_fault', None)}"
                ] += 1

    def _proxy_one(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fault, r = self.proxy.decide(self.command, self.path)
        if fault == "slowdown":
            return self._send_error_xml(503, "SlowDown", "Please reduce your request rate.")
        if fault == "denied":
            return self._send_error_xml(403, "AccessDenied", "Access Denied")
        if fault == "error500" and r < 0.5:
            return self._send_error_xml(500, "InternalError", "We encountered an internal error. Please try again.")
        status, headers, data = self._forward(body)
        if fault == "error500":  # after the request took effect
            return self._send_error_xml(500, "InternalError", "We encountered an internal error. Please try again.")
        if fault in ("cut", "cut_body"):
            return self._cut(status, headers, data, r, body=fault == "cut_body")
        if fault == "corrupt_body" and data:
            i = int(r * len(data))
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
        if fault == "delay":
            time.sleep(0.05 + 0.55 * r)
        self.send_response(status)
        have_length = False
        for k, v in headers:
            if k.lower() == "content-length":
                have_length = True
                if self.command != "HEAD":
                    v = str(len(data))
            self.send_header(k, v)
        if not have_length:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        return None

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815 - http.server's names
