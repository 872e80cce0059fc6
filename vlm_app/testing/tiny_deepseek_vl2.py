"""Tiny random-weight DeepSeek-VL2 checkpoints in the official on-disk layout, one per language-model code path.

    tiny   multi-head attention + softmax MoE router            (the code path of deepseek-vl2-tiny)
    small  MLA + softmax MoE router                             (deepseek-vl2-small)
    base   MLA + sigmoid noaux_tc router with a correction bias (deepseek-vl2)

The real vision geometry is kept (384 px tiles, patch 14, 2x2 downsample, the 23 candidate resolutions, a
4096-token context) so tiling and token counts are the real ones; only widths and depths shrink. The weights
are saved through `DeepseekVLV2ForCausalLM.save_pretrained`, i.e. with the official per-expert keys, so these
folders load through exactly the path the released checkpoints take. Same seed, same bytes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlm_app.testing.bpe import train_bpe

SPECIAL_TOKENS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<image>", "<|ref|>", "<|/ref|>",
                  "<|det|>", "<|/det|>", "<|grounding|>", "<|User|>", "<|Assistant|>"]
PADDED_VOCAB = 1088  # embedding rows: room for the BPE and the specials, a multiple of 64

# The attention and router fields of each released variant (the real-size configs in bench/model.py share them).
# the language model's attention and router kinds (of the tiny variants and the released sizes)
MHA_ATTENTION = {"use_mla": False, "kv_lora_rank": None, "q_lora_rank": None, "qk_nope_head_dim": 0,
                 "qk_rope_head_dim": 0, "v_head_dim": 0}
SOFTMAX_ROUTER = {"topk_method": "greedy"}
NOAUX_ROUTER = {"topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
                "routed_scaling_factor": 2.0}
_MLA = {"kv_lora_rank": 32, "q_lora_rank": None, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16}
VARIANTS = {"tiny": {**MHA_ATTENTION, **SOFTMAX_ROUTER}, "small": {**_MLA, **SOFTMAX_ROUTER},
            "base": {**_MLA, **NOAUX_ROUTER}}


def tiny_language_config(variant: str) -> dict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown DeepSeek-VL2 tiny variant {variant!r}; use one of {sorted(VARIANTS)}")
    return {"model_type": "deepseek_v2", "architectures": ["DeepseekV2ForCausalLM"], "vocab_size": PADDED_VOCAB,
            "hidden_size": 64, "intermediate_size": 160, "moe_intermediate_size": 32, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 4, "n_routed_experts": 8, "n_shared_experts": 2,
            "num_experts_per_tok": 3, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
            "max_position_embeddings": 4096, "bos_token_id": 0, "eos_token_id": 1, "lm_head": True,
            "rm_head": False, **VARIANTS[variant]}


def deepseek_vl2_processor():
    """The processor of every tiny checkpoint: our small BPE with the real special tokens."""
    from vlm_app.models.deepseek_vl2 import DeepseekVLV2Processor

    return DeepseekVLV2Processor(_tokenizer())


def _tokenizer():
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import GPT2TokenizerFast

    vocab, merges = train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), leading_tokens=SPECIAL_TOKENS)
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges, unk_token=None, bos_token=SPECIAL_TOKENS[0],
                                  eos_token=SPECIAL_TOKENS[1], pad_token=SPECIAL_TOKENS[2])
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
                         special_tokens=True)
    # declared as the released special_tokens_map.json declares them, so that file can sit beside this tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|User|>", "<|Assistant|>"]})
    tokenizer.model_max_length = 4096
    assert len(tokenizer) <= PADDED_VOCAB
    return tokenizer


@torch.no_grad()
def _fill_random(model: torch.nn.Module, seed: int) -> None:
    """One draw per tensor in name order: N(0, 0.05), norm gains 1 + N(0, 0.05), router bias N(0, 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in sorted({**dict(model.named_parameters()), **dict(model.named_buffers())}.items()):
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
        if "norm" in name and name.endswith("weight"):
            tensor.copy_(1 + 0.05 * noise)
        elif "e_score_correction_bias" in name:
            tensor.copy_(0.1 * noise)
        else:
            tensor.copy_(0.05 * noise)


def build_tiny_deepseek_vl2(out_dir: str | Path, variant: str = "tiny", seed: int = 0) -> Path:
    """Write a tiny DeepSeek-VL2 checkpoint (config, safetensors, tokenizer, processor config) to `out_dir`."""
    from vlm_app.models.deepseek_vl2 import DeepseekVLV2Config, DeepseekVLV2ForCausalLM

    out_dir = Path(out_dir)
    config = DeepseekVLV2Config(
        vision_config={"model_name": "siglip_so400m_patch14_384", "patch_size": 14, "width": 64, "layers": 2,
                       "heads": 4, "mlp_ratio": 3.7362},
        projector_config={"input_dim": 64, "n_embed": 64},
        language_config=tiny_language_config(variant),
        architectures=["DeepseekVLV2ForCausalLM"])
    model = DeepseekVLV2ForCausalLM(config).eval()
    _fill_random(model, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    deepseek_vl2_processor().save_pretrained(out_dir)
    return out_dir
