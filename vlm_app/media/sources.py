"""Turning a source string into a local file: paths, file:// and http(s):// URLs, data: URIs. This is the one
fetch guard every front door (CLI, web app, API server) goes through, configured by `Limits`.

Downloads and data URIs go to a temporary file that is deleted when the `with` block ends. Every failure is a
`SourceError` (or `LimitError` for size) whose message says what to do.

A download resolves each host once, refuses addresses that are not globally routable when the limits say so
(unless the host is allowed), then connects to exactly the address it checked, so a second DNS answer cannot
redirect it (TLS and the Host header still use the name). Redirects are followed by hand, each hop checked again.
Two deadlines bound every download: connect + first byte per request, and the whole transfer.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote, urljoin, urlparse, urlsplit

import httpcore

from vlm_app.errors import DecodeError, LimitError, SourceError
from vlm_app.media.limits import Limits

URL_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
REDIRECTS = (301, 302, 303, 307, 308)
URL_SAFE = "!#$%&'()*+,/:;=?@[]~"  # RFC 3986's reserved and sub-delimiter characters, and "%" of an escape
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# legacy IPv4 spellings (2130706433, 0x7f.1, 0177.0.0.1, 127.1) that the C resolver accepts
IPV4_LEGACY = re.compile(r"^[0-9a-fx.]+$", re.IGNORECASE)


@contextmanager
def local_file(source: str | os.PathLike, limits: Limits) -> Iterator[tuple[str, str]]:
    """Yield (local path, label for messages) for `source`; temporary copies are removed afterwards."""
    if not isinstance(source, (str, os.PathLike)) or isinstance(os.fspath(source), bytes):
        raise SourceError(f"cannot read a video from a value of type {type(source).__name__}; give a path or URL "
                          "as a string (or a list of frames)")
    text = os.fspath(source)
    if not text.strip():
        raise SourceError("the video source is empty; give a file path or URL")
    scheme = _scheme(text)
    if scheme in ("http", "https"):
        with _temporary_file() as path:
            _download(text, path, limits)
            yield str(path), text
    elif scheme == "data":
        with _temporary_file() as path:
            path.write_bytes(_data_uri_bytes(text, limits))
            yield str(path), "data: URI"
    elif scheme == "file":
        yield _checked_local(_file_url_path(text), limits), text
    elif scheme is None:
        yield _checked_local(text, limits), text
    else:
        raise SourceError(f"unsupported URL scheme {scheme!r} in {text!r}; use a local path, file://, http(s):// "
                          "or a data: URI")


def _file_url_path(url: str) -> str:
    parts = urlparse(url)
    if parts.netloc not in ("", "localhost") or not parts.path:  # file://clip.mp4 names a host "clip.mp4"
        raise SourceError(f"{url!r} is not a file:// URL of a path; write it with three slashes and the absolute "
                          "path, file:///home/me/clip.mp4")
    return unquote(parts.path)


def is_local(source: str | os.PathLike) -> bool:
    """Whether `source` names a file on this machine (a path or file:// URL) rather than a download or data."""
    return _scheme(os.fspath(source)) in (None, "file")


def _scheme(text: str) -> str | None:
    match = URL_SCHEME.match(text)
    # "C:\clip.mp4" is a Windows drive, not a scheme
    return match.group(1).lower() if match and len(match.group(1)) > 1 else None


def allowed_path(path: str, limits: Limits) -> Path:
    """`path` (its real path, symlinks resolved, when `limits.allowed_dirs` is set) if the limits let it be read;
    SourceError otherwise."""
    file = Path(path).expanduser()
    if limits.allowed_dirs is None:
        return file
    file = file.resolve()  # a symlink inside an allowed folder may point anywhere
    if not any(file.is_relative_to(Path(folder).expanduser().resolve()) for folder in limits.allowed_dirs):
        raise SourceError(f"{path} is outside the folders this app may read; upload the file instead, or start "
                          "the app with --allow-dir pointing at its folder")
    return file


def _checked_local(path: str, limits: Limits) -> str:
    if "\0" in path:  # file://clip.mp4%00.txt: no file name holds one, and the OS calls raise on it
        raise SourceError(f"{path!r} holds a NUL byte, which no file name has; check the path")
    file = allowed_path(path, limits)
    if not file.exists():
        raise SourceError(f"no such file: {path}; check the path")
    if file.is_dir():
        raise SourceError(f"{path} is a directory; give a video or image file")
    if not file.is_file():  # a pipe or a device would block a reader, or never end
        raise SourceError(f"{path} is not a regular file (a pipe, socket or device); save the video to a file first")
    size = file.stat().st_size
    if size == 0:
        raise DecodeError(f"{path} is empty (0 bytes); re-export or re-download it")
    if size > limits.max_file_bytes:
        raise LimitError(f"{path} is {size} bytes, over the {limits.max_file_bytes} byte limit; use a smaller file "
                         "or raise Limits.max_file_bytes")
    return str(file)


@contextmanager
def _temporary_file() -> Iterator[Path]:
    handle, name = tempfile.mkstemp(prefix="vlm_app_")
    os.close(handle)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _data_uri_bytes(uri: str, limits: Limits) -> bytes:
    header, _, payload = uri.partition(",")
    if not header.endswith(";base64"):
        raise SourceError("only base64 data: URIs are supported (data:video/mp4;base64,...)")
    if len(payload) * 3 // 4 > limits.max_file_bytes:
        raise LimitError(f"the data: URI holds over {limits.max_file_bytes} bytes; use a file or raise "
                         "Limits.max_file_bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise SourceError("the data: URI is not valid base64") from None
    if not data:
        raise DecodeError("the data: URI is empty")
    return data


def _download(url: str, path: Path, limits: Limits) -> None:
    deadline = _Deadline(limits)
    hop = url
    for _ in range(limits.http_max_redirects + 1):
        location = _get(_vet(hop, limits), path, limits, deadline)
        if location is None:
            if path.stat().st_size == 0:
                raise DecodeError(f"{hop} returned an empty body")
            return
        hop = urljoin(hop, location)
    raise SourceError(f"{url} redirected more than {limits.http_max_redirects} times; use the final URL")


@dataclass(frozen=True)
class _Target:
    """One request's URL, split, with the addresses it may connect to."""

    url: str
    scheme: str
    host: str
    port: int
    netloc: str        # the Host header: the name, with the port when the URL gives one
    path: str          # path and query
    addresses: tuple[str, ...]


def _vet(url: str, limits: Limits) -> _Target:
    """Split, resolve and check one hop's URL; SourceError when it may not be fetched."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise SourceError(f"{url}: only http(s) URLs are fetched (a redirect to {scheme or 'no scheme'}: is refused)")
    try:
        host = (parts.hostname or "").rstrip(".").encode("idna").decode("ascii")
        port = parts.port or (443 if scheme == "https" else 80)
    except (UnicodeError, ValueError):
        raise SourceError(f"{url} has an invalid host or port; check the URL") from None
    if not host:
        raise SourceError(f"{url} names no host; check the URL")
    addresses = _resolve(host, port, url)
    if not limits.allow_private_addresses and host not in limits.allowed_hosts:
        for address in addresses:
            reason = _refusal(address)
            if reason:
                named = "" if address == host else f" (what {host} resolves to)"
                raise SourceError(f"refused to fetch {url}: {address} is a {reason} address{named}, which clients "
                                  f"of this app may not reach; if {host} is meant to be reachable, start the app "
                                  f"with --allow-host {host}")
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    # non-ASCII in the path or query goes percent-encoded (as browsers send it); what is already encoded stays
    target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=URL_SAFE,
                   errors="surrogateescape")
    return _Target(url, scheme, host, port, netloc, target, addresses)


def _resolve(host: str, port: int, url: str) -> tuple[str, ...]:
    """The host's addresses; IP literals in any spelling are decoded here, without a DNS query."""
    try:
        return (str(ipaddress.ip_address(host)),)
    except ValueError:
        pass
    if IPV4_LEGACY.match(host):
        try:
            return (str(ipaddress.IPv4Address(socket.inet_aton(host))),)
        except OSError:
            pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise SourceError(f"cannot resolve the host of {url} ({error}); check the URL and network") from None
    return tuple(dict.fromkeys(info[4][0] for info in infos))


def _refusal(address: str) -> str | None:
    """Why a remote client's fetch may not reach `address` (loopback, private, ...), or None when it is global."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6:  # these reach an IPv4 address: judge that one
        if ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        elif ip in NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour:
            ip = ip.sixtofour
    for reason, refused in (("loopback", ip.is_loopback), ("unspecified", ip.is_unspecified),
                            ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                            ("shared (CGNAT)", ip in CGNAT), ("private", ip.is_private), ("reserved", ip.is_reserved)):
        if refused:
            return reason
    return None if ip.is_global else "non-global"


class _Deadline:
    """When the current wait must end: the answer's first byte by `first_byte_at` (per request), everything by
    `total_at`."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.total_at = time.monotonic() + limits.http_total_seconds
        self.first_byte_at: float | None = None

    def start_request(self) -> None:
        self.first_byte_at = time.monotonic() + self.limits.http_connect_seconds

    def answered(self) -> None:
        self.first_byte_at = None

    def timeout(self, error: type[Exception]) -> float:
        """Seconds left for the next network operation; raises `error` when none are."""
        ends = self.total_at if self.first_byte_at is None else min(self.first_byte_at, self.total_at)
        left = ends - time.monotonic()
        if left <= 0:
            raise error("deadline passed")
        return left

    def message(self, target: _Target, error: Exception) -> str:
        if time.monotonic() >= self.total_at:
            return (f"downloading {target.url} took over {self.limits.http_total_seconds:g} s "
                    "(Limits.http_total_seconds); download the file yourself or raise the limit")
        if isinstance(error, httpcore.ConnectTimeout):
            return (f"timed out connecting to {target.host}:{target.port} after {self.limits.http_connect_seconds:g} s "
                    "(Limits.http_connect_seconds); check the URL or try again")
        return (f"{target.url} sent no answer within {self.limits.http_connect_seconds:g} s of the request "
                "(Limits.http_connect_seconds); try again or download it yourself")


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and handshake ends by the deadline, whatever httpcore asks for."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline):
        self.stream, self.deadline = stream, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.stream.read(max_bytes, self.deadline.timeout(httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.stream.write(buffer, self.deadline.timeout(httpcore.WriteTimeout))

    def close(self) -> None:
        self.stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        stream = self.stream.start_tls(ssl_context, server_hostname, self.deadline.timeout(httpcore.ConnectTimeout))
        return _DeadlineStream(stream, self.deadline)

    def get_extra_info(self, info: str):
        return self.stream.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Dials the vetted addresses whatever host httpcore names: the connection goes where the check looked."""

    def __init__(self, addresses: tuple[str, ...], deadline: _Deadline):
        self.addresses, self.deadline = addresses, deadline

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        failure = None
        for address in self.addresses:
            try:
                stream = httpcore.SyncBackend().connect_tcp(address, port, self.deadline.timeout(httpcore.ConnectTimeout),
                                                            socket_options=socket_options)
                return _DeadlineStream(stream, self.deadline)
            except httpcore.ConnectError as error:
                failure = error
        raise failure

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _get(target: _Target, path: Path, limits: Limits, deadline: _Deadline) -> str | None:
    """GET one hop into `path`; the redirect's Location, or None once the body is written."""
    url = httpcore.URL(scheme=target.scheme, host=target.host, port=target.port, target=target.path)
    headers = [(b"Host", target.netloc.encode("ascii")), (b"Accept-Encoding", b"identity")]
    deadline.start_request()
    try:
        with httpcore.ConnectionPool(network_backend=_PinnedBackend(target.addresses, deadline)) as pool:
            with pool.stream("GET", url, headers=headers) as response:
                deadline.answered()
                fields = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in response.headers}
                if response.status in REDIRECTS and "location" in fields:
                    return fields["location"]
                if response.status >= 300:
                    raise SourceError(f"{target.url} answered HTTP {response.status}; check the URL or download "
                                      "the file yourself")
                if int(fields.get("content-length") or 0) > limits.max_file_bytes:
                    raise _too_big(target.url, limits)
                _write_capped(response.iter_stream(), path, target.url, limits, deadline)
    except httpcore.TimeoutException as error:
        raise SourceError(deadline.message(target, error)) from None
    except httpcore.ConnectError as error:
        raise SourceError(f"could not connect to {target.host}:{target.port} ({error}); check the URL and "
                          "network") from None
    except (httpcore.NetworkError, httpcore.ProtocolError, ValueError) as error:
        raise SourceError(f"could not fetch {target.url} ({type(error).__name__}: {error}); check the URL and "
                          "network") from None
    return None


def _write_capped(chunks, path: Path, url: str, limits: Limits, deadline: _Deadline) -> None:
    written = 0
    with path.open("wb") as out:
        for chunk in chunks:
            deadline.timeout(httpcore.ReadTimeout)  # a slow drip ends at the total deadline, not after it
            written += len(chunk)
            if written > limits.max_file_bytes:
                raise _too_big(url, limits)
            out.write(chunk)


def _too_big(url: str, limits: Limits) -> LimitError:
    return LimitError(f"{url} is over the {limits.max_file_bytes} byte download limit; use a smaller file or raise "
                      "Limits.max_file_bytes")
