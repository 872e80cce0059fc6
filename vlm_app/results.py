"""Results files of `describe` (both engines): one record per video, written as each finishes, resumable.

The resume rule, the same for every engine and format: a resumed run skips every source already recorded in the
output, failed ones included, so no video is ever recorded twice. To describe a failed video again, delete its
line (or pass `--retry-failed`, which drops the failed records from the output before the run and retries them).
Without resume the output starts empty. Sources are compared by `same_source` (`a.mp4` and `./a.mp4` are one
video). An output is locked while a run writes it, so a second run on it is refused.

A chapters run (`describe --chapters`) follows the same rule one level down: each finished segment of a video is
written at once to a sidecar next to the output (`segments_path`: `r.jsonl` -> `r.segments.jsonl`), keyed by the
video, the segment's bounds, the model and every option; a resumed run skips the videos in the output and, in a
video that was not finished, the segments in the sidecar (`--retry-failed` drops the failed ones from both).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from vlm_app.errors import OptionsError

try:
    import fcntl
except ImportError:  # Windows: outputs are not locked
    fcntl = None


def sources_to_skip(records: Iterable[dict], retry_failed: bool = False, key: str = "source") -> set[str]:
    """The sources (by `same_source`; or other `key`s) a resumed run skips: every recorded one, less the failed ones
    with `retry_failed`."""
    name = same_source if key == "source" else str
    return {name(record[key]) for record in records if not (retry_failed and record.get("error") is not None)}


def same_source(source) -> str:
    """A source as a resumed run compares it: a local path made absolute (`a.mp4`, `./a.mp4` and `/videos/a.mp4`
    run from /videos are one video), a URL as it is."""
    text = str(source)
    return text if "://" in text or text.startswith("data:") else os.path.abspath(text)


RESUMED_SETTINGS = ("model", "prompt", "sampling", "generation", "chapter_options")
RESUMED_MODEL_INFO = ("revision", "lora_adapter", "quantization")


def check_resumed(output, sources: Iterable, model, question, chapters=None) -> None:
    """Refuse to resume an output (`JsonlResults` or a Parquet folder, once started) whose records of `sources`
    were made with another model or other options: skipping those videos would pass the records off as this
    run's. `model`: a loaded adapter, or a `runtime.ModelChoice`, checked without loading its weights; `question`:
    the run's `service.Request` (its prompt, sampling and generation); `chapters`: its `chapters.ChapterOptions`, if
    any. Every engine calls this before its model loads."""
    sources = {same_source(source) for source in sources}
    kept = [record for record in output.kept.values() if same_source(record["source"]) in sources]
    if not kept:
        return
    from vlm_app.runtime import ModelChoice

    adapter = model.unloaded() if isinstance(model, ModelChoice) else model
    wanted = run_settings(adapter, question, chapters)
    for record in kept:
        found = resumed_settings(record)
        name = next((name for name in wanted if found.get(name) != wanted[name]), None)
        if name is not None:
            raise OptionsError(
                f"{output.path} holds records made with other settings than this run's ({record['source']}: "
                f"{name} {found.get(name)!r}, now {wanted[name]!r}); resuming would keep them as this run's. Resume "
                "with the same --model and options, give another --out, or drop --resume to start it afresh")


def run_settings(adapter, question, chapters=None) -> dict:
    """`resumed_settings` of the records this run will write, from its adapter (loaded or without weights)."""
    from vlm_app.service import build_record

    settings = resumed_settings(json.loads(json.dumps(build_record(adapter, question.about("")))))
    if chapters is not None:
        from vlm_app.chapters import default_segment_seconds

        seconds = chapters.seconds or default_segment_seconds(adapter, question.prompt(), dict(question.media),
                                                              dict(question.generation))
        settings["chapter_options"] = {"segment_seconds": seconds, "overlap": chapters.overlap}
    return settings


def resumed_settings(record: dict) -> dict:
    """What of a record says how it was made (not where: device, dtype and timings may differ). Nested fields may
    be JSON text, as a Parquet output stores them."""
    nested = {name: json.loads(value) if isinstance(value, str) else value
              for name, value in record.items() if name in ("sampling", "generation", "model_info")}
    info = nested.get("model_info") or {}
    return {**{name: nested.get(name, record.get(name)) for name in RESUMED_SETTINGS},
            "model": _model_name(record.get("model")),
            **{f"model_info.{name}": info.get(name) for name in RESUMED_MODEL_INFO}}


def _model_name(model: str | None) -> str | None:
    """A checkpoint folder however it is spelled; a hub id (`owner/name`) or a short name as it is, from any folder."""
    return os.path.abspath(model) if model and os.path.isdir(model) else model


def segments_path(out: str | Path) -> Path:
    """The sidecar of `out` where a chapters run keeps each finished segment: `r.jsonl` -> `r.segments.jsonl`."""
    out = Path(out)
    return out.with_name(f"{out.stem}.segments{out.suffix or '.jsonl'}")


def read_jsonl_records(path: Path, key: str = "source") -> list[dict]:
    """The records of a JSONL output (those with a `key`); a line that is not a whole JSON object (an interrupted
    write) is ignored."""
    if not path.is_file():
        return []
    records = []
    for line in _read_lines(path):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and key in record:
            records.append(record)
    return records


class JsonlResults:
    """A JSONL output: `start` opens the file, locked for this run, and says which sources (records' `key`) to skip,
    keeping those records in `kept`; `add` appends one record per line (flushed, so a crash loses at most the line
    being written); `close` ends the run. `inputs`: the run's sources (and list file), never to be overwritten."""

    def __init__(self, path: str | Path, key: str = "source", inputs: Iterable[str | Path] = ()):
        self.path = Path(path)
        self.key = key
        self.inputs = list(inputs)
        self.handle = None
        self.kept: dict[str, dict] = {}

    def start(self, resume: bool, retry_failed: bool = False) -> set[str]:
        self._check_inputs()
        self.handle = _open_locked(self.path, "a")
        if not resume:
            self.handle.truncate(0)
            return set()
        records = read_jsonl_records(self.path, self.key)
        if retry_failed and any(record.get("error") is not None for record in records):
            self._drop_failed()
        if _last_byte(self.path) not in (b"", b"\n"):  # an interrupted run's last line: new records get their own
            self.handle.write("\n")
        kept = [record for record in records if not (retry_failed and record.get("error") is not None)]
        self.kept = {record[self.key]: record for record in kept}
        return sources_to_skip(kept, key=self.key)

    def _check_inputs(self) -> None:
        """Starting afresh empties the output, so it must not be (a link to) one of the videos or the list file."""
        target = os.path.realpath(self.path)
        clash = next((str(item) for item in self.inputs if os.path.realpath(item) == target), None)
        if clash is not None:
            raise OptionsError(f"the output {self.path} is an input of this run ({clash}); writing it would destroy "
                               "that file: give another --out")

    def _drop_failed(self) -> None:
        """Rewrite the file without its failed records (other lines, a torn one included, are kept as they are)."""
        kept = []
        for line in _read_lines(self.path):
            try:
                failed = json.loads(line).get("error") is not None
            except (ValueError, AttributeError):
                failed = False
            if not failed:
                kept.append(line + "\n")
        partial = self.path.with_name(self.path.name + ".partial")
        handle = _open_locked(partial, "w")  # locked before it takes the output's place
        handle.write("".join(kept))
        handle.flush()
        os.replace(partial, self.path)  # never a half-written results file
        self.handle.close()
        self.handle = handle

    def add(self, record: dict) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> "JsonlResults":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_lines(path: Path) -> list[str]:
    # surrogateescape: a stray byte that is not UTF-8 is kept as it is by a rewrite, never a crash
    return path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()


def _open_locked(path: Path, mode: str):
    """`path` opened for writing and locked, so that a second run on the same output is refused, not interleaved
    (or emptied under the first)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open(mode, encoding="utf-8", errors="surrogateescape")
    except IsADirectoryError:
        raise OptionsError(f"the output {path} is a folder; give a file name such as {path / 'results.jsonl'}") \
            from None
    except OSError as error:
        raise OptionsError(f"cannot write the output {path}: {error.strerror}; give a path you can write") from None
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise OptionsError(f"another describe run is writing {path}; wait for it to finish or give another "
                               "--out") from None
    return handle


def _last_byte(path: Path) -> bytes:
    if not path.is_file() or path.stat().st_size == 0:
        return b""
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)
