"""Results files of `describe` (both engines): one record per video, written as each finishes, resumable.

The resume rule, the same for every engine and format: a resumed run skips every source already recorded in the
output, failed ones included, so no video is ever recorded twice. To describe a failed video again, delete its
line (or pass `--retry-failed`, which drops the failed records from the output before the run and retries them).
Without resume the output starts empty.

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


def sources_to_skip(records: Iterable[dict], retry_failed: bool = False, key: str = "source") -> set[str]:
    """The sources (or other `key`s) a resumed run skips: every recorded one, less the failed ones with
    `retry_failed`."""
    return {record[key] for record in records if not (retry_failed and record.get("error") is not None)}


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
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and key in record:
            records.append(record)
    return records


class JsonlResults:
    """A JSONL output: `start` prepares the file and says which sources (records' `key`) to skip, keeping those
    records in `kept`; `add` appends one record per line (flushed, so a crash loses at most the line being
    written); `close` ends the run."""

    def __init__(self, path: str | Path, key: str = "source"):
        self.path = Path(path)
        self.key = key
        self.handle = None
        self.kept: dict[str, dict] = {}

    def start(self, resume: bool, retry_failed: bool = False) -> set[str]:
        if not resume:
            self.path.unlink(missing_ok=True)
            return set()
        records = read_jsonl_records(self.path, self.key)
        if retry_failed and any(record.get("error") is not None for record in records):
            self._drop_failed()
        skip = sources_to_skip(records, retry_failed, self.key)
        self.kept = {record[self.key]: record for record in records if record[self.key] in skip}
        return skip

    def _drop_failed(self) -> None:
        """Rewrite the file without its failed records (other lines, a torn one included, are kept as they are)."""
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                failed = json.loads(line).get("error") is not None
            except (ValueError, AttributeError):
                failed = False
            if not failed:
                kept.append(line + "\n")
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text("".join(kept))
        os.replace(partial, self.path)  # never a half-written results file

    def add(self, record: dict) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = _last_byte(self.path) not in (b"", b"\n")
            self.handle = self.path.open("a")
            if torn:  # an interrupted run's last line: keep the new records on lines of their own
                self.handle.write("\n")
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


def _last_byte(path: Path) -> bytes:
    if not path.is_file() or path.stat().st_size == 0:
        return b""
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)
