"""The PyAV decoder's defensive paths on real files: seeks that land somewhere unknown start over, and a file that
ends before the frames its index promised gives the frames it holds, padded, with a note."""

import pytest
from media_fixtures import FASTSTART_SPEC, read_frame_id

from vlm_app.media import decode, get_policy, load_video

NATIVE = get_policy("qwen2_5_vl").with_overrides(factor=None)  # frames at encoded size, so their ids can be read


def frame_ids(video):
    return [read_frame_id(frame.permute(1, 2, 0).numpy()) for frame in video.frames]


@pytest.fixture
def seek_outcomes(monkeypatch, frame_cache):
    """The frame index each seek was placed at (None: not trusted, decoding started over)."""
    outcomes = []
    original = decode._index_after_seek

    def recording(metadata, pts, first_index):
        outcomes.append(original(metadata, pts, first_index))
        return outcomes[-1]

    monkeypatch.setattr(decode, "_index_after_seek", recording)
    return outcomes


@pytest.mark.parametrize("name, seek_trusted", [
    ("seek_h264_mkv", True),  # lands on the keyframe before the range
    ("seek_mpeg2_ps", False),  # lands on a frame that is not the keyframe before the range
    ("seek_h264_ts", False),  # lands past the end: no frame at all
])
def test_frames_after_a_seek_are_the_frames_their_indices_name(seek_videos, seek_outcomes, name, seek_trusted):
    video = load_video(seek_videos[name], NATIVE, video_start=12.0, video_end=13.5)
    assert video.frames_indices[0] >= 12 * video.metadata.fps - 1
    assert frame_ids(video) == video.frames_indices
    assert video.timestamps == pytest.approx([index / video.metadata.fps for index in video.frames_indices], abs=2e-3)
    trusted = [outcome for outcome in seek_outcomes if outcome is not None]
    assert bool(trusted) == seek_trusted and all(index <= video.frames_indices[0] for index in trusted)


def test_a_file_ending_before_its_promised_frames_is_padded_with_a_note(broken_media, frame_cache):
    video = load_video(broken_media["truncated_faststart"], NATIVE, nframes=8)
    assert video.metadata.num_frames < FASTSTART_SPEC.num_frames  # the index promised more than the data holds
    last_decoded = video.frames_indices[-1]
    assert last_decoded < video.metadata.num_frames - 1 and len(video.frames_indices) == 8
    assert video.frames_indices == sorted(video.frames_indices) and video.frames_indices[-2] == last_decoded
    assert frame_ids(video) == video.frames_indices  # decoded frames are the right ones, the rest repeat the last
    assert any(f"decoding stopped at frame {last_decoded} of {video.metadata.num_frames}" in note
               for note in video.notes)
    resized = load_video(broken_media["truncated_faststart"], nframes=8)  # the default policy resizes the padding too
    assert (resized.frames[-1] == resized.frames[-2]).all() and resized.frames_indices == video.frames_indices


@pytest.fixture
def pyav_passes(monkeypatch, frame_cache):
    """The keyword arguments of every PyAV decoding pass load_video starts."""
    passes = []
    original = decode._decode_pyav_pass

    def recording(*args, **kwargs):
        passes.append(kwargs)
        yield from original(*args, **kwargs)

    monkeypatch.setattr(decode, "_decode_pyav_pass", recording)
    return passes


def test_unwanted_frames_are_skipped_and_the_wanted_ones_are_exact(media_videos, pyav_passes):
    video = load_video(str(media_videos["h264_2997fps_bframes"]), NATIVE, nframes=6)
    assert pyav_passes == [{"skip_unwanted": True, "seek": True}]
    assert frame_ids(video) == video.frames_indices


def test_frames_with_unknown_times_fall_back_to_counting(media_videos, pyav_passes, monkeypatch):
    monkeypatch.setattr(decode, "_index_of_pts", lambda metadata, pts: None)
    video = load_video(str(media_videos["h264_2997fps_bframes"]), NATIVE, nframes=6)
    assert [options["skip_unwanted"] for options in pyav_passes] == [True, False]
    assert frame_ids(video) == video.frames_indices
