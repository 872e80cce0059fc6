"""LoRA adapters (peft) on a loaded model, whatever its family: read and check an adapter's files before any weight
loads, attach one or several to one base model without merging (or merge one in), and answer with any of them, or
with the base alone, per request.

An adapter is a folder or a hub id holding `adapter_config.json` and `adapter_model.safetensors` (or `.bin`), as
peft, LLaMA-Factory and ms-swift save them. Each of these is refused with its own message:
- a missing file; a config that is not a LoRA, or uses a feature this peft version does not know (peft itself would
  warn and drop it, so the adapter would run differently from how it was trained);
- an adapter made for another base: its `base_model_name_or_path` names another model, or its tensors do not fit
  the modules they target (shapes), or some of them target nothing here;
- target modules this model does not have.

Several adapters on one base (`compare`, `serve`, `ui`): the operator names each one (`--lora NAME=PATH`) and it
becomes a model entry of its own (`Offer`). The base loads once with all its adapters (memory: one base plus the
adapters); `using(adapter, name)` is the base answering with adapter `name` (None: the base alone): its model calls
hold the base's lock and switch the adapter first (`SwitchedModel`), so requests on one base run one at a time.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vlm_app.errors import ModelLoadError, OptionsError

ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
NAME = re.compile(r"^[A-Za-z0-9][\w.:-]{0,127}$")  # an operator's adapter name: what clients send as `model`
SHOWN = 3  # examples an error lists


@dataclass(frozen=True)
class LoraFiles:
    """One adapter's files, found and read: `name` is the operator's (the source when none was given)."""

    name: str
    source: str              # the folder or hub id as given
    folder: str
    revision: str | None     # the hub commit of a cached snapshot, None for a plain folder
    config: dict = field(compare=False)

    @property
    def weights(self) -> Path:
        return next(Path(self.folder) / name for name in WEIGHT_FILES if (Path(self.folder) / name).is_file())

    @property
    def base(self) -> str | None:
        return self.config.get("base_model_name_or_path") or None

    def info(self, merged: bool = False) -> dict:
        """What the record says of the adapter, enough to reproduce the run."""
        targets = self.config.get("target_modules")
        return {"name": self.name, "source": self.source, "path": self.folder, "revision": self.revision,
                "rank": self.config.get("r"), "alpha": self.config.get("lora_alpha"),
                "targets": sorted(targets) if isinstance(targets, list) else targets, "base": self.base,
                "merged": merged}


def lora_label(info: dict | None) -> str | None:
    """How stats name the adapter of a record's `model_info.lora_adapter` (None: the base model alone)."""
    if not info:
        return None
    named = info["source"] if info["name"] == info["source"] else f"{info['name']} ({info['source']})"
    return f"{named}, rank {info['rank']}" + (", merged" if info["merged"] else "")


def read_lora(source: str, name: str | None = None) -> LoraFiles:
    """The adapter at `source` (a folder, or a hub id found like a model), its files checked."""
    from vlm_app.hub import locate_lora

    folder, revision = locate_lora(source)
    config_file = Path(folder) / ADAPTER_CONFIG
    if not config_file.is_file():
        raise ModelLoadError(f"LoRA adapter {source} has no {ADAPTER_CONFIG} (in {folder}); a peft adapter folder "
                             f"holds {ADAPTER_CONFIG} and {WEIGHT_FILES[0]}")
    if not any((Path(folder) / weights).is_file() for weights in WEIGHT_FILES):
        raise ModelLoadError(f"LoRA adapter {source} has no weights (in {folder}): neither {' nor '.join(WEIGHT_FILES)}"
                             "; copy or download the whole adapter folder")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"LoRA adapter {source}: {config_file} is not readable JSON ({error})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"LoRA adapter {source}: {config_file} holds no JSON object")
    _check_peft_features(config, source)
    return LoraFiles(name or source, source, folder, revision, config)


def _check_peft_features(config: dict, source: str) -> None:
    """Refuse a config that is not a LoRA, or that sets an option this peft version does not have."""
    import peft
    from peft import LoraConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    kind = config.get("peft_type")
    if kind != "LORA":
        known = kind in PEFT_TYPE_TO_CONFIG_MAPPING
        raise ModelLoadError(f"LoRA adapter {source} is a {kind!r} adapter, not a LoRA" + (
            "; only LoRA adapters are supported" if known else
            f", a kind peft {peft.__version__} does not know; upgrade peft (pip install -U peft)"))
    known = {option.name for option in dataclasses.fields(LoraConfig)}
    used = sorted(key for key, value in config.items() if key not in known and value not in (None, False, "", [], {}))
    if used:
        written = config.get("peft_version") or "a newer version"
        raise ModelLoadError(f"LoRA adapter {source} uses {', '.join(used)}, which peft {peft.__version__} does not "
                             f"have (its {ADAPTER_CONFIG} was written by peft {written}); upgrade peft "
                             "(pip install -U peft)")


# ---- which base an adapter belongs to ---------------------------------------------------------------------------
def _tails(name: str) -> set[str]:
    """The last parts of a model name, lower-cased: a folder's name, a hub id's name, a hub cache snapshot's repo."""
    tails = {Path(name.rstrip("/\\")).name.lower()}
    cached = re.search(r"models--[^/]+--([^/]+)/snapshots/", name)
    if cached:
        tails.add(cached.group(1).lower())
    return tails - {""}


def model_names(model: str) -> set[str]:
    """The names a model (short name, hub id or folder) goes by, as `base_model_name_or_path` would spell them."""
    from vlm_app.adapters.registry import resolve

    ref = resolve(model)
    names = set().union(*(_tails(name) for name in (model, ref.repo_id, ref.local_path) if name))
    if ref.local_path:
        names |= _tails(os.path.realpath(ref.local_path))
    return names


def made_for(files: LoraFiles, model: str) -> bool:
    """Whether the adapter names `model` as its base (an adapter naming no base fits any)."""
    return files.base is None or bool(_tails(files.base) & model_names(model))


def check_base(files: LoraFiles, model: str) -> None:
    if not made_for(files, model):
        raise ModelLoadError(
            f"LoRA adapter {files.source} was made for {files.base} (its {ADAPTER_CONFIG}'s base_model_name_or_path), "
            f"not for {model}; load it on that model, or, if it was trained on a copy of {model} saved under "
            f"another name, set base_model_name_or_path in its {ADAPTER_CONFIG} to {model}")


# ---- attaching --------------------------------------------------------------------------------------------------
def peft_name(index: int) -> str:
    """peft's name for the `index`th adapter of a model (peft's names become module names: no dots)."""
    return f"lora_{index}"


def attach(model, loras: list[LoraFiles]):
    """`model` wrapped by peft with every adapter of `loras` loaded (as `peft_name(i)`), none merged; the first is
    active. Targets, shapes and tensor names are checked against the model."""
    from peft import LoraConfig, PeftModel

    wrapped = None
    for index, files in enumerate(loras):
        config = LoraConfig(**{key: value for key, value in files.config.items()
                               if key in {option.name for option in dataclasses.fields(LoraConfig)}})
        config.inference_mode = True
        _check_targets(model if wrapped is None else wrapped, config, files)
        try:
            if wrapped is None:
                wrapped = PeftModel(model, config, adapter_name=peft_name(index))
            renamed = getattr(model, "_checkpoint_conversion_mapping", None)  # as PeftModel.from_pretrained does
            result = wrapped.load_adapter(files.folder, peft_name(index),
                                          **({"key_mapping": renamed} if renamed else {}))
        except RuntimeError as error:
            raise _shape_error(files, error) from None
        except (ValueError, KeyError, TypeError) as error:
            reason = " ".join(str(error).split())
            raise ModelLoadError(f"could not apply LoRA adapter {files.source}: {reason}") from None
        _check_loaded(files, result)
    wrapped.set_adapter(peft_name(0))
    return wrapped.eval()


def _check_targets(model, config, files: LoraFiles) -> None:
    targets = config.target_modules
    names = [name for name, _ in model.named_modules()]
    if isinstance(targets, str):
        missing = [] if targets == "all-linear" or any(re.fullmatch(targets, name) for name in names) else [targets]
    else:
        missing = sorted(target for target in targets or [] if not any(name == target or name.endswith("." + target)
                                                                      for name in names))
    if missing:
        raise ModelLoadError(f"LoRA adapter {files.source} targets modules this model does not have: "
                             f"{', '.join(missing)} (its {ADAPTER_CONFIG}'s target_modules); it was made for "
                             "another model")


def _shape_error(files: LoraFiles, error: RuntimeError) -> ModelLoadError:
    found = re.findall(r"size mismatch for ([^:]+): copying a param with shape (torch.Size\(\[[^]]*\]\)) from "
                       r"checkpoint, the shape in current model is (torch.Size\(\[[^]]*\]\))", str(error))
    if not found:
        return ModelLoadError(f"could not apply LoRA adapter {files.source}: {' '.join(str(error).split())[:500]}")
    shown = "; ".join(f"{name}: {stored[11:-1]} in the adapter, {here[11:-1]} here" for name, stored, here in
                      found[:SHOWN])
    return ModelLoadError(f"LoRA adapter {files.source} was made for another base: {len(found)} of its tensors do "
                          f"not fit this model's modules ({shown})")


def _check_loaded(files: LoraFiles, result) -> None:
    """Every tensor of the adapter went into a module, and every targeted module got its tensors."""
    unused, lacking = list(result.unexpected_keys), list(result.missing_keys)
    if unused:
        raise ModelLoadError(f"LoRA adapter {files.source} was made for another base: {len(unused)} of its tensors "
                             f"match no module of this model (e.g. {', '.join(unused[:SHOWN])})")
    if lacking:
        raise ModelLoadError(f"LoRA adapter {files.source} has no weights for {len(lacking)} of the modules it "
                             f"targets (e.g. {', '.join(lacking[:SHOWN])}); its {files.weights.name} is incomplete "
                             "or was saved for another model")


# ---- answering with one adapter of several ----------------------------------------------------------------------
class Switch:
    """The adapters on one peft-wrapped base, and the lock its model calls hold while an adapter is switched in."""

    def __init__(self, model, loras: list[LoraFiles]):
        self.model = model
        self.loras = {files.name: files for files in loras}
        self._peft_names = {files.name: peft_name(index) for index, files in enumerate(loras)}
        self._lock = threading.RLock()

    @contextmanager
    def active(self, name: str | None):
        """Hold the base with adapter `name` switched in (None: every adapter off)."""
        with self._lock:
            if name is None:
                with self.model.disable_adapter():
                    yield
            else:
                self.model.set_adapter(self._peft_names[name])
                yield


class SwitchedModel:
    """The peft-wrapped base as adapter `name` (None: the base alone) answers: calling it and `generate` run with that
    adapter switched in, holding the base's lock (so every path to the model, batches included, runs with the right
    adapter); everything else is the wrapped model's."""

    def __init__(self, model, switch: Switch, name: str | None):
        self._model, self._switch, self._name = model, switch, name

    def __getattr__(self, attribute: str):
        return getattr(self._model, attribute)

    def __call__(self, *args, **kwargs):
        with self._switch.active(self._name):
            return self._model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self._switch.active(self._name):
            return self._model.generate(*args, **kwargs)


def using(adapter, lora: str | None, label: str | None = None):
    """The loaded `adapter` answering with its adapter `lora` (None: the base alone), its records under the model id
    `label`. An adapter loaded without switchable adapters is returned as it is."""
    switch = getattr(adapter, "lora_switch", None)
    if switch is None:
        if lora is not None:
            raise ModelLoadError(f"{adapter.info.model_id} was loaded without the LoRA adapter {lora}")
        return adapter
    view = copy.copy(adapter)
    view.model = SwitchedModel(switch.model, switch, lora)
    view.info = dataclasses.replace(adapter.info, model_id=label or adapter.info.model_id,
                                    lora_adapter=switch.loras[lora].info() if lora is not None else None)
    return view


# ---- the models on offer ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Offer:
    """The models on offer: base models, and under the operator's names the LoRA adapters on them."""

    bases: tuple[str, ...]
    loras: dict[str, LoraFiles] = field(default_factory=dict)
    base_of_lora: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [*self.bases, *self.loras]

    def base_of(self, name: str) -> str:
        return self.base_of_lora.get(name, name)

    def load_options(self, base: str) -> dict:
        """The cache's load options for `base`: its adapters, when it has any."""
        loras = tuple((name, files.source) for name, files in self.loras.items() if self.base_of_lora[name] == base)
        return {"loras": loras} if loras else {}

    def adapter(self, cache, name: str, **options):
        """Entry `name`'s adapter from `cache` (a `runtime.ModelCache`): its base, loaded once with all its
        adapters, answering with the adapter `name` names (or with none)."""
        base = self.base_of(name)
        loaded = cache.get(base, **self.load_options(base), **options)
        return using(loaded, name if name in self.loras else None, name)


def parse_lora_flags(values: list[str] | None) -> list[tuple[str, str]]:
    """`--lora NAME=PATH` values as (name, source) pairs; the names must be distinct."""
    pairs = []
    for value in values or []:
        name, equals, source = value.partition("=")
        name, source = name.strip(), source.strip()
        if not equals or not source or not NAME.match(name):
            raise OptionsError(f"--lora {value!r}: give NAME=PATH (a folder or hub id), NAME of letters, digits and "
                               "._:- (what clients and --models call the adapter)")
        if name in dict(pairs):
            raise OptionsError(f"--lora names {name!r} twice; give each adapter its own name")
        pairs.append((name, source))
    return pairs


def make_offer(models: list[str], lora_flags: list[str] | None) -> Offer:
    """The offer of the base models `models` with the adapters of `lora_flags`: each on the base its config names
    (the only base, when there is one), checked before anything loads."""
    pairs = parse_lora_flags(lora_flags)
    bases = tuple(dict.fromkeys(models))
    loras, base_of = {}, {}
    for name, source in pairs:
        if name in bases:
            raise OptionsError(f"--lora {name}=...: {name!r} is already a model's name; name the adapter otherwise")
        if not bases:
            raise OptionsError(f"--lora {name}=...: name its base model in --models as well")
        files = read_lora(source, name)
        if files.base is None and len(bases) > 1:
            raise OptionsError(f"LoRA adapter {source} names no base model (no base_model_name_or_path in its "
                               f"{ADAPTER_CONFIG}), and several are on offer; set it to the one it was made for")
        if len(bases) == 1:
            check_base(files, bases[0])
        fitting = [base for base in bases if made_for(files, base)]
        if not fitting:
            raise ModelLoadError(f"LoRA adapter {source} was made for {files.base} (its {ADAPTER_CONFIG}'s "
                                 f"base_model_name_or_path), none of the models on offer ({', '.join(bases)})")
        loras[name], base_of[name] = files, fitting[0]
    return Offer(bases, loras, base_of)
