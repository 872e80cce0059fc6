"""Loading models: device, dtype and attention choice, finding the files (offline-safe), quantization, LoRA,
and a cache of loaded models under a memory budget.

Finding files never waits on network retries: a hub id is looked up in the local cache first; only when it is
missing (and HF_HUB_OFFLINE is unset) is the hub endpoint probed once with a short timeout before downloading.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import json
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlm_app.adapters import registry
from vlm_app.adapters.registry import resolve
from vlm_app.hub import locate
from vlm_app.errors import ModelLoadError, OptionsError

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
    lora_adapter: dict | None = None  # the LoRA applied: name, source, path, revision, rank, targets, merged
    notes: list[str] = field(default_factory=list)  # why a faster default was not taken (e.g. no flash-attn)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "notes": list(self.notes)}


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
    """auto: bf16 on a CUDA GPU that supports it, fp16 on older ones (T4, V100), fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if not device.startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    named = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype not in named:
        raise OptionsError(f"unknown dtype {dtype!r}; use auto, bf16, fp16 or fp32")
    return named[dtype]


def _flash_attention_unusable(device: str, dtype: torch.dtype) -> str | None:
    """None when flash-attention-2 can run here, else why not."""
    if not device.startswith("cuda"):
        return f"flash-attention-2 needs a CUDA GPU (device is {device})"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attention-2 needs fp16 or bf16 (dtype is {str(dtype).removeprefix('torch.')})"
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if major < 8:
        return f"flash-attention-2 needs compute capability 8.0 or newer (this GPU has {major}.{minor})"
    try:
        import flash_attn  # noqa: F401  (a wheel built for another torch or CUDA fails here, not at find_spec)
    except Exception as error:  # ImportError, or the OSError/RuntimeError of a broken build
        return f"flash-attention-2 is not importable ({type(error).__name__}: {error})"
    return None


def pick_attention(attn: str = "auto", device: str = "cpu",
                   dtype: torch.dtype = torch.float32) -> tuple[str, list[str]]:
    """(attention implementation, notes). auto: flash-attention-2 where it can run, else sdpa with a note why.
    Asking for flash_attention_2 where it cannot run is an error, not a silent fallback."""
    if attn not in ("auto", "flash_attention_2"):
        return attn, []
    reason = _flash_attention_unusable(device, dtype)
    if reason is None:
        return "flash_attention_2", []
    if attn == "flash_attention_2":
        raise OptionsError(f"--attn flash_attention_2 cannot be used: {reason}; use --attn sdpa or auto")
    return "sdpa", [f"attention: sdpa, as {reason}"]


ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "8bit": 1, "4bit": 0.5}


def _stored_dtype(folder: Path) -> str:
    """The dtype the weight files hold, as config.json records it (fp32 when it does not say)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    stored = config.get("dtype") or config.get("torch_dtype") or "float32"
    return stored if stored in ELEMENT_BYTES else "float32"


def tensor_bytes(file: Path) -> int:
    """Bytes of the tensors a weight file holds: a .safetensors file less its header (an 8-byte length, then
    JSON naming every tensor: kilobytes, enough to tip a memory fit), a .bin pickle as it is."""
    size = file.stat().st_size
    if file.suffix != ".safetensors":
        return size
    with file.open("rb") as handle:
        header = int.from_bytes(handle.read(8), "little")
    return size - 8 - header if 8 + header <= size else size  # a broken file fails when it loads, not here


def weights_bytes(path: str) -> int:
    """Bytes of the checkpoint's weight tensors, read from disk before loading. A sharded checkpoint whose index
    names a shard that is not there is an error here, listing every missing shard."""
    folder = Path(path)
    index = next(iter(sorted(folder.glob("*.safetensors.index.json"))), None)
    if index is None:
        return sum(tensor_bytes(file) for file in [*folder.glob("*.safetensors"), *folder.glob("*.bin")])
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"{index} is not a readable weight index ({error}); re-download the checkpoint") from error
    missing = [shard for shard in shards if not (folder / shard).is_file()]
    if missing:
        raise ModelLoadError(f"{folder} is missing {len(missing)} of the {len(shards)} weight shards its "
                             f"{index.name} lists: {', '.join(missing)}; finish the download (`hf download` "
                             "resumes) or copy the missing files")
    return sum(tensor_bytes(folder / shard) for shard in shards)


def loaded_bytes_estimate(path: str, dtype: torch.dtype, quantization: str | None = None) -> int:
    """Memory the model will take once loaded: its file size, rescaled from the stored dtype to the loaded one."""
    stored = ELEMENT_BYTES[_stored_dtype(Path(path))]
    loaded = ELEMENT_BYTES.get(quantization) or ELEMENT_BYTES[str(dtype).removeprefix("torch.")]
    return int(weights_bytes(path) * loaded / stored)


def _quantization_config(quantization: str | None, device: str, dtype: torch.dtype):
    if quantization not in QUANTIZATIONS:
        raise OptionsError(f"unknown quantization {quantization!r}; use 4bit or 8bit")
    if quantization is None:
        return None
    if not device.startswith("cuda") or importlib.util.find_spec("bitsandbytes") is None:
        raise OptionsError(f"{quantization} loading needs a CUDA GPU and bitsandbytes (pip install 'vlm_app[quant]')")
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype,
                                  bnb_4bit_quant_type="nf4")
    return BitsAndBytesConfig(load_in_8bit=True)


def _read_loras(name: str, lora_adapter: str | None, loras: tuple, merge: bool) -> list:
    """The adapters to load on model `name`, checked against it before any weight loads: `lora_adapter` (one, active)
    or `loras` ((name, source) pairs, switched per request), not both."""
    from vlm_app import lora

    if lora_adapter and loras:
        raise OptionsError("--adapter (one adapter, always on) and --lora (named adapters) do not go together")
    if merge and (loras or not lora_adapter):
        raise OptionsError("--merge folds one --adapter into the model; it needs --adapter and no --lora")
    files = [lora.read_lora(source, lora_name) for lora_name, source in loras] if loras else \
        [lora.read_lora(lora_adapter)] if lora_adapter else []
    for each in files:
        lora.check_base(each, name)
    return files


@contextmanager
def reading_checkpoint(name: str, path: str):
    """Errors transformers raises on a checkpoint's files (a config it rejects, a missing or broken file) become
    one ModelLoadError naming the checkpoint."""
    from huggingface_hub.errors import StrictDataclassError

    try:
        yield
    except (OSError, ValueError, TypeError, KeyError, StrictDataclassError) as error:
        reason = " ".join(str(error).split())
        raise ModelLoadError(f"could not load {name} from {path}: {reason}; check its config.json and weight "
                             "files (a checkpoint of a supported family, complete, for this transformers "
                             "version)") from error


MMAP_THRESHOLD_BYTES = 4 * 2**20


def return_freed_tensors() -> None:
    """Make glibc hand every allocation of 4 MiB or more straight back to the system when it is freed. By default
    its threshold rises after the first frees up to 32 MiB, so the activations a model on the CPU frees layer after
    layer stay in the heap of the thread that ran it: a SmolVLM2-256M request over 8 frames peaked 318 MiB (23 %)
    higher, and the memory pre-flight could not predict it. A no-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, MMAP_THRESHOLD_BYTES)  # M_MMAP_THRESHOLD


def load_adapter(name: str, device: str = "auto", dtype: str = "auto", attn: str = "auto",
                 quantization: str | None = None, lora_adapter: str | None = None, revision: str | None = None,
                 adapter_class: type | None = None, merge: bool = False, loras: tuple = ()):
    """Load `name` (short name, hub id or folder) into its family's adapter (or `adapter_class`). `lora_adapter`: a
    peft LoRA (folder or hub id) applied unmerged, or folded in with `merge`; `loras`: (name, source) pairs, every
    adapter loaded on the one base and chosen per request (`vlm_app.lora.using`)."""
    ref = resolve(name)
    cls = adapter_class or registry.adapter_class(ref.family)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    attention, notes = pick_attention(attn, device, torch_dtype)
    if device == "cpu":
        return_freed_tensors()
    path, commit = locate(ref, revision)
    lora_files = _read_loras(name, lora_adapter, tuple(loras), merge)
    kwargs = {"dtype": torch_dtype, "attn_implementation": attention}
    quantization_config = _quantization_config(quantization, device, torch_dtype)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    on_disk = weights_bytes(path)  # also checks that every shard is there before anything loads
    if device.startswith("cuda") and (quantization_config is not None or on_disk > LARGE_MODEL_BYTES):
        kwargs["device_map"] = "auto"
    with reading_checkpoint(name, path):
        model = cls.load_model(path, **kwargs)
        processor = cls.load_processor(path)
    if "device_map" not in kwargs:
        model = model.to(device)
    model.eval()
    if lora_files:
        from vlm_app import lora

        model = lora.attach(model, lora_files)
        if merge:
            model = model.merge_and_unload()
    info = ModelInfo(model_id=name, path=path, family=ref.family, revision=commit, device=str(model.device),
                     dtype=str(torch_dtype).removeprefix("torch."), attn_implementation=attention,
                     quantization=quantization, lora_adapter=lora_files[0].info(merge) if lora_adapter else None,
                     notes=notes)
    adapter = cls(model, processor, info)
    if loras:
        adapter.lora_switch = lora.Switch(model, lora_files)
    return adapter


@dataclass(frozen=True)
class ModelChoice:
    """A model named with its `load_adapter` options, loaded only once a run needs it."""

    name: str
    options: dict = field(default_factory=dict)  # load_adapter keywords: device, dtype, attn, revision, ...

    def load(self):
        return load_adapter(self.name, **self.options)

    def unloaded(self):
        """The adapter `load` gives, less the model: the checkpoint's processor and config, and the `info` its
        records carry about how they were made (device, dtype and attention keep their defaults: they need the
        weights). Enough to check a resumed run's settings in a second, before the weights load."""
        ref = resolve(self.name)
        path, commit = locate(ref, self.options.get("revision"))
        lora_adapter, merge = self.options.get("lora_adapter"), self.options.get("merge", False)
        lora_files = _read_loras(self.name, lora_adapter, tuple(self.options.get("loras", ())), merge)
        adapter = registry.adapter_class(ref.family).without_weights(path)
        adapter.info = ModelInfo(model_id=self.name, path=path, family=ref.family, revision=commit,
                                 quantization=self.options.get("quantization"),
                                 lora_adapter=lora_files[0].info(merge) if lora_adapter else None)
        return adapter


def model_bytes(adapter) -> int:
    return sum(p.numel() * p.element_size() for p in adapter.model.parameters()) + \
        sum(b.numel() * b.element_size() for b in adapter.model.buffers())


def release_memory() -> None:
    """Hand memory nobody references any more back: collect reference cycles, then empty the accelerator
    allocators' caches (so the next model or request, or another process, gets it). Touches CUDA only once this
    process has initialised it."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()


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
            estimate = self._estimate(name, options)
            self._evict_until(self.budget_bytes - estimate)
            adapter = load_adapter(name, **options)
            self._models[key] = (adapter, model_bytes(adapter))
            self._evict_until(self.budget_bytes, keep=key)
            return adapter

    @staticmethod
    def _estimate(name: str, options: dict) -> int:
        """The model's loaded size from its files (found, or downloaded, first), before any weight is loaded."""
        path, _ = locate(resolve(name), options.get("revision"))
        dtype = pick_dtype(options.get("dtype", "auto"), pick_device(options.get("device", "auto")))
        return loaded_bytes_estimate(path, dtype, options.get("quantization"))

    def _evict_until(self, limit: int, keep: tuple | None = None) -> None:
        while self._models and self.used_bytes > limit:
            oldest = next(iter(self._models))
            if oldest == keep:
                break
            self._drop(oldest)

    def _drop(self, key: tuple) -> None:
        self._models.pop(key)
        release_memory()

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
