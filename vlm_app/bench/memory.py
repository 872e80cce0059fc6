"""`python -m vlm_app bench memory`: the memory pre-flight's estimate against the measured peak, request by
request, on random-weight models at their real widths (nothing is downloaded).

Each case runs in a fresh process: the model is built from its published config (SmolVLM2-256M and -500M at
their full size; Qwen2.5-VL-3B and DeepSeek-VL2-tiny with fewer layers, to fit a CPU), then one request (a
textured 640x360 clip of 40 s or 10 minutes, `nframes` frames, an 8-token answer) goes through `service.execute`.
Measured: on CPU, the peak RSS of the request (VmHWM, reset after the model is built) minus the RSS before the
model existed, so weights count on both sides; on CUDA, the allocator's peak. The estimate is the record's `memory_estimate_bytes`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vlm_app.bench.sampling import CACHE_DIR
from vlm_app.errors import OptionsError

# (family, size, (vision layers, text layers) or None for the full model, request options, clip seconds).
# SmolVLM2 samples at 1 fps up to 64 frames, so max_frames sets its count; only the 10-minute clip fills its default.
CASES = [
    *[("smolvlm2", "256m", None, {"max_frames": n}, 40) for n in (1, 2, 4, 8, 12, 16)],
    *[("smolvlm2", "256m", None, options, 600) for options in ({"max_frames": 16}, {"max_frames": 32}, {})],
    *[("smolvlm2", "500m", None, {"max_frames": n}, 40) for n in (2, 8)],
    *[("qwen2_5_vl", "3b", (4, 4), options, 40) for options in
      ({"nframes": 4}, {"nframes": 8}, {"nframes": 16}, {"nframes": 32}, {"nframes": 16, "max_pixels": 100352},
       {"nframes": 24, "max_pixels": 200704})],
    *[("deepseek_vl2", "tiny", (4, 2), {"nframes": n}, 40) for n in (1, 2, 3, 4, 6, 8)],
]
MAX_NEW_TOKENS = 8


def run_memory_benchmark(families: list[str] | None, device: str, as_json: bool,
                         clip_seconds: int | None = None) -> int:
    cases = [case for case in CASES
             if (not families or case[0] in families) and (not clip_seconds or case[-1] == clip_seconds)]
    if not cases:
        clips = ", ".join(str(seconds) for seconds in sorted({case[-1] for case in CASES}))
        raise OptionsError(f"no bench memory case on those families and that clip (clips: {clips} s)")
    rows = []
    for family, size, layers, options, seconds in cases:
        row = _run_case(family, size, layers, options, seconds, device)
        rows.append(row)
        print(json.dumps(row) if as_json else _line(row), flush=True)
    errors = [abs(row["estimate"] / row["measured"] - 1) for row in rows if row.get("measured")]
    if errors and not as_json:
        within = sum(error <= 0.2 for error in errors)
        print(f"\n{within} of {len(errors)} requests within ±20 % of the measured peak; worst {max(errors):.1%}")
    return 0


def _clip(seconds: int) -> str:
    from vlm_app.testing.videos import make_textured_clip

    path = CACHE_DIR / f"textured_640x360_{seconds}s_24fps.mp4"
    if not path.exists():
        print(f"generating {path} ...", file=sys.stderr, flush=True)
        partial = path.with_suffix(".partial.mp4")
        make_textured_clip(partial, seconds, fps=24, width=640, height=360, preset="ultrafast")
        partial.rename(path)
    return str(path)


def _run_case(family, size, layers, options, seconds, device) -> dict:
    spec = {"family": family, "size": size, "layers": layers, "options": options, "clip_seconds": seconds,
            "clip": _clip(seconds), "device": device}
    done = subprocess.run([sys.executable, "-m", "vlm_app.bench.memory", json.dumps(spec)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    if done.returncode != 0:
        return {**spec, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _line(row: dict) -> str:
    layers = f" ({row['layers'][0]}+{row['layers'][1]} layers)" if row["layers"] else ""
    name = f"{row['family']}-{row['size']}{layers}"
    options = ",".join(f"{key}={value}" for key, value in row["options"].items()) or "defaults"
    options = f"{row['clip_seconds']} s clip, {options}"
    if "error" in row:
        return f"{name:<34} {options:<44} error: {row['error']}"
    mib = 2**20
    return (f"{name:<34} {options:<44} {row['frames']:>3} frames {row['prompt_tokens']:>6} tokens  "
            f"estimate {row['estimate'] / mib:>7.0f} MiB  measured {row['measured'] / mib:>7.0f} MiB  "
            f"{row['estimate'] / row['measured'] - 1:+6.1%}  (peak in {row['peak_phase']})")


def _measure(spec: dict) -> dict:
    """One case, in this (fresh) process."""
    import torch

    from vlm_app import memory
    from vlm_app.bench.model import real_model
    from vlm_app.runtime import ModelInfo, pick_device, pick_dtype, return_freed_tensors
    from vlm_app.service import execute, one_turn

    device = pick_device(spec["device"])
    dtype = pick_dtype("auto", device)
    if device == "cpu":
        return_freed_tensors()  # as load_adapter does
    layers = tuple(spec["layers"]) if spec["layers"] else None
    model_class, config, processor, adapter_class = real_model(spec["family"], spec["size"], layers)
    before = memory.resident_bytes()
    torch.manual_seed(0)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype).eval()
    info = ModelInfo(model_id=f"{spec['family']}-{spec['size']}", path="", family=spec["family"], device=device,
                     dtype=str(dtype).removeprefix("torch."))
    adapter = adapter_class(model, processor, info)
    memory.reset_peak(device)
    record = execute(adapter, one_turn("Describe this video.", spec["clip"], spec["options"],
                                       {"max_new_tokens": MAX_NEW_TOKENS}))
    if record["error"]:
        raise SystemExit(record["error"])
    peak = memory.peak_bytes(device)
    measured = peak if device.startswith("cuda") else peak - before
    return {**spec, "frames": len(record["frames_indices"]), "prompt_tokens": record["num_tokens"]["total"],
            "estimate": record["memory_estimate_bytes"], "measured": measured,
            "peak_phase": record["memory_estimate"]["peak_phase"], "breakdown": record["memory_estimate"]}


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.argv[1]))))
