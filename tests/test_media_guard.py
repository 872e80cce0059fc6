"""The fetch guard (`vlm_app.media.sources.local_file` with `Limits`): addresses, redirects, DNS rebinding,
deadlines and allowed folders. Every server here listens on loopback; refusals of other addresses are checked to
happen before any connection (socket.create_connection fails the test if it is called)."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from vlm_app.errors import SourceError
from vlm_app.media.limits import DEFAULT_LIMITS, Limits
from vlm_app.media.sources import local_file

BODY = b"video bytes " * 100
REMOTE = Limits.for_remote_clients()


class _Handler(http.server.BaseHTTPRequestHandler):
    hosts: list[str] = []

    def do_GET(self):
        type(self).hosts.append(self.headers["Host"])
        if self.path == "/clip.mp4":
            self._answer(200, body=BODY)
        elif self.path.startswith("/to/"):
            self._answer(302, location=self.path.removeprefix("/to/"))
        elif self.path.startswith("/chain/"):
            left = int(self.path.removeprefix("/chain/"))
            self._answer(302, location=f"/chain/{left - 1}" if left > 1 else "/clip.mp4")
        elif self.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            for byte in BODY:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
        else:
            self._answer(404, body=b"not found")

    def _answer(self, status, body=b"", location=None):
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

    def handle(self):
        try:
            super().handle()
        except OSError:  # the client gave up on a drip: that is the point
            pass


class _Server6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _serve(server_class, host):
    server = server_class((host, 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server():
    server = _serve(http.server.ThreadingHTTPServer, "127.0.0.1")
    yield f"http://127.0.0.1:{server.server_address[1]}", server.server_address[1]
    server.shutdown()


@pytest.fixture
def no_connections(monkeypatch):
    """Any connection attempt fails the test: the refusal must come first."""
    def refuse(*args, **kwargs):
        pytest.fail(f"a connection was attempted: {args}")
    monkeypatch.setattr(socket, "create_connection", refuse)


def _fetch(url, limits) -> bytes:
    with local_file(url, limits) as (path, _):
        return Path(path).read_bytes()


def _silent_server(handle):
    """A raw TCP server on loopback that runs `handle(connection)` per client (stalls, half-answers)."""
    listener = socket.create_server(("127.0.0.1", 0))
    connections = []

    def accept():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connections.append(connection)
            threading.Thread(target=handle, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener, connections


@pytest.fixture
def stalled():
    """Accepts, reads the request and never answers."""
    listener, connections = _silent_server(lambda connection: connection.recv(65536))
    yield listener.getsockname()[1]
    listener.close()
    for connection in connections:
        connection.close()


LOOPBACK_SPELLINGS = ["127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f000001", "0x7f.1", "0177.0.0.1",
                      "017700000001", "127.255.255.254", "localhost", "LOCALHOST", "localhost.", "[::1]",
                      "[0:0:0:0:0:0:0:1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[64:ff9b::7f00:1]",
                      "[2002:7f00:1::]", "0.0.0.0", "0", "[::]"]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_every_loopback_spelling_is_refused_before_connecting(no_connections, host):
    with pytest.raises(SourceError, match=r"a (loopback|unspecified) address.*--allow-host"):
        _fetch(f"http://{host}:8080/clip.mp4", REMOTE)


@pytest.mark.parametrize("host, reason", [
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"), ("100.64.0.1", "shared"), ("224.0.0.1", "multicast"),
    ("240.0.0.1", "private|reserved"), ("255.255.255.255", "private|reserved"), ("198.18.0.1", "private"),
    ("[fd00::1]", "private"), ("[fe80::1]", "link-local"), ("[ff02::1]", "multicast"),
    ("[::ffff:10.0.0.1]", "private"), ("[::ffff:169.254.169.254]", "link-local"), ("[64:ff9b::a00:1]", "private"),
    ("[2002:c0a8:101::]", "private"), ("[100::1]", "reserved|private|non-global"),
])
def test_private_ranges_are_refused_before_connecting(no_connections, host, reason):
    with pytest.raises(SourceError, match=f"a ({reason})"):
        _fetch(f"https://{host}/video.mp4", REMOTE)


def test_a_name_resolving_to_a_private_address_is_refused_before_connecting(no_connections, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda host, port, *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port))])
    with pytest.raises(SourceError, match=r"10.0.0.1 is a private address \(what internal.example "
                                          r"resolves to\).*--allow-host internal.example"):
        _fetch("http://internal.example/clip.mp4", REMOTE)


def test_the_cli_defaults_still_fetch_from_loopback(server):
    url, _ = server
    assert _fetch(f"{url}/clip.mp4", DEFAULT_LIMITS) == BODY


def test_an_allowed_host_is_fetched_and_its_redirect_to_loopback_is_refused(server):
    url, port = server
    limits = Limits.for_remote_clients(allowed_hosts=["127.0.0.1"])
    assert _fetch(f"{url}/clip.mp4", limits) == BODY
    with pytest.raises(SourceError, match=r"127.0.0.1 is a loopback address \(what localhost resolves to\)"):
        _fetch(f"{url}/to/http://localhost:{port}/clip.mp4", limits)
    with pytest.raises(SourceError, match="a loopback address"):
        _fetch(f"{url}/to/http://2130706433:{port}/clip.mp4", limits)


@pytest.mark.parametrize("location", ["file:///etc/passwd", "data:video/mp4;base64,AAAA", "ftp://example.com/x"])
def test_redirects_leave_http_only(server, location):
    url, _ = server
    with pytest.raises(SourceError, match="only http"):
        _fetch(f"{url}/to/{location}", DEFAULT_LIMITS)


def test_redirect_hops_are_counted(server):
    url, _ = server
    assert _fetch(f"{url}/chain/3", DEFAULT_LIMITS.with_overrides(http_max_redirects=4)) == BODY
    with pytest.raises(SourceError, match="redirected more than 3 times"):
        _fetch(f"{url}/chain/4", DEFAULT_LIMITS.with_overrides(http_max_redirects=3))


def test_the_connection_goes_to_the_vetted_address(server, monkeypatch):
    """DNS rebinding: the name answers 127.0.0.1 for the check and 10.0.0.1 afterwards; only the first answer
    is ever used, and the request still names the host."""
    _, port = server
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.create_connection
    lookups, connects = [], []

    def rebinding(host, *args, **kwargs):
        if host != "rebind.example":
            return real_getaddrinfo(host, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "10.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    def connect(address, *args, **kwargs):
        connects.append(address)
        if address[0] != "127.0.0.1":
            pytest.fail(f"connected to {address}")
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(socket, "create_connection", connect)
    _Handler.hosts.clear()
    limits = Limits.for_remote_clients(allowed_hosts=["rebind.example"])
    assert _fetch(f"http://rebind.example:{port}/clip.mp4", limits) == BODY
    assert lookups == ["rebind.example"] and connects == [("127.0.0.1", port)]
    assert _Handler.hosts == [f"rebind.example:{port}"]


def test_ipv6_loopback_server_is_fetched_when_allowed():
    server = _serve(_Server6, "::1")
    try:
        port = server.server_address[1]
        _Handler.hosts.clear()
        assert _fetch(f"http://[::1]:{port}/clip.mp4", Limits.for_remote_clients(allowed_hosts=["[::1]"])) == BODY
        assert _Handler.hosts == [f"[::1]:{port}"]
        with pytest.raises(SourceError, match="a loopback address"):
            _fetch(f"http://[::1]:{port}/clip.mp4", REMOTE)
    finally:
        server.shutdown()


def test_a_stall_fails_within_the_default_deadline(stalled):
    started = time.monotonic()
    with pytest.raises(SourceError, match="no answer within 10 s .*http_connect_seconds"):
        _fetch(f"http://127.0.0.1:{stalled}/clip.mp4", DEFAULT_LIMITS)
    assert 9 < time.monotonic() - started < 15


def test_a_stalled_tls_handshake_is_a_connect_timeout(stalled):
    limits = DEFAULT_LIMITS.with_overrides(http_connect_seconds=0.5)
    with pytest.raises(SourceError, match="timed out connecting to 127.0.0.1:.* after 0.5 s"):
        _fetch(f"https://127.0.0.1:{stalled}/clip.mp4", limits)


def test_slow_headers_end_at_the_first_byte_deadline():
    def half_answer(connection):
        connection.recv(65536)
        try:
            connection.sendall(b"HTTP/1.1 200 OK\r\n")
            for _ in range(100):
                connection.sendall(b"X-Pad: 1\r\n")
                time.sleep(0.05)
        except OSError:  # the client gave up: that is the point
            pass

    listener, connections = _silent_server(half_answer)
    try:
        started = time.monotonic()
        with pytest.raises(SourceError, match="no answer within 0.5 s"):
            _fetch(f"http://127.0.0.1:{listener.getsockname()[1]}/", DEFAULT_LIMITS.with_overrides(
                http_connect_seconds=0.5))
        assert time.monotonic() - started < 2
    finally:
        listener.close()


def test_a_slow_drip_ends_at_the_total_deadline(server):
    url, _ = server
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"took over 1 s \(Limits.http_total_seconds\)"):
        _fetch(f"{url}/drip", DEFAULT_LIMITS.with_overrides(http_total_seconds=1.0))
    assert time.monotonic() - started < 3


def test_unsupported_schemes_are_refused(no_connections):
    for url in ("ftp://example.com/clip.mp4", "gopher://127.0.0.1/", "javascript:alert(1)"):
        with pytest.raises(SourceError, match="unsupported URL scheme"):
            _fetch(url, REMOTE)


def test_local_files_only_under_allowed_folders(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "clip.mp4").write_bytes(BODY)
    (outside / "secret.mp4").write_bytes(b"secret")
    (allowed / "link.mp4").symlink_to(outside / "secret.mp4")
    (allowed / "linked_dir").symlink_to(outside)
    limits = Limits.for_remote_clients(allowed_dirs=[allowed])
    assert _fetch(str(allowed / "clip.mp4"), limits) == BODY
    assert _fetch((allowed / "clip.mp4").as_uri(), limits) == BODY
    for source in (outside / "secret.mp4", allowed / "link.mp4", allowed / "linked_dir" / "secret.mp4",
                   f"{allowed}/../outside/secret.mp4", (outside / "secret.mp4").as_uri(),
                   f"file://{allowed}/%2e%2e/outside/secret.mp4", "/etc/passwd", "~/.bashrc"):
        with pytest.raises(SourceError, match="outside the folders this app may read.*--allow-dir"):
            _fetch(str(source), limits)
    with pytest.raises(SourceError, match="outside the folders"):
        _fetch(str(allowed / "clip.mp4"), REMOTE)  # no folder at all by default
    assert _fetch(str(outside / "secret.mp4"), DEFAULT_LIMITS) == b"secret"  # the CLI reads any path
