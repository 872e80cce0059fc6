"""Explicit limits on what the media pipeline accepts, so no input can hang it or exhaust memory, and on what it
may read or fetch.

Pass `limits=DEFAULT_LIMITS.with_overrides(max_duration_seconds=7200)` to `load_video` / `load_image` to change
them per call. The defaults suit the CLI on one's own machine (any local path, any address); front doors open to
the network (the web app, the server) use `Limits.for_remote_clients(...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 8 * 1024**3  # local files and downloads
    max_duration_seconds: float = 4 * 3600.0  # one plain request; longer videos go in chapters
    max_chapters_duration_seconds: float = 24 * 3600.0  # a chapters run (one request per segment)
    max_chapters_segments: int = 1440  # requests of one chapters run (24 h in minutes)
    max_source_frames: int = 1_000_000
    max_frame_pixels: int = 8192 * 8192  # decoded frame size (16K video and larger images are refused)
    max_sampled_frames: int = 4096
    decode_seconds: float = 900.0  # wall clock for probing + decoding one video
    http_connect_seconds: float = 10.0  # per request: connect, TLS handshake and the first byte of the answer
    http_total_seconds: float = 300.0  # the whole download, redirects included
    http_max_redirects: int = 5
    allowed_dirs: tuple[str, ...] | None = None  # None: any local path; else only files under these (symlinks resolved)
    allow_private_addresses: bool = True  # False: refuse loopback, private, link-local, ... (non-global) addresses
    allowed_hosts: tuple[str, ...] = ()  # hosts exempt from the address check, as written in the URL

    @classmethod
    def for_remote_clients(cls, allowed_dirs=(), allowed_hosts=(), **overrides) -> Limits:
        """Limits for sources that a remote client names: local files only under `allowed_dirs` (none by
        default), and no fetch of an address that is not globally routable unless its host is in `allowed_hosts`."""
        return cls(allowed_dirs=tuple(str(folder) for folder in allowed_dirs), allow_private_addresses=False,
                   allowed_hosts=tuple(host.strip("[]").rstrip(".").lower() for host in allowed_hosts), **overrides)

    def with_overrides(self, **fields) -> Limits:
        return replace(self, **fields)


DEFAULT_LIMITS = Limits()
