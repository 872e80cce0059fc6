"""`python -m vlm_app bench chapters [--model M] [--max-new-tokens 16]`: hour-long videos through describe --chapters.

Two camera-like 320x240 clips at 25 fps, 1 h and 2 h (generated once with x264 ultrafast and cached under
~/.cache/vlm_app/bench/; the 2 h one is the 1 h one twice, remuxed without re-encoding), each described by
`python -m vlm_app describe CLIP --chapters` in a fresh subprocess with a tiny random-weight SmolVLM2 (built on the
spot; or --model). For each clip it prints the wall time and the child's peak RSS (ru_maxrss from wait4), and the
decode floor: in another fresh process, the time PyAV takes to probe the file and decode just the frames the run
needed, by the same decode plan (`decode_frames` over the union of the segments' frames: seeks and skipped packets
where the file's timestamps are proven, a sequential decode counting frames where they are not), with no colour
conversion, no resize and no model. Beside it: the run's own decode time (the segments' `media_s`: probe, decode,
RGB conversion, resize), the model's time (its requests' preprocess + prefill + decode), and the start-up any
describe pays (a plain describe of a 2 s clip in a fresh process: imports, model load, one request of as many new
tokens).

And two lower bounds on the wall time, over the floor. The CPU bound: the run's CPU time (user + system, from
wait4) over the machine's cores, the least wall time that much work takes here however it is scheduled. The chain
bound: the start-up plus the model's time, since the model describes no segment before the process has started
and loaded it, whatever the decoder does meanwhile. Where a bound is over 1.3, the wall-time target is out of
reach for this model on this machine.

Targets: peak RSS <= 1.5 GB; the 2 h RSS within 15 % of the 1 h one (memory does not grow with the video);
wall <= 1.3 x the decode floor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from vlm_app.bench.sampling import CACHE_DIR
from vlm_app.testing.videos import make_textured_clip

WIDTH, HEIGHT, FPS = 320, 240, 25
TARGETS = "targets: peak RSS <= 1.5 GB, 2 h RSS within 15 % of 1 h, wall <= 1.3 x the decode floor"
CORES = len(os.sched_getaffinity(0))


def run_chapters_benchmark(model: str | None = None, max_new_tokens: int = 16) -> int:
    from vlm_app.testing.tiny import build_tiny

    clips = generate_clips()
    with tempfile.TemporaryDirectory(prefix="vlm_app_bench_chapters_") as scratch:
        scratch = Path(scratch)
        model = model or str(build_tiny("smolvlm2", scratch / "tiny_smolvlm2"))
        print(f"bench chapters: model {model}, {max_new_tokens} new tokens, {CORES} CPUs\n{TARGETS}")
        startup = _startup(model, scratch / "startup.mp4", max_new_tokens)
        print(f"start-up (a plain describe of a 2 s clip in a fresh process): {startup['wall']:.1f} s, "
              f"{startup['cpu']:.1f} CPU-s, peak RSS {startup['rss_mb']:.0f} MB")
        print(f"  {'clip':<6}{'segments':>9}{'frames':>8}{'wall s':>9}{'floor s':>9}{'wall/floor':>12}"
              f"{'decode s':>10}{'decode/floor':>14}{'model s':>9}{'peak RSS MB':>13}{'CPU-s':>7}"
              f"{'floor CPU-s':>13}{'CPU bound/floor':>17}{'chain bound/floor':>19}")
        results = {}
        for name, clip in clips.items():
            run = _describe(clip, model, max_new_tokens, scratch / f"{name}.jsonl")
            if "error" in run:
                print(f"  {name:<6}error: {run['error']}")
                continue
            floor = _floor(clip, run["indices"], scratch / f"{name}.indices.json")
            results[name] = run
            print(_row(name, run, floor, startup))
    if {"1 h", "2 h"} <= set(results):
        growth = results["2 h"]["rss_mb"] / results["1 h"]["rss_mb"] - 1
        print(f"  2 h / 1 h peak RSS: {growth:+.1%}; largest peak {max(r['rss_mb'] for r in results.values()):.0f} MB")
    return 0


def _row(name: str, run: dict, floor: dict, startup: dict) -> str:
    floor_s = floor["probe_s"] + floor["decode_s"]
    cpu_bound, chain_bound = run["cpu"] / CORES, startup["wall"] + run["model_s"]
    return (f"  {name:<6}{run['segments']:>9}{len(run['indices']):>8}{run['wall']:>9.1f}{floor_s:>9.1f}"
            f"{run['wall'] / floor_s:>12.2f}{run['media_s']:>10.1f}{run['media_s'] / floor_s:>14.2f}"
            f"{run['model_s']:>9.1f}{run['rss_mb']:>13.0f}{run['cpu']:>7.1f}{floor['cpu']:>13.1f}"
            f"{cpu_bound / floor_s:>17.2f}{chain_bound / floor_s:>19.2f}")


def generate_clips() -> dict[str, Path]:
    """The 1 h clip (encoded) and the 2 h clip (the 1 h one twice, remuxed), cached."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    hour = CACHE_DIR / f"camera_{HEIGHT}p_3600s_{FPS}fps_ultrafast.mp4"
    two = CACHE_DIR / f"camera_{HEIGHT}p_7200s_{FPS}fps_ultrafast.mp4"
    if not hour.exists():
        print(f"generating {hour} (90 000 frames; a few minutes) ...", flush=True)
        make_textured_clip(hour.with_suffix(".partial.mp4"), 3600, FPS, WIDTH, HEIGHT, preset="ultrafast")
        hour.with_suffix(".partial.mp4").rename(hour)
    if not two.exists():
        print(f"generating {two} (remuxing the 1 h clip twice) ...", flush=True)
        concatenate([hour, hour], two.with_suffix(".partial.mp4"))
        two.with_suffix(".partial.mp4").rename(two)
    return {"1 h": hour, "2 h": two}


def concatenate(parts: list[Path], out: Path) -> Path:
    """Clips of one encoding one after the other, packets copied (no re-encoding), times shifted to follow on."""
    with av.open(str(out), "w") as output:
        stream, offset = None, 0
        for part in parts:
            with av.open(str(part)) as source:
                video = source.streams.video[0]
                stream = stream or output.add_stream_from_template(video)
                end = offset
                for packet in source.demux(video):
                    if packet.dts is None:  # the demuxer's empty flush packet
                        continue
                    packet.pts, packet.dts = packet.pts + offset, packet.dts + offset
                    end = max(end, packet.pts + packet.duration)
                    packet.stream = stream
                    output.mux(packet)
                offset = end
    return out


def _startup(model: str, clip: Path, max_new_tokens: int) -> dict:
    """What any describe costs before and after its video: imports, model load, one short request."""
    make_textured_clip(clip, 2, FPS, WIDTH, HEIGHT, preset="ultrafast")
    return _child([sys.executable, "-m", "vlm_app", "describe", str(clip), "--model", model, "--device", "cpu",
                   "--max-new-tokens", str(max_new_tokens)])


def _describe(clip: Path, model: str, max_new_tokens: int, out: Path) -> dict:
    """describe --chapters in a fresh process: wall time, its peak RSS, and from its record the frames it needed,
    the time its decode pass took and the model's."""
    command = [sys.executable, "-m", "vlm_app", "describe", str(clip), "--chapters", "--model", model,
               "--device", "cpu", "--max-new-tokens", str(max_new_tokens), "--out", str(out)]
    run = _child(command)
    if "error" in run:
        return run
    record = json.loads(out.read_text().splitlines()[-1])
    timings = [segment["timings"] for segment in record["segments"] if segment["timings"]]
    return {**run, "segments": len(record["segments"]), "indices": record["frames_indices"],
            "media_s": sum(segment["media_s"] for segment in record["segments"]),
            "model_s": sum(t["preprocess_s"] + t["prefill_s"] + t["decode_s"] for t in timings)}


def _child(command: list[str]) -> dict:
    """Wall time, CPU time and peak RSS (of this child alone, from wait4) of a command; or its last error line."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            errors.seek(0)
            lines = errors.read().decode(errors="replace").strip().splitlines()
            return {"error": lines[-1] if lines else f"exit status {child.returncode}"}
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss * 1024 / 1e6}


def _floor(clip: Path, indices: list[int], indices_file: Path) -> dict:
    indices_file.write_text(json.dumps(indices))
    completed = subprocess.run([sys.executable, "-m", "vlm_app.bench.chapters", str(clip), str(indices_file)],
                               capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def decode_floor(clip: Path, indices: list[int]) -> dict:
    """Probe, then decode `indices` by the file's own decode plan, no colour conversion: seconds of each."""
    from vlm_app.media import DEFAULT_LIMITS
    from vlm_app.media.decode import Deadline, decode_frames, probe

    deadline = Deadline(DEFAULT_LIMITS.decode_seconds)
    started, cpu = time.perf_counter(), time.process_time()
    metadata = probe(str(clip), str(clip), DEFAULT_LIMITS, deadline, chapters=True)
    probed = time.perf_counter()
    frames = sum(1 for _ in decode_frames(str(clip), metadata, indices, "pyav", DEFAULT_LIMITS, deadline, []))
    return {"probe_s": probed - started, "decode_s": time.perf_counter() - probed, "frames": frames,
            "cpu": time.process_time() - cpu,
            "timestamps_proven": metadata.timestamps_proven}


if __name__ == "__main__":
    print(json.dumps(decode_floor(Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()))))
