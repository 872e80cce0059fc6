"""`python -m vlm_app inspect` through the real entry point, and the documented differences from the references."""

import json
import math

import pytest
from PIL import Image
from qwen_vl_utils import fetch_video

from vlm_app import cli
from vlm_app.adapters.registry import FAMILIES
from vlm_app.media import get_policy, load_video


def run_json(capsys, argv):
    assert cli.main(["inspect", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_json_all_families(media_videos, capsys, tmp_path):
    sheet = tmp_path / "sheet.png"
    report = run_json(capsys, [str(media_videos["h264_24fps_2s"]), "--contact-sheet", str(sheet)])
    frames, metadata = fetch_video({"video": str(media_videos["h264_24fps_2s"])}, return_video_metadata=True)
    assert report["frames_indices"] == metadata["frames_indices"]
    assert (report["resized_height"], report["resized_width"]) == tuple(frames.shape[2:])
    assert report["num_visual_tokens"] == math.ceil(len(frames) / 2) * frames.shape[2] // 28 * frames.shape[3] // 28
    assert set(report["families"]) == set(FAMILIES)
    for key in ("timestamps", "sample_fps", "backend", "decode_seconds"):
        assert key in report
    smol = report["families"]["smolvlm2"]
    assert smol["num_visual_tokens"] == 64 * smol["num_frames"]
    deepseek = report["families"]["deepseek_vl2"]
    assert deepseek["num_visual_tokens"] == 421 * deepseek["num_frames"]
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.width == 2 * 200  # 4 frames -> a 2x2 grid


def test_inspect_model_names(media_videos, capsys):
    path = str(media_videos["h264_2997fps_bframes"])
    smol = run_json(capsys, [path, "--model", "smolvlm2-2.2b"])
    assert smol["family"] == "smolvlm2" and smol["num_visual_tokens"] == 81 * len(smol["frames_indices"])
    qwen = run_json(capsys, [path, "--model", "qwen2.5-vl-7b", "--nframes", "5", "--min-pixels", "3136", "--max-pixels", "60000"])
    assert qwen["family"] == "qwen2_5_vl" and len(qwen["frames_indices"]) == 4
    assert qwen["resized_height"] * qwen["resized_width"] <= 60000
    assert "families" not in qwen


def test_inspect_text_output(media_videos, capsys):
    assert cli.main(["inspect", str(media_videos["h264_rotated90"]), "--fps", "4"]) == 0
    out = capsys.readouterr().out
    assert "qwen2_5_vl (qwen2_5_vl, policy qwen2_5_vl): 4 frames" in out and "rotation 90" in out and "deepseek_vl2" in out


def test_inspect_unknown_model(media_videos, capsys):
    assert cli.main(["inspect", str(media_videos["h264_24fps_2s"]), "--model", "llava-9000"]) == 2
    assert "unknown model 'llava-9000'" in capsys.readouterr().err


def test_one_frame_video_is_padded_not_an_error(media_videos):
    video = load_video(media_videos["h264_one_frame"])
    assert video.frames_indices == [0, 0] and video.frames.shape[0] == 2
    assert "repeated to 2" in video.notes[0]
    with pytest.raises(AttributeError, match="read_video"):  # qwen-vl-utils fails, then its fallback is gone
        fetch_video({"video": str(media_videos["h264_one_frame"])})


def test_three_frame_video_matches_reference(media_videos):
    video = load_video(media_videos["h264_three_frames"])
    assert video.frames_indices == [0, 2] and video.notes == []


def test_frame_list_uses_factor_28_and_one_resize(tmp_path):
    frames = [Image.new("RGB", (640, 360), (10 * i, 50, 100)) for i in range(5)]
    video = load_video(frames)
    assert (video.resized_height, video.resized_width) == (364, 644)  # the 0.0.14 wheel gives 336x616
    assert video.frames_indices == [0, 1, 2, 3, 4, 4] and "padded to 6" in video.notes[0]
    reference = fetch_video({"video": frames})
    assert tuple(reference.shape[2:]) == (336, 616)
    paths = []
    for index, frame in enumerate(frames):
        frame.save(tmp_path / f"{index}.png")
        paths.append(str(tmp_path / f"{index}.png"))
    from_paths = load_video(paths, fps=4)
    assert from_paths.timestamps[:5] == [0, 0.25, 0.5, 0.75, 1.0] and (from_paths.frames == video.frames).all()


def test_video_max_pixels_env_is_honoured(media_videos, monkeypatch):
    monkeypatch.setenv("VIDEO_MAX_PIXELS", "32000*28*28*0.9")
    assert get_policy("qwen2_5_vl").total_pixels == pytest.approx(32000 * 28 * 28 * 0.9)
    video = load_video(media_videos["h264_24fps_2s"])
    assert any("VIDEO_MAX_PIXELS" in note for note in video.notes)
    monkeypatch.setenv("VIDEO_MAX_PIXELS", "400000")  # 4 frames: 200 000 pixels per frame pair share
    small = load_video(media_videos["h264_24fps_2s"])
    assert small.resized_height * small.resized_width <= 200000
    monkeypatch.delenv("VIDEO_MAX_PIXELS")
    assert load_video(media_videos["h264_24fps_2s"]).notes == []
