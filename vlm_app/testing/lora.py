"""Random LoRA adapters for checkpoints of any family (`python -m vlm_app tiny --family F --out DIR --lora OUT`),
built offline in seconds: tests and users get an adapter without a download.

The adapter targets every linear layer of the model but its output head, the language model's, the vision tower's
and the projector's alike, and both of its matrices are random (peft's `init_lora_weights=False`), so unlike a
freshly initialised LoRA (B = 0) it changes the answer. It is saved the way peft saves one (adapter_config.json with
the checkpoint's folder as base_model_name_or_path, adapter_model.safetensors). The same seed gives the same adapter.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_RANK = 4


def linear_targets(model) -> list[str]:
    """peft target names for every `nn.Linear` of `model` but its output head: a module's last name where every
    module of that name is such a layer, else the layer's full name."""
    from torch import nn

    head = model.get_output_embeddings()
    modules = dict(model.named_modules())
    linear = [name for name, module in modules.items() if isinstance(module, nn.Linear) and module is not head]
    chosen = set(linear)

    def last(name: str) -> str:
        return name.rsplit(".", 1)[-1]

    for leaf in {last(name) for name in linear if not last(name).isdigit()}:  # not `2` of `mlp.2`: too vague
        namesakes = [name for name in modules if last(name) == leaf]
        if all(name in chosen for name in namesakes):
            chosen -= set(namesakes)
            chosen.add(leaf)
    return sorted(chosen)


def build_tiny_lora(checkpoint: str | Path, out_dir: str | Path, seed: int = 0, rank: int = DEFAULT_RANK) -> Path:
    """Write a random LoRA for the checkpoint in `checkpoint` (any family) into `out_dir`; returns the folder."""
    import torch
    from peft import LoraConfig, get_peft_model

    from vlm_app.runtime import load_adapter

    adapter = load_adapter(str(Path(checkpoint).resolve()), device="cpu", dtype="fp32")
    # alpha / r = 1/4: enough to change a tiny model's answer, which stays made of ordinary tokens
    config = LoraConfig(r=rank, lora_alpha=1, target_modules=linear_targets(adapter.model),
                        init_lora_weights=False)
    torch.manual_seed(seed)
    lora = get_peft_model(adapter.model, config)
    out = Path(out_dir)
    lora.save_pretrained(out)
    return out
