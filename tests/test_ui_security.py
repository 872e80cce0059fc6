"""The web app against hostile clients, through its real HTTP routes (the `python -m vlm_app ui` server on
loopback): session ids that try to be paths, models not on offer, URLs at loopback, logins, and exposed binds.

Events are called the way a browser calls them (POST queue/join, then read queue/data), private ones included,
since nothing stops a hostile client from doing the same."""

from __future__ import annotations

import base64
import http.client
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import gradio as gr
import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from ui_fixtures import SERVER_START_TIMEOUT_S, _free_port
from vlm_app.cli import main
from vlm_app.errors import NotOfferedError
from vlm_app.security import is_loopback_host, offered_model


def call_event(url: str, api_name: str, data: list, session: str) -> dict:
    """Run one event as `session`; the queue's final message ({"success": ..., "output": ...})."""
    config = json.load(urllib.request.urlopen(url + "config", timeout=30))
    event = next(event for event in config["dependencies"] if event["api_name"] == api_name)
    body = {"data": data, "fn_index": event["id"], "trigger_id": event["targets"][0][0], "session_hash": session,
            "event_data": None}
    join = urllib.request.Request(url + "gradio_api/queue/join", data=json.dumps(body).encode(),
                                  headers={"Content-Type": "application/json"})
    urllib.request.urlopen(join, timeout=30).read()
    with urllib.request.urlopen(url + "gradio_api/queue/data?" + urlencode({"session_hash": session}),
                                timeout=120) as stream:
        for line in stream:
            if line.startswith(b"data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the event never completed")


@contextmanager
def sent_as_is(url: str, method: str, path: str, headers: dict[str, str] | None = None):
    """One request whose path goes exactly as given (what `curl --path-as-is` sends), with no body: its response,
    until the connection closes."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        yield connection.getresponse()
    finally:
        connection.close()


def heartbeat(url: str, raw_session: str) -> int:
    """Open and close `/gradio_api/heartbeat/<raw_session>`; closing it is what makes Gradio run the unload
    handler."""
    with sent_as_is(url, "GET", f"/gradio_api/heartbeat/{raw_session}") as response:
        if response.status == 200:
            response.fp.readline()  # "data: ALIVE": the session is open
        return response.status


def answers(url: str) -> int | None:
    """The HTTP status of GET `url`config, or None while nothing listens."""
    try:
        with urllib.request.urlopen(url + "config", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def wait_for(condition, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def png_data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def history_paths(message: dict) -> list[str]:
    """The file paths in the chatbot value that add_turn returned."""
    history = message["output"]["data"][2]
    return [part["file"]["path"] for turn in history if turn["role"] == "user" and isinstance(turn["content"], list)
            for part in turn["content"] if part.get("type") == "file"]


def last_notice(message: dict) -> str:
    """The text of the error notice that add_turn put last in the chatbot."""
    turn = message["output"]["data"][2][-1]
    assert turn["role"] == "assistant" and turn["metadata"]["title"] == "Error", turn
    return " ".join(part["text"] for part in turn["content"])


def scratch_folder(ui_server) -> Path:
    folders = list(ui_server.scratch_parent.glob("vlm_app_ui_*"))
    assert len(folders) == 1, folders
    return folders[0]


HOSTILE_IDS = ["..", ".", "../escaped", "a/b", "x" * 1000, "été-ünï", "..\\..", "%2e%2e"]


def test_session_ids_never_become_paths(ui_server):
    """Each hostile id gets a scratch folder that the server named, inside its scratch root; closing its
    heartbeat removes that folder and nothing else. On 50890a8, `..` deleted the scratch root's parent."""
    absolute = str(ui_server.scratch_parent / "escaped_abs")
    root = scratch_folder(ui_server)
    folders = {}
    for session in [*HOSTILE_IDS, absolute]:
        message = call_event(ui_server.url, "add_turn", [{"text": "hi", "files": []}, png_data_uri(), []], session)
        assert message["success"], message
        # the chatbot's copy of the file lives in Gradio's cache; the fetched original names the session folder
        fetched = [path for path in root.rglob("*_download.png")]
        new = [path for path in fetched if path.parent not in folders.values()]
        assert len(new) == 1 and history_paths(message), (session, fetched)
        folder = new[0].parent
        assert folder.parent == root and len(folder.name) == 32 and folder.name.isalnum(), folder
        folders[session] = folder
    assert sorted(path.name for path in ui_server.scratch_parent.iterdir()) == ["canary.txt", root.name]

    # through the route, as sent by `curl --path-as-is`: only ids without a slash reach the unload handler
    for session in ["..", ".", "x" * 1000, "été-ünï", "..\\..", "%2e%2e"]:
        heartbeat(ui_server.url, quote(session, safe="."))
        assert wait_for(lambda: not folders[session].exists()), f"unload never ran for {session!r}"
    for raw in ["../escaped", "a%2Fb", quote(absolute, safe=""), "..%2F..", "%2e%2e%2f"]:
        heartbeat(ui_server.url, raw)
    time.sleep(1)
    assert (ui_server.scratch_parent / "canary.txt").exists() and root.is_dir()
    assert folders["a/b"].exists() and folders[absolute].exists()  # their sessions never closed
    assert sorted(path.name for path in ui_server.scratch_parent.iterdir()) == ["canary.txt", root.name]


class _Clip(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"\0\0\0\0")

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback_clip():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Clip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Clip.requests.clear()
    yield server.server_address[1]
    server.shutdown()


def test_pasted_urls_at_loopback_are_refused_before_any_request(ui_server, loopback_clip):
    """On 50890a8 the server fetched these."""
    for url, reason in [(f"http://127.0.0.1:{loopback_clip}/clip.mp4", "127.0.0.1 is a loopback"),
                        (f"http://2130706433:{loopback_clip}/clip.mp4", "a loopback"),
                        (f"http://[::ffff:127.0.0.1]:{loopback_clip}/clip.mp4", "a loopback"),
                        ("http://169.254.169.254/latest/meta-data/", "a link-local"),
                        ("file:///etc/passwd", "outside the folders this app may read"),
                        ("ftp://example.com/clip.mp4", "unsupported URL scheme")]:
        message = call_event(ui_server.url, "add_turn", [{"text": "hi", "files": []}, url, []], "guard")
        assert reason in last_notice(message), url
    message = call_event(ui_server.url, "add_turn", [{"text": "", "files": []},
                                                     f"http://127.0.0.1:{loopback_clip}/a.mp4", []], "guard")
    assert "--allow-host 127.0.0.1" in last_notice(message)
    assert _Clip.requests == []


@pytest.fixture(scope="module")
def model_not_on_offer(tiny_checkpoints, tmp_path_factory) -> str:
    """A working checkpoint folder that the server was not started with."""
    copy = tmp_path_factory.mktemp("not_offered") / "smolvlm2_copy"
    shutil.copytree(tiny_checkpoints["smolvlm2"], copy)
    return str(copy)


def test_compare_loads_only_models_on_offer(ui_client, ui_server, ui_clip, model_not_on_offer):
    """On 50890a8 `/compare` loaded any folder or hub id it was given."""
    message = {"text": "What happens?", "files": [handle_file(str(ui_clip))]}
    for intruder in (model_not_on_offer, "HuggingFaceTB/SmolVLM2-256M-Video-Instruct", "/etc"):
        with pytest.raises(Exception, match="is not on offer here; choose one of"):
            ui_client.predict(message, [ui_server.models[0], intruder], {"max_new_tokens": 2}, api_name="/compare")


def test_chat_and_load_refuse_models_not_on_offer(ui_client, ui_server, ui_clip, model_not_on_offer):
    message = {"text": "Hi", "files": [handle_file(str(ui_clip))]}
    with pytest.raises(Exception):
        ui_client.predict(message, [], model_not_on_offer, {"max_new_tokens": 2}, api_name="/chat")
    for event in ("load_model", "unload_model"):
        assert not call_event(ui_server.url, event, [model_not_on_offer], "loader")["success"]
    table = call_event(ui_server.url, "status", [], "loader")["output"]["data"][0]["data"]
    assert [row[0] for row in table] == [Path(model).name for model in ui_server.models]


def test_offered_model_names_the_offer():
    assert offered_model("a", ["a", "b"]) == "a"
    for name in ("c", "../a", None, ["a"]):
        with pytest.raises(NotOfferedError, match="choose one of: a, b"):
            offered_model(name, ["a", "b"])


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.5", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("::", False), ("192.168.1.20", False), ("", False)])
def test_is_loopback_host(host, loopback):
    assert is_loopback_host(host) is loopback


@pytest.fixture
def launches(monkeypatch):
    """Record `demo.launch` instead of serving."""
    calls = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **options: calls.append(options))
    return calls


def test_exposed_binds_need_auth(launches, capsys, tiny_checkpoints, tmp_path):
    """On 50890a8 these launched without a login."""
    model = str(tiny_checkpoints["smolvlm2"])
    for exposed in (["--host", "0.0.0.0"], ["--host", "192.168.1.20"], ["--share"], ["--host", "::"]):
        assert main(["ui", "--models", model, *exposed]) == 2
        error = capsys.readouterr().err
        assert "without authentication" in error and "--auth USER:PASSWORD" in error and "--insecure-no-auth" in error
    assert launches == []
    credentials = tmp_path / "logins.txt"
    credentials.write_text("ann:s3cret\nbob:pa:ss\n")
    assert main(["ui", "--models", model, "--host", "0.0.0.0", "--auth", "cy:pw", "--auth-file", str(credentials)]) == 0
    assert launches[-1]["auth"] == [("cy", "pw"), ("ann", "s3cret"), ("bob", "pa:ss")]
    assert launches[-1]["server_name"] == "0.0.0.0"
    assert main(["ui", "--models", model, "--host", "0.0.0.0", "--insecure-no-auth"]) == 0
    assert main(["ui", "--models", model]) == 0  # loopback needs nothing
    assert [call["auth"] for call in launches[1:]] == [None, None]
    for bad, message in ((["--auth", "nopassword"], "take USER:PASSWORD"), (["--auth", ":pw"], "take USER:PASSWORD"),
                         (["--auth-file", str(tmp_path / "missing")], "cannot read --auth-file")):
        assert main(["ui", "--models", model, *bad]) == 2
        assert message in capsys.readouterr().err


def test_auth_file_login_through_the_cli(tiny_checkpoints, tmp_path):
    """`ui --auth-file` on loopback: nothing works without the login, everything with it."""
    credentials = tmp_path / "logins.txt"
    credentials.write_text("ann:s3cret\n")
    port = _free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, "-m", "vlm_app", "ui", "--models",
                                    str(tiny_checkpoints["smolvlm2"]), "--port", str(port), "--auth-file",
                                    str(credentials), "--device", "cpu"], stdout=output, stderr=subprocess.STDOUT,
                                   env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        assert wait_for(lambda: answers(url) or process.poll() is not None, SERVER_START_TIMEOUT_S), log.read_text()
        assert answers(url) == 401, log.read_text()  # the config itself needs the login
        join = urllib.request.Request(url + "gradio_api/queue/join", data=b"{}",
                                      headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(join, timeout=10)
        with pytest.raises(Exception):
            Client(url, verbose=False)
        with pytest.raises(Exception):
            Client(url, auth=("ann", "wrong"), verbose=False)
        client = Client(url, auth=("ann", "s3cret"), verbose=False)
        assert "/chat" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        client.close()
    finally:
        process.terminate()
        process.wait(timeout=20)



def file_route(url: str, path) -> tuple[int, dict, bytes]:
    """GET `/gradio_api/file=<path>` sent as is: status, headers, body."""
    with sent_as_is(url, "GET", f"/gradio_api/file={quote(str(path), safe='/%')}") as response:
        return response.status, {key.lower(): value for key, value in response.getheaders()}, response.read()


def test_fetched_pages_are_never_served_inline(ui_server):
    """A pasted data: URL of an SVG holding a script lands in the session's scratch folder. On ab460d4 that
    folder was one of Gradio's allowed_paths, so `/gradio_api/file=` served the copy inline as image/svg+xml:
    the script ran as a page of the app for whoever opened its link. Now only the chat's copy in Gradio's cache
    is served, as an attachment."""
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.cookie)</script></svg>'
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg).decode()
    message = call_event(ui_server.url, "add_turn", [{"text": "hi", "files": []}, uri, []], "svg-page")
    [shown] = history_paths(message)
    [fetched] = scratch_folder(ui_server).rglob("*_download.svg")
    status, _, body = file_route(ui_server.url, fetched)
    assert status == 403 and b"<script>" not in body, (status, body)
    status, headers, body = file_route(ui_server.url, shown)
    assert status == 200 and body == svg
    assert headers["content-disposition"].startswith("attachment") and "svg" not in headers["content-type"]


def test_reads_outside_the_upload_folder_are_refused(ui_server):
    """`/gradio_api/file=` serves Gradio's uploads and cache, nothing else: not the scratch folder, the server's
    own files, the models, or what a symlink or `..` inside the upload folder points at."""
    uploads = ui_server.scratch_parent.parent / "gradio"
    canary = ui_server.scratch_parent / "canary.txt"
    link = uploads / "link_to_canary.mp4"
    link.unlink(missing_ok=True)
    link.symlink_to(canary)
    scratch_file = scratch_folder(ui_server) / "scratch.mp4"
    scratch_file.write_text("scratch")
    for path in ["/etc/passwd", canary, ui_server.log, Path(ui_server.models[0]) / "config.json", link,
                 f"{uploads}/../tmp/canary.txt", f"{uploads}/..%2Ftmp%2Fcanary.txt", scratch_file, "canary.txt"]:
        status, _, body = file_route(ui_server.url, path)
        assert status == 403 and body.startswith(b'{"detail":"File not allowed'), (path, status, body[:200])


def gradio_get_routes(models: list[str]) -> list[str]:
    """Every GET route of the app, from its OpenAPI schema (the same Gradio, the same app, not served)."""
    from gradio.routes import App

    from vlm_app.ui.app import create_app

    demo, backend = create_app(models, device="cpu")
    try:
        paths = App.create_app(demo).openapi()["paths"]
    finally:
        backend.close()
    return sorted(path for path, operations in paths.items() if "get" in operations)


def file_tree(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(path): (path.lstat().st_size, path.lstat().st_mtime_ns) for root in roots
            for path in [root, *root.rglob("*")] if path.exists() or path.is_symlink()}


def test_get_requests_change_nothing(ui_server):
    """GET every route with hostile path values (`..`, encoded slashes, server paths, 3000-character names) and a
    live session's id in the query: nothing under the upload folder, the scratch folder or the votes log is
    written or deleted, and no response carries a traceback. On 50890a8 one GET (a heartbeat as `..`) deleted
    the temp folder; on ab460d4 `/gradio_api/deep_link?session_hash=<any live session>` wrote that session's
    state into the upload folder, under a link that loads it for anyone."""
    roots = [ui_server.scratch_parent.parent / "gradio", ui_server.scratch_parent]
    live = "get-sweep"
    assert call_event(ui_server.url, "add_turn", [{"text": "a conversation", "files": []}, "", []], live)["success"]
    ui_server.votes.touch()
    before = file_tree(*roots, ui_server.votes)
    values = ["..", "%2e%2e", "..%2F..%2Fetc%2Fpasswd", str(ui_server.scratch_parent), "x" * 3000]
    routes = gradio_get_routes(ui_server.models)
    assert {"/gradio_api/file={path_or_url}", "/gradio_api/heartbeat/{session_hash}", "/config"} <= set(routes)
    for route in routes:
        for value in values:
            url = ui_server.url.rstrip("/") + re.sub(r"\{[^}]+\}", value, route)
            query = {"session_hash": live, "upload_id": value}
            try:
                with httpx.stream("GET", url, params=query, timeout=3) as response:
                    body = next(response.iter_bytes(4096), b"")
            except (httpx.ReadTimeout, httpx.RemoteProtocolError):
                continue  # an event stream that stays open, or that Gradio ends without a last chunk
            assert b"Traceback" not in body, (url[:200], body[:300])
            assert response.status_code < 500, (url[:200], response.status_code)  # a 500: a name too long, say
    time.sleep(1)  # the unload handler of a closed heartbeat runs in the background
    assert file_tree(*roots, ui_server.votes) == before


def upload(url: str, path: Path) -> dict:
    """`path` through Gradio's upload route, as the file value a browser then sends."""
    response = httpx.post(url + "gradio_api/upload", files={"files": (path.name, path.read_bytes(), "video/mp4")},
                          timeout=30)
    response.raise_for_status()
    [stored] = response.json()
    return {"path": stored, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


COMPARE_SETTINGS = [None, None, None, None, None, 2, 0.0, 1.0, 0, "", "auto"]  # SETTING_NAMES order; 2 new tokens


def test_only_finished_blind_comparisons_take_a_vote(ui_server, ui_clip, ui_long_clip):
    """On ab460d4 a comparison could be voted on as soon as it started: with the names shown (not blind),
    before any answer arrived, or after every model had failed, each logged as a blind vote."""
    def compare(session, clip, blind):
        message = {"text": "What happens?", "files": [upload(ui_server.url, clip)]}
        # "run_1": compare.run (chapters.run, registered first, is "run"); a video over the limit fails it
        call_event(ui_server.url, "run_1", [message, ui_server.models, blind, *COMPARE_SETTINGS], session)
        return call_event(ui_server.url, "vote", ["A", None], session)

    ui_server.votes.touch()
    logged = ui_server.votes.read_text()
    for session, clip, blind in [("named", ui_clip, False), ("failed", ui_long_clip, True)]:
        vote = compare(session, clip, blind)
        assert not vote["success"] and "blind comparison in which every model answered" in vote["output"]["error"]
    assert ui_server.votes.read_text() == logged

    vote = compare("blind", ui_clip, True)
    assert vote["success"] and "Vote recorded" in vote["output"]["data"][-1]
    [record] = [json.loads(line) for line in ui_server.votes.read_text()[len(logged):].splitlines()]
    assert record["choice"] == "A" and record["winner"] == record["models"][0]
    assert sorted(record["models"]) == sorted(ui_server.models)
    for choice in ("A", "C", "Model A"):  # a second vote, a letter not on offer, a name
        assert not call_event(ui_server.url, "vote", [choice, None], "blind")["success"]
    assert len(ui_server.votes.read_text().splitlines()) == len(logged.splitlines()) + 1
    assert file_route(ui_server.url, ui_server.votes)[0] == 403


def upload_headers(url: str, headers: dict[str, str]) -> int:
    """POST /gradio_api/upload with these headers and no body: the status the app answers with."""
    with sent_as_is(url, "POST", "/gradio_api/upload", headers) as response:
        response.read()
        return response.status


def test_one_upload_request_carries_a_bounded_number_of_bytes(ui_server, ui_client, ui_clip):
    """Gradio caps each file, not how many one request holds: a request over 8 files' worth is refused from its
    Content-Length, before its body is read (nothing lands in the upload folder), and one must state it."""
    from ui_fixtures import UI_MAX_UPLOAD_MB

    uploads = ui_server.scratch_parent.parent / "gradio"
    before = sorted(uploads.rglob("*"))
    form = {"Content-Type": "multipart/form-data; boundary=x"}
    over = str(int((UI_MAX_UPLOAD_MB * 8 + 2) * 2**20))
    assert upload_headers(ui_server.url, {**form, "Content-Length": over}) == 413
    assert upload_headers(ui_server.url, {**form, "Transfer-Encoding": "chunked"}) == 411
    assert sorted(uploads.rglob("*")) == before
    message = {"text": "Describe.", "files": [handle_file(str(ui_clip))]}  # an ordinary upload still goes through
    answer, details = ui_client.predict(message, [], ui_server.models[0], {"max_new_tokens": 2}, api_name="/chat")
    assert "error" not in details and details["stats"]["frames"] > 0
