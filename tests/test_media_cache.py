"""The frame cache inside load_video: repeated requests for a local file are served without decoding; an edited
file, a byte bound, 0 bytes and non-local sources all lead to a real decode."""

import base64
import os
import shutil

import pytest

from vlm_app.errors import OptionsError
from vlm_app.media import load_video
from vlm_app.media import video as video_module


@pytest.fixture
def decodes(monkeypatch, frame_cache):
    """Counts the decodes load_video starts."""
    calls = []
    original = video_module.decode_frames

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(video_module, "decode_frames", counting)
    return calls


@pytest.fixture
def clip(media_videos, tmp_path):
    return shutil.copy(media_videos["h264_24fps_2s"], tmp_path / "clip.mp4")


def test_second_request_is_served_from_the_cache(clip, decodes):
    first = load_video(clip, fps=4)
    first.notes.append("edited by the caller")
    first.frames_indices.append(999)
    second = load_video(clip, fps=4)
    assert len(decodes) == 1
    assert second is not first and second.frames.data_ptr() == first.frames.data_ptr()  # frames shared, no copy
    assert second.frames_indices == first.frames_indices[:-1] and second.notes == []  # caller's edits stay theirs
    assert second.timestamps == first.timestamps and second.sample_fps == first.sample_fps
    load_video(f"file://{clip}", fps=4)  # another spelling of the same file is its own entry
    load_video(clip, fps=2)
    load_video(clip, "smolvlm2", fps=4)
    assert len(decodes) == 4
    load_video(clip, fps=4, backend="pyav")  # what the default backend resolves to: the same entry
    assert len(decodes) == 4


def test_an_edited_file_is_decoded_again(clip, media_videos, decodes):
    before = load_video(clip)
    stat = os.stat(clip)
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    load_video(clip)
    assert len(decodes) == 2
    shutil.copy(media_videos["h264_25fps_odd"], clip)  # new content under the same name
    after = load_video(clip)
    assert len(decodes) == 3 and after.metadata.num_frames == 63 != before.metadata.num_frames


def test_a_file_replaced_at_the_same_path_replaces_its_entry(clip, media_videos, decodes, frame_cache):
    """Uploads are moved into place again on every request: the stale entry must not stay behind."""
    entry_bytes = load_video(clip).frames.nbytes
    for _ in range(3):
        os.remove(clip)
        shutil.copy(media_videos["h264_24fps_2s"], clip)
        load_video(clip)
    assert len(decodes) == 4
    assert frame_cache._bytes == entry_bytes


def test_byte_bound_evicts_least_recently_used(media_videos, tmp_path, decodes, frame_cache):
    clips = [shutil.copy(media_videos["h264_24fps_2s"], tmp_path / f"clip{number}.mp4") for number in range(3)]
    entry_bytes = load_video(clips[0]).frames.nbytes
    frame_cache.resize(2 * entry_bytes)
    load_video(clips[1])
    load_video(clips[0])  # hit: clip0 becomes the most recently used
    load_video(clips[2])  # evicts clip1
    assert len(decodes) == 3
    load_video(clips[0])
    load_video(clips[2])
    assert len(decodes) == 3
    load_video(clips[1])
    assert len(decodes) == 4
    frame_cache.resize(entry_bytes - 1)  # nothing fits any more
    load_video(clips[1])
    assert len(decodes) == 5


def test_zero_bytes_turns_the_cache_off(clip, decodes, frame_cache):
    frame_cache.resize(0)
    load_video(clip)
    load_video(clip)
    assert len(decodes) == 2


def test_data_uris_are_not_cached(clip, decodes):
    uri = "data:video/mp4;base64," + base64.b64encode(open(clip, "rb").read()).decode()
    load_video(uri)
    load_video(uri)
    assert len(decodes) == 2


def test_cache_size_from_environment(monkeypatch):
    monkeypatch.setenv("VLM_APP_FRAME_CACHE_MB", "64")
    assert video_module.frame_cache_bytes_from_env() == 64 * 2**20
    monkeypatch.setenv("VLM_APP_FRAME_CACHE_MB", "0")
    assert video_module.frame_cache_bytes_from_env() == 0
    monkeypatch.delenv("VLM_APP_FRAME_CACHE_MB")
    assert video_module.frame_cache_bytes_from_env() == 512 * 2**20
    monkeypatch.setenv("VLM_APP_FRAME_CACHE_MB", "lots")
    with pytest.raises(OptionsError, match="VLM_APP_FRAME_CACHE_MB='lots' is not a number"):
        video_module.frame_cache_bytes_from_env()
