"""The memory pre-flight: what a request will need at its peak on its device, estimated from the model's config
and the request's shape before any frame is decoded, and the fit that lowers a request to a limit.

    shape = RequestShape(text_tokens=40, visual_tokens=4096, encoder_sequences=64, encoder_sequence=1024,
                         media_bytes=..., max_new_tokens=256)
    estimate(dims, shape, weights_bytes, element_bytes=4, device="cpu").total

The peak is reached in one of three phases, each on top of the weights, the media tensors and a fixed runtime
overhead (CPU: BLAS and thread-pool scratch; CUDA: cuBLAS workspaces):
- vision: the encoder's widest layer (its MLP) over every patch of one forward, plus its attention scores where
  the kernel materialises them;
- prefill: the language model's widest layer over the whole prompt, plus the prompt's KV cache being filled;
- decode: the KV cache for prompt plus answer, plus one step's logits and the cache's growth copy.
The families say what their config means (`ModelDims`) and what a video costs them (`RequestShape`); the
formulas live here once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable

from vlm_app.errors import MemoryLimitError, OptionsError

GIB = 2**30
RUNTIME_OVERHEAD = {"cpu": 200 * 2**20, "cuda": 64 * 2**20, "mps": 64 * 2**20}
AUTO_RAM_FRACTION = 0.8  # of the RAM available now, on top of what the loaded model already holds
LOGITS_BYTES = 4  # generate keeps the next-token scores in float32
AVAILABLE_MEMORY_VARIABLE = "VLM_APP_AVAILABLE_MEMORY"  # stands in for the measured free memory (see available_bytes)
FIT_HEADROOM = 0.02  # of the room left beside the weights: the pre-flight predicts the prompt's text, roughly


@dataclass(frozen=True)
class TextDims:
    """A language model's sizes. `mlp_width`: the intermediate width one token passes through (for a
    mixture of experts: the experts it is routed to plus the shared ones). `kv_width`: key plus value
    channels one token stores per layer."""

    hidden: int
    mlp_width: int
    layers: int
    kv_width: int
    vocab: int


def text_dims(config) -> TextDims:
    """A transformers decoder config (Llama, Qwen2 and their kin) as `TextDims`."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return TextDims(hidden=config.hidden_size, mlp_width=config.intermediate_size, layers=config.num_hidden_layers,
                    kv_width=2 * config.num_key_value_heads * head_dim, vocab=config.vocab_size)


@dataclass(frozen=True)
class VisionDims:
    """A vision encoder's sizes; `mlp_tensors`: wide tensors alive in its MLP (2 for fc1 + GELU, 3 for a gated
    SiLU MLP)."""

    hidden: int
    mlp_width: int
    heads: int
    mlp_tensors: int = 2


@dataclass(frozen=True)
class ModelDims:
    text: TextDims
    vision: VisionDims
    pixel_copies: int = 0  # copies of the float pixels the model makes before its encoder (selecting real images)


@dataclass(frozen=True)
class RequestShape:
    """What one request puts through the model.

    text_tokens / visual_tokens: the prompt's tokens
    encoder_sequences x encoder_sequence: the vision encoder's batch of patch sequences (frames, tiles, or
        Qwen's one sequence of every patch, in which case encoder_sequences is 1)
    media_bytes: decoded frames plus the processor's pixel tensors, held until the prompt is prefilled
    pixel_bytes: the processor's float pixel tensors (part of media_bytes)
    encoder_masked: some sequences are padded, so the encoder builds a (sequence x sequence) additive mask for each
    """

    text_tokens: int = 0
    visual_tokens: int = 0
    encoder_sequences: int = 0
    encoder_sequence: int = 0
    media_bytes: int = 0
    max_new_tokens: int = 0
    pixel_bytes: int = 0
    encoder_masked: bool = False

    @property
    def prompt_tokens(self) -> int:
        return self.text_tokens + self.visual_tokens

    def __add__(self, other: RequestShape) -> RequestShape:
        """Two media items of one prompt: their tokens and media add up; the encoder runs item by item, so
        the widest one counts."""
        widest = max((self, other), key=lambda shape: shape.encoder_sequences * shape.encoder_sequence)
        return RequestShape(self.text_tokens + other.text_tokens, self.visual_tokens + other.visual_tokens,
                            widest.encoder_sequences, widest.encoder_sequence, self.media_bytes + other.media_bytes,
                            max(self.max_new_tokens, other.max_new_tokens), widest.pixel_bytes,
                            widest.encoder_masked)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on the device at the request's peak, by what holds them."""

    weights: int
    overhead: int
    media: int
    vision: int
    prefill: int
    decode: int

    @property
    def total(self) -> int:
        return self.weights + self.overhead + self.media + max(self.vision, self.prefill, self.decode)

    @property
    def peak_phase(self) -> str:
        phases = {"vision": self.vision, "prefill": self.prefill, "decode": self.decode}
        return max(phases, key=phases.get)

    def as_dict(self) -> dict:
        return {"total": self.total, "weights": self.weights, "overhead": self.overhead, "media": self.media,
                "vision": self.vision, "prefill": self.prefill, "decode": self.decode, "peak_phase": self.peak_phase}


def estimate(dims: ModelDims, shape: RequestShape, weights_bytes: int, element_bytes: int,
             device: str = "cpu") -> MemoryEstimate:
    """The request's peak on `device`, for activations of `element_bytes` each (2 for bf16/fp16, 4 for fp32)."""
    text, vision = dims.text, dims.vision
    patches = shape.encoder_sequences * shape.encoder_sequence
    # one encoder layer: the patch embeddings, the residual stream, its norm, and the MLP's wide tensors; the
    # additive masks of padded sequences and the model's own copy of the pixels live through every layer
    vision_bytes = patches * (3 * vision.hidden + vision.mlp_tensors * vision.mlp_width) * element_bytes
    if shape.encoder_masked:
        vision_bytes += shape.encoder_sequences * shape.encoder_sequence**2 * element_bytes
    vision_bytes += dims.pixel_copies * shape.pixel_bytes
    prompt = shape.prompt_tokens
    kv_per_token = text.layers * text.kv_width * element_bytes
    embeddings = 2 * prompt * text.hidden * element_bytes  # token embeddings and the copy the visual ones go into
    # one decoder layer's MLP: residual, norm, gate, up and their product (silu(gate) * up)
    widest_layer = prompt * (2 * text.hidden + 3 * text.mlp_width) * element_bytes
    prefill = embeddings + widest_layer + prompt * kv_per_token + shape.visual_tokens * text.hidden * element_bytes
    total_tokens = prompt + shape.max_new_tokens
    step = 2 * text.vocab * LOGITS_BYTES + total_tokens * text.kv_width * element_bytes  # scores + one layer's cat
    decode = total_tokens * kv_per_token + step
    return MemoryEstimate(weights=weights_bytes, overhead=RUNTIME_OVERHEAD.get(device.split(":")[0], 0),
                          media=shape.media_bytes, vision=vision_bytes, prefill=prefill, decode=decode)


# ---- limits ---------------------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": GIB, "gb": GIB, "gib": GIB, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_max_memory(value) -> int | str | None:
    """`--max-memory`: None, "auto", or bytes (an int, or text like 8000000000, 12GB, 512MiB; units are
    powers of 1024)."""
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value if value is None or value > 0 else _bad_memory(value)
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)", text)
    if not match or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
        return _bad_memory(value)
    return int(float(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class MemoryLimit:
    """A request's memory limit (on the server and in the web app, the operator's: no client changes it).

    max_memory: the peak the request may reach on the model's device: bytes, a size ("12GB"), "auto" (free GPU
                memory, or 80% of the available RAM) or None (no limit). Over it, videos are lowered to fit (pixels
                per frame first, then frames) before decoding, and the record's notes say so.
    fit:        False keeps the reference budget even over `max_memory` (the record then notes the excess).
    """

    max_memory: int | str | None = "auto"
    fit: bool = True

    def __post_init__(self):
        object.__setattr__(self, "max_memory", parse_max_memory(self.max_memory))

    @property
    def fits(self) -> bool:
        """Whether videos are lowered to a limit at all."""
        return self.max_memory is not None and self.fit


def _bad_memory(value):
    raise OptionsError(f"max memory {value!r} is not a size: give bytes (8000000000), a size with a unit (12GB, "
                       "512MiB) or auto")


def available_bytes(device: str, resident_bytes: int) -> int:
    """What `auto` means: on a GPU, its free memory plus what this process already holds there; on the CPU, a
    fraction of the RAM available now plus `resident_bytes` (the loaded weights, already in RAM).
    VLM_APP_AVAILABLE_MEMORY (a size: bytes, 12GB), when set, stands in for the free GPU memory or the available RAM:
    for tests, and to make auto see less than the machine has (a local Ray's workers inherit it from the driver)."""
    if device.startswith("cuda"):
        import torch

        free = _stand_in() or torch.cuda.mem_get_info(torch.device(device))[0]
        return int(free + torch.cuda.memory_allocated(torch.device(device)))
    return int((_stand_in() or _ram_available()) * AUTO_RAM_FRACTION) + resident_bytes


def _stand_in() -> int | None:
    given = os.environ.get(AVAILABLE_MEMORY_VARIABLE)
    size = parse_max_memory(given) if given else None
    if size == "auto":
        raise OptionsError(f"{AVAILABLE_MEMORY_VARIABLE} is a size (bytes, 12GB, 512MiB), not auto")
    return size


def _ram_available() -> int:
    with open("/proc/meminfo") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return int(fields["MemAvailable"].split()[0]) * 1024


def resolve_limit(max_memory, device: str, resident_bytes: int) -> int | None:
    limit = parse_max_memory(max_memory)
    return available_bytes(device, resident_bytes) if limit == "auto" else limit


# ---- the fit ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FitRules:
    """What a family lets the fit lower, and how far. `pixel_step`: per-frame pixels move in multiples of this
    (Qwen: 28 x 28); None means frames are fixed in size (the processor resizes them). `frame_step`: frame
    counts move in multiples of this (Qwen: 2)."""

    min_frames: int = 1
    frame_step: int = 1
    pixel_step: int | None = None
    min_pixels: int = 0


@dataclass
class Fit:
    """The memory fit of one request: `fit_video(metadata, options)` is the media pipeline's last word on a
    video's options once it is probed (see `load_video(fit=...)`); it lowers total pixels, then frames, until
    the estimated peak is under `limit`, and says so in `notes`. Videos are fitted in message order, each on
    top of `base` (the prompt's text, then the videos before it).

    estimate_of(RequestShape) -> MemoryEstimate: the model's peak for a request shape
    shape_of(metadata, options) -> (RequestShape, frames, pixels per frame): the family's cost of a video
    rules_of(options) -> FitRules: how far the family lets a video with these options be lowered
    """

    estimate_of: Callable[[RequestShape], MemoryEstimate]
    shape_of: Callable
    rules_of: Callable[[dict], FitRules]
    limit: int
    base: RequestShape = field(default_factory=RequestShape)
    notes: list[str] = field(default_factory=list)

    def total(self, shape: RequestShape) -> int:
        return self.estimate_of(self.base + shape).total

    @property
    def target(self) -> int:
        empty = self.estimate_of(RequestShape())
        return int(self.limit - FIT_HEADROOM * max(self.limit - empty.weights - empty.overhead, 0))

    def fit_video(self, metadata, options: dict) -> dict:
        shape, frames, pixels = self.shape_of(metadata, options)
        if self.total(shape) <= self.target:
            self.base = self.base + shape
            return options
        fitted = self._lower(metadata, options, self.rules_of(options), frames, pixels)
        shape, new_frames, new_pixels = self.shape_of(metadata, fitted)
        self.notes.append(self._note(metadata, shape, frames, pixels, new_frames, new_pixels, options))
        self.base = self.base + shape
        return fitted

    def _lower(self, metadata, options: dict, rules: FitRules, frames: int, pixels: int) -> dict:
        if rules.pixel_step is not None and pixels > rules.min_pixels:
            steps = self._largest_fitting(metadata, lambda count: _with_pixels(options, count * rules.pixel_step),
                                          -(-rules.min_pixels // rules.pixel_step), pixels // rules.pixel_step)
            if steps is not None:
                return _with_pixels(options, steps * rules.pixel_step)
            options = _with_pixels(options, rules.min_pixels)
        low = -(-rules.min_frames // rules.frame_step)
        counts = self._largest_fitting(metadata, lambda count: _with_frames(options, count * rules.frame_step),
                                       low, frames // rules.frame_step)
        if counts is None:
            smallest, _, _ = self.shape_of(metadata, _with_frames(options, low * rules.frame_step))
            need = self.estimate_of(self.base + smallest)
            least = f"{low * rules.frame_step} frame(s)" + (f" of {rules.min_pixels} pixels" if rules.pixel_step else "")
            raise MemoryLimitError(
                f"{metadata.source} does not fit in {format_bytes(self.limit)}: even {least} need about "
                f"{format_bytes(need.total)} (weights {format_bytes(need.weights)}); raise --max-memory, use a smaller "
                "model or a shorter clip (--start/--end, --chapters), or pass --no-fit to try anyway")
        return _with_frames(options, counts * rules.frame_step)

    def _largest_fitting(self, metadata, options_for, low: int, high: int) -> int | None:
        """The largest count in [low, high] whose options fit (cost grows with the count), or None."""
        if high < low or self.total(self.shape_of(metadata, options_for(low))[0]) > self.target:
            return None
        while low < high:
            middle = (low + high + 1) // 2
            if self.total(self.shape_of(metadata, options_for(middle))[0]) <= self.target:
                low = middle
            else:
                high = middle - 1
        return low

    def _note(self, metadata, shape, frames, pixels, new_frames, new_pixels, options) -> str:
        lowered = []
        if new_pixels != pixels:
            lowered.append(f"pixels per frame from {pixels} to {new_pixels}")
        if new_frames != frames:
            lowered.append(f"frames from {frames} to {new_frames}")
        before = self.estimate_of(self.base + self.shape_of(metadata, options)[0]).total
        return (f"memory fit: lowered {' and '.join(lowered)} so the estimated peak ({format_bytes(before)} before, "
                f"{format_bytes(self.total(shape))} after) stays under the {format_bytes(self.limit)} limit "
                "(--no-fit keeps the reference budget)")


def _with_pixels(options: dict, pixels: int) -> dict:
    fitted = {**options, "max_pixels": pixels}
    if fitted.get("min_pixels") is not None and fitted["min_pixels"] > pixels:
        fitted["min_pixels"] = pixels
    return fitted


def _with_frames(options: dict, frames: int) -> dict:
    fitted = {**options, "max_frames": frames}  # a frame count, where the family takes one, is lowered too
    if fitted.get("nframes") is not None:
        fitted["nframes"] = min(fitted["nframes"], frames)
    if fitted.get("min_frames") is not None and fitted["min_frames"] > frames:
        fitted["min_frames"] = frames
    return fitted


def format_bytes(count: int) -> str:
    return f"{count / GIB:.2f} GiB" if count >= GIB else f"{count / 2**20:.0f} MiB"


# ---- measuring ----------------------------------------------------------------------------------------------------

def reset_peak(device: str) -> None:
    """Start a peak measurement: the CUDA allocator's peak, or the process's RSS high-water mark on Linux."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(torch.device(device))
    elif os.path.exists("/proc/self/clear_refs"):
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the current RSS
        except OSError:  # not permitted (some sandboxes): the peak is then since process start
            pass


def peak_bytes(device: str) -> int:
    """The peak since `reset_peak`: CUDA allocator bytes, or the process's peak RSS (ru_maxrss elsewhere)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated(torch.device(device)))
    return _status_bytes("VmHWM") or _ru_maxrss()


def resident_bytes() -> int:
    return _status_bytes("VmRSS") or _ru_maxrss()


def _status_bytes(name: str) -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _ru_maxrss() -> int:
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale

