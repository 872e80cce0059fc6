"""User-facing errors. Every message says what was wrong and what to do about it.

The CLI prints these without a traceback and exits with status 2; anything else is a bug.
"""


class VlmAppError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class SourceError(VlmAppError):
    """The input could not be found or fetched (missing file, bad URL, HTTP error, timeout)."""


class DecodeError(VlmAppError):
    """The input was found but is not a decodable video or image (corrupt, audio-only, empty)."""


class LimitError(VlmAppError):
    """The input or request is over an explicit limit (file size, duration, frames, pixels, tokens)."""


class DurationLimitError(LimitError):
    """A video is longer than one request takes (`Limits.max_duration_seconds`); chapters take it, one request per
    part. `seconds` and `limit` let each front door name its own chapters option."""

    def __init__(self, message: str, label: str, seconds: float, limit: float):
        super().__init__(message)
        self.label, self.seconds, self.limit = label, seconds, limit


class MemoryLimitError(LimitError):
    """The request cannot fit under the memory limit (--max-memory) even with its videos lowered to the least
    their family allows."""


class OptionsError(VlmAppError):
    """Options contradict each other or are out of range (fps with nframes, min > max, ...)."""


class ModelLoadError(VlmAppError):
    """A model could not be found or loaded (unknown name, offline hub id, missing folder)."""


class NotOfferedError(ModelLoadError):
    """A client named a model that this app or server does not offer."""


class ExposureError(VlmAppError):
    """Listening beyond this machine without authentication was asked for."""


class OutOfMemory(VlmAppError):
    """The request needed more memory (GPU or RAM) than the machine had; the message says where and what to
    shrink. The memory it held is released, so the next request runs normally."""
