"""Images: `load_image(source, policy, **options) -> SampledImage`, and the RGB opener frame lists share."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from vlm_app.errors import DecodeError, LimitError, OptionsError
from vlm_app.media import sampling
from vlm_app.media.limits import DEFAULT_LIMITS, Limits
from vlm_app.media.options import IMAGE_OPTIONS
from vlm_app.media.policies import SamplingPolicy, get_policy
from vlm_app.media.sources import local_file



@dataclass
class SampledImage:
    image: Image.Image  # RGB, resized per policy
    source: str
    original_size: tuple[int, int]  # (width, height), as PIL reports sizes


def open_rgb_image(source, limits: Limits) -> Image.Image:
    """A PIL image, path, file://, http(s):// or data: URI as an RGB image. Transparency is composited on white
    for RGBA, as qwen-vl-utils does."""
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    with local_file(source, limits) as (path, label):
        try:
            with Image.open(path) as image:
                if image.width * image.height > limits.max_frame_pixels:
                    raise LimitError(f"{label} is {image.width}x{image.height}, over the {limits.max_frame_pixels} "
                                     "pixel limit; downscale it or raise Limits.max_frame_pixels")
                image.load()
                return _to_rgb(image)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise DecodeError(f"{label} is not a readable image ({error}); give a PNG, JPEG or WebP file") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


def load_image(source, policy: str | SamplingPolicy = "qwen2_5_vl", *, limits: Limits | None = None,
               **options) -> SampledImage:
    """Open `source` as RGB; for resizing policies (Qwen) snap it to the 28-px grid within the image pixel bounds
    (4..16384 tokens) with PIL bicubic, as qwen-vl-utils' fetch_image does; other policies keep the native size."""
    policy = get_policy(policy) if isinstance(policy, str) else policy
    unknown = sorted(set(options) - set(IMAGE_OPTIONS))
    if unknown:
        raise OptionsError(f"unknown image option(s) {', '.join(unknown)}; valid: {', '.join(IMAGE_OPTIONS)}")
    image = open_rgb_image(source, limits or DEFAULT_LIMITS)
    label = "PIL image" if isinstance(source, Image.Image) else str(source)[:200]
    original_size = image.size
    if policy.factor is not None:
        if options.get("resized_height") is not None and options.get("resized_width") is not None:
            height, width = sampling.smart_resize(options["resized_height"], options["resized_width"], policy.factor)
        else:
            height, width = sampling.smart_resize(image.height, image.width, policy.factor,
                                                  options.get("min_pixels"), options.get("max_pixels"))
        bound = sampling.IMAGE_MAX_TOKENS * policy.factor**2
        if height * width > bound:  # refused before the resize allocates it (a client's min_pixels of 1e9)
            raise LimitError(f"{label} would be resized to {width}x{height}, over the {bound}-pixel bound of one "
                             f"image ({sampling.IMAGE_MAX_TOKENS} visual tokens); lower min_pixels or max_pixels")
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return SampledImage(image=image, source=label, original_size=original_size)
