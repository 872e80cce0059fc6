"""The CLI's describe and compare: one video (or image) -> one record; a folder of videos -> JSONL with a
progress bar and resume; several models -> a table. `chapters` (a dict of `describe_chapters` options) describes
each video segment by segment instead (`vlm_app.chapters`), resuming inside an unfinished video.

Every record comes from `vlm_app.service` (the one request layer; `service.build_record` defines its fields):
model id and revision, dtype, device, sampling options, generation options and seed, the frame indices and
timestamps actually shown, token counts and timings, and the answer's grounding boxes, if any.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from vlm_app.errors import OptionsError, VlmAppError
from vlm_app.folders import (FolderRun, check_source, collection_sources, describe_folder, describe_video,
                             segment_results)
from vlm_app.grounding import draw_boxes, parse_grounding
from vlm_app.prompts import resolve_prompt
from vlm_app.results import JsonlResults, check_resumed, same_source
from vlm_app.service import IMAGE_SUFFIXES, MemoryGuard, check_generation, compare, execute, is_image, one_turn

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


def memory_options(args) -> dict:
    """--max-memory (unset: auto) and --no-fit as `service.Request` fields."""
    from vlm_app.memory import parse_max_memory

    return {"max_memory": parse_max_memory(args.max_memory or "auto"), "fit": not args.no_fit}


def _print_answer_line(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run_describe_command(args, model_options: dict, sampling: dict, generation: dict) -> int:
    from vlm_app.runtime import ModelChoice

    source = args.source
    check_generation(generation)  # before a model is loaded for nothing
    is_folder = collection_sources(source) is not None
    chapters = _chapter_options(args, is_folder)
    prompt = _chapters_prompt(args) if chapters is not None else resolve_prompt(args.prompt, args.template)
    limits = _limits(args)
    resume = args.resume or args.retry_failed
    if resume and not args.out:
        raise OptionsError("--resume and --retry-failed need --out results.jsonl (the file to resume)")
    if args.batch_size > 1 and (chapters is not None or not is_folder):
        raise OptionsError("--batch-size batches the videos of a folder or list file, each described in one request "
                           "(not --chapters, not a single video)")
    if is_folder and args.dump_features:
        raise OptionsError("--dump-features works on one video, not a folder")
    if args.boxes_out and (is_folder or not is_image(source)):
        raise OptionsError(f"--boxes-out draws on an image; give an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if is_folder:
        emit = (lambda record: print(json.dumps(record), flush=True)) if args.json else None
        question = one_turn(prompt, source, sampling, generation, limits, **memory_options(args))
        run = FolderRun(args.out, resume, args.retry_failed, emit, chapters=chapters, batch_size=args.batch_size)
        records = describe_folder(ModelChoice(args.model, model_options), source, question, run)
        failed = [record for record in records if record["error"]]
        print(f"described {len(records) - len(failed)} video(s), {len(failed)} failed"
              + (f"; results in {args.out}" if args.out else ""), file=sys.stderr)
        return 0
    check_source(source)
    results = JsonlResults(args.out, inputs=[source]) if args.out else None
    recorded = results is not None and same_source(source) in results.start(resume, args.retry_failed)
    model = ModelChoice(args.model, model_options)
    if recorded:
        check_resumed(results, [source], model, prompt, sampling, generation, chapters)
        print(f"{source} is already in {args.out}; skipped (to describe it again delete its line there, or pass "
              "--retry-failed if it failed)", file=sys.stderr)
        return 0
    adapter = model.load()
    if chapters is not None:
        return _describe_chapters_one(args, adapter, prompt, sampling, generation, chapters, limits, results, resume)
    return _describe_one(args, adapter, prompt, sampling, generation, results, limits)


def _chapter_options(args, is_folder: bool) -> dict | None:
    """`describe_chapters` options from --chapters, --segment-seconds and --overlap (None without --chapters);
    the flags that cannot go with it fail here, before any model loads."""
    from vlm_app.chapters import check_exports

    chapter_flags = [flag for flag, value in (("--segment-seconds", args.segment_seconds), ("--overlap", args.overlap),
                                              ("--chapters-out", args.chapters_out)) if value]
    if not args.chapters:
        if chapter_flags:
            raise OptionsError(f"{chapter_flags[0]} goes with --chapters")
        return None
    if args.dump_features or args.boxes_out:
        raise OptionsError("--dump-features and --boxes-out work on one request; drop them or --chapters")
    if args.chapters_out and is_folder:
        raise OptionsError("--chapters-out writes one video's chapters; a folder's chapters are in the --out records")
    check_exports(args.chapters_out or [])
    return {"seconds": args.segment_seconds, "overlap": args.overlap or 0.0}


def _chapters_prompt(args) -> str:
    from vlm_app.chapters import DEFAULT_PROMPT as CHAPTER_PROMPT

    return resolve_prompt(args.prompt, args.template) if args.prompt or args.template else CHAPTER_PROMPT


def _limits(args):
    """The media limits of a describe run: the defaults, with --max-duration for plain requests."""
    from vlm_app.media import DEFAULT_LIMITS

    if args.max_duration is None:
        return None
    return DEFAULT_LIMITS.with_overrides(max_duration_seconds=args.max_duration)


def _describe_chapters_one(args, adapter, prompt: str, sampling: dict, generation: dict, chapters: dict, limits,
                           results: JsonlResults | None, resume: bool) -> int:
    """One video in chapters: each chapter printed as it finishes (or the record with --json), then the exports."""
    from vlm_app.chapters import segment_line, write_chapters

    segments = segment_results(FolderRun(args.out, resume, args.retry_failed, chapters=chapters), [args.source])
    show = None if args.json else (lambda segment: print(segment_line(segment), flush=True))
    request = one_turn(prompt, args.source, sampling, generation, limits, **memory_options(args))
    try:
        record = describe_video(adapter, request, chapters, segments, progress=True, on_segment=show)
    finally:
        if segments is not None:
            segments.close()
    if results is not None:
        with results:
            results.add(record)
    if args.json:
        print(json.dumps(record))
    elif record["summary"] is not None:
        print(f"\nSummary: {record['summary']}")
    for path in args.chapters_out or []:
        write_chapters(record, path)
        print(f"chapters: {path}", file=sys.stderr)
    if record["error"] is not None:
        raise VlmAppError(record["error"])
    return 0


def _describe_one(args, adapter, prompt: str, sampling: dict, generation: dict, results: JsonlResults | None,
                  limits=None) -> int:
    """One video or image: the answer (streamed to a terminal), its record in --out, then features and boxes."""
    source = args.source
    streaming = not args.json and (args.stream or sys.stdout.isatty())
    record = execute(adapter, one_turn(prompt, source, sampling, generation, limits, **memory_options(args)),
                     on_text=_print_answer_line if streaming else None)
    if results is not None:
        with results:
            results.add(record)
    if args.json:
        print(json.dumps(record))
    elif streaming:
        print()
    elif record["error"] is None:
        print(record["answer"])
    if record["error"] is not None:
        raise VlmAppError(record["error"])
    if args.dump_features:
        path = dump_features(adapter, source, prompt, sampling, args.dump_features, generation.get("max_new_tokens"))
        print(f"features: {path}", file=sys.stderr)
    if args.boxes_out:
        drawn = save_boxes_image(source, record["answer"], args.boxes_out)
        hint = "" if drawn else " (the answer has no <|det|> boxes; ask e.g. '<|ref|>the dog<|/ref|>')"
        print(f"boxes: {drawn} drawn on {args.boxes_out}{hint}", file=sys.stderr)
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


def run_compare_command(args, model_options: dict, sampling: dict, generation: dict) -> int:
    """Each model in turn: load, describe, unload (so only one model is in memory at a time). A LoRA adapter named
    in --models (`--lora NAME=PATH`) answers on its base, which loads once with all its adapters."""
    from vlm_app.lora import make_offer, parse_lora_flags
    from vlm_app.runtime import ModelCache

    names = args.models
    if len(names) < 2:
        raise OptionsError("--models needs at least two models to compare (a,b or a b)")
    adapters = dict(parse_lora_flags(args.lora))
    offer = make_offer([name for name in names if name not in adapters], args.lora)
    unlisted = [name for name in offer.loras if name not in names]
    if unlisted:
        raise OptionsError(f"--lora {', '.join(unlisted)}: name each adapter in --models too (where its row goes)")
    prompt = resolve_prompt(args.prompt, args.template)
    check_source(args.source)
    request = one_turn(prompt, args.source, sampling, generation, **memory_options(args))
    held = ModelCache(budget_bytes=1)  # one base model at a time, with its adapters
    records = [run.execute() for _, run in compare(names, request,
                                                   lambda name: offer.adapter(held, name, **model_options))]
    held.unload()
    if args.json:
        for record in records:
            print(json.dumps(record))
        return 0
    print(format_table([title for title, _ in COMPARE_COLUMNS], [compare_row(r) for r in records]))
    for record in records:
        print(f"\n[{record['model']}]\n{record['answer'] if record['error'] is None else 'error: ' + record['error']}")
    return 0
