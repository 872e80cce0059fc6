"""A hostile-request corpus against `python -m vlm_app serve`: every case gets its 4xx (an OpenAI error object)
within 30 s, the server keeps serving, and its memory stays flat over 200 such requests.

Traffic goes to loopback only: URLs naming other addresses are refused by the fetch guard before any connection
(tests/test_media_guard.py proves that part in-process), and the redirect cases use a loopback server here."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from server_fixtures import API_KEY, BODY_TIMEOUT_S

CASE_DEADLINE_S = 30
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class _Redirector(http.server.BaseHTTPRequestHandler):
    """GET /to/<url> answers 302 to <url>."""

    def do_GET(self):
        self.send_response(302 if self.path.startswith("/to/") else 404)
        if self.path.startswith("/to/"):
            self.send_header("Location", self.path.removeprefix("/to/"))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def redirector():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def chat(api_server, parts=None, **fields) -> dict:
    """A valid body, with `parts` as the user's content and `fields` on top."""
    parts = parts if parts is not None else [{"type": "text", "text": "hi"}]
    return {"model": api_server.models[0], "messages": [{"role": "user", "content": parts}], "max_tokens": 2,
            **fields}


def video(url: str) -> list[dict]:
    return [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "what?"}]


def chapters(api_server, options=None, parts=None, **fields) -> dict:
    """A valid chapters body (long.mp4 in hour-long chapters), with `options` as vlm_app.chapters, `parts` as the
    user's content and `fields` on top."""
    parts = parts if parts is not None else video(f"file://{api_server.allowed / 'long.mp4'}")
    return {**chat(api_server, parts), "vlm_app": {"chapters": options if options is not None
                                                   else {"segment_seconds": 3600}}, **fields}


def chapter_cases(api_server, redirector: int) -> list[tuple[str, dict, int, str]]:
    """(name, httpx.request keywords, expected status, what the error message says)."""
    allowed = api_server.allowed
    long_video = video(f"file://{allowed / 'long.mp4'}")
    post = {"method": "POST", "url": "/chat/completions", "headers": AUTH}

    def body(value) -> dict:
        return {**post, "json": value}

    def raw(value) -> dict:  # json.dumps writes NaN and Infinity as Python's json.loads reads them
        return {**post, "content": json.dumps(value).encode(), "headers": {**AUTH, "Content-Type": "application/json"}}

    return [
        ("vlm_app not an object", body(chat(api_server, long_video, vlm_app=[1])), 400, "vlm_app must be an object"),
        ("vlm_app unknown field", body(chat(api_server, long_video, vlm_app={"chapter": {}})), 400,
         "unknown field 'chapter'; known: chapters"),
        ("chapters not an object", body(chapters(api_server, True)), 400, "vlm_app.chapters must be an object"),
        ("chapters unknown option", body(chapters(api_server, {"segments": 4})), 400,
         "unknown field 'segments'; known: segment_seconds, overlap"),
        ("segment_seconds a string", body(chapters(api_server, {"segment_seconds": "60"})), 400,
         "segment_seconds must be a number, got str"),
        ("segment_seconds a boolean", body(chapters(api_server, {"segment_seconds": True})), 400,
         "segment_seconds must be a number, got bool"),
        ("segment_seconds zero", body(chapters(api_server, {"segment_seconds": 0})), 400,
         "segment_seconds must be between 1 and 14400, got 0"),
        ("segment_seconds negative", body(chapters(api_server, {"segment_seconds": -60})), 400, "got -60"),
        ("segment_seconds over one request's cap", body(chapters(api_server, {"segment_seconds": 1e300})), 400,
         "got 1e+300"),
        ("segment_seconds NaN", raw(chapters(api_server, {"segment_seconds": float("nan")})), 400, "got nan"),
        ("segment_seconds Infinity", raw(chapters(api_server, {"segment_seconds": float("inf")})), 400, "got inf"),
        ("overlap negative", body(chapters(api_server, {"overlap": -1})), 400,
         "overlap must be between 0 and 14400, got -1"),
        ("overlap NaN", raw(chapters(api_server, {"overlap": float("nan")})), 400, "overlap must be between"),
        ("chapters without a video", body(chapters(api_server, parts=[{"type": "text", "text": "hi"}])), 400,
         "has 0 video(s) and 0 image(s)"),
        ("chapters of two videos", body(chapters(api_server, parts=long_video + long_video)), 400,
         "has 2 video(s)"),
        ("chapters with an image", body(chapters(api_server, parts=long_video + [
            {"type": "image_url", "image_url": {"url": f"file://{allowed / 'image.png'}"}}])), 400,
         "has 1 video(s) and 1 image(s)"),
        ("chapters with two user messages", body({**chapters(api_server), "messages": [
            {"role": "user", "content": "Be brief."}, {"role": "user", "content": long_video}]}), 400,
         "takes one user message"),
        ("chapters with an image in the system message", body({**chapters(api_server), "messages": [
            {"role": "system", "content": [{"type": "image_url", "image_url": {
                "url": f"file://{allowed / 'image.png'}"}}]}, {"role": "user", "content": long_video}]}), 400,
         "system message of a vlm_app.chapters request is text only"),
        ("chapters with video_start", body(chapters(api_server, mm_processor_kwargs={"video_start": 60})), 400,
         "drop video_start"),
        ("chapters with video_end", body(chapters(api_server, media_io_kwargs={"video": {"video_end": 60}})), 400,
         "drop video_end"),
        ("chapters of a data: URI", body(chapters(api_server, parts=video("data:video/mp4;base64,AAAA"))), 400,
         "not a data: URI"),
        ("chapters of a file outside the allowed folder", body(chapters(api_server, parts=video(
            "file:///etc/passwd"))), 400, "/etc/passwd"),
        ("chapters of a symlink out", body(chapters(api_server, parts=video(f"file://{allowed / 'link.mp4'}"))), 400,
         "link.mp4"),
        ("chapters at a loopback address", body(chapters(api_server, parts=video(
            f"http://127.0.0.1:{redirector}/clip.mp4"))), 400, "127.0.0.1"),
        ("chapters redirected to a private address", body(chapters(api_server, parts=video(
            f"http://localhost:{redirector}/to/http://10.1.2.3/clip.mp4"))), 400, "10.1.2.3"),
        ("chapters of a file that is not a video", body(chapters(api_server, parts=video(
            f"file://{allowed / 'notes.txt'}"))), 422, "not a readable video"),
    ]


def decoding_cases(api_server, redirector: int) -> list[tuple[str, dict, int, str]]:
    """Requests past what the model or the media pipeline takes, and strings Python decodes but no tokenizer, file
    system or URL does: (name, httpx.request keywords, expected status, what the error message says)."""
    allowed = api_server.allowed
    post = {"method": "POST", "url": "/chat/completions", "headers": AUTH}

    def raw(text: str) -> dict:  # json.dumps writes a lone surrogate as an escape (\\ud800): valid JSON
        return {**post, "content": text.encode(), "headers": {**AUTH, "Content-Type": "application/json"}}

    image = [{"type": "image_url", "image_url": {"url": f"file://{allowed / 'image.png'}"}}]
    long_text = [{"type": "text", "text": "hello world " * 2000}]  # about 16,000 tokens; SmolVLM2's context is 8192
    return [
        ("text over the model's context", {**post, "json": chat(api_server, long_text)}, 400, "-token context"),
        ("image upscaled past one image's bound", {**post, "json": {
            **chat(api_server, image), "model": api_server.models[1],
            "media_io_kwargs": {"image": {"min_pixels": 2e7, "max_pixels": 2e7}}}}, 400, "bound of one image"),
        ("lone surrogate in the text", raw(json.dumps(chat(api_server, [{"type": "text", "text": "hi \ud800"}]))), 400,
         "half of a surrogate pair"),
        ("lone surrogate in a file:// url", raw(json.dumps(chat(api_server, video(f"file://{allowed}/\udcff.mp4")))),
         400, "no such file"),
        ("NUL byte in a file:// url", {**post, "json": chat(api_server, video(f"file://{allowed}/clip.mp4%00.txt"))},
         400, "NUL byte"),
        ("non-ASCII path in an http url", {**post, "json": chat(api_server, video(
            f"http://localhost:{redirector}/cl\u00efp.mp4"))}, 400, "answered HTTP 404"),
    ]


LOOPBACK_SPELLINGS = ["127.0.0.1", "127.0.0.2", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "[::1]",
                      "[::ffff:127.0.0.1]", "0.0.0.0", "[::]", "127.000.000.001"]
PRIVATE_ADDRESSES = ["10.0.0.1", "192.168.1.1", "172.16.0.1", "169.254.169.254", "100.64.0.1", "[fd00::1]",
                     "[fe80::1]", "224.0.0.1"]


def corpus(api_server, redirector: int) -> list[tuple[str, dict, int]]:
    """(name, httpx.request keywords, expected status)."""
    allowed = api_server.allowed
    (allowed / "notes.txt").write_text("not a video")
    link = allowed / "link.mp4"
    if not link.is_symlink():
        link.symlink_to("/etc/hostname")
    post = {"method": "POST", "url": "/chat/completions", "headers": AUTH}

    def body(value) -> dict:
        return {**post, "json": value}

    def raw(content: bytes, headers: dict | None = None) -> dict:
        return {**post, "content": content, "headers": {**AUTH, "Content-Type": "application/json", **(headers or {})}}

    cases = [
        ("malformed json", raw(b'{"model": '), 400),
        ("not json at all", raw(b"\xff\xfe garbage"), 400),
        ("json array", body([1, 2]), 400),
        ("json string", body("hello"), 400),
        ("deeply nested json", raw(b"[" * 100_000 + b"]" * 100_000), 400),
        ("model missing", body({"messages": []}), 400),
        ("model not a string", body({**chat(api_server), "model": 7}), 400),
        ("unknown model", body({**chat(api_server), "model": "smolvlm2-256m"}), 404),
        ("model as a server folder", body({**chat(api_server), "model": "/tmp"}), 404),
        ("model as a traversal", body({**chat(api_server), "model": api_server.models[0] + "/.."}), 404),
        ("messages not a list", body({**chat(api_server), "messages": "hi"}), 400),
        ("messages empty", body({**chat(api_server), "messages": []}), 400),
        ("message not an object", body({**chat(api_server), "messages": ["hi"]}), 400),
        ("role unknown", body({**chat(api_server), "messages": [{"role": "wizard", "content": "hi"}]}), 400),
        ("last message not from the user", body({**chat(api_server),
                                                 "messages": [{"role": "assistant", "content": "hi"}]}), 400),
        ("content a number", body({**chat(api_server), "messages": [{"role": "user", "content": 5}]}), 400),
        ("part of unknown type", body(chat(api_server, [{"type": "audio_url", "audio_url": {"url": "x"}}])), 400),
        ("text part not a string", body(chat(api_server, [{"type": "text", "text": ["a"]}])), 400),
        ("image part without url", body(chat(api_server, [{"type": "image_url", "image_url": {}}])), 400),
        ("video url not a string", body(chat(api_server, [{"type": "video_url", "video_url": {"url": 5}}])), 400),
        ("ftp url", body(chat(api_server, video("ftp://127.0.0.1/clip.mp4"))), 400),
        ("bare server path", body(chat(api_server, video("/etc/passwd"))), 400),
        ("10,000 content parts", body(chat(api_server, [{"type": "text", "text": "a"}] * 10_000)), 400),
        ("max_tokens negative", body(chat(api_server, max_tokens=-1)), 400),
        ("max_tokens huge", body(chat(api_server, max_tokens=10**9)), 400),
        ("max_tokens a string", body(chat(api_server, max_tokens="10")), 400),
        ("temperature a string", body(chat(api_server, temperature="hot")), 400),
        ("temperature out of range", body(chat(api_server, temperature=50)), 400),
        ("top_p zero", body(chat(api_server, top_p=0)), 400),
        ("seed a float", body(chat(api_server, seed=1.5)), 400),
        ("stop of numbers", body(chat(api_server, stop=[1, 2])), 400),
        ("too many stop strings", body(chat(api_server, stop=["a"] * 10)), 400),
        ("n of 3", body(chat(api_server, n=3)), 400),
        ("stream not a boolean", body(chat(api_server, stream="yes")), 400),
        ("unknown media option", body(chat(api_server, mm_processor_kwargs={"backend": "decord"})), 400),
        ("media option a string", body(chat(api_server, mm_processor_kwargs={"fps": "fast"})), 400),
        ("media_io_kwargs not an object", body(chat(api_server, media_io_kwargs=[1])), 400),
        ("contradicting media options", body(chat(api_server, video(f"file://{allowed / 'clip.mp4'}"),
                                                  mm_processor_kwargs={"fps": 2, "num_frames": 4})), 400),
        ("30 MB body", raw(b'{"model": "' + b"x" * (30 * 2**20) + b'"}'), 413),
        ("huge data: URI", body(chat(api_server, video("data:video/mp4;base64," + "A" * (20 * 2**20)))), 413),
        ("large data: URI of garbage", body(chat(api_server, video("data:video/mp4;base64," + "A" * 2**20))), 422),
        ("data: URI inside a data: URI", body(chat(api_server, video("data:text/plain,data:video/mp4;base64,AAAA"))),
         400),
        ("data: URI with broken base64", body(chat(api_server, video("data:video/mp4;base64,@@@@"))), 400),
        ("file:// outside the allowed folder", body(chat(api_server, video("file:///etc/passwd"))), 400),
        ("file:// traversal", body(chat(api_server, video(f"file://{allowed}/../../../etc/passwd"))), 400),
        ("file:// encoded traversal", body(chat(api_server, video(f"file://{allowed}/%2e%2e/%2e%2e/etc/passwd"))),
         400),
        ("file:// symlink out", body(chat(api_server, video(f"file://{link}"))), 400),
        ("file:// missing file", body(chat(api_server, video(f"file://{allowed / 'nope.mp4'}"))), 400),
        ("file:// not a video", body(chat(api_server, video(f"file://{allowed / 'notes.txt'}"))), 422),
        ("redirect to loopback", body(chat(api_server, video(
            f"http://localhost:{redirector}/to/http://127.0.0.1:{redirector}/clip.mp4"))), 400),
        ("redirect to a private address", body(chat(api_server, video(
            f"http://localhost:{redirector}/to/http://10.1.2.3/clip.mp4"))), 400),
        ("missing API key", {"method": "POST", "url": "/chat/completions", "json": chat(api_server)}, 401),
        ("wrong API key", {**body(chat(api_server)), "headers": {"Authorization": "Bearer nope"}}, 401),
        ("API key as Basic auth", {**body(chat(api_server)), "headers": {"Authorization": f"Basic {API_KEY}"}}, 401),
        ("models without a key", {"method": "GET", "url": "/models"}, 401),
        ("GET on the chat route", {"method": "GET", "url": "/chat/completions", "headers": AUTH}, 405),
        ("unknown route", {"method": "GET", "url": "/admin", "headers": AUTH}, 404),
    ]
    cases += [(f"video_url at loopback {host}", body(chat(api_server, video(f"http://{host}:{redirector}/clip.mp4"))),
               400) for host in LOOPBACK_SPELLINGS]
    cases += [(f"video_url at private {host}", body(chat(api_server, video(f"http://{host}/clip.mp4"))), 400)
              for host in PRIVATE_ADDRESSES]
    cases += [(name, request, status) for name, request, status, _ in chapter_cases(api_server, redirector)
              + decoding_cases(api_server, redirector)]
    return cases


def send(http: httpx.Client, request: dict) -> httpx.Response:
    return http.request(**request)


def assert_refused(http: httpx.Client, name: str, request: dict, status: int) -> dict:
    started = time.monotonic()
    response = send(http, request)
    assert time.monotonic() - started < CASE_DEADLINE_S, name
    assert response.status_code == status, (name, response.status_code, response.text[:300])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], (name, error)
    return error


def still_serving(http: httpx.Client, api_server) -> None:
    response = http.post("/chat/completions", headers=AUTH, json=chat(api_server, video(
        f"file://{api_server.allowed / 'clip.mp4'}")))
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] > 0


def test_every_hostile_request_gets_its_4xx_and_the_server_keeps_serving(api_server, redirector):
    cases = corpus(api_server, redirector)
    assert len(cases) >= 40
    with httpx.Client(base_url=api_server.url, timeout=CASE_DEADLINE_S) as http:
        for name, request, status in cases:
            assert_refused(http, name, request, status)
        still_serving(http, api_server)


def test_hostile_chapter_options_get_their_own_errors(api_server, redirector):
    corpus(api_server, redirector)  # makes notes.txt and link.mp4
    with httpx.Client(base_url=api_server.url, timeout=CASE_DEADLINE_S) as http:
        for name, request, status, says in chapter_cases(api_server, redirector):
            error = assert_refused(http, name, request, status)
            assert says in error["message"], (name, error)
        response = http.post("/chat/completions", headers=AUTH, json=chapters(api_server))
    assert response.status_code == 200 and len(response.json()["vlm_app"]["chapters"]) == 4


def test_requests_no_model_or_file_system_takes_get_their_own_errors(api_server, redirector):
    with httpx.Client(base_url=api_server.url, timeout=CASE_DEADLINE_S) as http:
        for name, request, status, says in decoding_cases(api_server, redirector):
            error = assert_refused(http, name, request, status)
            assert says in error["message"], (name, error)
        still_serving(http, api_server)


def test_a_slowly_sent_body_is_cut_off(api_server):
    """Headers promise 1000 bytes, then a byte a second: 408 after the body deadline, well within 30 s."""
    port = int(api_server.url.rsplit(":", 1)[1].split("/")[0])
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=CASE_DEADLINE_S) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {API_KEY}\r\nContent-Length: 1000\r\n\r\n".encode())
        sock.settimeout(1.0)
        answer = b""
        while time.monotonic() - started < CASE_DEADLINE_S and b"\r\n\r\n" not in answer:
            try:
                sock.sendall(b" ")
                answer += sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert BODY_TIMEOUT_S <= time.monotonic() - started < CASE_DEADLINE_S


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RSS is read from /proc (Linux)")
def test_memory_stays_flat_over_200_hostile_requests(api_server, redirector):
    cheap = [(name, request, status) for name, request, status in corpus(api_server, redirector)
             if status != 413]  # the big bodies cost transfer time, not server memory
    with httpx.Client(base_url=api_server.url, timeout=CASE_DEADLINE_S) as http:
        for name, request, status in cheap:  # warm up: every code path once
            assert_refused(http, name, request, status)
        before = _rss_bytes(api_server.pid)
        for number in range(200):
            assert_refused(http, *cheap[number % len(cheap)])
        after = _rss_bytes(api_server.pid)
        still_serving(http, api_server)
    print(f"server RSS over 200 hostile requests: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB "
          f"({(after - before) / before:+.2%})")
    assert after < before * 1.05
