"""Model names -> family -> adapter class. No weights are loaded here.

A model is named by a short name (`smolvlm2-256m`), a hub id (`Qwen/Qwen2.5-VL-7B-Instruct`) or a local folder.
The family comes from the short-name table, a local folder's `config.json` `model_type`, a cached hub
snapshot's `config.json`, or (last) a pattern on the hub id.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vlm_app.errors import ModelLoadError

DEFAULT_MODEL = "smolvlm2-256m"

SHORT_NAMES: dict[str, str] = {
    "smolvlm2-256m": "HuggingFaceTB/SmolVLM2-256M-Video-Instruct",
    "smolvlm2-500m": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
    "smolvlm2-2.2b": "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen2.5-vl-32b": "Qwen/Qwen2.5-VL-32B-Instruct",
    "qwen2.5-vl-72b": "Qwen/Qwen2.5-VL-72B-Instruct",
    "deepseek-vl2-tiny": "deepseek-ai/deepseek-vl2-tiny",
    "deepseek-vl2-small": "deepseek-ai/deepseek-vl2-small",
    "deepseek-vl2": "deepseek-ai/deepseek-vl2",
}

# config.json model_type -> family
MODEL_TYPES: dict[str, str] = {
    "qwen2_5_vl": "qwen2_5_vl",
    "smolvlm": "smolvlm2",
    "deepseek_vl_v2": "deepseek_vl2",
}

# hub-id patterns, used only when no config.json is at hand
HUB_PATTERNS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"qwen2\.5-vl", re.IGNORECASE), "qwen2_5_vl"),
    (re.compile(r"smolvlm2", re.IGNORECASE), "smolvlm2"),
    (re.compile(r"deepseek-vl2", re.IGNORECASE), "deepseek_vl2"),
]

# family -> "module:Class", imported on first use so that one family's code never loads another's
ADAPTERS: dict[str, str] = {
    "qwen2_5_vl": "vlm_app.adapters.qwen2_5_vl:Qwen2_5_VLAdapter",
    "smolvlm2": "vlm_app.adapters.smolvlm2:SmolVLM2Adapter",
    "deepseek_vl2": "vlm_app.adapters.deepseek_vl2:DeepseekVL2Adapter",
}

FAMILIES = tuple(ADAPTERS)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model name: either a local folder or a hub repository id."""

    name: str                # what the user passed
    family: str
    local_path: str | None   # set for local folders
    repo_id: str | None      # set for hub models


def is_hub_id(name: str) -> bool:
    """owner/name, not a relative path."""
    return bool(_HUB_ID.match(name)) and not name.startswith(".")


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "~")) or "/" in name or os.sep in name


def family_from_config(config_path: str | Path) -> str:
    try:
        model_type = json.loads(Path(config_path).read_text()).get("model_type")
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read {config_path}: {error}") from error
    if model_type not in MODEL_TYPES:
        raise ModelLoadError(f"{config_path} has model_type {model_type!r}; supported: "
                             f"{', '.join(sorted(MODEL_TYPES))}")
    return MODEL_TYPES[model_type]


def _cached_config(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return found if isinstance(found, str) else None


def resolve(name: str) -> ModelRef:
    """Map a short name, hub id or folder to its family and location. Raises ModelLoadError when unknown."""
    if name in SHORT_NAMES:
        repo_id = SHORT_NAMES[name]
        return ModelRef(name, _hub_family(repo_id), None, repo_id)
    if os.path.isdir(os.path.expanduser(name)):
        folder = os.path.abspath(os.path.expanduser(name))
        config = os.path.join(folder, "config.json")
        if not os.path.isfile(config):
            raise ModelLoadError(f"{name} is a folder but has no config.json; point --model at a checkpoint folder "
                                 "(the one holding config.json and the weights)")
        return ModelRef(name, family_from_config(config), folder, None)
    if is_hub_id(name):
        return ModelRef(name, _hub_family(name), None, name)
    if _looks_like_path(name):
        raise ModelLoadError(f"model folder {name} does not exist; pass --model with an existing checkpoint folder")
    raise ModelLoadError(f"unknown model {name!r}: use a short name ({', '.join(SHORT_NAMES)}), "
                         "a hub id (owner/name) or a local checkpoint folder")


def _hub_family(repo_id: str) -> str:
    config = _cached_config(repo_id)
    if config:
        return family_from_config(config)
    for pattern, family in HUB_PATTERNS:
        if pattern.search(repo_id):
            return family
    raise ModelLoadError(f"cannot tell the model family of {repo_id!r}: it is not cached locally and its name "
                         f"matches none of {', '.join(FAMILIES)}; download it (`hf download {repo_id}`) or pass "
                         "a local checkpoint folder with --model")


def family_of(name_or_path: str) -> str:
    """The family of a model name, hub id or folder, without loading anything."""
    if name_or_path in FAMILIES:
        return name_or_path
    return resolve(name_or_path).family


def adapter_class(family: str):
    """The Adapter subclass for a family (imports its module on first use)."""
    if family not in ADAPTERS:
        raise ModelLoadError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    module_name, class_name = ADAPTERS[family].split(":")
    return getattr(importlib.import_module(module_name), class_name)
