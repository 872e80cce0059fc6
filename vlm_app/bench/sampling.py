"""`python -m vlm_app bench sampling [VIDEOS]`: our Qwen-policy `load_video` vs qwen-vl-utils `fetch_video` (each
backend it can use here) vs the decode floor (PyAV decoding every frame, threaded, no colour conversion).

Each measurement runs in a fresh subprocess so peak RSS is clean; RSS is reported as the peak above the process's
footprint after imports (torch alone is a few hundred MB). Then 8 concurrent requests of the first clip (threads in
one process) against 8 concurrent floor decodes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np

from vlm_app.testing.videos import make_textured_clip

CACHE_DIR = Path(os.environ.get("VLM_APP_CACHE", Path.home() / ".cache" / "vlm_app")) / "bench"
GENERATED = [  # (name, width, height, fps, seconds)
    ("h264_720p_37s_24fps", 1280, 720, 24, 37),
    ("h264_1080p_81s_30fps", 1920, 1080, 30, 81),
    ("h264_240p_600s_25fps", 320, 240, 25, 600),
]
CONCURRENT_REQUESTS = 8
TARGETS = "targets: ours/floor <= 1.3, fastest reference/ours >= 2, ours RSS <= 1.5 x output + 200 MB"


def run_sampling_benchmark(videos: list[str]) -> int:
    paths = [Path(video) for video in videos] or generate_videos()
    methods = ["ours", "ours-fast", "floor"] + [f"qwen-{backend}" for backend in ("decord", "torchcodec")
                                   if importlib.util.find_spec(backend)]
    print(TARGETS)
    for path in paths:
        results = {method: _measure(method, path) for method in methods}
        _print_video(path, results)
    _print_concurrency(paths[0])
    return 0


def generate_videos() -> list[Path]:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, width, height, fps, seconds in GENERATED:
        path = CACHE_DIR / f"{name}.mp4"
        if not path.exists():
            print(f"generating {path} ...", flush=True)
            make_textured_clip(path.with_suffix(".partial.mp4"), seconds, fps, width, height)
            path.with_suffix(".partial.mp4").rename(path)
        paths.append(path)
    return paths


def _measure(method: str, path: Path) -> dict:
    env = dict(os.environ, VLM_APP_FRAME_CACHE_MB="0")  # every request decodes: no frame cache in a benchmark
    if method.startswith("qwen-"):
        env["FORCE_QWENVL_VIDEO_READER"] = method.removeprefix("qwen-")
    completed = subprocess.run([sys.executable, "-m", "vlm_app.bench.sampling", method, str(path)], env=env,
                               capture_output=True, text=True)
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "failed"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _print_video(path: Path, results: dict) -> None:
    print(f"\n{path.name}")
    print(f"  {'method':<16}{'wall s':>9}{'peak RSS MB':>13}{'frames':>8}  shape")
    for method, result in results.items():
        if "error" in result:
            print(f"  {method:<16}error: {result['error']}")
            continue
        print(f"  {method:<16}{result['wall']:>9.2f}{result['rss_mb']:>13.0f}{result['frames']:>8}  {result['shape']}")
    floor = results["floor"]
    references = [r["wall"] for m, r in results.items() if m.startswith("qwen-") and "error" not in r]
    for name in ("ours", "ours-fast"):
        ours = results[name]
        if "error" in ours or "error" in floor:
            continue
        output_mb = np.prod(ours["shape"]) / 1e6
        print(f"  {name}: /floor {ours['wall'] / floor['wall']:.2f}x"
              + (f", fastest reference/{name} {min(references) / ours['wall']:.2f}x" if references else "")
              + f", RSS {ours['rss_mb']:.0f} MB vs budget {1.5 * output_mb + 200:.0f} MB (uint8 output "
              f"{output_mb:.0f} MB)")


def _print_concurrency(path: Path) -> None:
    floor = _measure("floor-concurrent", path)
    for name in ("ours", "ours-fast"):
        ours = _measure(f"{name}-concurrent", path)
        if "error" in ours or "error" in floor:
            print(f"\nconcurrency: error {ours.get('error') or floor.get('error')}")
            continue
        print(f"\n{CONCURRENT_REQUESTS} concurrent requests of {path.name}: {name} {ours['wall']:.2f} s, "
              f"{CONCURRENT_REQUESTS} floor decodes {floor['wall']:.2f} s, ratio {ours['wall'] / floor['wall']:.2f}x "
              "(target <= 1.3)")


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def decode_floor(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def _one(method: str, path: Path) -> dict:
    """Run one measurement in this (fresh) process."""
    from vlm_app.media import load_video

    if method.startswith("qwen-"):
        from qwen_vl_utils import fetch_video
    baseline = _rss_now_mb()
    started = time.perf_counter()
    resize = "fast" if method.startswith("ours-fast") else "exact"
    if method in ("ours", "ours-fast"):
        video = load_video(str(path), resize=resize)
        frames, shape = video.frames.shape[0], list(video.frames.shape)
    elif method == "floor":
        frames, shape = decode_floor(path), []
    elif method.startswith("qwen-"):
        output = fetch_video({"video": str(path)})
        frames, shape = output.shape[0], list(output.shape)
    else:
        work = ((lambda _: load_video(str(path), resize=resize)) if method.startswith("ours")
                else (lambda _: decode_floor(path)))
        with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
            list(pool.map(work, range(CONCURRENT_REQUESTS)))
        frames, shape = CONCURRENT_REQUESTS, []
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    return {"wall": wall, "rss_mb": max(peak - baseline, 0.0), "frames": frames, "shape": shape}


if __name__ == "__main__":
    print(json.dumps(_one(sys.argv[1], Path(sys.argv[2]))))
