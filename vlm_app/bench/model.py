"""`python -m vlm_app bench model --family F --size S --random-weights`: prefill and decode speed and peak memory
of a real-size model, built from its published configuration with random weights (nothing is downloaded).

The prompt is a synthetic video (640x360, `--frames` seconds sampled at 1 fps) through our adapter, so the visual token
count is what the real model would see; the tokenizer is our small one (ids are remapped into the real vocab
size, which is all random weights need). Meant for GPU machines; the smallest sizes also run on a CPU.
"""

from __future__ import annotations

import json
import os
import time

import torch

from vlm_app.adapters.registry import FAMILIES, adapter_class
from vlm_app.errors import OptionsError


def published_sizes() -> dict[str, tuple[str, ...]]:
    """Family -> the sizes its module transcribes from the published configurations (`Adapter.real_sizes`)."""
    return {family: adapter_class(family).real_sizes for family in FAMILIES if adapter_class(family).real_sizes}


def real_model(family: str, size: str, layers: tuple[int, int] | None = None):
    """(model class, config, processor, adapter class) of a family's published size (`Adapter.real_size`)."""
    cls = adapter_class(family)
    return (*cls.real_size(size, layers), cls)


def _available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    with open("/proc/meminfo") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return int(fields["MemAvailable"].split()[0]) * 1024


def _count_parameters(model_class, config) -> int:
    with torch.device("meta"):
        model = model_class._from_config(config)
    return sum(p.numel() for p in model.parameters())


def run_model_benchmark(family: str, size: str, device: str = "auto", dtype: str = "auto", frames: int = 8,
                        max_new_tokens: int = 32, as_json: bool = False) -> int:
    """Real-size random-weight `family`-`size`: prefill and decode speed on a `frames`-second synthetic video and
    the peak memory against the pre-flight's estimate, printed (or one JSON object)."""
    from vlm_app.runtime import ModelInfo
    from vlm_app.messages import conversation
    from vlm_app.runtime import pick_device, pick_dtype

    sizes = published_sizes().get(family, ())
    if size.lower() not in sizes:
        raise OptionsError(f"unknown size {size!r} for {family}; known: {', '.join(sizes)}")
    size = size.lower()
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    model_class, config, processor, family_adapter = real_model(family, size)
    parameters = _count_parameters(model_class, config)
    needed = parameters * torch.tensor([], dtype=dtype).element_size()
    available = _available_bytes(device)
    if needed * 1.2 > available:
        raise OptionsError(f"{family}-{size} needs about {needed / 2**30:.1f} GiB for weights in {dtype} but "
                           f"only {available / 2**30:.1f} GiB is free on {device}; use a smaller --size, "
                           "--dtype bf16, or a machine with more (GPU) memory")
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype).eval()
    build_s = time.perf_counter() - started
    info = ModelInfo(model_id=f"{family}-{size} (random weights)", path="", family=family,
                     device=str(device), dtype=str(dtype).removeprefix("torch."))
    adapter = family_adapter(model, processor, info)
    video = _synthetic_video(frames)
    prepared = adapter.prepare(conversation("Describe this video.", video=video), max_new_tokens=max_new_tokens,
                               fps=1.0)
    adapter.generate(prepared, max_new_tokens=2, min_new_tokens=2)  # warmup
    generation = adapter.generate(prepared, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
    timings = generation.timings
    estimate = adapter.memory_estimate(adapter.prepared_shape(prepared, max_new_tokens))
    result = {"model": info.model_id, "parameters": parameters, "device": str(device), "dtype": info.dtype,
              "build_s": build_s, "frames": len(prepared.media[0].frames_indices),
              "prompt_tokens": prepared.num_tokens.total, "visual_tokens": prepared.num_tokens.visual,
              "preprocess_s": prepared.timings["preprocess_s"], "prefill_s": timings.prefill_s,
              "prefill_tokens_per_s": prepared.num_tokens.total / timings.prefill_s,
              "decode_tokens_per_s": timings.tokens_per_s, "new_tokens": timings.new_tokens,
              "peak_memory_bytes": timings.peak_memory_bytes,
              "memory_estimate_bytes": estimate.total,
              "estimate_over_peak": estimate.total / timings.peak_memory_bytes if timings.peak_memory_bytes else None}
    if as_json:
        print(json.dumps(result))
    else:
        width = max(len(key) for key in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return 0


def _synthetic_video(frames: int) -> str:
    """A `frames`-second 640x360 textured clip at 2 fps (sampled at 1 fps by the benchmark)."""
    import tempfile

    from vlm_app.testing.videos import make_textured_clip

    folder = tempfile.mkdtemp(prefix="vlm_app_bench_")
    return str(make_textured_clip(os.path.join(folder, "video.mp4"), frames, fps=2, preset="ultrafast"))
