"""UI-area fixtures: the web app started the way a user starts it (`python -m vlm_app ui --models ...`) on two
tiny checkpoints, once per session, with small limits so that over-limit inputs are cheap to make."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

UI_MAX_UPLOAD_MB = 2
UI_MAX_DURATION_S = 6
UI_LONG_CLIP_S = UI_MAX_DURATION_S + 4.0
SERVER_START_TIMEOUT_S = 180


@dataclass
class UiServer:
    url: str
    pid: int
    models: list[str]
    votes: Path
    log: Path
    scratch_parent: Path  # the server's TMPDIR: its scratch folder lives inside, next to a canary file


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(command: list[str], env: dict, log: Path, probe_url: str) -> Iterator[subprocess.Popen]:
    """`command` started with its output in `log`, once `probe_url` answers; stopped afterwards."""
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_until_up(probe_url, process, log)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"the server did not answer within {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory, tiny_checkpoints) -> UiServer:
    root = tmp_path_factory.mktemp("ui_server")
    models = [str(tiny_checkpoints["smolvlm2"]), str(tiny_checkpoints["qwen2_5_vl"])]
    port = _free_port()
    log = root / "server.log"
    scratch_parent = root / "tmp"
    scratch_parent.mkdir()
    (scratch_parent / "canary.txt").write_text("the scratch folder's parent must survive every request")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(root / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch_parent)}
    command = [sys.executable, "-m", "vlm_app", "ui", "--models", *models, "--port", str(port),
               "--max-upload-mb", str(UI_MAX_UPLOAD_MB), "--max-duration", str(UI_MAX_DURATION_S),
               "--votes", str(root / "votes.jsonl"), "--device", "cpu"]
    url = f"http://127.0.0.1:{port}/"
    with running_server(command, env, log, url + "config") as process:
        yield UiServer(url=url, pid=process.pid, models=models, votes=root / "votes.jsonl", log=log,
                       scratch_parent=scratch_parent)


@pytest.fixture
def gradio_temp_dir(tmp_path, monkeypatch) -> Path:
    """Gradio's cache folder, where a player's subtitle track is written, in a pytest temp folder."""
    folder = tmp_path / "gradio"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def ui_clip_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ui_clips")


@pytest.fixture(scope="session")
def ui_clip(ui_clip_dir, make_clip) -> Path:
    """2 s at 12 fps, 160x120: small enough for every limit."""
    return make_clip(ui_clip_dir / "clip.mp4", 2.0, 12, 160, 120)


@pytest.fixture(scope="session")
def ui_long_clip(ui_clip_dir, make_clip) -> Path:
    """Longer than the server's duration limit for one answer (not for chapters), tiny in bytes."""
    return make_clip(ui_clip_dir / "long.mp4", UI_LONG_CLIP_S, 4, 64, 48)


@pytest.fixture
def ui_client(ui_server):
    from gradio_client import Client

    client = Client(ui_server.url, verbose=False)
    try:
        yield client
    finally:
        client.close()
