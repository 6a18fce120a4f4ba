"""fetch_url: SSRF guard, redirects, size cap, timeouts — against a real local HTTP server.

The server listens on 127.0.0.1, which fetch_url refuses unless private addresses are allowed
explicitly (allow_private=True / HARMONY_ALLOW_PRIVATE_URLS=1). Redirect re-checking is tested
by declaring 127.0.0.1 "the public internet" for one test (monkeypatching the address rule),
so every other internal address stays refused.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import time
from typing import ClassVar

import pytest

from harmony_image import FetchError, UrlRefusedError, extract_features
from harmony_image import fetch as fetch_mod
from harmony_image.errors import FetchNotFoundError, FetchTimeoutError, FetchTooLargeError
from harmony_image.fetch import fetch_url, is_public_address
from tests.support import image_bytes, serving

IMAGE = image_bytes("chelsea.jpg")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen_hosts: ClassVar[list[str]] = []

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status, body=b"", headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}) and "Transfer-Encoding" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self):
        _Handler.seen_hosts.append(self.headers.get("Host", ""))
        p = self.path
        port = self.server.server_address[1]
        if p == "/img.jpg":
            self._send(200, IMAGE, {"Content-Type": "image/jpeg"})
        elif p == "/redirect":
            self._send(302, headers={"Location": "/img.jpg"})
        elif p == "/redirect-abs":
            self._send(301, headers={"Location": f"http://localhost:{port}/img.jpg"})
        elif p == "/redirect-metadata":
            self._send(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        elif p == "/redirect-private":
            self._send(307, headers={"Location": "http://10.1.2.3/x.jpg"})
        elif p == "/redirect-file":
            self._send(302, headers={"Location": "file:///etc/passwd"})
        elif p == "/loop":
            self._send(302, headers={"Location": "/loop"})
        elif p == "/missing":
            self._send(404, b"nope")
        elif p == "/error":
            self._send(500, b"boom")
        elif p == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(50 * 1024 * 1024))
            self.send_header("Connection", "close")
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(b"\0" * 1024)
        elif p == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(64):
                    chunk = b"\xff" * 65536
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
        elif p == "/drip":  # headers, then one byte every 0.3 s: each read is quick, the whole is not
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(40):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                pass
        elif p == "/slow-headers":
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for i in range(40):
                    self.wfile.write(b"X-Slow-%d: 1\r\n" % i)
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                pass
        elif p == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", str(len(IMAGE)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(IMAGE[:5000])
        elif p in ("/caf%C3%A9.jpg", "/caf%C3%A9.jpg?q=%C3%BC", "/caf%E9.jpg"):
            # (the last: Latin-1 bytes in a Location are passed on as they were sent)
            self._send(200, IMAGE, {"Content-Type": "image/jpeg"})
        elif p in ("/redirect-utf8", "/redirect-latin1"):
            target = b"/caf\xc3\xa9.jpg" if p == "/redirect-utf8" else b"/caf\xe9.jpg"
            self.wfile.write(b"HTTP/1.1 302 Found\r\nLocation: " + target + b"\r\nContent-Length: 0\r\n\r\n")
        elif p == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(3)
            except OSError:
                pass
        else:
            self._send(404)


@pytest.fixture(scope="module")
def server():
    with serving(_Handler) as url:
        yield url


@pytest.fixture
def loopback_is_internet(monkeypatch):
    """Treat exactly 127.0.0.1 as a public address; every other rule stays as it is."""
    real = fetch_mod.is_public_address

    def rule(ip):
        if str(ip) == "127.0.0.1":
            return True
        return real(ip)

    monkeypatch.setattr(fetch_mod, "is_public_address", rule)


# --------------------------------------------------------------------------- fetching
def test_fetches_image_from_local_server_with_opt_in(server):
    data = fetch_url(f"{server}/img.jpg", allow_private=True)
    assert data == IMAGE
    assert extract_features(data).sha256 == extract_features(IMAGE).sha256


def test_opt_in_by_env_var(server, monkeypatch):
    monkeypatch.setenv("HARMONY_ALLOW_PRIVATE_URLS", "1")
    assert fetch_url(f"{server}/img.jpg") == IMAGE


def test_loopback_refused_by_default(server, monkeypatch):
    monkeypatch.delenv("HARMONY_ALLOW_PRIVATE_URLS", raising=False)
    with pytest.raises(UrlRefusedError) as e:
        fetch_url(f"{server}/img.jpg")
    assert e.value.status == 400 and e.value.code == "url_refused"
    assert "127.0.0.1" in e.value.message


def test_follows_redirects(server):
    assert fetch_url(f"{server}/redirect", allow_private=True) == IMAGE
    assert fetch_url(f"{server}/redirect-abs", allow_private=True) == IMAGE


def test_redirect_to_metadata_endpoint_refused(server, loopback_is_internet):
    assert fetch_url(f"{server}/redirect", allow_private=False) == IMAGE  # the stand-in works
    with pytest.raises(UrlRefusedError, match=re.escape("169.254.169.254")):
        fetch_url(f"{server}/redirect-metadata", allow_private=False)
    with pytest.raises(UrlRefusedError, match=re.escape("10.1.2.3")):
        fetch_url(f"{server}/redirect-private", allow_private=False)
    with pytest.raises(UrlRefusedError, match="http and https"):
        fetch_url(f"{server}/redirect-file", allow_private=False)


def test_redirect_loop_stops(server):
    with pytest.raises(FetchError, match="redirects") as e:
        fetch_url(f"{server}/loop", allow_private=True, max_redirects=3)
    assert e.value.status == 502


def test_remote_404_is_404_and_500_is_502(server):
    with pytest.raises(FetchNotFoundError) as e:
        fetch_url(f"{server}/missing", allow_private=True)
    assert e.value.status == 404
    with pytest.raises(FetchError) as e2:
        fetch_url(f"{server}/error", allow_private=True)
    assert e2.value.status == 502 and "500" in e2.value.message


def test_size_cap_by_content_length_and_while_streaming(server):
    with pytest.raises(FetchTooLargeError) as e:
        fetch_url(f"{server}/big-declared", allow_private=True, max_bytes=1024 * 1024)
    assert e.value.status == 413
    t0 = time.monotonic()
    with pytest.raises(FetchTooLargeError):
        fetch_url(f"{server}/big-chunked", allow_private=True, max_bytes=256 * 1024)
    assert time.monotonic() - t0 < 5
    with pytest.raises(FetchTooLargeError):
        fetch_url(f"{server}/img.jpg", allow_private=True, max_bytes=len(IMAGE) - 1)


def test_timeout_is_504_and_bounded(server):
    t0 = time.monotonic()
    with pytest.raises(FetchTimeoutError) as e:
        fetch_url(f"{server}/slow", allow_private=True, timeout=0.5)
    assert e.value.status == 504
    assert time.monotonic() - t0 < 2.5


def test_deadline_covers_the_whole_body(server):
    """One byte every 0.3 s never trips a per-read timeout; the deadline still ends it."""
    t0 = time.monotonic()
    with pytest.raises(FetchTimeoutError, match="timed out") as e:
        fetch_url(f"{server}/drip", allow_private=True, timeout=1.0)
    assert e.value.status == 504 and e.value.code == "fetch_timeout"
    assert 0.9 < time.monotonic() - t0 < 2.0


def test_deadline_covers_slow_headers(server):
    t0 = time.monotonic()
    with pytest.raises(FetchTimeoutError):
        fetch_url(f"{server}/slow-headers", allow_private=True, timeout=1.0)
    assert time.monotonic() - t0 < 2.0


def test_deadline_covers_dns():
    def slow_resolver(host, port):
        time.sleep(3)
        return ["93.184.216.34"]

    t0 = time.monotonic()
    with pytest.raises(FetchTimeoutError, match=r"resolving slow\.example"):
        fetch_url("http://slow.example/x.jpg", resolver=slow_resolver, timeout=0.5)
    assert time.monotonic() - t0 < 1.5


def test_body_shorter_than_its_content_length_is_502(server):
    with pytest.raises(FetchError, match=f"sent 5,000 of the {len(IMAGE):,} bytes its Content-Length") as e:
        fetch_url(f"{server}/truncated", allow_private=True)
    assert e.value.status == 502 and not isinstance(e.value, FetchTimeoutError)


@pytest.mark.parametrize("path", ["/café.jpg", "/caf%C3%A9.jpg", "/café.jpg?q=ü", "/redirect-utf8", "/redirect-latin1"])
def test_non_ascii_paths_are_percent_encoded(server, path):
    assert fetch_url(f"{server}{path}", allow_private=True) == IMAGE


def test_international_host_names_go_out_as_idna(server):
    port = int(server.rsplit(":", 1)[1])
    asked = []

    def resolver(host, p):
        asked.append(host)
        return ["127.0.0.1"]

    _Handler.seen_hosts.clear()
    assert fetch_url(f"http://☃.example:{port}/img.jpg", allow_private=True, resolver=resolver) == IMAGE
    assert asked == ["xn--n3h.example"]
    assert _Handler.seen_hosts[-1] == f"xn--n3h.example:{port}"
    assert fetch_url(f"http://BÜCHER.example:{port}/img.jpg", allow_private=True, resolver=resolver) == IMAGE
    assert asked[-1] == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "url",
    [
        "http://exa%6dple.com/x.jpg",
        "http://a..b/x.jpg",
        "http://" + "a" * 64 + ".com/x.jpg",
        "http://ex*ample.com/x.jpg",
        "http://example.com/\ud800.jpg",
        "http://\ud800.com/x.jpg",
    ],
)
def test_invalid_host_names_and_text_are_400(url):
    def resolver(host, port):
        raise AssertionError(f"{host} should have been refused before resolving")

    with pytest.raises(UrlRefusedError) as e:
        fetch_url(url, timeout=2, resolver=resolver)
    assert e.value.status == 400


def test_connection_refused_is_502():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(FetchError) as e:
        fetch_url(f"http://127.0.0.1:{port}/x.jpg", allow_private=True, timeout=2)
    assert e.value.status == 502


def test_connects_to_vetted_address_without_resolving_again(server):
    """The resolver is asked once per hop and the connection goes to the address it gave —
    the name itself (which no DNS knows) is only sent as the Host header."""
    port = int(server.rsplit(":", 1)[1])
    calls = []

    def resolver(host, p):
        calls.append((host, p))
        return ["127.0.0.1"]

    _Handler.seen_hosts.clear()
    data = fetch_url(f"http://images.example.invalid:{port}/img.jpg", allow_private=True, resolver=resolver)
    assert data == IMAGE
    assert calls == [("images.example.invalid", port)]
    assert _Handler.seen_hosts[-1] == f"images.example.invalid:{port}"


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.jpg",
        "http://localhost/x.jpg",
        "http://10.0.0.1/x.jpg",
        "http://172.16.5.4/x.jpg",
        "http://192.168.1.1/x.jpg",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.64.0.1/x.jpg",
        "http://0.0.0.0/x.jpg",
        "http://[::1]/x.jpg",
        "http://[::]/x.jpg",
        "http://[::ffff:127.0.0.1]/x.jpg",
        "http://[::ffff:169.254.169.254]/x.jpg",
        "http://[::ffff:a9fe:a9fe]/x.jpg",
        "http://[64:ff9b::a9fe:a9fe]/x.jpg",
        "http://[2002:a9fe:a9fe::1]/x.jpg",
        "http://[fe80::1]/x.jpg",
        "http://[ff02::1]/x.jpg",
        "http://224.0.0.1/x.jpg",
        "http://240.0.0.1/x.jpg",
        "http://2130706433/x.jpg",
        "http://0x7f000001/x.jpg",
        "http://017700000001/x.jpg",
        "https://127.0.0.1:8443/x.jpg",
    ],
)
def test_internal_addresses_refused(url, monkeypatch):
    monkeypatch.delenv("HARMONY_ALLOW_PRIVATE_URLS", raising=False)
    with pytest.raises(UrlRefusedError) as e:
        fetch_url(url, timeout=2)
    assert e.value.status == 400


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x.jpg",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
        "example.com/x.jpg",
        "",
        "   ",
        "http://",
        "http://user:pw@example.com/x.jpg",
        "http://exa mple.com/x.jpg",
        "http://example.com:99999/x.jpg",
        "http://example.com/" + "a" * 3000,
    ],
)
def test_malformed_or_non_http_refused(url):
    with pytest.raises(UrlRefusedError) as e:
        fetch_url(url, timeout=2)
    assert e.value.status == 400


def test_any_private_answer_among_public_ones_refuses():
    """DNS answering one public and one private address: refused (the connection could land on
    either)."""
    with pytest.raises(UrlRefusedError, match=re.escape("10.0.0.5")):
        fetch_url("http://mixed.example/x.jpg", resolver=lambda h, p: ["93.184.216.34", "10.0.0.5"])


def test_unresolvable_host_is_502():
    with pytest.raises(FetchError) as e:
        fetch_url("http://no-such-host.invalid/x.jpg", timeout=3)
    assert e.value.status == 502 and not isinstance(e.value, UrlRefusedError)


def test_public_address_rule():
    for ip in ("93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert is_public_address(ip), ip
    for ip in ("127.0.0.1", "169.254.169.254", "10.0.0.1", "::1", "::ffff:10.0.0.1", "192.0.2.1", "198.18.0.1"):
        assert not is_public_address(ip), ip
