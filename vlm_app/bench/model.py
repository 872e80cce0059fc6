"""`python -m vlm_app bench model --family F --size S --random-weights`: prefill and decode speed and peak memory
of a real-size model, built from its published configuration with random weights (nothing is downloaded).

The prompt is a synthetic video (640x360, `--frames` seconds sampled at 1 fps) through our adapter, so the visual token
count is what the real model would see; the tokenizer is our small one (ids are remapped into the real vocab
size, which is all random weights need). Meant for GPU machines; the smallest sizes also run on a CPU.
"""

from __future__ import annotations

import json
import os
import time

import torch

from vlm_app.errors import OptionsError
from vlm_app.testing.tiny_deepseek_vl2 import MHA_ATTENTION, NOAUX_ROUTER, SOFTMAX_ROUTER

# Transcribed from the published config.json files (architecture fields only), checked by parameter count against
# the model cards (tests/test_adapters_bench_model.py): Qwen2.5-VL 3.75B / 8.29B / 33.5B / 73.4B, SmolVLM2 256M /
# 507M / 2.25B; Qwen 3B and 7B also field by field against their real config.json, SmolVLM2's tile size and
# image_seq_len against the real processor files (tests/fixtures/real_checkpoint_files). transformers'
# Qwen2_5_VLConfig defaults are the 72B text and the shared vision tower (but tokens_per_second 4: the files say 2).
QWEN2_5_VL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                         spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                         fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu")
QWEN2_5_VL_TEXT = {
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "32b": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
    "72b": dict(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
}
SMOLVLM2 = {
    "256m": dict(text=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, head_dim=64, rope_theta=1e5, max_position_embeddings=8192),
                 vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                             image_size=512, patch_size=16), scale_factor=4),
    "500m": dict(text=dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                           num_key_value_heads=5, head_dim=64, rope_theta=1e5, max_position_embeddings=8192),
                 vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                             image_size=512, patch_size=16), scale_factor=4),
    # the 1.7B backbone was stretched to a 16k context with a larger RoPE base (third-party transcription of the
    # SmolVLM 2.2B text config; unverified against the SmolVLM2 hub file)
    "2.2b": dict(text=dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                           num_key_value_heads=32, head_dim=64, rope_theta=273768.0, max_position_embeddings=16384),
                 vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                             image_size=384, patch_size=14), scale_factor=3),
}
SMOLVLM2_VOCAB = 49280

# deepseek-ai/deepseek-vl2-tiny / -small / deepseek-vl2: the per-size table of the shared DeepSeek-VL2 fact sheet
# (reference/deepseek_vl2.md §1.3, transcribed by third parties from the released config.json files). Small's
# vocab is the V2 tokenizer's 102400 (the paper); with it the parameter count matches the published 16.1B.
DEEPSEEK_VL2_VISION = dict(model_name="siglip_so400m_patch14_384", image_size=384, patch_size=14, width=1152,
                           layers=27, heads=16, mlp_ratio=3.7362)
DEEPSEEK_VL2_MLA = dict(kv_lora_rank=512, q_lora_rank=None, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
DEEPSEEK_VL2_MOE = dict(n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1, moe_layer_freq=1,
                        n_group=1, topk_group=1, max_position_embeddings=4096)
DEEPSEEK_VL2 = {
    "tiny": dict(hidden_size=1280, intermediate_size=6848, moe_intermediate_size=896, num_hidden_layers=12,
                 num_attention_heads=10, num_key_value_heads=10, n_routed_experts=64, vocab_size=129280,
                 **MHA_ATTENTION, **SOFTMAX_ROUTER),
    "small": dict(hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=27,
                  num_attention_heads=16, num_key_value_heads=16, n_routed_experts=64, vocab_size=102400,
                  **DEEPSEEK_VL2_MLA, **SOFTMAX_ROUTER),
    "base": dict(hidden_size=2560, intermediate_size=12288, moe_intermediate_size=1536, num_hidden_layers=30,
                 num_attention_heads=32, num_key_value_heads=32, n_routed_experts=72, vocab_size=129280,
                 **DEEPSEEK_VL2_MLA, **NOAUX_ROUTER),
}


def _qwen(size: str, layers: tuple[int, int] | None = None):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from vlm_app.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
    from vlm_app.testing.tiny import qwen2_5_vl_processor

    processor = qwen2_5_vl_processor()
    ids = processor.tokenizer.convert_tokens_to_ids
    text = QWEN2_5_VL_TEXT[size]
    vision = dict(QWEN2_5_VL_VISION)
    if layers is not None:  # a reduced model: the real widths, fewer layers (the last vision layer attends fully)
        vision.update(depth=layers[0], fullatt_block_indexes=[layers[0] - 1])
        text = {**text, "num_hidden_layers": layers[1]}
    config = Qwen2_5_VLConfig(
        text_config=dict(**text, max_position_embeddings=128000, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                         eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>")),
        vision_config=dict(**vision, out_hidden_size=text["hidden_size"]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=text["tie_word_embeddings"])
    return Qwen2_5_VLForConditionalGeneration, config, processor, Qwen2_5_VLAdapter


def _smolvlm2(size: str, layers: tuple[int, int] | None = None):
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    from vlm_app.adapters.smolvlm2 import SmolVLM2Adapter
    from vlm_app.testing.tiny import smolvlm2_processor

    spec = SMOLVLM2[size]
    vision = spec["vision"] if layers is None else {**spec["vision"], "num_hidden_layers": layers[0]}
    seq_len = (vision["image_size"] // vision["patch_size"]) ** 2 // spec["scale_factor"] ** 2
    processor = smolvlm2_processor(image_size=vision["image_size"], image_seq_len=seq_len, max_frames=64)
    ids = processor.tokenizer.convert_tokens_to_ids
    config = SmolVLMConfig(
        vision_config=vision, scale_factor=spec["scale_factor"], image_token_id=ids("<image>"),
        text_config=dict(model_type="llama", vocab_size=SMOLVLM2_VOCAB, rms_norm_eps=1e-5,
                         eos_token_id=ids("<end_of_utterance>"), pad_token_id=ids("<|im_end|>"),
                         tie_word_embeddings=False,
                         **(spec["text"] if layers is None else {**spec["text"], "num_hidden_layers": layers[1]})))
    return SmolVLMForConditionalGeneration, config, processor, SmolVLM2Adapter


def _deepseek_vl2(size: str, layers: tuple[int, int] | None = None):
    from vlm_app.adapters.deepseek_vl2 import DeepseekVL2Adapter
    from vlm_app.models.deepseek_vl2 import DeepseekVLV2Config, DeepseekVLV2ForCausalLM
    from vlm_app.testing.tiny_deepseek_vl2 import deepseek_vl2_processor

    spec = DEEPSEEK_VL2[size] if layers is None else {**DEEPSEEK_VL2[size], "num_hidden_layers": layers[1]}
    vision = DEEPSEEK_VL2_VISION if layers is None else {**DEEPSEEK_VL2_VISION, "layers": layers[0]}
    processor = deepseek_vl2_processor()
    tokenizer = processor.tokenizer
    config = DeepseekVLV2Config(
        vision_config=vision, projector_config={"n_embed": spec["hidden_size"]},
        language_config={**spec, **DEEPSEEK_VL2_MOE, "bos_token_id": tokenizer.bos_token_id,
                         "eos_token_id": tokenizer.eos_token_id})
    return DeepseekVLV2ForCausalLM, config, processor, DeepseekVL2Adapter


FAMILIES = {"qwen2_5_vl": (_qwen, QWEN2_5_VL_TEXT), "smolvlm2": (_smolvlm2, SMOLVLM2),
            "deepseek_vl2": (_deepseek_vl2, DEEPSEEK_VL2)}


def _available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    with open("/proc/meminfo") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return int(fields["MemAvailable"].split()[0]) * 1024


def _count_parameters(model_class, config) -> int:
    with torch.device("meta"):
        model = model_class._from_config(config)
    return sum(p.numel() for p in model.parameters())


def run_model_benchmark(args) -> int:
    from vlm_app.runtime import ModelInfo
    from vlm_app.messages import conversation
    from vlm_app.runtime import pick_device, pick_dtype

    build, sizes = FAMILIES[args.family]
    size = args.size.lower()
    if size not in sizes:
        raise OptionsError(f"unknown size {args.size!r} for {args.family}; known: {', '.join(sizes)}")
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    model_class, config, processor, adapter_class = build(size)
    parameters = _count_parameters(model_class, config)
    needed = parameters * torch.tensor([], dtype=dtype).element_size()
    available = _available_bytes(device)
    if needed * 1.2 > available:
        raise OptionsError(f"{args.family}-{size} needs about {needed / 2**30:.1f} GiB for weights in {dtype} but "
                           f"only {available / 2**30:.1f} GiB is free on {device}; use a smaller --size, "
                           "--dtype bf16, or a machine with more (GPU) memory")
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype).eval()
    build_s = time.perf_counter() - started
    info = ModelInfo(model_id=f"{args.family}-{size} (random weights)", path="", family=args.family,
                     device=str(device), dtype=str(dtype).removeprefix("torch."))
    adapter = adapter_class(model, processor, info)
    video = _synthetic_video(args.frames)
    prepared = adapter.prepare(conversation("Describe this video.", video=video), max_new_tokens=args.max_new_tokens,
                               fps=1.0)
    adapter.generate(prepared, max_new_tokens=2, min_new_tokens=2)  # warmup
    generation = adapter.generate(prepared, max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens)
    timings = generation.timings
    result = {"model": info.model_id, "parameters": parameters, "device": str(device), "dtype": info.dtype,
              "build_s": build_s, "frames": len(prepared.media[0].frames_indices),
              "prompt_tokens": prepared.num_tokens.total, "visual_tokens": prepared.num_tokens.visual,
              "preprocess_s": prepared.timings["preprocess_s"], "prefill_s": timings.prefill_s,
              "prefill_tokens_per_s": prepared.num_tokens.total / timings.prefill_s,
              "decode_tokens_per_s": timings.tokens_per_s, "new_tokens": timings.new_tokens,
              "peak_memory_bytes": timings.peak_memory_bytes}
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(key) for key in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return 0


def _synthetic_video(frames: int) -> str:
    """A `frames`-second 640x360 textured clip at 2 fps (sampled at 1 fps by the benchmark)."""
    import tempfile

    from vlm_app.testing.videos import make_textured_clip

    folder = tempfile.mkdtemp(prefix="vlm_app_bench_")
    return str(make_textured_clip(os.path.join(folder, "video.mp4"), frames, fps=2, preset="ultrafast"))
