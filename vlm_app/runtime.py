"""Loading models: device, dtype and attention choice, finding the files (offline-safe), quantization, LoRA,
and a cache of loaded models under a memory budget.

Finding files never waits on network retries: a hub id is looked up in the local cache first; only when it is
missing (and HF_HUB_OFFLINE is unset) is the hub endpoint probed once with a short timeout before downloading.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlm_app.adapters import registry
from vlm_app.adapters.registry import ModelRef, resolve
from vlm_app.errors import ModelLoadError, OptionsError

PROBE_TIMEOUT_S = 3.0
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py"]
QUANTIZATIONS = (None, "4bit", "8bit")
LARGE_MODEL_BYTES = 8 * 2**30  # above this (on disk), let accelerate spread the model over the devices


@dataclass
class ModelInfo:
    """Where a loaded model came from and how it runs: the reproducibility record of every result."""

    model_id: str                 # what the user asked for (short name, hub id or folder)
    path: str                     # the local folder the files were read from
    family: str
    revision: str | None = None   # hub commit of the cached snapshot, None for plain folders
    device: str = "cpu"
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    quantization: str | None = None
    lora_adapter: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise OptionsError(f"device {device} requested but CUDA is not available; use --device cpu or auto")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str | torch.dtype = "auto", device: str = "cpu") -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    named = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype not in named:
        raise OptionsError(f"unknown dtype {dtype!r}; use auto, bf16, fp16 or fp32")
    return named[dtype]


def pick_attention(attn: str = "auto", device: str = "cpu") -> str:
    if attn != "auto":
        return attn
    if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _endpoint_unreachable(endpoint: str) -> str | None:
    """None when the hub endpoint answers (any HTTP status), else the reason it does not."""
    try:
        urllib.request.urlopen(endpoint, timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as error:
        return str(getattr(error, "reason", error))
    return None


def _not_available(ref: ModelRef, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"model {ref.name} ({ref.repo_id}) is not in the local Hugging Face cache and {why}. Download it where "
        f"there is network (`hf download {ref.repo_id}`) and point HF_HOME at that cache, or pass a local "
        "checkpoint folder: --model /path/to/checkpoint")


def locate(ref: ModelRef, revision: str | None = None) -> tuple[str, str | None]:
    """The local folder holding the model's files, and the hub commit it came from (None for plain folders)."""
    if ref.local_path:
        return ref.local_path, None
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = snapshot_download(ref.repo_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        if constants.is_offline_mode():
            raise _not_available(ref, "HF_HUB_OFFLINE is set") from None
        reason = _endpoint_unreachable(constants.ENDPOINT)
        if reason:
            raise _not_available(ref, f"{constants.ENDPOINT} cannot be reached ({reason})") from None
        try:
            path = snapshot_download(ref.repo_id, revision=revision, allow_patterns=DOWNLOAD_PATTERNS)
        except (HfHubHTTPError, OSError) as error:
            raise ModelLoadError(f"could not download {ref.repo_id}: {error}") from error
    return path, Path(path).name


def _weights_bytes(path: str) -> int:
    return sum(file.stat().st_size for file in Path(path).glob("*.safetensors"))


def _quantization_config(quantization: str | None, device: str):
    if quantization not in QUANTIZATIONS:
        raise OptionsError(f"unknown quantization {quantization!r}; use 4bit or 8bit")
    if quantization is None:
        return None
    if not device.startswith("cuda") or importlib.util.find_spec("bitsandbytes") is None:
        raise OptionsError(f"{quantization} loading needs a CUDA GPU and bitsandbytes (pip install 'vlm_app[quant]')")
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16,
                                  bnb_4bit_quant_type="nf4")
    return BitsAndBytesConfig(load_in_8bit=True)


def _with_lora(model, lora_adapter: str):
    if importlib.util.find_spec("peft") is None:
        raise OptionsError("--adapter needs peft (pip install 'vlm_app[lora]')")
    if not os.path.isdir(lora_adapter):
        raise ModelLoadError(f"LoRA adapter folder {lora_adapter} does not exist")
    from peft import PeftModel

    return PeftModel.from_pretrained(model, lora_adapter).eval()  # kept separate, not merged


def load_adapter(name: str, device: str = "auto", dtype: str = "auto", attn: str = "auto",
                 quantization: str | None = None, lora_adapter: str | None = None, revision: str | None = None,
                 adapter_class: type | None = None):
    """Load `name` (short name, hub id or folder) into its family's adapter (or `adapter_class`)."""
    ref = resolve(name)
    cls = adapter_class or registry.adapter_class(ref.family)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    attention = pick_attention(attn, device)
    path, commit = locate(ref, revision)
    kwargs = {"dtype": torch_dtype, "attn_implementation": attention}
    quantization_config = _quantization_config(quantization, device)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device.startswith("cuda") and (quantization_config is not None or _weights_bytes(path) > LARGE_MODEL_BYTES):
        kwargs["device_map"] = "auto"
    try:
        model = cls.load_model(path, **kwargs)
        processor = cls.load_processor(path)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load {name} from {path}: {error}") from error
    if "device_map" not in kwargs:
        model = model.to(device)
    model.eval()
    if lora_adapter:
        model = _with_lora(model, lora_adapter)
    info = ModelInfo(model_id=name, path=path, family=ref.family, revision=commit, device=str(model.device),
                     dtype=str(torch_dtype).removeprefix("torch."), attn_implementation=attention,
                     quantization=quantization, lora_adapter=lora_adapter)
    return cls(model, processor, info)


def model_bytes(adapter) -> int:
    return sum(p.numel() * p.element_size() for p in adapter.model.parameters()) + \
        sum(b.numel() * b.element_size() for b in adapter.model.buffers())


def _default_budget() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory * 0.9)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)


class ModelCache:
    """Loaded adapters keyed by (name, options), least recently used first; loading evicts old models until the
    new one fits the memory budget (bytes; default 90% of GPU memory, or half the RAM on CPU)."""

    def __init__(self, budget_bytes: int | None = None):
        self.budget_bytes = budget_bytes if budget_bytes is not None else _default_budget()
        self._models: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(name: str, options: dict) -> tuple:
        return (name, tuple(sorted((k, str(v)) for k, v in options.items())))

    def get(self, name: str, **options):
        """The loaded adapter for `name` with these load options, loading (and evicting) when needed."""
        key = self._key(name, options)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key][0]
            ref = resolve(name)
            estimate = _weights_bytes(ref.local_path) if ref.local_path else 0
            self._evict_until(self.budget_bytes - estimate)
            adapter = load_adapter(name, **options)
            self._models[key] = (adapter, model_bytes(adapter))
            self._evict_until(self.budget_bytes, keep=key)
            return adapter

    def _evict_until(self, limit: int, keep: tuple | None = None) -> None:
        while self._models and self.used_bytes > limit:
            oldest = next(iter(self._models))
            if oldest == keep:
                break
            self._drop(oldest)

    def _drop(self, key: tuple) -> None:
        self._models.pop(key)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def unload(self, name: str | None = None) -> int:
        """Unload every cached model named `name` (all models when None); returns how many were unloaded."""
        with self._lock:
            keys = [key for key in self._models if name is None or key[0] == name]
            for key in keys:
                self._drop(key)
            return len(keys)

    @property
    def used_bytes(self) -> int:
        return sum(size for _, size in self._models.values())

    def loaded(self) -> list[dict]:
        """One row per loaded model: name, load options, family, device, dtype, bytes (least recent first)."""
        return [{"name": key[0], "options": dict(key[1]), "family": adapter.family, "device": adapter.info.device,
                 "dtype": adapter.info.dtype, "bytes": size} for key, (adapter, size) in self._models.items()]


CACHE = ModelCache()
