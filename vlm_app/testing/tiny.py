"""Tiny random-weight checkpoints of every family, built offline in seconds (`python -m vlm_app tiny`).

They use the real model and processor classes with tiny configs, a byte-level BPE tokenizer trained here on a
small corpus (with every special token the real processors need), chat templates written for this project that
reproduce each model's prompt layout, and `save_pretrained` in the hub layout. The same seed gives
byte-identical files (for a fixed transformers version, which `config.json` records).
"""

from __future__ import annotations

from pathlib import Path

from vlm_app.testing.bpe import train_bpe

PADDED_VOCAB = 1088        # embedding rows, a multiple of 64 as in the real checkpoints

# Our templates: same prompt layout as the models', written for this project.
QWEN_CHAT_TEMPLATE = (
    "{%- set counts = namespace(image=0, video=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message.role != 'system' -%}"
    "<|im_start|>system{{ '\\n' }}You are a helpful assistant.<|im_end|>{{ '\\n' }}"
    "{%- endif -%}"
    "<|im_start|>{{ message.role }}{{ '\\n' }}"
    "{%- if message.content is string -%}{{ message.content }}"
    "{%- else -%}{%- for item in message.content -%}"
    "{%- if item.type == 'image' or 'image' in item -%}{%- set counts.image = counts.image + 1 -%}"
    "{%- if add_vision_id -%}Picture {{ counts.image }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif item.type == 'video' or 'video' in item -%}{%- set counts.video = counts.video + 1 -%}"
    "{%- if add_vision_id -%}Video {{ counts.video }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif item.type == 'text' -%}{{ item.text }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|im_end|>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)

SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>"
    "{%- for message in messages -%}"
    "{{ message.role | capitalize }}"
    "{%- if message.content is string -%}: {{ message.content }}"
    "{%- else -%}{{ ':' if message.content[0].type == 'image' else ': ' }}"
    "{%- for item in message.content -%}"
    "{%- if item.type == 'text' -%}{{ item.text }}"
    "{%- elif item.type == 'image' -%}<image>"
    "{%- elif item.type == 'video' -%}<video>"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<end_of_utterance>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}Assistant:{%- endif -%}"
)

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_ADDED_NOT_SPECIAL = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                          "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]

SMOLVLM_LEADING = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SMOLVLM_SPECIAL = (["<fake_token_around_image>", "<image>", "<global-img>"]
                   + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)] + ["<end_of_utterance>"])


def qwen_tokenizer():
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers
    from transformers import Qwen2TokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    vocab, merges = train_bpe(pre, normalizers.NFC())
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_tokens([AddedToken(t, special=True) for t in QWEN_SPECIAL], special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False) for t in QWEN_ADDED_NOT_SPECIAL])
    tokenizer.model_max_length = 32768
    return tokenizer


def smolvlm_tokenizer():
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import GPT2TokenizerFast

    vocab, merges = train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), leading_tokens=SMOLVLM_LEADING)
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges, unk_token="<|endoftext|>", bos_token="<|im_start|>",
                                  eos_token="<end_of_utterance>", pad_token="<|im_end|>")
    tokenizer.add_tokens([AddedToken(t, special=True) for t in SMOLVLM_SPECIAL], special_tokens=True)
    tokenizer.model_max_length = 8192
    return tokenizer


def _save(model, processor, out_dir: Path, generation: dict) -> Path:
    from transformers import GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(**generation)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def qwen2_5_vl_processor(tokenizer=None):
    """The Qwen2.5-VL processor with the real image/video settings and our tokenizer and template."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    pixels = dict(min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2, merge_size=2)
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer or qwen_tokenizer(),
                               video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=QWEN_CHAT_TEMPLATE)


def smolvlm2_processor(tokenizer=None, image_size: int = 64, image_seq_len: int = 4, max_frames: int = 8):
    """A SmolVLM2 processor: tile size `image_size` (real: 512 or 384), first-stage size 4x that, fps 1."""
    from transformers import SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    shared = dict(max_image_size={"longest_edge": image_size}, size={"longest_edge": 4 * image_size},
                  image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=1)
    video_processor = SmolVLMVideoProcessor(
        video_sampling={"fps": 1, "max_frames": max_frames, "video_size": {"longest_edge": image_size}}, **shared)
    return SmolVLMProcessor(image_processor=SmolVLMImageProcessor(do_image_splitting=True, **shared),
                            tokenizer=tokenizer or smolvlm_tokenizer(), video_processor=video_processor,
                            image_seq_len=image_seq_len, chat_template=SMOLVLM_CHAT_TEMPLATE)


def build_tiny_qwen2_5_vl(out_dir: str | Path, seed: int = 0) -> Path:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=PADDED_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128000,
                         rms_norm_eps=1e-6, bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                         pad_token_id=ids("<|endoftext|>"), tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1],
                           tokens_per_second=2, out_hidden_size=64),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    processor = qwen2_5_vl_processor(tokenizer)
    generation = dict(eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")], pad_token_id=ids("<|endoftext|>"),
                      do_sample=False)
    return _save(model, processor, Path(out_dir), generation)


def build_tiny_smolvlm2(out_dir: str | Path, seed: int = 0) -> Path:
    import torch
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    tokenizer = smolvlm_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    image_size, patch_size, scale_factor = 64, 8, 4
    config = SmolVLMConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch_size),
        text_config=dict(model_type="llama", vocab_size=PADDED_VOCAB, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         rope_theta=1e5, max_position_embeddings=8192, bos_token_id=ids("<|im_start|>"),
                         eos_token_id=ids("<end_of_utterance>"), pad_token_id=ids("<|im_end|>"),
                         tie_word_embeddings=False),
        scale_factor=scale_factor, image_token_id=ids("<image>"), pad_token_id=ids("<|im_end|>"),
        tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config).eval()
    processor = smolvlm2_processor(tokenizer, image_size, (image_size // patch_size) ** 2 // scale_factor ** 2)
    generation = dict(bos_token_id=ids("<|im_start|>"), eos_token_id=ids("<end_of_utterance>"),
                      pad_token_id=ids("<|im_end|>"), do_sample=False)
    return _save(model, processor, Path(out_dir), generation)


def tiny_recipes() -> dict[str, str]:
    """Every tiny checkpoint `tiny --family` can write: recipe name -> "module:function" (`Adapter.tiny`)."""
    from vlm_app.adapters.registry import FAMILIES, adapter_class

    return {name: recipe for family in FAMILIES for name, recipe in adapter_class(family).tiny.items()}


def build_tiny(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny checkpoint `family` (a family, or one of its recipes such as qwen3_5) into `out_dir`."""
    import importlib

    from vlm_app.errors import OptionsError

    recipes = tiny_recipes()
    if family not in recipes:
        raise OptionsError(f"unknown family {family!r}; choose one of {', '.join(recipes)}")
    module, function = recipes[family].split(":")
    return getattr(importlib.import_module(module), function)(out_dir, seed=seed)
