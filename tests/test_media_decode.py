"""The decode plan on files that test it: seeks by time only where times are proven, skipped frames that leave the
wanted ones exact, times that turn out wrong, and damaged files re-planned over the frames that decode."""

import av
import pytest
from media_fixtures import FASTSTART_SPEC, VideoSpec, read_frame_id, write_shifted, write_truncated, write_video
from test_media_real_clips import real_clip

from vlm_app.media import decode, get_policy, load_video

NATIVE = get_policy("qwen2_5_vl").with_overrides(resize_rule=None)  # frames at encoded size, so their ids can be read


def frame_ids(video):
    return [read_frame_id(frame.permute(1, 2, 0).numpy()) for frame in video.frames]


@pytest.fixture
def seek_plans(monkeypatch, frame_cache):
    """The keyframes each timed decode seeks to (None: goes on from the start)."""
    plans = []
    original = decode._seek_runs

    def recording(metadata, indices):
        runs = original(metadata, indices)
        plans.append([start for start, _ in runs])
        return runs

    monkeypatch.setattr(decode, "_seek_runs", recording)
    return plans


@pytest.mark.parametrize("name, proven", [
    ("seek_h264_mkv", True),  # Matroska stores presentation times: found by time, reached by a seek
    ("seek_mpeg2_ps", False),  # program and transport streams do not prove them: counted from the start
    ("seek_h264_ts", False),
])
def test_frames_far_in_are_the_frames_their_indices_name(seek_videos, seek_plans, name, proven):
    video = load_video(seek_videos[name], NATIVE, video_start=12.0, video_end=13.5)
    assert video.metadata.timestamps_proven == proven
    assert video.frames_indices[0] >= 12 * video.metadata.fps - 1
    assert frame_ids(video) == video.frames_indices
    assert video.timestamps == pytest.approx([index / video.metadata.fps for index in video.frames_indices], abs=2e-3)
    assert bool(seek_plans) == proven and all(plan[0] is not None for plan in seek_plans)


def test_a_seek_between_samples_skips_whole_groups_of_pictures(tmp_path, seek_plans):
    path = write_video(tmp_path / "gop.mp4", VideoSpec("gop", num_frames=24 * 12, width=64, height=48))
    with av.open(str(path)) as container:  # ultrafast x264: a keyframe every 250 frames
        keyframes = [index for index, packet in enumerate(container.demux(video=0)) if packet.is_keyframe]
    video = load_video(path, NATIVE, nframes=4)
    assert frame_ids(video) == video.frames_indices
    seeks = [start for start in seek_plans[0] if start is not None]
    assert seeks == [keyframe for keyframe in keyframes if keyframe > video.frames_indices[0] + 11]


@pytest.fixture
def decoded_frames(monkeypatch):
    """How many frames the decoder produced."""
    count = [0]
    original = decode._decode_packet

    def counting(stream, packet):
        frames = original(stream, packet)
        count[0] += len(frames)
        return frames

    monkeypatch.setattr(decode, "_decode_packet", counting)
    return count


def test_unwanted_frames_are_skipped_and_the_wanted_ones_are_exact(media_videos, decoded_frames, frame_cache):
    video = load_video(str(media_videos["h264_2997fps_bframes"]), NATIVE, nframes=6)
    assert video.metadata.timestamps_proven
    assert frame_ids(video) == video.frames_indices
    assert decoded_frames[0] < video.frames_indices[-1] * 0.8  # the B-frames nobody asked for were not decoded


@pytest.mark.parametrize("kernel", ["exact", "fast"])
def test_decoding_leaves_the_models_torch_threads_alone(media_videos, frame_cache, kernel):
    """`torch.set_num_threads` is process-wide: a decoder that set it for its resize workers would leave every
    thread started after it (the model's generating thread) with their count. Resized frames are the same."""
    import threading

    import torch

    wanted, seen = torch.get_num_threads(), []
    torch.set_num_threads(3)
    try:
        video = load_video(str(media_videos["h264_2997fps_bframes"]), "qwen2_5_vl", nframes=6, max_pixels=128 * 28 * 28,
                           resize=kernel)
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
    finally:
        torch.set_num_threads(wanted)
    assert seen == [3] and video.frames.shape[0] == 6 and video.frames.float().std() > 0


@pytest.mark.parametrize("threads", [1, 4])
def test_skipping_is_exact_with_any_number_of_decoder_threads(media_videos, frame_cache, monkeypatch, threads):
    """FFmpeg's frame threads take skip_frame from each packet's submit: a wanted B-frame is never skipped."""
    monkeypatch.setattr(decode, "DECODE_THREADS", threads)
    video = load_video(str(media_videos["h264_2997fps_bframes"]), NATIVE, fps=7)
    assert frame_ids(video) == video.frames_indices and not video.notes


def test_times_that_contradict_the_frame_order_are_caught_and_counted_instead(monkeypatch, frame_cache):
    """Pretend the DivX-style AVI proved its times: the decoded times (1, 2, 3, 5, 4, ...) give it away."""
    path = str(real_clip("megamind_divx_avi"))
    counted = load_video(path, NATIVE, nframes=8)
    from vlm_app.media import video as video_module
    original = decode.probe
    monkeypatch.setattr(video_module, "probe", lambda *args: decode.replace(original(*args), timestamps_proven=True))
    monkeypatch.setattr(video_module, "_PROBES", type(video_module._PROBES)())  # forget the honest probe
    frame_cache.resize(0)
    video = load_video(path, NATIVE, nframes=8)
    assert any("contradict its frame order" in note for note in video.notes)
    assert not video.metadata.timestamps_proven
    assert video.frames_indices == counted.frames_indices
    assert (video.frames == counted.frames).all()


def sequentially_decodable(path) -> int:
    count = 0
    with av.open(str(path)) as container:
        try:
            for packet in container.demux(video=0):
                count += len(packet.decode())
        except av.FFmpegError:
            pass
    return count


@pytest.mark.parametrize("keep_fraction", [0.3, 0.6])
@pytest.mark.parametrize("policy, options", [
    ("qwen2_5_vl", {"nframes": 2}), ("qwen2_5_vl", {"nframes": 4}), ("qwen2_5_vl", {}), ("smolvlm2", {}),
    ("deepseek_vl2", {}),
])
def test_a_cut_file_is_sampled_over_the_frames_that_decode(tmp_path, frame_cache, keep_fraction, policy, options):
    whole = write_video(tmp_path / FASTSTART_SPEC.filename, FASTSTART_SPEC)
    path = write_truncated(tmp_path / "cut.mp4", whole, keep_fraction)
    decodable = sequentially_decodable(path)
    native = get_policy(policy).with_overrides(resize_rule=None) if policy == "qwen2_5_vl" else policy
    video = load_video(path, native, **options)
    assert len(set(video.frames_indices)) == len(video.frames_indices)  # no frame stands in for another
    assert max(video.frames_indices) <= decodable - 1
    assert frame_ids(video) == video.frames_indices
    damage = [note for note in video.notes if "decodable" in note]
    assert all(f"{decodable} of {video.metadata.num_frames} frames decodable" in note for note in damage)
    if policy == "qwen2_5_vl":  # its sample spans the whole clip, so it had to be planned again
        assert damage and max(video.frames_indices) == decodable - 1


@pytest.mark.parametrize("backend", ["pyav", "torchcodec"])
@pytest.mark.parametrize("options", [{"nframes": 8}, {"video_start": 1.0, "video_end": 2.5}])
def test_an_edit_list_cut_starts_at_its_first_shown_frame(tmp_path, frame_cache, backend, options):
    """A clip cut without re-encoding keeps the packets before the cut (flagged discard): they are no frames of the
    video, so its frames, duration and times start at the first frame shown, and nothing says it is damaged."""
    whole = write_video(tmp_path / "whole.mp4", VideoSpec("whole", num_frames=96, bframes=2))
    path = write_shifted(tmp_path / "cut.mp4", whole, -1.0)
    video = load_video(path, NATIVE, backend=backend, **options)
    assert (video.metadata.num_frames, video.metadata.duration) == (72, pytest.approx(3.0))
    assert video.metadata.timestamps_proven and not video.notes
    assert frame_ids(video) == [index + 24 for index in video.frames_indices]  # frame 0 is the source's frame 24
    assert video.timestamps == pytest.approx([index / 24 for index in video.frames_indices])


@pytest.mark.parametrize("shift, second_first", [(20000.0, False), (20000.0, True), (0.0, False)],
                         ids=["hours-later", "hours-earlier", "same-times-again"])
def test_joined_transport_streams_run_on_through_the_jump_in_their_timestamps(tmp_path, frame_cache, shift,
                                                                             second_first):
    """Two recordings joined with `cat`: the timestamps jump between them (5.6 h ahead, as far back, or back to the
    same times), and the clip is the 6 s of frames it holds, timed on from the first part as ffmpeg does (not a
    5.6 h clip over the duration limit, a 3 s one, or frames far apart in time)."""
    part = write_video(tmp_path / "part.ts", VideoSpec("part", container="ts", num_frames=72, width=64, height=48))
    parts = [part.read_bytes(), write_shifted(tmp_path / "shifted.ts", part, shift).read_bytes()]
    path = tmp_path / "joined.ts"
    path.write_bytes(b"".join(parts[::-1] if second_first else parts))
    video = load_video(path, NATIVE, nframes=12)
    assert (video.metadata.num_frames, video.metadata.duration) == (144, pytest.approx(6.0))
    assert not video.metadata.is_vfr and not video.notes
    assert frame_ids(video) == [index % 72 for index in video.frames_indices]
    assert video.timestamps == pytest.approx([index / 24 for index in video.frames_indices])
