"""Tiny random-weight Gemma 4 checkpoints (`python -m vlm_app tiny --family gemma4` / `gemma4_no_audio`).

The real classes (`Gemma4ForConditionalGeneration`, `Gemma4Processor` with `Gemma4VideoProcessor`,
`Gemma4ImageProcessor` and `Gemma4AudioFeatureExtractor` set as the E2B/E4B hub processor_config.json sets them),
tiny widths (text hidden 32, two layers: sliding then full attention; vision hidden 32, one layer, patch 16,
pooling 3; a one-layer audio conformer for the model that hears), a byte-fallback BPE `GemmaTokenizer` trained here
with Gemma 4's special tokens, and a chat template written for this project with the hub template's layout for
messages without tools: `<bos>`, `<|turn>role\n ... <turn|>\n`, a video as `\n\n<|video|>\n\n`, an image as
`\n\n<|image|>\n\n`, audio as `<|audio|>`, text trimmed, `<|turn>model\n` to answer.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlm_app.testing.bpe import CORPUS, VOCAB_SIZE
from vlm_app.testing.tiny import _save

BASE_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
GEMMA_SPECIAL = ["<|turn>", "<turn|>", "<|image>", "<image|>", "<|audio>", "<audio|>", "<|image|>", "<|audio|>",
                 "<|video|>", "<|channel>", "<channel|>", "<|think|>"]
MEDIA_TOKENS = {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
                "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}
BYTE_TOKENS = [f"<0x{value:02X}>" for value in range(256)]
TINY_VOCAB = 1024  # embedding rows

GEMMA4_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content | trim -}}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if item['type'] == 'text' -%}{{- item['text'] | trim -}}"
    "{%- elif item['type'] == 'image' -%}{{- '\\n\\n<|image|>\\n\\n' -}}"
    "{%- elif item['type'] == 'audio' -%}{{- '<|audio|>' -}}"
    "{%- elif item['type'] == 'video' -%}{{- '\\n\\n<|video|>\\n\\n' -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set loop_messages = messages -%}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- '<|turn>system\\n' -}}{{- render(messages[0]['content']) -}}{{- '<turn|>\\n' -}}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{{- '<|turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' -}}"
    "{{- render(message['content']) -}}{{- '<turn|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\\n' -}}{%- endif -%}"
)

# The E2B / E4B hub processor_config.json (tests/fixtures/real_checkpoint_files/google__gemma-4-E2B-it).
VIDEO_SETTINGS = dict(num_frames=32, max_soft_tokens=70, patch_size=16, pooling_kernel_size=3, do_sample_frames=True,
                      do_normalize=True, image_mean=[0.0] * 3, image_std=[1.0] * 3, resample=3, return_metadata=False)
IMAGE_SETTINGS = dict(max_soft_tokens=280, patch_size=16, pooling_kernel_size=3, do_normalize=False,
                      image_mean=[0.0] * 3, image_std=[1.0] * 3, resample=3)
AUDIO_SETTINGS = dict(feature_size=128, sampling_rate=16000, frame_length_ms=20.0, hop_length_ms=10.0,
                      min_frequency=0.0, max_frequency=8000.0, mel_floor=1e-3, return_attention_mask=True)
PROCESSOR_SETTINGS = dict(image_seq_length=280, audio_seq_length=750, audio_ms_per_token=40)


def gemma4_tokenizer():
    """A `GemmaTokenizer` (byte-fallback BPE, spaces as "▁") trained on the shared corpus, with Gemma 4's specials."""
    from tokenizers import Tokenizer, models, normalizers, trainers
    from transformers import GemmaTokenizer

    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=1, show_progress=False,
                                  special_tokens=BASE_SPECIAL + GEMMA_SPECIAL + BYTE_TOKENS)
    bpe = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]]
    tokenizer = GemmaTokenizer(vocab=model["vocab"], merges=merges, extra_special_tokens=MEDIA_TOKENS)
    tokenizer.add_special_tokens({"additional_special_tokens": GEMMA_SPECIAL})
    tokenizer.model_max_length = 131072
    return tokenizer


def gemma4_processor(tokenizer=None, video_max_soft_tokens: int = 70):
    """The Gemma 4 processor with the hub files' settings, our tokenizer and template."""
    from transformers import (Gemma4AudioFeatureExtractor, Gemma4ImageProcessor, Gemma4Processor,
                              Gemma4VideoProcessor)

    return Gemma4Processor(feature_extractor=Gemma4AudioFeatureExtractor(**AUDIO_SETTINGS),
                           image_processor=Gemma4ImageProcessor(**IMAGE_SETTINGS),
                           tokenizer=tokenizer or gemma4_tokenizer(),
                           video_processor=Gemma4VideoProcessor(**{**VIDEO_SETTINGS,
                                                                   "max_soft_tokens": video_max_soft_tokens}),
                           chat_template=GEMMA4_CHAT_TEMPLATE, **PROCESSOR_SETTINGS)


def token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(boi_token_id=ids("<|image>"), eoi_token_id=ids("<image|>"), image_token_id=ids("<|image|>"),
                video_token_id=ids("<|video|>"), boa_token_id=ids("<|audio>"), eoa_token_index=ids("<audio|>"),
                audio_token_id=ids("<|audio|>"))


TEXT = dict(vocab_size=TINY_VOCAB, vocab_size_per_layer_input=TINY_VOCAB, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=16,
            layer_types=["sliding_attention", "full_attention"], hidden_size_per_layer_input=8, sliding_window=512,
            max_position_embeddings=131072, pad_token_id=0, eos_token_id=1, bos_token_id=2)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
              head_dim=16, patch_size=16, pooling_kernel_size=3, position_embedding_size=1024)
# the subsampling's first width must be the 128 mel bins: its projection reads (width // 4) x second width inputs
AUDIO = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, subsampling_conv_channels=[128, 4],
             output_proj_dims=32)
GENERATION = dict(bos_token_id=2, pad_token_id=0, do_sample=False)  # and eos: <eos> and <turn|>, as the hub file


def build_tiny_gemma4(out_dir: str | Path, seed: int = 0, audio: bool = True, video_max_soft_tokens: int = 70) -> Path:
    """`model_type` gemma4 like E2B/E4B (video, images and audio); `audio=False` like 26B-A4B/31B (no audio tower)."""
    import torch
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    tokenizer = gemma4_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma4Config(text_config=TEXT, vision_config=VISION, audio_config=AUDIO if audio else None,
                          **token_ids(tokenizer))
    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(config).eval()
    generation = {**GENERATION, "eos_token_id": [ids("<eos>"), ids("<turn|>")]}
    return _save(model, gemma4_processor(tokenizer, video_max_soft_tokens), Path(out_dir), generation)


def build_tiny_gemma4_no_audio(out_dir: str | Path, seed: int = 0) -> Path:
    return build_tiny_gemma4(out_dir, seed, audio=False)


def build_tiny_gemma4_140(out_dir: str | Path, seed: int = 0) -> Path:
    """A checkpoint whose video processor sets `max_soft_tokens` 140 (twice the hub files' 70)."""
    return build_tiny_gemma4(out_dir, seed, video_max_soft_tokens=140)
