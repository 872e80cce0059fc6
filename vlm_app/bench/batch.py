"""`python -m vlm_app bench batch`: describing a folder sequentially (one process) vs on a local Ray.

Both paths do the same work per video, split the same way: decode + sample (the adapter's `load_media`), then the
processor and generation (`service.execute` on the sampled video). The sequential run times each part, which shows
where the time goes; the Ray run reports end-to-end throughput (Ray and actor start-up included) and the
steady-state rate between its first and last record. On a 2-core machine expect little gain: one decode worker
and one model replica share the two cores, and each actor imports torch and loads the model once.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from vlm_app.prompts import DEFAULT_PROMPT
from vlm_app.messages import conversation
from vlm_app.memory import MemoryLimit
from vlm_app.service import execute, one_turn
from vlm_app.testing.videos import make_textured_clip


def run_batch_benchmark(videos: int = 12, seconds: int = 4, max_new_tokens: int = 16, model: str | None = None) -> int:
    from vlm_app.distributed import Cluster, Job, connected, default_decode_workers, describe_on_ray, import_ray
    from vlm_app.runtime import load_adapter
    from vlm_app.testing.tiny import build_tiny

    ray = import_ray()
    generation = {"max_new_tokens": max_new_tokens, "temperature": 0.0}
    with tempfile.TemporaryDirectory(prefix="vlm_app_bench_batch_") as scratch:
        scratch = Path(scratch)
        folder = scratch / "videos"
        folder.mkdir()
        for number in range(videos):
            make_textured_clip(folder / f"clip{number:02d}.mp4", seconds, 24, 640, 360)
        model = model or str(build_tiny("smolvlm2", scratch / "tiny_smolvlm2"))
        print(f"bench batch: {videos} clips ({seconds} s, 640x360, 24 fps), model {model}, "
              f"{max_new_tokens} new tokens, {os.cpu_count()} CPUs")

        started = time.perf_counter()
        adapter = load_adapter(model, device="cpu")
        load_s = time.perf_counter() - started
        parts = {"decode+sample": 0.0, "processor": 0.0, "generation": 0.0}
        answers = {}
        started = time.perf_counter()
        for path in sorted(folder.glob("*.mp4")):
            tick = time.perf_counter()
            video = adapter.load_media(conversation(DEFAULT_PROMPT, video=str(path)), {}, max_new_tokens)[0]
            parts["decode+sample"] += time.perf_counter() - tick
            record = execute(adapter, one_turn(DEFAULT_PROMPT, video, {}, generation, label=str(path)))
            parts["processor"] += record["timings"]["preprocess_s"]
            parts["generation"] += record["timings"]["prefill_s"] + record["timings"]["decode_s"]
            answers[record["source"]] = record["answer"]
        sequential_s = time.perf_counter() - started
        print(f"sequential: model load {load_s:.2f} s; {videos} videos in {sequential_s:.2f} s -> "
              f"{videos / sequential_s:.2f} videos/s (torch threads: {_torch_threads()})")
        for name, total in parts.items():
            print(f"  {name:<14} {total / videos * 1e3:8.1f} ms/video  {total / sequential_s:6.1%}")

        started = time.perf_counter()
        with connected(ray, Cluster()):  # a local Ray, or the one this process is already attached to
            ray_start_s = time.perf_counter() - started
            workers = default_decode_workers(ray, Cluster())
            arrivals, records = [], []
            job = Job(model=model, question=one_turn(DEFAULT_PROMPT, str(folder), {}, generation),
                      model_options={"device": "cpu"})
            started = time.perf_counter()
            describe_on_ray(folder, scratch / "ray.jsonl", job, Cluster(), progress=False,
                            emit=lambda record: (arrivals.append(time.perf_counter()), records.append(record)))
            ray_s = time.perf_counter() - started
    after_first = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else float("nan")
    print(f"ray (local, {workers} decode worker(s), 1 model replica): ray.init {ray_start_s:.2f} s; {videos} videos in "
          f"{ray_s:.2f} s -> {videos / ray_s:.2f} videos/s end to end; first record after {arrivals[0] - started:.2f} s "
          f"(actors import torch and load the processor/model), then {after_first:.2f} videos/s")
    print(f"throughput ray/sequential: {sequential_s / ray_s:.2f}x end to end, "
          f"{after_first / (videos / sequential_s):.2f}x after the first record (decoding ran ahead during start-up)")
    ray_generation = sum(record["timings"]["prefill_s"] + record["timings"]["decode_s"] for record in records)
    print(f"  ray model replica: generation {ray_generation / videos * 1e3:.1f} ms/video (torch threads there: Ray "
          "sets one per reserved CPU)")
    same = sum(answers.get(record["source"]) == record["answer"] for record in records)
    print(f"answers equal to the sequential ones: {same}/{videos}")
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# ---- batched generation (`bench batch`) ----------------------------------------------------------------------

def run_batching_benchmark(videos: int = 16, seconds: int = 30, max_new_tokens: int = 128,
                           batch_sizes: tuple[int, ...] = (1, 4, 8), model: str | None = None, size: str = "256m",
                           threads: int | None = None) -> int:
    """A folder's worth of requests (`videos` textured clips of `seconds`) through `batching.execute_batch` at each
    batch size, on the same model in this process: videos per minute, answer tokens per second, the measured peak
    (RSS on CPU) and the batch pre-flight's estimate, and each rate against batch size 1 measured in the same run.
    Default model: real-size random-weight SmolVLM2 (`size`) on CPU; random weights never end an answer early
    (the end-of-answer token is switched off), so every answer is `max_new_tokens` long at every batch size."""
    import shutil

    import torch

    from vlm_app import memory
    from vlm_app.batching import batch_estimate, execute_batch, prepared_run
    from vlm_app.memory import format_bytes

    if threads:
        torch.set_num_threads(threads)
    adapter = _bench_adapter(model, size)
    adapter.model.generation_config.eos_token_id = None  # every answer runs to max_new_tokens
    with tempfile.TemporaryDirectory(prefix="vlm_app_bench_batching_") as scratch:
        first = make_textured_clip(Path(scratch) / "clip00.mp4", seconds, 8, 640, 360, preset="ultrafast")
        clips = [first] + [shutil.copy(first, Path(scratch) / f"clip{number:02d}.mp4") for number in range(1, videos)]
        generation = {"max_new_tokens": max_new_tokens, "temperature": 0.0}
        requests = lambda: [one_turn(DEFAULT_PROMPT, str(clip), {}, generation, memory=MemoryLimit(None))  # noqa: E731
                            for clip in clips]
        execute_batch(adapter, requests()[:1], max_batch=1)  # warm-up (first-call costs)
        one = prepared_run(adapter, requests()[0])  # every clip is the same: one shape stands for each row
        shape = adapter.prepared_shape(one.prepared, max_new_tokens)
        print(f"bench batch: {videos} textured clips of {seconds} s (640x360), model {adapter.info.model_id}, "
              f"{max_new_tokens} new tokens each, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs "
              "(shared with whatever else runs on this machine)")
        print(f"{'batch':>5} {'videos/min':>11} {'tokens/s':>9} {'wall s':>8} {'peak RSS':>10} {'estimate':>10} "
              f"{'vs batch 1':>10} {'ceiling':>8}")
        baseline = phases = None
        for batch_size in batch_sizes:
            memory.reset_peak("cpu")
            started = time.perf_counter()
            records = execute_batch(adapter, requests(), max_batch=batch_size)
            wall = time.perf_counter() - started
            peak = memory.peak_bytes("cpu")
            estimate = batch_estimate(adapter, [shape] * batch_size, ahead=shape).total
            tokens = sum(record["timings"]["new_tokens"] for record in records if record["timings"])
            rate = videos / wall * 60
            baseline = baseline or rate
            phases = phases or _phases(records, batch_size)
            print(f"{batch_size:>5} {rate:>11.2f} {tokens / wall:>9.1f} {wall:>8.1f} {format_bytes(peak):>10} "
                  f"{format_bytes(estimate):>10} {rate / baseline:>9.2f}x {_ceiling(phases, batch_size):>7.2f}x")
        print(f"the reference's time per video: preprocessing {phases['preprocess_s']:.3g} s (overlapped with the "
              f"model), vision encoder and prompt prefill {phases['prefill_s']:.3g} s, decoding {phases['decode_s']:.3g} s."
              " ceiling: the ratio if a batch of N decoded for the price of one and prefilled each row as before "
              "(prefill is compute-bound on a CPU: a batch does not make it cheaper)")
    return 0


def _phases(records: list[dict], batch_size: int) -> dict:
    """Seconds per video of the reference run (`batch_size` videos shared each prefill and decode)."""
    timed = [record["timings"] for record in records if record["timings"]]
    return {name: sum(timing[name] for timing in timed) / len(timed) / (1 if name == "preprocess_s" else batch_size)
            for name in ("preprocess_s", "prefill_s", "decode_s")}


def _ceiling(phases: dict, batch_size: int) -> float:
    """Amdahl's bound on videos per minute against the reference, with preprocessing hidden behind the model."""
    return (phases["prefill_s"] + phases["decode_s"]) / (phases["prefill_s"] + phases["decode_s"] / batch_size)


def _bench_adapter(model: str | None, size: str):
    """A checkpoint on CPU, or real-size random-weight SmolVLM2 of `size` (`Adapter.real_size`)."""
    import torch

    from vlm_app.bench.model import real_model
    from vlm_app.runtime import ModelInfo, load_adapter

    if model is not None:
        return load_adapter(model, device="cpu")
    model_class, config, processor, family_adapter = real_model("smolvlm2", size)
    torch.manual_seed(0)
    built = model_class._from_config(config, dtype=torch.float32).eval()
    info = ModelInfo(model_id=f"smolvlm2-{size} (random weights)", path="", family="smolvlm2", device="cpu",
                     dtype="float32")
    return family_adapter(built, processor, info)

