"""Collections: the videos a folder or list file names, and a folder run — the same question about each video,
one JSON line per video as it finishes, resumable, in batches (`vlm_app.batching`), or segment by segment with
chapters (`vlm_app.chapters`), resuming inside an unfinished video."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from vlm_app.chapters import ChapterOptions, describe_chapters
from vlm_app.errors import OptionsError
from vlm_app.results import JsonlResults, check_resumed, same_source, segments_path
from vlm_app.service import Request, execute

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp",
                  ".ogv", ".m2ts", ".mts"}
LIST_SUFFIXES = (".txt", ".lst", ".list")  # one video path or URL per line


def check_source(source: Any) -> None:
    """Fail in milliseconds, before any model loads, on a source that cannot work: a missing, empty or
    oversized local file, an unsupported URL scheme, something that is no source at all. http(s) and data: sources
    are left to the media pipeline (checking them here would mean fetching them twice), and so are media already in
    memory (frames, an image, a sampled video)."""
    from PIL import Image

    from vlm_app.media import DEFAULT_LIMITS, SampledVideo
    from vlm_app.media.sources import local_file

    if isinstance(source, (list, tuple, Image.Image, SampledVideo)):
        return
    if isinstance(source, (str, os.PathLike)) and urlparse(os.fspath(source)).scheme in ("http", "https", "data"):
        return
    with local_file(source, DEFAULT_LIMITS):  # which names what is wrong with any other source
        pass


def find_videos(folder: str | Path) -> list[Path]:
    """Video files under `folder` (recursive, into linked folders too, each folder once, so a link loop ends), by
    extension, in a stable order. Hidden names are skipped: `.DS_Store`, macOS's `._clip.mp4` (AppleDouble
    metadata, not video) and dot folders such as `.Trashes`."""
    videos, seen = [], set()
    for root, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        folders[:] = [] if real in seen else [name for name in folders if not name.startswith(".")]
        if real in seen:
            continue
        seen.add(real)
        videos += [Path(root, name) for name in files if not name.startswith(".")
                   and Path(name).suffix.lower() in VIDEO_SUFFIXES and os.path.isfile(os.path.join(root, name))]
    return sorted(videos)


def collection_sources(source: Any) -> list[str] | None:
    """The videos a folder (recursive) or a list file (one path or URL per line; blank lines and # comments
    skipped; relative paths from the current folder) names, each once, for every engine; None when `source` is a
    single video or image."""
    if not isinstance(source, (str, Path)) or not str(source).strip():  # "" is no folder (Path("") is ".")
        return None
    path = Path(source)
    if path.is_dir():
        videos = [str(video) for video in find_videos(path)]
        if not videos:
            raise OptionsError(f"no video files in {path} (looked for {', '.join(sorted(VIDEO_SUFFIXES))})")
        return videos
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        # utf-8-sig: Windows editors start the file with a byte order mark; surrogateescape: a file name that is
        # not UTF-8 is still the name on disk
        lines = [line.strip() for line in path.read_bytes().decode("utf-8-sig", "surrogateescape").splitlines()]
        sources: dict[str, str] = {}
        for line in lines:
            if line and not line.startswith("#"):
                sources.setdefault(same_source(line), line)  # a video listed twice is described once
        if not sources:
            raise OptionsError(f"{path} lists no videos (one path or URL per line)")
        return list(sources.values())
    return None


@dataclass
class FolderRun:
    """How a folder run writes and paces its records: `out_path` (JSONL, one line per video as it finishes),
    `resume` / `retry_failed` (the one resume rule of `vlm_app.results`), `emit` (called with each record),
    `progress` (a bar on stderr), `chapters` (each video segment by segment) or
    `batch_size` (videos generating in one batch)."""

    out_path: str | Path | None = None
    resume: bool = False
    retry_failed: bool = False
    emit: Callable[[dict], None] | None = None
    progress: bool = True
    chapters: ChapterOptions | None = None
    batch_size: int = 1


def describe_folder(adapter, folder: str | Path, question: Request, run: FolderRun = FolderRun()) -> list[dict]:
    """`question` (a request about one video: prompt, system prompt, sampling, generation, limits, memory) asked
    of every video of a folder or list file. `adapter`: the model, or a `runtime.ModelChoice`, loaded once the
    outputs are open and the resumed records checked, so that a bad output or a resume with other settings fails
    before a model loads for nothing; the records a resumed run keeps must have been made with its model and options
    (`results.check_resumed`). Without chapters, up to `run.batch_size` videos generate in one batch, and the next
    video is decoded while the model generates (`vlm_app.batching.execute_batch`)."""
    from tqdm import tqdm

    videos = collection_sources(folder)
    if videos is None:
        raise OptionsError(f"{folder} is neither a folder nor a list file ({', '.join(LIST_SUFFIXES)})")
    results = JsonlResults(run.out_path, inputs=[folder, *videos]) if run.out_path else None
    skip = results.start(run.resume, run.retry_failed) if results is not None else set()
    segments = segment_results(run, [folder, *videos])
    if results is not None:
        check_resumed(results, videos, adapter, question, run.chapters)
    records = []
    todo = [video for video in videos if same_source(video) not in skip]
    adapter = _loaded(adapter) if todo else adapter  # a resumed run with nothing left to do loads no model
    bar = tqdm(total=len(todo), desc="describe", unit="video", disable=not run.progress, file=sys.stderr)

    def finished(index: int, record: dict) -> None:
        records.append(record)
        if results is not None:
            results.add(record)
        if run.emit is not None:
            run.emit(record)
        bar.update()

    try:
        if run.chapters is None:
            from vlm_app.batching import execute_batch

            execute_batch(adapter, [question.about(video) for video in todo], max_batch=run.batch_size,
                          on_record=finished)
        else:
            for index, video in enumerate(todo):
                finished(index, describe_video(adapter, question.about(video), run.chapters, segments, run.progress))
    finally:
        bar.close()
        for output in (results, segments):
            if output is not None:
                output.close()
    return records


def _loaded(adapter):
    """`adapter` itself, or the model a `runtime.ModelChoice` names, loaded."""
    from vlm_app.runtime import ModelChoice

    return adapter.load() if isinstance(adapter, ModelChoice) else adapter


def segment_results(run: FolderRun, inputs: list) -> JsonlResults | None:
    """The sidecar of finished segments of a chapters run with an output (started as the output is)."""
    if run.chapters is None or not run.out_path:
        return None
    segments = JsonlResults(segments_path(run.out_path), key="key", inputs=inputs)
    segments.start(run.resume, run.retry_failed)
    return segments


def describe_video(adapter, request: Request, chapters: ChapterOptions | None = None, segments: JsonlResults | None = None,
                   progress: bool = False, on_segment: Callable[[dict], None] | None = None) -> dict:
    """One video's record: one request, or with `chapters` one per segment (finished segments in `segments` are
    reused, new ones written there as they finish)."""
    if chapters is None:
        return execute(adapter, request)

    done = {key: {name: value for name, value in record.items() if name != "source"}
            for key, record in (segments.kept if segments is not None else {}).items()}

    def finished(segment: dict) -> None:
        if segments is not None:
            segments.add({"source": str(request.label()), **segment})
        if on_segment is not None:
            on_segment(segment)

    return describe_chapters(adapter, request, chapters, done=done, on_segment=finished,
                             progress=progress)
