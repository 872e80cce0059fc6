"""`python -m vlm_app bench adapter`: the cost of our adapter layer over the plain transformers calls.

Same prepared inputs, same model: `adapter.generate` vs `model.generate(**inputs)` and `adapter.forward` vs
`model(**inputs, output_hidden_states=True)`, interleaved, after a warmup, median of the repeats. Preprocessing
is shown against the reference route too (qwen-vl-utils + processor for Qwen; the processor sampling fully
decoded frames for SmolVLM), for information: it does different work (we decode only the sampled frames).
Default models: the tiny checkpoints, built on the spot, on CPU.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from vlm_app.testing.videos import make_clip


def _seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def paired_times(ours: Callable, reference: Callable, repeats: int, warmup: int = 2) -> dict:
    """Interleaved runs (ours, reference, ours, ...): medians of each, and the median of the per-pair ratios,
    which cancels slow drift and background load better than a ratio of medians."""
    for _ in range(warmup):
        ours(), reference()
    pairs = [(_seconds(ours), _seconds(reference)) for _ in range(repeats)]
    return {"ours": statistics.median(p[0] for p in pairs), "plain": statistics.median(p[1] for p in pairs),
            "overhead": statistics.median(p[0] / p[1] for p in pairs) - 1.0}


def _reference_preprocess(adapter, video: str, prompt: str) -> Callable:
    """The model card's preprocessing for the adapter's family, as a callable."""
    if adapter.family == "qwen2_5_vl":
        from qwen_vl_utils import process_vision_info

        messages = [{"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": "x"}]}]

        def qwen_reference():
            _, videos, kwargs = process_vision_info(messages, return_video_kwargs=True, return_video_metadata=True)
            frames, metadata = zip(*videos)
            return adapter.processor(text=[prompt], videos=list(frames), video_metadata=list(metadata),
                                     return_tensors="pt", **kwargs)
        return qwen_reference

    import av
    import numpy as np
    from transformers.video_utils import VideoMetadata

    def smol_reference():
        with av.open(video) as container:
            stream = container.streams.video[0]
            frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
            fps = float(stream.average_rate)
        metadata = VideoMetadata(total_num_frames=len(frames), fps=fps, duration=len(frames) / fps,
                                 width=frames.shape[2], height=frames.shape[1])
        return adapter.processor(text=[prompt], videos=[frames], video_metadata=[metadata], do_sample_frames=True,
                                 return_tensors="pt")
    return smol_reference


def bench_one(adapter, video: str, repeats: int, max_new_tokens: int) -> dict:
    from vlm_app.messages import conversation

    messages = conversation("Describe this video.", video=video)
    prepared = adapter.prepare(messages, max_new_tokens=max_new_tokens)
    inputs = prepared.inputs
    fixed = {"max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens, "do_sample": False}

    def plain_generate():
        with torch.inference_mode():
            return adapter.model.generate(**inputs, **fixed)

    def plain_forward():
        with torch.inference_mode():
            return adapter.model(**inputs, output_hidden_states=True, return_dict=True)

    generate = paired_times(lambda: adapter.generate(prepared, **fixed), plain_generate, repeats)
    forward = paired_times(lambda: adapter.forward(prepared), plain_forward, repeats)
    preprocess = paired_times(lambda: adapter.prepare(messages, max_new_tokens=max_new_tokens),
                                _reference_preprocess(adapter, video, prepared.prompt), max(3, repeats // 3))
    return {"model": adapter.info.model_id, "family": adapter.family, "prompt_tokens": prepared.num_tokens.total,
            "generate": generate, "forward": forward, "preprocess": preprocess}


def run_adapter_benchmark(models: list[str] | None, repeats: int = 15, max_new_tokens: int = 16,
                          threads: int = 1) -> int:
    from vlm_app.runtime import load_adapter
    from vlm_app.testing.tiny import build_tiny

    torch.set_num_threads(threads)  # fixed threads: the ratio should not depend on how busy other cores are
    with tempfile.TemporaryDirectory() as scratch:
        video = str(make_clip(Path(scratch) / "bench.mp4"))
        names = models if models else \
            [str(build_tiny(family, Path(scratch) / family)) for family in ("qwen2_5_vl", "smolvlm2")]
        results = [bench_one(load_adapter(name, device="cpu" if not models else "auto"), video, repeats,
                             max_new_tokens) for name in names]
    print(f"adapter overhead vs plain transformers ({repeats} interleaved pairs, {threads} thread(s); "
          "overhead = median of per-pair ratios - 1, + means we are slower)")
    header = f"{'family':<12} {'tokens':>6}  {'step':<10} {'ours ms':>9} {'plain ms':>9} {'overhead':>9}"
    print(header)
    for result in results:
        for step in ("generate", "forward", "preprocess"):
            timing = result[step]
            note = "  (different work, informational)" if step == "preprocess" else ""
            print(f"{result['family']:<12} {result['prompt_tokens']:>6}  {step:<10} {timing['ours'] * 1e3:>9.2f} "
                  f"{timing['plain'] * 1e3:>9.2f} {timing['overhead']:>+8.1%}{note}")
    worst = max(result[step]["overhead"] for result in results for step in ("generate", "forward"))
    print(f"worst generate/forward overhead: {worst:+.1%} (target <= +2%)")
    return 0
