"""Turning a source string into a local file: paths, file:// and http(s):// URLs, data: URIs.

Downloads and data URIs go to a temporary file that is deleted when the `with` block ends. Every failure is a
`SourceError` (or `LimitError` for size) whose message says what to do.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

from vlm_app.errors import DecodeError, LimitError, SourceError
from vlm_app.media.limits import Limits

URL_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
DOWNLOAD_CHUNK_BYTES = 1 << 20


@contextmanager
def local_file(source: str | os.PathLike, limits: Limits) -> Iterator[tuple[str, str]]:
    """Yield (local path, label for messages) for `source`; temporary copies are removed afterwards."""
    text = os.fspath(source)
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
        yield _checked_local(unquote(urlparse(text).path), limits), text
    elif scheme is None:
        yield _checked_local(text, limits), text
    else:
        raise SourceError(f"unsupported URL scheme {scheme!r} in {text!r}; use a local path, file://, http(s):// "
                          "or a data: URI")


def is_local(source: str | os.PathLike) -> bool:
    """Whether `source` names a file on this machine (a path or file:// URL) rather than a download or data."""
    return _scheme(os.fspath(source)) in (None, "file")


def _scheme(text: str) -> str | None:
    match = URL_SCHEME.match(text)
    # "C:\clip.mp4" is a Windows drive, not a scheme
    return match.group(1).lower() if match and len(match.group(1)) > 1 else None


def _checked_local(path: str, limits: Limits) -> str:
    file = Path(path).expanduser()
    if not file.exists():
        raise SourceError(f"no such file: {path}; check the path")
    if file.is_dir():
        raise SourceError(f"{path} is a directory; give a video or image file")
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
    import httpx

    timeout = httpx.Timeout(limits.http_timeout_seconds)
    try:
        with httpx.Client(follow_redirects=True, max_redirects=limits.http_max_redirects, timeout=timeout) as client:
            with client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise SourceError(f"{url} answered HTTP {response.status_code}; check the URL or download the "
                                      "file yourself")
                declared = int(response.headers.get("content-length") or 0)
                if declared > limits.max_file_bytes:
                    raise _too_big(url, limits)
                _write_capped(response.iter_bytes(DOWNLOAD_CHUNK_BYTES), path, url, limits)
    except httpx.TimeoutException:
        raise SourceError(f"{url} timed out after {limits.http_timeout_seconds:g} s; try again or download it "
                          "yourself") from None
    except httpx.TooManyRedirects:
        raise SourceError(f"{url} redirected more than {limits.http_max_redirects} times; use the final URL") from None
    except httpx.HTTPError as error:
        raise SourceError(f"could not fetch {url} ({type(error).__name__}: {error}); check the URL and network") from None
    if path.stat().st_size == 0:
        raise DecodeError(f"{url} returned an empty body")


def _write_capped(chunks, path: Path, url: str, limits: Limits) -> None:
    written = 0
    with path.open("wb") as out:
        for chunk in chunks:
            written += len(chunk)
            if written > limits.max_file_bytes:
                raise _too_big(url, limits)
            out.write(chunk)


def _too_big(url: str, limits: Limits) -> LimitError:
    return LimitError(f"{url} is over the {limits.max_file_bytes} byte download limit; use a smaller file or raise "
                      "Limits.max_file_bytes")
