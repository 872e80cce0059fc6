"""The video and image pipeline: sources -> decode -> sampling -> SampledVideo / SampledImage."""

from vlm_app.media.decode import VideoMetadata, available_backends
from vlm_app.media.image import SampledImage, load_image
from vlm_app.media.limits import DEFAULT_LIMITS, Limits
from vlm_app.media.policies import SamplingPolicy, deepseek_max_frames, get_policy
from vlm_app.media.sampling import smart_nframes, smart_resize
from vlm_app.media.video import SampledVideo, load_video

__all__ = ["DEFAULT_LIMITS", "Limits", "SampledImage", "SampledVideo", "SamplingPolicy", "VideoMetadata",
           "available_backends", "deepseek_max_frames", "get_policy", "load_image", "load_video", "smart_nframes",
           "smart_resize"]
