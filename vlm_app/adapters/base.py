"""The adapter interface every model family implements, and its result types.

Data flow: messages -> `prepare` (media pipeline + processor) -> `Prepared` -> `forward` / `generate` / `stream`.
Inputs and outputs are plain dicts of tensors and small dataclasses; nothing here knows about Gradio or the CLI.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch


@dataclass
class TokenCounts:
    text: int
    visual: int

    @property
    def total(self) -> int:
        return self.text + self.visual


@dataclass
class VisualMap:
    """One row per visual token of the prompt, in sequence order. All tensors have shape (num_visual_tokens,).

    positions:   index of the token in `input_ids[0]`
    media_index: which image/video of the conversation (0-based, in message order)
    frame_index: index into that item's sampled frames (the first frame of a temporal pair for Qwen); -1 for images
    tile_index:  tile/view of an image or frame (0 = global view or the only view)
    timestamp:   seconds into the source video of `frame_index`; NaN for images
    """

    positions: torch.Tensor
    media_index: torch.Tensor
    frame_index: torch.Tensor
    tile_index: torch.Tensor
    timestamp: torch.Tensor

    def __len__(self) -> int:
        return int(self.positions.numel())

    def rows(self) -> list[dict[str, Any]]:
        """The map as JSON-ready rows, one per visual token."""
        columns = {name: getattr(self, name).tolist() for name in
                   ("positions", "media_index", "frame_index", "tile_index", "timestamp")}
        return [dict(zip(columns, values)) for values in zip(*columns.values())]


@dataclass
class Prepared:
    """Everything a model call needs, plus what the model was shown.

    inputs:     the dict the model's forward/generate takes (input_ids (1, L), attention_mask (1, L), pixel tensors, grids)
    visual_map: which token came from which media item / frame / timestamp
    num_tokens: text and visual token counts of the prompt
    media:      the SampledVideo / SampledImage objects actually shown, in message order
    prompt:     the prompt text after the chat template (before visual-token expansion where the processor expands)
    timings:    seconds spent, e.g. {"decode": ..., "processor": ..., "preprocess": ...}
    """

    inputs: dict[str, torch.Tensor]
    visual_map: VisualMap
    num_tokens: TokenCounts
    media: list[Any]
    prompt: str = ""
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class ForwardOutput:
    """logits (1, L, V); hidden_states: num_layers + 1 tensors (1, L, D), embeddings first; attentions on request."""

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None
    visual_positions: torch.Tensor

    def visual_hidden(self, layer: int = -1) -> torch.Tensor:
        """Hidden states of the visual tokens at `layer`: (num_visual_tokens, D)."""
        if self.hidden_states is None:
            raise ValueError("forward was called without output_hidden_states=True")
        return self.hidden_states[layer][0, self.visual_positions]


@dataclass
class Timings:
    """Seconds unless named otherwise. peak_memory_bytes is the CUDA allocator peak on GPU, the process RSS peak on CPU."""

    preprocess_s: float = 0.0
    prefill_s: float = 0.0           # time to first token
    decode_s: float = 0.0
    new_tokens: int = 0
    peak_memory_bytes: int = 0

    @property
    def tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.decode_s > 0 and self.new_tokens > 1 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"preprocess_s": self.preprocess_s, "prefill_s": self.prefill_s, "decode_s": self.decode_s,
                "new_tokens": self.new_tokens, "tokens_per_s": self.tokens_per_s,
                "peak_memory_bytes": self.peak_memory_bytes}


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    timings: Timings
    cancelled: bool = False


class Adapter:
    """One model family behind one small interface. Subclasses implement `_load_model` and `prepare`;
    forward, generate and stream are shared."""

    family: str = ""

    def prepare(self, messages: list[dict], **sampling_overrides) -> Prepared:
        raise NotImplementedError

    def forward(self, prepared: Prepared, output_hidden_states: bool = True,
                output_attentions: bool = False) -> ForwardOutput:
        raise NotImplementedError

    def generate(self, prepared: Prepared, max_new_tokens: int = 256, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None) -> Generation:
        raise NotImplementedError

    def stream(self, prepared: Prepared, cancel: threading.Event | None = None,
               **generate_options) -> Iterator[str]:
        raise NotImplementedError
