"""The CLI's describe and compare: one video (or image) -> one record; a folder of videos -> JSONL with a
progress bar and resume; several models -> a table. `chapters` (`chapters.ChapterOptions`) describes
each video segment by segment instead (`vlm_app.chapters`), resuming inside an unfinished video.

Every record comes from `vlm_app.service` (the one request layer; `service.build_record` defines its fields):
model id and revision, dtype, device, sampling options, generation options and seed, the frame indices and
timestamps actually shown, token counts and timings, and the answer's grounding boxes, if any.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm_app.chapters import ChapterOptions
from vlm_app.errors import OptionsError, VlmAppError
from vlm_app.folders import (FolderRun, check_source, collection_sources, describe_folder, describe_video,
                             segment_results)
from vlm_app.grounding import draw_boxes, parse_grounding
from vlm_app.results import JsonlResults, check_resumed, same_source
from vlm_app.service import IMAGE_SUFFIXES, MemoryGuard, Request, compare, execute, is_image, one_turn

def dump_features(adapter, source: Any, prompt: str, sampling: dict, path: str | Path,
                  max_new_tokens: int | None = None) -> Path:
    """Save every layer's hidden states (layers+1, L, D; embeddings first), the input ids, the visual-token map,
    the visual tokens' last-layer states and where the audio tokens are (a model that hears) to a .safetensors
    file, with the record's provenance as metadata.
    `max_new_tokens`: the answer budget the described record was prepared with (so the same frames are shown)."""
    from safetensors.torch import save_file

    with MemoryGuard("computing every layer's hidden states (--dump-features)", adapter.device):
        tensors, video = _features(adapter, source, prompt, sampling, max_new_tokens)
    metadata = {"source": str(source), "model": adapter.info.model_id, "revision": str(adapter.info.revision),
                "family": adapter.family, "dtype": adapter.info.dtype, "prompt": prompt,
                "frames_indices": json.dumps(list(video.frames_indices) if video else []),
                "timestamps": json.dumps(list(video.timestamps) if video else []), "sampling": json.dumps(sampling)}
    path = Path(path)
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(path), metadata=metadata)
    return path


def _features(adapter, source: Any, prompt: str, sampling: dict, max_new_tokens: int | None) -> tuple[dict, Any]:
    """The tensors `dump_features` saves (on the CPU) and the video shown, from one prepare and one forward pass."""
    import torch

    from vlm_app.media import SampledVideo

    prepared = adapter.prepare(one_turn(prompt, source).messages, max_new_tokens=max_new_tokens, **sampling)
    video = next((item for item in prepared.media if isinstance(item, SampledVideo)), None)
    output = adapter.forward(prepared, output_hidden_states=True)
    tensors = {"hidden_states": torch.stack([h[0] for h in output.hidden_states]).float().cpu(),
               "input_ids": prepared.inputs["input_ids"][0].cpu(),
               "visual_hidden": output.visual_hidden(-1).float().cpu(),
               "audio_positions": adapter.audio_positions(prepared).cpu(),
               **{f"visual_map.{name}": value for name, value in prepared.visual_map.tensors().items()}}
    return tensors, video


def save_boxes_image(source: Any, answer: str, path: str | Path) -> int:
    """Draw the answer's grounding boxes onto the source image (full resolution) and save it to `path`;
    returns how many boxes were drawn."""
    from vlm_app.media import DEFAULT_LIMITS
    from vlm_app.media.image import open_rgb_image

    boxes = parse_grounding(answer)
    draw_boxes(open_rgb_image(source, DEFAULT_LIMITS), boxes).save(path)
    return len(boxes)


@dataclass(frozen=True)
class Output:
    """Where and how `describe` shows its records: `out` (a JSONL of records, or with --engine ray .parquet),
    `resume` / `retry_failed` (the one resume rule of `vlm_app.results`), `json` (one JSON object per video on
    stdout), `stream` (the answer as it is generated), `dump_features` / `boxes_out` (one request's hidden states,
    one image's boxes) and `chapters_out` (one video's chapters: .json, .srt or .vtt files)."""

    out: str | None = None
    resume: bool = False
    retry_failed: bool = False
    json: bool = False
    stream: bool = False
    dump_features: str | None = None
    boxes_out: str | None = None
    chapters_out: tuple[str, ...] = ()

    @property
    def resumes(self) -> bool:
        return self.resume or self.retry_failed

    def emit(self):
        """What prints each record of a collection as it finishes (--json), or None."""
        return (lambda record: print(json.dumps(record), flush=True)) if self.json else None


def _print_answer_line(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run_describe(model, question: Request, output: Output = Output(), chapters: ChapterOptions | None = None,
                 batch_size: int = 1) -> int:
    """`describe SOURCE`: `question` (a request about SOURCE: prompt, sampling, generation, limits, memory limit)
    asked of SOURCE, or of each video of a folder or list file, with the model `model` (a `runtime.ModelChoice`,
    loaded once the request and the outputs are checked)."""
    source = question.label()
    is_folder = collection_sources(source) is not None
    _check_describe(source, is_folder, output, chapters, batch_size)
    if is_folder:
        run = FolderRun(output.out, output.resumes, output.retry_failed, output.emit(), chapters=chapters,
                        batch_size=batch_size)
        records = describe_folder(model, source, question, run)
        failed = [record for record in records if record["error"]]
        print(f"described {len(records) - len(failed)} video(s), {len(failed)} failed"
              + (f"; results in {output.out}" if output.out else ""), file=sys.stderr)
        return 0
    check_source(source)
    results = JsonlResults(output.out, inputs=[source]) if output.out else None
    if results is not None and same_source(source) in results.start(output.resumes, output.retry_failed):
        check_resumed(results, [source], model, question, chapters)
        print(f"{source} is already in {output.out}; skipped (to describe it again delete its line there, or pass "
              "--retry-failed if it failed)", file=sys.stderr)
        return 0
    adapter = model.load()
    if chapters is not None:
        return _describe_chapters_one(adapter, question, output, chapters, results)
    return _describe_one(adapter, question, output, results)


def _check_describe(source, is_folder: bool, output: Output, chapters: ChapterOptions | None,
                    batch_size: int) -> None:
    """The options that cannot go together, refused before any model loads."""
    if output.resumes and not output.out:
        raise OptionsError("--resume and --retry-failed need --out results.jsonl (the file to resume)")
    if batch_size > 1 and (chapters is not None or not is_folder):
        raise OptionsError("--batch-size batches the videos of a folder or list file, each described in one request "
                           "(not --chapters, not a single video)")
    if is_folder and output.dump_features:
        raise OptionsError("--dump-features works on one video, not a folder")
    if output.boxes_out and (is_folder or not is_image(source)):
        raise OptionsError(f"--boxes-out draws on an image; give an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if chapters is not None and (output.dump_features or output.boxes_out):
        raise OptionsError("--dump-features and --boxes-out work on one request; drop them or --chapters")
    if output.chapters_out and is_folder:
        raise OptionsError("--chapters-out writes one video's chapters; a folder's chapters are in the --out records")


def _describe_chapters_one(adapter, question: Request, output: Output, chapters: ChapterOptions,
                           results: JsonlResults | None) -> int:
    """One video in chapters: each chapter printed as it finishes (or the record with --json), then the exports."""
    from vlm_app.chapters import segment_line, write_chapters

    run = FolderRun(output.out, output.resumes, output.retry_failed, chapters=chapters)
    segments = segment_results(run, [question.label()])
    show = None if output.json else (lambda segment: print(segment_line(segment), flush=True))
    try:
        record = describe_video(adapter, question, chapters, segments, progress=True, on_segment=show)
    finally:
        if segments is not None:
            segments.close()
    if results is not None:
        with results:
            results.add(record)
    if output.json:
        print(json.dumps(record))
    elif record["summary"] is not None:
        print(f"\nSummary: {record['summary']}")
    for path in output.chapters_out:
        write_chapters(record, path)
        print(f"chapters: {path}", file=sys.stderr)
    if record["error"] is not None:
        raise VlmAppError(record["error"])
    return 0


def _describe_one(adapter, question: Request, output: Output, results: JsonlResults | None) -> int:
    """One video or image: the answer (streamed to a terminal), its record in --out, then features and boxes."""
    source = question.label()
    streaming = not output.json and (output.stream or sys.stdout.isatty())
    record = execute(adapter, question, on_text=_print_answer_line if streaming else None)
    if results is not None:
        with results:
            results.add(record)
    if output.json:
        print(json.dumps(record))
    elif streaming:
        print()
    elif record["error"] is None:
        print(record["answer"])
    if record["error"] is not None:
        raise VlmAppError(record["error"])
    if output.dump_features:
        path = dump_features(adapter, source, question.prompt(), question.media, output.dump_features,
                             question.max_new_tokens)
        print(f"features: {path}", file=sys.stderr)
    if output.boxes_out:
        drawn = save_boxes_image(source, record["answer"], output.boxes_out)
        hint = "" if drawn else " (the answer has no <|det|> boxes; ask e.g. '<|ref|>the dog<|/ref|>')"
        print(f"boxes: {drawn} drawn on {output.boxes_out}{hint}", file=sys.stderr)
    return 0


def run_on_ray(model, question: Request, output: Output, cluster, batch_size: int = 1) -> int:
    """`describe SOURCE --engine ray --out FILE`: `question` asked of each video of SOURCE on Ray Data
    (`distributed.describe_on_ray`); `model`: a `runtime.ModelChoice`, `cluster`: a `distributed.Cluster`."""
    from vlm_app.distributed import Job, describe_on_ray, import_ray

    import_ray()
    if not output.out:
        raise OptionsError("--engine ray writes its results to a file: add --out results.jsonl (or results.parquet)")
    if output.stream or output.dump_features:
        raise OptionsError("--stream and --dump-features work with --engine local (one video), not with --engine ray")
    job = Job(model=model.name, question=question, model_options=model.options, batch_size=batch_size)
    described, failed = describe_on_ray(question.label(), output.out, job, cluster, resume=output.resumes,
                                        retry_failed=output.retry_failed, emit=output.emit())
    print(f"described {described} video(s), {failed} failed; results in {output.out}", file=sys.stderr)
    return 0


COMPARE_COLUMNS = (("model", "{}"), ("frames", "{}"), ("visual tokens", "{}"), ("preprocess s", "{:.3f}"),
                   ("first token s", "{:.3f}"), ("tokens/s", "{:.1f}"), ("peak MiB", "{:.0f}"))


def compare_row(record: dict) -> list[str]:
    timings = record["timings"] or {}
    values = [record["model"], len(record["frames_indices"]), record["num_visual_tokens"],
              timings.get("preprocess_s", 0.0), timings.get("prefill_s", 0.0), timings.get("tokens_per_s", 0.0),
              timings.get("peak_memory_bytes", 0) / 2**20]
    return [fmt.format(value) for (_, fmt), value in zip(COMPARE_COLUMNS, values)]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in [header, *rows])


def run_compare(names: list[str], question: Request, model_options: dict, loras: list[str] | None = None,
                as_json: bool = False) -> int:
    """`compare`: each model in turn loads, describes and unloads (so only one model is in memory at a time). A
    LoRA adapter named in `names` (`loras`: NAME=PATH) answers on its base, which loads once with all its
    adapters."""
    from vlm_app.lora import make_offer, parse_lora_flags
    from vlm_app.runtime import ModelCache

    if len(names) < 2:
        raise OptionsError("--models needs at least two models to compare (a,b or a b)")
    adapters = dict(parse_lora_flags(loras))
    offer = make_offer([name for name in names if name not in adapters], loras)
    unlisted = [name for name in offer.loras if name not in names]
    if unlisted:
        raise OptionsError(f"--lora {', '.join(unlisted)}: name each adapter in --models too (where its row goes)")
    check_source(question.label())
    held = ModelCache(budget_bytes=1)  # one base model at a time, with its adapters
    records = [run.execute() for _, run in compare(names, question,
                                                   lambda name: offer.adapter(held, name, **model_options))]
    held.unload()
    if as_json:
        for record in records:
            print(json.dumps(record))
        return 0
    print(format_table([title for title, _ in COMPARE_COLUMNS], [compare_row(r) for r in records]))
    for record in records:
        print(f"\n[{record['model']}]\n{record['answer'] if record['error'] is None else 'error: ' + record['error']}")
    return 0
