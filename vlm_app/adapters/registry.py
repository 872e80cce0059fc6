"""Model names -> family -> adapter class. No weights are loaded here.

`FAMILIES` is the one list of families: each is a module `vlm_app.adapters.<family>` whose `Adapter` subclass
(`ADAPTER` in that module) declares everything about it — the short names, hub-id pattern and `model_type`s it
claims, its sampling policies, token arithmetic, tiny-checkpoint recipe. The tables here are read off those
classes the first time a name is resolved.

A model is named by a short name (`smolvlm2-256m`), a hub id (`Qwen/Qwen2.5-VL-7B-Instruct`) or a local folder.
The family comes from the short-name table, a local folder's `config.json` `model_type`, a cached hub
snapshot's `config.json`, or (last) a pattern on the hub id.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vlm_app.errors import ModelLoadError

FAMILIES = ("qwen2_5_vl", "qwen3_vl", "gemma4", "smolvlm2", "deepseek_vl2")

DEFAULT_MODEL = "smolvlm2-256m"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model name: either a local folder or a hub repository id."""

    name: str                # what the user passed
    family: str
    local_path: str | None   # set for local folders
    repo_id: str | None      # set for hub models


def adapter_class(family: str):
    """The Adapter subclass of a family (imports its module on first use)."""
    if family not in FAMILIES:
        raise ModelLoadError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(f"vlm_app.adapters.{family}").ADAPTER


@functools.cache
def short_names() -> dict[str, str]:
    """Every family's short names -> hub ids."""
    return {name: repo for family in FAMILIES for name, repo in adapter_class(family).short_names.items()}


@functools.cache
def model_types() -> dict[str, str]:
    """config.json `model_type` -> family."""
    return {model_type: family for family in FAMILIES for model_type in adapter_class(family).model_types}


def policy_factories() -> dict:
    """Every family's sampling policies by name (each a function that builds the policy now)."""
    return {name: build for family in FAMILIES for name, build in adapter_class(family).policies.items()}


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
    if model_type not in model_types():
        raise ModelLoadError(f"{config_path} has model_type {model_type!r}; supported: "
                             f"{', '.join(sorted(model_types()))}")
    return model_types()[model_type]


def _cached_config(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return found if isinstance(found, str) else None


def resolve(name: str) -> ModelRef:
    """Map a short name, hub id or folder to its family and location. Raises ModelLoadError when unknown."""
    if name in short_names():
        repo_id = short_names()[name]
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
    raise ModelLoadError(f"unknown model {name!r}: use a short name ({', '.join(short_names())}), "
                         "a hub id (owner/name) or a local checkpoint folder")


def _hub_family(repo_id: str) -> str:
    config = _cached_config(repo_id)
    if config:
        return family_from_config(config)
    for family in FAMILIES:
        if re.search(adapter_class(family).hub_pattern, repo_id, re.IGNORECASE):
            return family
    raise ModelLoadError(f"cannot tell the model family of {repo_id!r}: it is not cached locally and its name "
                         f"matches none of {', '.join(FAMILIES)}; download it (`hf download {repo_id}`) or pass "
                         "a local checkpoint folder with --model")


def family_of(name_or_path: str) -> str:
    """The family of a model name, hub id or folder, without loading anything."""
    if name_or_path in FAMILIES:
        return name_or_path
    return resolve(name_or_path).family
