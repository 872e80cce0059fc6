"""Ray-area fixtures: one local Ray for the whole session (starting Ray on 2 cores takes seconds), and a folder of
short clips with one corrupt file."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray shared by every Ray test; the engine reuses a connected Ray instead of starting its own. A Ray
    this process is already connected to is reused (and left running): calling `ray.init` again would fail."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
                 log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_videos(tmp_path_factory, make_clip) -> Path:
    """Six clips of different lengths and sizes (so answers differ) and `broken.mp4`, which is not a video."""
    folder = tmp_path_factory.mktemp("ray_videos")
    for number in range(6):
        make_clip(folder / f"clip{number}.mp4", 1.0 + 0.5 * number, 12, 64 + 16 * number, 48 + 16 * number)
    (folder / "broken.mp4").write_bytes(b"this is not a video " * 64)
    return folder
