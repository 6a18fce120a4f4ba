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
  exchange at ``timeout`` seconds.

Private addresses can be allowed for local tests only, explicitly: ``allow_private=True`` or the
environment variable ``HARMONY_ALLOW_PRIVATE_URLS=1``. Both are off by default.

Errors (all :class:`~harmony_image.errors.FetchError`, each with ``code`` and HTTP ``status``):
:class:`UrlRefusedError` 400, :class:`FetchNotFoundError` 404, :class:`FetchTooLargeError` 413,
:class:`FetchError` 502 (unreachable, TLS failure, remote 4xx/5xx, too many redirects),
:class:`FetchTimeoutError` 504.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from urllib.parse import urljoin, urlsplit

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
        self.url = url
        self.scheme = scheme
        self.host = host
        self.port = port or (443 if scheme == "https" else 80)
        path = parts.path or "/"
        self.path = path + (f"?{parts.query}" if parts.query else "")
        # Host header: keep IPv6 literals bracketed, ports only when not the default.
        hh = f"[{host}]" if ":" in host else host
        if port and port != (443 if scheme == "https" else 80):
            hh = f"{hh}:{port}"
        self.host_header = hh


def _vet(target: _Target, resolver: Resolver, allow_private: bool) -> list[str]:
    try:
        literal = ipaddress.ip_address(target.host.split("%", 1)[0])
    except ValueError:
        literal = None
    addresses = [str(literal)] if literal is not None else list(resolver(target.host, target.port))
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


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP connection to a vetted IP; the Host header still names the URL's host."""

    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a vetted IP; the certificate is verified against the URL's host (SNI)."""

    def __init__(self, host: str, port: int, ip: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._ip = ip
        self._ctx = context

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
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
        addresses = _vet(target, resolver, allow_private)
        status, location, body = _request(target, addresses, deadline, timeout, max_bytes, context)
        if status in _REDIRECTS:
            if not location:
                raise FetchError(f"{target.url} answered HTTP {status} without a Location header")
            target = _Target(urljoin(target.url, location))
            continue
        if status in (404, 410):
            raise FetchNotFoundError(f"{target.url} answered HTTP {status} (not found)")
        if not 200 <= status < 300:
            raise FetchError(f"{target.url} answered HTTP {status}")
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
    timeout: float,
    max_bytes: int,
    context: ssl.SSLContext,
) -> tuple[int, str | None, bytes | None]:
    last_exc: BaseException | None = None
    for ip in addresses:
        per_op = min(timeout, _remaining(deadline, target.url))
        if target.scheme == "https":
            conn: http.client.HTTPConnection = _PinnedHTTPSConnection(target.host, target.port, ip, per_op, context)
        else:
            conn = _PinnedHTTPConnection(target.host, target.port, ip, per_op)
        try:
            try:
                conn.connect()
            except TimeoutError as exc:
                last_exc = exc
                continue
            except ssl.SSLError as exc:
                raise FetchError(f"TLS failure talking to {target.host}: {exc}") from exc
            except OSError as exc:
                last_exc = exc
                continue
            try:
                conn.putrequest("GET", target.path, skip_host=True, skip_accept_encoding=True)
                conn.putheader("Host", target.host_header)
                conn.putheader("User-Agent", USER_AGENT)
                conn.putheader("Accept", "image/*, */*;q=0.5")
                conn.putheader("Accept-Encoding", "identity")
                conn.putheader("Connection", "close")
                conn.endheaders()
                resp = conn.getresponse()
                if resp.status in _REDIRECTS:
                    return resp.status, resp.getheader("Location"), None
                if not 200 <= resp.status < 300:
                    return resp.status, None, None
                length = resp.getheader("Content-Length")
                if length is not None:
                    try:
                        declared = int(length)
                    except ValueError:
                        declared = -1
                    if declared > max_bytes:
                        raise FetchTooLargeError(f"{target.url} is {declared} bytes; the limit is {max_bytes}")
                chunks: list[bytes] = []
                total = 0
                while True:
                    if conn.sock is not None:
                        conn.sock.settimeout(min(timeout, _remaining(deadline, target.url)))
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > max_bytes:
                        raise FetchTooLargeError(f"{target.url} sent more than {max_bytes} bytes (the limit)")
                    chunks.append(chunk)
                return resp.status, None, b"".join(chunks)
            except TimeoutError as exc:
                raise FetchTimeoutError(f"timed out fetching {target.url}") from exc
            except http.client.IncompleteRead as exc:
                raise FetchError(f"{target.url}: connection closed before the body ended") from exc
            except (http.client.HTTPException, OSError) as exc:
                raise FetchError(f"error fetching {target.url}: {exc}") from exc
        finally:
            conn.close()
    if isinstance(last_exc, (TimeoutError, socket.timeout)):
        raise FetchTimeoutError(f"timed out connecting to {target.host}")
    raise FetchError(f"cannot connect to {target.host}:{target.port}: {last_exc}")
