"""Server-area fixtures: `python -m vlm_app serve` started the way a user starts it, on two tiny checkpoints, once
per session, bound to 127.0.0.1 on a free port, with an API key, one allowed folder, a one-slot queue and a short
body deadline (so the queue and slow-body cases are cheap to make). The folder's long.mp4 lasts over a plain
request's 4 h cap in a few frames, so chapters of an hour cost a few tiny requests."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ui_fixtures import _free_port, running_server

API_KEY = "test-key-0123456789"
BODY_TIMEOUT_S = 3
KEEPALIVE_S = 0.05  # a stream quiet for this long gets a comment line (every streaming test reads them)
SERVED_SMOL = "smol-test"  # --models NAME=PATH: clients see this name
LONG_FRAMES, LONG_FRAME_SECONDS = 26, 600.0  # long.mp4: 4 h 20 min, a frame every 10 minutes


@dataclass
class ApiServer:
    url: str          # http://127.0.0.1:PORT/v1
    pid: int
    models: list[str]  # the served names: the first named on the command line, the second by its folder's name
    sources: list[str]  # the checkpoint folders they load
    allowed: Path     # the --allow-dir folder (holds clip.mp4, long.mp4 and image.png)
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def api_server(tmp_path_factory, tiny_checkpoints, make_clip) -> ApiServer:
    from PIL import Image

    from vlm_app.testing.videos import moving_square, write_video

    root = tmp_path_factory.mktemp("api_server")
    allowed = root / "allowed"
    allowed.mkdir()
    make_clip(allowed / "clip.mp4", 2.0, 12, 160, 120)
    write_video(allowed / "long.mp4", (moving_square(index, LONG_FRAMES, 64, 48) for index in range(LONG_FRAMES)),
                durations=[LONG_FRAME_SECONDS] * LONG_FRAMES, options={"preset": "ultrafast"})
    Image.new("RGB", (64, 48), (200, 30, 30)).save(allowed / "image.png")
    sources = [str(tiny_checkpoints["smolvlm2"]), str(tiny_checkpoints["qwen2_5_vl"])]
    models = [SERVED_SMOL, tiny_checkpoints["qwen2_5_vl"].name]
    port = _free_port()
    log = root / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "vlm_app", "serve", "--models", f"{SERVED_SMOL}={sources[0]}", sources[1],
               "--host", "127.0.0.1",
               "--port", str(port), "--api-key", API_KEY, "--allow-dir", str(allowed), "--allow-host", "localhost",
               "--max-queue", "1", "--body-timeout", str(BODY_TIMEOUT_S), "--keepalive", str(KEEPALIVE_S),
               "--device", "cpu"]
    with running_server(command, env, log, f"http://127.0.0.1:{port}/health") as process:
        yield ApiServer(url=f"http://127.0.0.1:{port}/v1", pid=process.pid, models=models, sources=sources,
                        allowed=allowed, log=log)


@pytest.fixture
def client(api_server):
    """The official openai client, pointed at the server (no retries, so a 429 is seen as one)."""
    from openai import OpenAI

    return OpenAI(base_url=api_server.url, api_key=API_KEY, max_retries=0, timeout=60)
