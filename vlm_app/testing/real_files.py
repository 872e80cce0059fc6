"""Checkpoints from a real hub repository's text files: its tokenizer, chat template and processor settings as
published, a config shrunk to a few layers, and random weights (`python -m vlm_app tiny --from-files DIR`).

The real files are copied unchanged, so the folder loads through exactly the route a downloaded repository takes;
only what the files do not give is added, never invented in their place:
    qwen2_5_vl    tokenizer.json (built by transformers from vocab.json + merges.txt when absent); config.json is
                  the real one with the sizes shrunk, its token ids and vocabulary kept
    smolvlm2      no SmolVLM2 tokenizer or config.json is public: the BPE is ours (with the real special tokens)
                  and the vision geometry is the released models' for the tile size in preprocessor_config.json
    deepseek_vl2  the real processor_config.json and special_tokens_map.json over our tiny checkpoint (no
                  DeepSeek-VL2 config.json is public and its tokenizer.json is 6 MB: the BPE is ours, with the
                  real special tokens)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from vlm_app.errors import OptionsError

QWEN_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "chat_template.json",
              "preprocessor_config.json", "video_preprocessor_config.json", "generation_config.json")
QWEN_TEXT_SHRINK = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, max_window_layers=2,
                        num_attention_heads=2, num_key_value_heads=1,
                        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
QWEN_VISION_SHRINK = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=[1])

SMOLVLM2_FILES = ("processor_config.json", "preprocessor_config.json", "chat_template.json", "special_tokens_map.json")
# tile size (max_image_size.longest_edge) -> (vision patch size, pixel-shuffle factor) of the released SmolVLM2
# models: SigLIP-B/16 at 512 px (256M, 500M), SigLIP so400m/14 at 384 px (2.2B)
SMOLVLM2_VISION = {512: (16, 4), 384: (14, 3)}

DEEPSEEK_VL2_FILES = ("processor_config.json", "special_tokens_map.json")


def _read(files: Path, name: str) -> dict:
    path = files / name
    if not path.is_file():
        raise OptionsError(f"{files} has no {name}; pass the folder holding the repository's files")
    return json.loads(path.read_text())


def _copy(files: Path, out: Path, names: tuple[str, ...]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (files / name).is_file():
            shutil.copy(files / name, out / name)


def _save_tokenizer_json(tokenizer, out: Path) -> None:
    """Only tokenizer.json of `tokenizer` goes into `out`: the real tokenizer_config.json stays as published."""
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer.save_pretrained(scratch)
        shutil.copy(Path(scratch) / "tokenizer.json", out / "tokenizer.json")


def qwen2_5_vl_from_files(files: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer, GenerationConfig

    config = _read(files, "config.json")
    config.update(QWEN_TEXT_SHRINK)
    config["vision_config"] = {**config["vision_config"], **QWEN_VISION_SHRINK,
                               "out_hidden_size": QWEN_TEXT_SHRINK["hidden_size"]}
    missing = [name for name in ("vocab.json", "merges.txt") if not (files / name).is_file()]
    if not (files / "tokenizer.json").is_file() and missing:  # transformers would build a tokenizer of no words
        raise OptionsError(f"{files} has no tokenizer.json and no {' or '.join(missing)}; the Qwen2.5-VL sizes share "
                           "one BPE: add these files from any of them")
    _copy(files, out, QWEN_FILES)
    if not (out / "tokenizer.json").is_file():
        _save_tokenizer_json(AutoTokenizer.from_pretrained(out), out)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(out)).eval()
    if (out / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(out)
    model.save_pretrained(out)
    return out


def smolvlm2_from_files(files: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import GenerationConfig, SmolVLMConfig, SmolVLMForConditionalGeneration

    from vlm_app.testing.tiny import PADDED_VOCAB, smolvlm_tokenizer

    tile = _read(files, "preprocessor_config.json")["max_image_size"]["longest_edge"]
    image_seq_len = _read(files, "processor_config.json")["image_seq_len"]
    if tile not in SMOLVLM2_VISION:
        raise OptionsError(f"no released SmolVLM2 vision tower has {tile}-px tiles (known: {sorted(SMOLVLM2_VISION)})")
    patch, scale = SMOLVLM2_VISION[tile]
    if (tile // patch) ** 2 // scale ** 2 != image_seq_len:
        raise OptionsError(f"image_seq_len {image_seq_len} does not fit {tile}-px tiles of {patch}-px patches")
    tokenizer = smolvlm_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = SmolVLMConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=tile, patch_size=patch),
        text_config=dict(model_type="llama", vocab_size=PADDED_VOCAB, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=16384, bos_token_id=ids("<|im_start|>"),
                         eos_token_id=ids("<end_of_utterance>"), pad_token_id=ids("<|im_end|>"),
                         tie_word_embeddings=False),
        scale_factor=scale, image_token_id=ids("<image>"), pad_token_id=ids("<|im_end|>"), tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config).eval()
    # the real generation_config.json names ids of the real vocabulary; these are ours
    model.generation_config = GenerationConfig(bos_token_id=ids("<|im_start|>"), eos_token_id=ids("<end_of_utterance>"),
                                               pad_token_id=ids("<|im_end|>"), do_sample=False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _copy(files, out, SMOLVLM2_FILES)
    return out


def deepseek_vl2_from_files(files: Path, out: Path, seed: int = 0) -> Path:
    from vlm_app.testing.tiny_deepseek_vl2 import build_tiny_deepseek_vl2

    _read(files, "processor_config.json")
    build_tiny_deepseek_vl2(out, variant="tiny", seed=seed)
    _copy(files, out, DEEPSEEK_VL2_FILES)
    return out


BUILDERS = {"qwen2_5_vl": qwen2_5_vl_from_files, "smolvlm2": smolvlm2_from_files,
            "deepseek_vl2": deepseek_vl2_from_files}


def build_from_files(family: str, files: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a random-weight checkpoint of `family` made from the real text files in `files` into `out_dir`."""
    if family not in BUILDERS:
        raise OptionsError(f"unknown family {family!r}; choose one of {', '.join(BUILDERS)}")
    if not Path(files).is_dir():
        raise OptionsError(f"--from-files {files} is not a folder")
    return BUILDERS[family](Path(files), Path(out_dir), seed)
