"""The video and image pipeline: sources -> decode -> sampling -> SampledVideo / SampledImage.

Names are imported on first use, so light submodules (`vlm_app.media.options`, `.limits`) load without torch or
PyAV: the message schema and the CLI read them at start-up.
"""

import importlib

_HOMES = {
    "VideoMetadata": "decode", "available_backends": "decode",
    "SampledImage": "image", "load_image": "image",
    "DEFAULT_LIMITS": "limits", "Limits": "limits",
    "SamplingPolicy": "policies", "get_policy": "policies",
    "smart_nframes": "sampling", "smart_resize": "sampling",
    "SampledVideo": "video", "load_video": "video", "load_video_segments": "video",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'vlm_app.media' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vlm_app.media.{_HOMES[name]}"), name)
