"""What the web app accepts: upload size and duration limits (one for a chat answer, a longer one for chapters),
readable folders, and guarded URL fetching.

Only files inside the upload folder (where Gradio stores uploads) or in folders the operator allowed
(`--allow-dir`) are read; anything else a client names is refused. URLs go through the fetch guard
(`vlm_app.media.sources`) with `Limits.for_remote_clients`: no loopback, private or link-local address unless
the operator allowed its host (`--allow-host`), and this app's size and duration limits.
"""

from __future__ import annotations

import mimetypes
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from vlm_app.errors import LimitError, SourceError
from vlm_app.media.decode import probe
from vlm_app.media.limits import Limits
from vlm_app.media.sources import allowed_path, is_local, local_file

MB = 1024 * 1024


@dataclass(frozen=True)
class UploadPolicy:
    max_file_mb: float = 200.0
    max_duration_s: float = 600.0             # one answer
    max_chapters_duration_s: float = 4 * 3600.0  # a chapters run (one request per part of the video)
    upload_dir: str = ""                      # Gradio's upload cache; always readable
    allowed_dirs: tuple[str, ...] = field(default=())
    allowed_hosts: tuple[str, ...] = field(default=())  # exempt from the fetch guard's address check

    @property
    def limits(self) -> Limits:
        """The fetch guard's limits for this app's clients: readable folders, allowed hosts, size and duration."""
        return Limits.for_remote_clients(allowed_dirs=self.readable_dirs(), allowed_hosts=self.allowed_hosts,
                                         max_file_bytes=int(self.max_file_mb * MB),
                                         max_duration_seconds=float(self.max_duration_s),
                                         max_chapters_duration_seconds=float(self.max_chapters_duration_s))

    def readable_dirs(self) -> list[Path]:
        return [Path(folder).resolve() for folder in (self.upload_dir, *self.allowed_dirs) if folder]

    def check_readable(self, path: str) -> Path:
        """The real path if it lies in a readable folder; SourceError otherwise."""
        resolved = allowed_path(path, self.limits)
        if not resolved.is_file():
            raise SourceError(f"{path} does not exist or is not a file; upload it again")
        return resolved

    def check_file(self, path: str, kind: str, chapters: bool = False) -> float | None:
        """Raise LimitError (with the limit and how to change it) when a readable file is too big or a video too
        long for one answer (or, with `chapters`, for a chapters run); return a video's duration in seconds."""
        resolved = self.check_readable(path)
        name = resolved.name
        size = resolved.stat().st_size
        if size > self.max_file_mb * MB:
            raise LimitError(f"{name} is {size / MB:.1f} MB, over this app's upload limit of {self.max_file_mb:g} MB; "
                             "upload a smaller file (or start the app with a larger --max-upload-mb)")
        if kind != "video":
            return None
        limits = self.limits.with_overrides(max_duration_seconds=float("inf"))
        duration = probe(str(resolved), name, limits, time.monotonic() + limits.decode_seconds).duration
        if chapters and duration > self.max_chapters_duration_s:
            raise LimitError(f"{name} lasts {duration:.1f} s, over this app's limit of "
                             f"{self.max_chapters_duration_s:g} s for chapters; cut the video, or start the app with "
                             "a larger --max-chapters-duration")
        if not chapters and duration > self.max_duration_s:
            in_chapters = ("describe it in chapters (the Chapters button under the chat, or /chapters: one request "
                           f"per part of the video, up to {self.max_chapters_duration_s:g} s), "
                           if duration <= self.max_chapters_duration_s else "")
            raise LimitError(f"{name} lasts {duration:.1f} s, over this app's limit of {self.max_duration_s:g} s "
                             f"for one answer; {in_chapters}cut the video, or start the app with a larger "
                             "--max-duration")
        return duration

    def fetch(self, url: str, folder: str) -> str:
        """A readable local path as it is; an http(s) or data: URL downloaded into `folder`. Both through the
        fetch guard with this app's limits."""
        url = url.strip()
        with local_file(url, self.limits) as (path, _):
            if is_local(url):
                return path
            target = Path(folder) / f"{uuid.uuid4().hex[:8]}_{download_name(url)}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        return str(target)


def download_name(url: str) -> str:
    """A file name for a fetched URL whose suffix tells video from image (videos when nothing says)."""
    if url.startswith("data:"):
        mime = url[5:].split(";")[0].split(",")[0]
        return "download" + (mimetypes.guess_extension(mime) or ".mp4")
    name = Path(urlparse(url).path).name or "download"
    return name if "." in name else name + ".mp4"
