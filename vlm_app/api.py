"""The Python API: `load` a model into its adapter, `describe` a video or a folder, `describe_chapters` a long
video segment by segment.

    from vlm_app import load, describe, describe_chapters
    adapter = load("smolvlm2-256m")                       # or a hub id, or a local checkpoint folder
    record = describe("clip.mp4", model=adapter, prompt="What happens?", fps=1)
    prepared = adapter.prepare([{"role": "user", "content": [{"type": "video", "video": "clip.mp4"},
                                                             {"type": "text", "text": "Describe."}]}])
    out = adapter.forward(prepared, output_hidden_states=True)   # logits, hidden states, visual_hidden(layer)
    chapters = describe_chapters("talk.mp4", model=adapter)      # record["chapters"], record["summary"]

`describe` records running out of memory as the record's `error` (`vlm_app.errors.OutOfMemory`); around your own
adapter calls, `with vlm_app.service.MemoryGuard("the forward pass", adapter.device): ...` does the same.
"""

from __future__ import annotations

from vlm_app.adapters.registry import DEFAULT_MODEL
from vlm_app.folders import FolderRun, check_source, collection_sources, describe_folder
from vlm_app.prompts import DEFAULT_PROMPT
from vlm_app.memory import MemoryLimit
from vlm_app.messages import conversation
from vlm_app.service import Request, check_generation, execute, one_turn


def load(name_or_path: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto", attn: str = "auto",
         quantization: str | None = None, lora_adapter: str | None = None, revision: str | None = None,
         merge: bool = False):
    """Load a model (short name, hub id or folder) into its family's adapter; `lora_adapter`: a peft LoRA (folder or
    hub id) applied unmerged, or folded into the weights with `merge`."""
    from vlm_app.runtime import load_adapter

    return load_adapter(name_or_path, device=device, dtype=dtype, attn=attn, quantization=quantization,
                        lora_adapter=lora_adapter, revision=revision, merge=merge)


def describe(source, model=DEFAULT_MODEL, prompt: str = DEFAULT_PROMPT, out: str | None = None,
             resume: bool = False, generation: dict | None = None, max_memory="auto", fit: bool = True,
             **sampling) -> dict | list[dict]:
    """Describe a video (returns its record) or every video of a folder or list file (returns the records; with
    `out`, also appends them to that JSONL). `model` is a name/path (loaded once, kept in the runtime cache) or an adapter.
    `max_memory` (bytes, "12GB" or "auto") lowers each video to fit, unless `fit=False` (`service.Request`)."""
    from vlm_app.runtime import CACHE

    is_folder = collection_sources(source) is not None
    if not is_folder:
        check_source(source)  # before a model is loaded for nothing
    check_generation(generation or {})
    adapter = CACHE.get(model) if isinstance(model, str) else model
    question = one_turn(prompt, source, sampling, generation, memory=MemoryLimit(max_memory, fit))
    if is_folder:
        return describe_folder(adapter, source, question, FolderRun(out, resume, progress=False))
    return execute(adapter, question)


def describe_chapters(source, model=DEFAULT_MODEL, prompt: str | None = None, segment_seconds: float | None = None,
                      overlap: float = 0.0, generation: dict | None = None, limits=None, progress: bool = False,
                      max_memory=None, fit: bool = True, system: str | None = None, **sampling) -> dict:
    """A long video as chapters: one request per segment, merged into `chapters` ([{start, end, text}] from 0 to the
    duration) with a `summary` (see `vlm_app.chapters.describe_chapters`, which the CLI's --chapters calls);
    `system`: a system prompt for every request."""
    from vlm_app.chapters import DEFAULT_PROMPT as CHAPTER_PROMPT
    from vlm_app.chapters import ChapterOptions
    from vlm_app.chapters import describe_chapters as describe_in_chapters
    from vlm_app.runtime import CACHE

    check_source(source)
    request = Request(conversation(prompt or CHAPTER_PROMPT, video=source, system=system), sampling,
                      dict(generation or {}), limits, memory=MemoryLimit(max_memory, fit))
    adapter = CACHE.get(model) if isinstance(model, str) else model
    return describe_in_chapters(adapter, request, ChapterOptions(segment_seconds, overlap), progress=progress)
