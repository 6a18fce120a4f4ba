"""Download a query image from a user-supplied URL without becoming an SSRF proxy.

``fetch_url`` is the only way the engine and the Lambda handlers fetch a URL. It

* accepts ``http`` and ``https`` only, no credentials in the URL;
* resolves the host itself and refuses the request when **any** address the name resolves to
  is not a public unicast address: loopback, RFC 1918 private, link-local (169.254.169.254 is
  the credentials endpoint on AWS Lambda / EC2), carrier-grade NAT, multicast, reserved,
  unspecified, documentation ranges, and the same ranges hidden inside IPv6 (IPv4-mapped
  ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4, Teredo);
* connects to the address it vetted (no second DNS lookup, so DNS rebinding cannot swap in a
  private address between the check and the connection); HTTPS still verifies the
  certificate against the host name (SNI);
* follows at most ``max_redirects`` redirects, vetting every hop the same way;
* caps the body at ``max_bytes`` (by Content-Length up front and while streaming) and the whole
  exchange at ``timeout`` seconds: one deadline on the monotonic clock for DNS, connecting, TLS,
  headers and body, redirects included — every socket operation gets only the time left, and a
  watchdog shuts the socket down when the deadline passes (a server sending one byte every
  second cannot keep the function waiting);
* refuses a body shorter than its Content-Length (the connection closed early: 502);
* sends international names as IDNA (``http://☃.example/`` -> ``xn--n3h.example``) and
  percent-encodes non-ASCII paths and queries as UTF-8 (``/café.jpg`` -> ``/caf%C3%A9.jpg``);
  redirects to such URLs too.

Private addresses can be allowed for local tests only, explicitly: ``allow_private=True`` or the
environment variable ``HARMONY_ALLOW_PRIVATE_URLS=1``. Both are off by default.

Errors (all :class:`~harmony_image.errors.FetchError`, each with ``code`` and HTTP ``status``):
:class:`UrlRefusedError` 400, :class:`FetchNotFoundError` 404, :class:`FetchTooLargeError` 413,
:class:`FetchError` 502 (unreachable, TLS failure, remote 4xx/5xx, too many redirects),
:class:`FetchTimeoutError` 504.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar
from urllib.parse import quote, urljoin, urlsplit

from .errors import (
    FetchError,
    FetchNotFoundError,
    FetchTimeoutError,
    FetchTooLargeError,
    UrlRefusedError,
)

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_REDIRECTS = 3
MAX_URL_LENGTH = 2048
ALLOW_PRIVATE_ENV = "HARMONY_ALLOW_PRIVATE_URLS"
USER_AGENT = "harmony-image/0.1 (+https://github.com/harmony-image)"

_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024
# what a path or query keeps as it is; everything else (non-ASCII as UTF-8) is percent-encoded
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*\.?")
T = TypeVar("T")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")

Resolver = Callable[[str, int], Sequence[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _env_allows_private() -> bool:
    return os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def is_public_address(ip: IPAddress | str) -> bool:
    """Whether ``ip`` is a public unicast address a server may fetch from."""
    if isinstance(ip, str):
        ip = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: IPAddress | None = None
        if ip.ipv4_mapped is not None:
            embedded = ip.ipv4_mapped
        elif ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour is not None:
            embedded = ip.sixtofour
        elif ip.teredo is not None:
            embedded = ip.teredo[1]
        elif ip in _NAT64_LOCAL:
            return False
        if embedded is not None:
            return is_public_address(embedded)
    if ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    return bool(ip.is_global)


def _default_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve host {host!r}: {exc.strerror or exc}") from exc
    except UnicodeError as exc:
        raise UrlRefusedError(f"invalid host name {host!r}") from exc
    out: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        addr = str(sockaddr[0])
        if addr not in out:
            out.append(addr)
    return out


def _ascii_host(host: str) -> str:
    """The host as sent on the wire: IP literals as they are, names in IDNA (``xn--``) form."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    else:
        return host
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise UrlRefusedError(f"invalid host name {host!r}: not a valid international domain name") from None
    ascii_host = ascii_host.lower()
    labels = ascii_host.rstrip(".").split(".")
    if len(ascii_host) > 253 or any(len(label) > 63 for label in labels) or not _HOST_NAME.fullmatch(ascii_host):
        raise UrlRefusedError(f"invalid host name {host!r}")
    return ascii_host


class _Target:
    def __init__(self, url: str) -> None:
        if not isinstance(url, str) or not url.strip():
            raise UrlRefusedError("the URL is empty")
        url = url.strip()
        if len(url) > MAX_URL_LENGTH:
            raise UrlRefusedError(f"the URL is longer than {MAX_URL_LENGTH} characters")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
            raise UrlRefusedError("the URL contains whitespace or control characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UrlRefusedError(f"malformed URL: {exc}") from exc
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise UrlRefusedError(
                f"only http and https URLs are fetched; got {scheme + ':' if scheme else 'no scheme'}"
            )
        if parts.username is not None or parts.password is not None:
            raise UrlRefusedError("URLs with credentials (user@host) are refused")
        host = parts.hostname
        if not host:
            raise UrlRefusedError("the URL has no host")
        self.host = _ascii_host(host)
        try:
            path = quote(parts.path or "/", safe=_PATH_SAFE)
            query = quote(parts.query, safe=_QUERY_SAFE)
        except UnicodeEncodeError:
            raise UrlRefusedError("the URL is not valid text (it holds a lone surrogate)") from None
        self.scheme = scheme
        self.port = port or (443 if scheme == "https" else 80)
        self.path = path + (f"?{query}" if query else "")
        # Host header: keep IPv6 literals bracketed, ports only when not the default.
        hh = f"[{self.host}]" if ":" in self.host else self.host
        if port and port != (443 if scheme == "https" else 80):
            hh = f"{hh}:{port}"
        self.host_header = hh
        self.url = f"{scheme}://{hh}{self.path}"  # what is fetched, ASCII only
        self.shown = url  # what the caller asked for, for messages


def _location(value: str) -> str:
    """A Location header as the URL it names: http.client decodes header bytes as Latin-1, so
    the bytes are recovered and read as UTF-8 (else percent-encoded as they are)."""
    raw = value.strip().encode("latin-1", "replace")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = quote(raw, safe=_QUERY_SAFE + "#")
    return text.replace(" ", "%20")


def _before_deadline(fn: Callable[[], T], deadline: float, what: str) -> T:
    """``fn()`` in a helper thread, given up on (504) at the deadline: getaddrinfo has no timeout
    of its own. A thread given up on finishes in the background."""
    box: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            error.append(exc)

    worker = threading.Thread(target=run, name="harmony-fetch-resolve", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    if worker.is_alive():
        raise FetchTimeoutError(f"timed out {what}")
    if error:
        raise error[0]
    return box[0]


def _vet(target: _Target, resolver: Resolver, allow_private: bool, deadline: float) -> list[str]:
    try:
        literal = ipaddress.ip_address(target.host.split("%", 1)[0])
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        addresses = list(
            _before_deadline(lambda: resolver(target.host, target.port), deadline, f"resolving {target.host}")
        )
    if not addresses:
        raise FetchError(f"host {target.host!r} resolves to no address")
    if allow_private:
        return addresses
    for addr in addresses:
        try:
            public = is_public_address(addr)
        except ValueError:
            public = False
        if not public:
            raise UrlRefusedError(
                f"refusing to fetch {target.host!r}: it resolves to {addr}, which is not a public "
                "address (loopback, private, link-local, metadata and other internal addresses "
                "are refused)"
            )
    return addresses


class _Watchdog:
    """Shuts a socket down when the deadline passes: a blocked read returns at once, whatever the
    server keeps sending (socket timeouts only bound the gap between two packets)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.fired = False
        self._sock = sock
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        with contextlib.suppress(OSError):  # already closed
            self._sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP connection to a vetted IP; the Host header still names the URL's host. The socket is
    watched from the moment it exists until the deadline."""

    def __init__(self, host: str, port: int, ip: str, timeout: float, deadline: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ip = ip
        self.deadline = deadline
        self.watchdog: _Watchdog | None = None

    def _raw_socket(self) -> socket.socket:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.watchdog = _Watchdog(sock, self.deadline)
        return sock

    def connect(self) -> None:
        self.sock = self._raw_socket()

    def finish(self) -> None:
        """Close and stop watching. (Not close(): http.client calls that as soon as the headers of
        a "Connection: close" response are read, while the body is still to come.)"""
        if self.watchdog is not None:
            self.watchdog.cancel()
        self.close()


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """HTTPS to a vetted IP; the certificate is verified against the URL's host (SNI)."""

    default_port = http.client.HTTPS_PORT

    def __init__(self, host: str, port: int, ip: str, timeout: float, deadline: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, ip, timeout, deadline)
        self._ctx = context

    def connect(self) -> None:
        sock = self._raw_socket()
        try:
            self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def fetch_url(
    url: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    allow_private: bool | None = None,
    resolver: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> bytes:
    """Download ``url`` (http/https) and return its body, refusing internal addresses.

    Parameters
    ----------
    max_bytes : int
        Largest body accepted; larger raises :class:`FetchTooLargeError` (413).
    timeout : float
        Seconds for the whole exchange, redirects included (504 when exceeded).
    max_redirects : int
        Redirect hops followed, each vetted like the first URL.
    allow_private : bool, optional
        Allow non-public addresses. Only for tests against a local server. ``None`` (default)
        reads ``HARMONY_ALLOW_PRIVATE_URLS`` (off unless set to 1/true/yes/on).
    resolver : callable, optional
        ``resolver(host, port) -> [ip, ...]``; default ``socket.getaddrinfo``. Tests use it to
        simulate DNS answers.
    """
    if allow_private is None:
        allow_private = _env_allows_private()
    resolver = resolver or _default_resolver
    deadline = time.monotonic() + timeout
    context = ssl_context or ssl.create_default_context()
    target = _Target(url)
    for _hop in range(max_redirects + 1):
        addresses = _vet(target, resolver, allow_private, deadline)
        status, location, body = _request(target, addresses, deadline, max_bytes, context)
        if status in _REDIRECTS:
            if not location:
                raise FetchError(f"{target.shown} answered HTTP {status} without a Location header")
            target = _Target(urljoin(target.url, _location(location)))
            continue
        if status in (404, 410):
            raise FetchNotFoundError(f"{target.shown} answered HTTP {status} (not found)")
        if not 200 <= status < 300:
            raise FetchError(f"{target.shown} answered HTTP {status}")
        assert body is not None
        return body
    raise FetchError(f"more than {max_redirects} redirects fetching {url}")


def _remaining(deadline: float, url: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchTimeoutError(f"timed out fetching {url}")
    return left


def _request(
    target: _Target,
    addresses: list[str],
    deadline: float,
    max_bytes: int,
    context: ssl.SSLContext,
) -> tuple[int, str | None, bytes | None]:
    last_exc: BaseException | None = None
    shown = target.shown
    for ip in addresses:
        left = _remaining(deadline, shown)
        if target.scheme == "https":
            conn: _PinnedHTTPConnection = _PinnedHTTPSConnection(target.host, target.port, ip, left, deadline, context)
        else:
            conn = _PinnedHTTPConnection(target.host, target.port, ip, left, deadline)
        try:
            try:
                conn.connect()
            except ssl.SSLError as exc:
                if conn.watchdog is not None and conn.watchdog.fired:
                    raise FetchTimeoutError(f"timed out talking to {target.host} (TLS)") from exc
                raise FetchError(f"TLS failure talking to {target.host}: {exc}") from exc
            except OSError as exc:  # TimeoutError included: the next address may answer
                last_exc = exc
                continue
            try:
                return _exchange(conn, target, deadline, max_bytes)
            except FetchError:
                raise
            except (http.client.HTTPException, OSError) as exc:
                if (conn.watchdog is not None and conn.watchdog.fired) or isinstance(exc, TimeoutError):
                    raise FetchTimeoutError(f"timed out fetching {shown}") from exc
                if isinstance(exc, http.client.IncompleteRead):
                    raise FetchError(f"{shown}: connection closed before the body ended") from exc
                raise FetchError(f"error fetching {shown}: {exc}") from exc
        finally:
            conn.finish()
    if isinstance(last_exc, (TimeoutError, socket.timeout)) or time.monotonic() >= deadline:
        raise FetchTimeoutError(f"timed out connecting to {target.host}")
    raise FetchError(f"cannot connect to {target.host}:{target.port}: {last_exc}")


def _exchange(
    conn: _PinnedHTTPConnection, target: _Target, deadline: float, max_bytes: int
) -> tuple[int, str | None, bytes | None]:
    """One request on a connected socket; every read gets only the time left."""
    shown = target.shown

    def tighten() -> None:
        if conn.sock is not None:
            conn.sock.settimeout(_remaining(deadline, shown))

    conn.putrequest("GET", target.path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", target.host_header)
    conn.putheader("User-Agent", USER_AGENT)
    conn.putheader("Accept", "image/*, */*;q=0.5")
    conn.putheader("Accept-Encoding", "identity")
    conn.putheader("Connection", "close")
    tighten()
    conn.endheaders()
    tighten()
    resp = conn.getresponse()
    if resp.status in _REDIRECTS:
        return resp.status, resp.getheader("Location"), None
    if not 200 <= resp.status < 300:
        return resp.status, None, None
    declared = resp.length  # None: no (valid) Content-Length, or chunked
    if declared is not None and declared > max_bytes:
        raise FetchTooLargeError(f"{shown} is {declared:,} bytes; the limit is {max_bytes:,}")
    chunks: list[bytes] = []
    total = 0
    while True:
        tighten()
        chunk = resp.read1(_CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise FetchTooLargeError(f"{shown} sent more than {max_bytes:,} bytes (the limit)")
        chunks.append(chunk)
    if conn.watchdog is not None and conn.watchdog.fired:
        raise FetchTimeoutError(f"timed out fetching {shown} ({total:,} bytes received)")
    if declared is not None and total != declared:
        raise FetchError(
            f"{shown}: the server sent {total:,} of the {declared:,} bytes its Content-Length announced "
            "(the connection closed early)"
        )
    return resp.status, None, b"".join(chunks)
