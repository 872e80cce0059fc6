"""load_video against qwen-vl-utils 0.0.14 (with each of its readers installed: decord, torchcodec) on generated videos:
indices, resized size and sample fps identical, pixels within one level. Also frame identity against a sequential
decode on every backend, VFR, rotation and backends."""

import importlib.util
import logging
from unittest import mock

import numpy as np
import pytest
import torch
from media_fixtures import MPEG2_SPEC, PARITY_SPECS, VFR_SPEC, VideoSpec, read_frame_id, write_video
from qwen_vl_utils import fetch_video, vision_process
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvF

from vlm_app.errors import OptionsError
from vlm_app.media import get_policy, load_video

# decord's and torchcodec's random access return neighbouring frames on these containers (fact sheet §7), so
# qwen-vl-utils' pixels there are not the frames its indices name; we compare ours with the reference resize of the
# right frames.
RANDOM_ACCESS_WRONG = {"mpeg4_avi_bframes", MPEG2_SPEC.name}
# qwen-vl-utils prefers torchcodec over decord when both are installed; we check against every reader it can use.
READERS = [name for name in ("decord", "torchcodec") if importlib.util.find_spec(name)]
# qwen-vl-utils' torchcodec reader takes the frame rate from the decoded span, which a millisecond time base rounds
# (webm); its sample fps and time-range indices there differ from its decord reader's (see test_webm_frame_rate_*).
SPAN_RATE_DIFFERS = {("vp9_24fps", "torchcodec")}

OPTION_SETS = [{}, {"fps": 1.0}, {"fps": 4.5}, {"nframes": 6}, {"nframes": 7}, {"min_frames": 8}, {"max_frames": 4},
               {"fps": 3, "min_frames": 6, "max_frames": 10}, {"min_pixels": 3136, "max_pixels": 50176},
               {"max_pixels": 200000}, {"total_pixels": 1_000_000}, {"min_pixels": 200704},
               {"video_start": 0.5, "video_end": 1.5}, {"video_start": 0.3}, {"video_end": 0.9},
               {"resized_height": 100, "resized_width": 150}, {"nframes": 1000}]
SHORT_SPECS = [spec.name for spec in PARITY_SPECS if spec.num_frames < 1000] + [MPEG2_SPEC.name]
LONG_OPTION_SETS = [{}, {"nframes": 6}, {"video_start": 100.0, "video_end": 130.0}, {"fps": 0.1}]


def qwen_reference(path, options, reader="decord"):
    """(frames float32, metadata, sample fps) from qwen-vl-utils reading with `reader`, or None where it fails (it
    would fall back to torchvision's removed read_video)."""
    logging.getLogger("qwen_vl_utils.vision_process").setLevel(logging.ERROR)
    try:
        with mock.patch.object(vision_process, "get_video_reader_backend", return_value=reader):
            (frames, metadata), sample_fps = fetch_video({"video": str(path), **options},
                                                         return_video_sample_fps=True, return_video_metadata=True)
    except AttributeError as error:
        assert "read_video" in str(error)
        return None
    except AssertionError:  # max_pixels < min_pixels, raised outside its backend try-block
        return None
    return frames, metadata, sample_fps


def sequential_frames(path, indices):
    """The frames at `indices` from a plain sequential decode (display order), rotation applied."""
    import av

    wanted, frames = set(indices), {}
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                frames[index] = torch.rot90(image, (frame.rotation or 0) // 90, dims=(1, 2))
    return torch.stack([frames[index] for index in indices])


def assert_parity(media_videos, name, options, reader):
    path = media_videos[name]
    reference = qwen_reference(path, options, reader)
    if reference is None:
        with pytest.raises(OptionsError):
            load_video(path, **options)
        return
    frames, metadata, sample_fps = reference
    ours = load_video(path, **options)
    assert ours.frames_indices == metadata["frames_indices"]
    assert ours.frames.shape == frames.shape
    assert ours.sample_fps == pytest.approx(sample_fps, rel=1e-12)
    assert ours.frames.dtype == torch.uint8
    if name in RANDOM_ACCESS_WRONG:
        source = sequential_frames(path, ours.frames_indices)
        frames = tvF.resize(source, list(frames.shape[2:]), interpolation=InterpolationMode.BICUBIC,
                            antialias=True).float()
    assert (ours.frames.float() - frames).abs().max() <= 1


@pytest.mark.parametrize("options", OPTION_SETS, ids=str)
@pytest.mark.parametrize("name, reader", [(name, reader) for reader in READERS for name in SHORT_SPECS
                                          if (name, reader) not in SPAN_RATE_DIFFERS])
def test_parity_with_qwen_vl_utils(media_videos, name, options, reader):
    assert_parity(media_videos, name, options, reader)


@pytest.mark.skipif("torchcodec" not in READERS, reason="torchcodec (optional backend) is not installed")
def test_webm_frame_rate_is_the_streams_not_torchcodecs_span_rate(media_videos):
    path, options = media_videos["vp9_24fps"], {"video_start": 0.5, "video_end": 1.5}
    _, span_metadata, _ = qwen_reference(path, options, "torchcodec")
    _, stream_metadata, stream_sample_fps = qwen_reference(path, options, "decord")
    ours = load_video(path, **options)
    assert span_metadata["fps"] == pytest.approx(40 / 1.666) and stream_metadata["fps"] == ours.metadata.fps == 24
    assert ours.frames_indices == stream_metadata["frames_indices"] != span_metadata["frames_indices"]
    assert ours.sample_fps == pytest.approx(stream_sample_fps, rel=1e-12)
    assert ours.timestamps[0] == 0.5  # frame 12 starts at exactly 0.5 s; the span rate skips it


@pytest.mark.skipif("torchcodec" not in READERS, reason="torchcodec (optional backend) is not installed")
@pytest.mark.parametrize("container, codec", [("webm", "libvpx-vp9"), ("mkv", "libx264")])
def test_estimated_frame_rates_are_the_streams_not_torchcodecs(tmp_path, container, codec):
    """Matroska/WebM store no frame count: qwen-vl-utils' torchcodec reader derives 24.003 fps from the span of an
    8 s, 24 fps clip and samples 14 frames at 1.75 fps; we (and its decord reader) count 192 frames at 24 fps: 16 at 2."""
    spec = VideoSpec(f"estimated_{container}", codec=codec, container=container, num_frames=192, width=64, height=48)
    path = write_video(tmp_path / spec.filename, spec)
    _, span_metadata, span_sample_fps = qwen_reference(path, {}, "torchcodec")
    _, stream_metadata, stream_sample_fps = qwen_reference(path, {}, "decord")
    ours = load_video(path)
    assert span_metadata["fps"] == pytest.approx(24.003, abs=1e-3) and len(span_metadata["frames_indices"]) == 14
    assert span_sample_fps == pytest.approx(1.75, abs=1e-3)
    assert ours.metadata.fps == stream_metadata["fps"] == 24 and ours.metadata.num_frames == 192
    assert ours.frames_indices == stream_metadata["frames_indices"] and len(ours.frames_indices) == 16
    assert ours.sample_fps == stream_sample_fps == 2.0


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("options", LONG_OPTION_SETS, ids=str)
def test_parity_on_a_200_second_clip(media_videos, options, reader):
    assert_parity(media_videos, "h264_24fps_long", options, reader)


def assert_frames_are_the_indexed_ones(video):
    upright = torch.rot90(video.frames, -video.metadata.rotation // 90, dims=(2, 3))  # ids are written unrotated
    ids = [read_frame_id(frame.permute(1, 2, 0).numpy()) for frame in upright]
    assert ids == [index % 4096 for index in video.frames_indices]


@pytest.mark.parametrize("backend", ["pyav", "torchcodec"] if "torchcodec" in READERS else ["pyav"])
@pytest.mark.parametrize("name", SHORT_SPECS + ["h264_24fps_long"])
def test_sampled_frames_are_the_frames_their_indices_name(media_videos, name, backend):
    native = get_policy("qwen2_5_vl").with_overrides(resize_rule=None)
    options = {"video_start": 120.0, "video_end": 140.0} if name == "h264_24fps_long" else {"nframes": 8}
    video = load_video(media_videos[name], native, backend=backend, **options)
    assert_frames_are_the_indexed_ones(video)
    assert video.timestamps == pytest.approx([index / video.metadata.fps for index in video.frames_indices], abs=2e-3)


@pytest.mark.parametrize("backend", READERS)
def test_random_access_backends_match_reference(media_videos, backend):
    for name in ["h264_24fps_2s", "h264_rotated90", "vp9_24fps"]:
        ours = load_video(media_videos[name], backend=backend)
        frames, metadata, _ = qwen_reference(media_videos[name], {}, backend)
        assert ours.backend == backend and ours.frames_indices == metadata["frames_indices"]
        assert (ours.frames.float() - frames).abs().max() <= 1


@pytest.mark.parametrize("backend", READERS)
@pytest.mark.parametrize("name", [spec.name for spec in PARITY_SPECS if spec.name not in RANDOM_ACCESS_WRONG])
def test_backends_agree_with_pyav_on_cfr_files(media_videos, name, backend):
    options = {"video_start": 100.0, "video_end": 110.0} if name == "h264_24fps_long" else {}
    ours, pyav = (load_video(media_videos[name], backend=chosen, **options) for chosen in (backend, "pyav"))
    assert ours.frames_indices == pyav.frames_indices and ours.frames.shape == pyav.frames.shape
    assert ours.timestamps == pyav.timestamps and ours.notes == pyav.notes
    assert (ours.frames.int() - pyav.frames.int()).abs().max() <= 1


@pytest.mark.skipif("torchcodec" not in READERS, reason="torchcodec (optional backend) is not installed")
def test_torchcodec_wrong_frames_are_decoded_again_with_pyav(media_videos):
    native = get_policy("qwen2_5_vl").with_overrides(resize_rule=None)
    video = load_video(media_videos["mpeg4_avi_bframes"], native, backend="torchcodec", nframes=8)
    assert video.backend == "torchcodec" and any("decoded sequentially with PyAV" in note for note in video.notes)
    assert_frames_are_the_indexed_ones(video)
    vfr = load_video(media_videos[VFR_SPEC.name], native, backend="torchcodec")
    assert_frames_are_the_indexed_ones(vfr)
    assert vfr.timestamps == load_video(media_videos[VFR_SPEC.name], native).timestamps


def test_rotation_is_applied_before_resizing(media_videos):
    video = load_video(media_videos["h264_rotated90"])
    assert (video.metadata.width, video.metadata.height, video.metadata.rotation) == (64, 96, 90)
    assert video.resized_height > video.resized_width


def test_vfr_samples_are_evenly_spaced_in_time(media_videos):
    video = load_video(media_videos[VFR_SPEC.name])
    targets = np.linspace(0, video.metadata.frame_times()[-1], len(video.timestamps))
    assert np.abs(np.array(video.timestamps) - targets).max() <= 0.1  # the longest source frame interval
    assert any("variable frame rate" in note for note in video.notes)
    native = load_video(media_videos[VFR_SPEC.name], get_policy("qwen2_5_vl").with_overrides(resize_rule=None))
    true_times = np.cumsum((0,) + VFR_SPEC.frame_durations)
    for frame, index, seconds in zip(native.frames, native.frames_indices, native.timestamps):
        assert read_frame_id(frame.permute(1, 2, 0).numpy()) == index
        assert seconds == pytest.approx(true_times[index], abs=1e-3)
    # qwen-vl-utils samples by index, so its picks bunch up in the fast first 2 s
    _, metadata, _ = qwen_reference(media_videos[VFR_SPEC.name], {})
    assert sum(index < 60 for index in metadata["frames_indices"]) > sum(t < 2 for t in video.timestamps)


def test_vfr_time_range_uses_presentation_time(media_videos):
    video = load_video(media_videos[VFR_SPEC.name], video_start=2.5, video_end=4.5)
    assert min(video.timestamps) >= 2.5 - 1e-6 and max(video.timestamps) <= 4.5 + 1e-6


@pytest.mark.parametrize("policy, options", [("qwen2_5_vl", {}), ("qwen2_5_vl", {"video_start": 2.0, "video_end": 5.0}),
                                             ("smolvlm2", {}), ("deepseek_vl2", {})])
def test_a_vfr_clip_samples_its_seconds_whatever_rate_its_container_names(media_videos, tmp_path, policy, options):
    """Matroska names a nominal rate (30 fps here, from the first frames' duration) that is not the average of a VFR
    clip (18 fps): frame counts and the sample fps (Qwen's mRoPE seconds) come from the frames' own times, so the
    same clip samples alike as mp4 and mkv, at the asked rate."""
    spec = VideoSpec("vfr_mkv", container="mkv", fps=VFR_SPEC.fps, num_frames=VFR_SPEC.num_frames,
                     frame_durations=VFR_SPEC.frame_durations)
    mkv = load_video(write_video(tmp_path / spec.filename, spec), policy, **options)
    mp4 = load_video(media_videos[VFR_SPEC.name], policy, **options)
    assert mkv.metadata.fps == 30 and mp4.metadata.fps == pytest.approx(18, rel=0.02) and mkv.metadata.is_vfr
    assert mkv.frames_indices == mp4.frames_indices and mkv.sample_fps == pytest.approx(mp4.sample_fps, rel=0.01)
    seconds = options.get("video_end", mkv.metadata.duration) - options.get("video_start", 0.0)
    assert mkv.sample_fps == pytest.approx(len(mkv.frames_indices) / seconds, rel=0.05)
