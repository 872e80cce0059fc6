"""Results files of `describe` (both engines): one record per video, written as each finishes, resumable.

The resume rule, the same for every engine and format: a resumed run skips every source already recorded in the
output, failed ones included, so no video is ever recorded twice. To describe a failed video again, delete its
line (or pass `--retry-failed`, which drops the failed records from the output before the run and retries them).
Without resume the output starts empty.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable


def sources_to_skip(records: Iterable[dict], retry_failed: bool = False) -> set[str]:
    """The sources a resumed run skips: every recorded one, less the failed ones with `retry_failed`."""
    return {record["source"] for record in records if not (retry_failed and record.get("error") is not None)}


def read_jsonl_records(path: Path) -> list[dict]:
    """The records of a JSONL output; a line that is not a whole JSON object (an interrupted write) is ignored."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "source" in record:
            records.append(record)
    return records


class JsonlResults:
    """A JSONL output: `start` prepares the file and says which sources to skip, `add` appends one record per line
    (flushed, so a crash loses at most the line being written), `close` ends the run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.handle = None

    def start(self, resume: bool, retry_failed: bool = False) -> set[str]:
        if not resume:
            self.path.unlink(missing_ok=True)
            return set()
        records = read_jsonl_records(self.path)
        if retry_failed and any(record.get("error") is not None for record in records):
            self._drop_failed()
        return sources_to_skip(records, retry_failed)

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
