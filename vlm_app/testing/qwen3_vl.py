"""Tiny random-weight Qwen3-VL and Qwen3.5 checkpoints (`python -m vlm_app tiny --family qwen3_vl` / `qwen3_5`).

The real model and processor classes (`Qwen3VLForConditionalGeneration`, `Qwen3_5ForConditionalGeneration`,
`Qwen3VLProcessor` with the hub files' video settings), tiny widths, our byte-level BPE tokenizer with Qwen's special
tokens, and a chat template written for this project with the official prompt layout (no default system prompt;
a Thinking checkpoint's generation prompt opens `<think>`).
"""

from __future__ import annotations

from pathlib import Path

from vlm_app.testing.tiny import PADDED_VOCAB, QWEN_CHAT_TEMPLATE, _save, qwen_tokenizer

THINKING_TOKENS = ["<think>", "</think>"]

# Our template: the Qwen3-VL layout (no default system turn), `<think>` opened by a Thinking checkpoint.
QWEN3_CHAT_TEMPLATE = (QWEN_CHAT_TEMPLATE
                       .replace("{%- if loop.first and message.role != 'system' -%}"
                                "<|im_start|>system{{ '\\n' }}You are a helpful assistant.<|im_end|>{{ '\\n' }}"
                                "{%- endif -%}", "")
                       .replace("<|im_start|>assistant{{ '\\n' }}{%- endif -%}",
                                "<|im_start|>assistant{{ '\\n' }}{%- if thinking -%}<think>{{ '\\n' }}{%- endif -%}"
                                "{%- endif -%}"))

# The hub files' video settings (Qwen3-VL: a pixel budget over frames x height x width, factor 32).
VIDEO_SETTINGS = dict(size={"shortest_edge": 4096, "longest_edge": 25165824}, patch_size=16, temporal_patch_size=2,
                      merge_size=2, fps=2, min_frames=4, max_frames=768)
IMAGE_SETTINGS = dict(size={"shortest_edge": 65536, "longest_edge": 16777216}, patch_size=16, temporal_patch_size=2,
                      merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def qwen3_vl_processor(tokenizer=None, thinking: bool = False):
    """The Qwen3-VL processor with the hub files' image/video settings and our tokenizer and template."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tokenizer = tokenizer or _tokenizer()
    template = QWEN3_CHAT_TEMPLATE.replace("{%- if thinking -%}", "{%- if true -%}" if thinking else "{%- if false -%}")
    return Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(**IMAGE_SETTINGS), tokenizer=tokenizer,
                            video_processor=Qwen3VLVideoProcessor(**VIDEO_SETTINGS), chat_template=template)


def _tokenizer():
    tokenizer = qwen_tokenizer()
    tokenizer.add_tokens(THINKING_TOKENS)
    return tokenizer


def _token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def _text(tokenizer, **fields) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return {**dict(vocab_size=PADDED_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=262144,
                   rms_norm_eps=1e-6, bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                   pad_token_id=ids("<|endoftext|>"), tie_word_embeddings=False), **fields}


VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
              temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64)


def build_tiny_qwen3_vl(out_dir: str | Path, seed: int = 0, thinking: bool = False) -> Path:
    """`model_type` qwen3_vl: 2 text layers with interleaved mRoPE, 2 vision layers with one deepstack merger."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer = _tokenizer()
    rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
    config = Qwen3VLConfig(text_config=_text(tokenizer, rope_parameters=rope),
                           vision_config=dict(VISION, deepstack_visual_indexes=[0]),
                           tie_word_embeddings=False, **_token_ids(tokenizer))
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    return _save(model, qwen3_vl_processor(tokenizer, thinking), Path(out_dir), _generation(tokenizer))


def build_tiny_qwen3_5(out_dir: str | Path, seed: int = 0) -> Path:
    """`model_type` qwen3_5: the hybrid text model (3 Gated-DeltaNet layers, then full attention with a quarter of
    each head rotated), the same vision tower without deepstack. Runs on CPU through transformers' torch kernels."""
    import torch
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    tokenizer = _tokenizer()
    rope = {"rope_type": "default", "rope_theta": 1e7, "mrope_section": [2, 1, 1], "mrope_interleaved": True,
            "partial_rotary_factor": 0.25}
    text = _text(tokenizer, rope_parameters=rope, num_hidden_layers=4, head_dim=32,
                 layer_types=["linear_attention"] * 3 + ["full_attention"], linear_num_key_heads=2,
                 linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16)
    config = Qwen3_5Config(text_config=text, vision_config=VISION, tie_word_embeddings=False, **_token_ids(tokenizer))
    torch.manual_seed(seed)
    model = Qwen3_5ForConditionalGeneration(config).eval()
    return _save(model, qwen3_vl_processor(tokenizer, thinking=True), Path(out_dir), _generation(tokenizer))


def build_tiny_qwen3_vl_thinking(out_dir: str | Path, seed: int = 0) -> Path:
    return build_tiny_qwen3_vl(out_dir, seed, thinking=True)


def _generation(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")], pad_token_id=ids("<|endoftext|>"),
                do_sample=False)
