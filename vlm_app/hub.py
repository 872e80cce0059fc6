"""Finding a model's or an adapter's files: a local folder as it is, a hub id in the local Hugging Face cache first,
offline-safe. Only when it is missing there (and HF_HUB_OFFLINE is unset) is the hub endpoint probed once, with a
short timeout, before downloading: a machine without network fails in seconds with a message naming the model."""

from __future__ import annotations

import importlib.util
import os
import urllib.error
import urllib.request
from pathlib import Path

from vlm_app.adapters import registry
from vlm_app.adapters.registry import ModelRef
from vlm_app.errors import ModelLoadError, OptionsError

PROBE_TIMEOUT_S = 3.0
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py"]


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


def locate_lora(lora_adapter: str) -> tuple[str, str | None]:
    """The local folder of a LoRA adapter given as a folder or a hub id (found offline-safe, like a model), and the
    hub commit it came from (None for a plain folder)."""
    if importlib.util.find_spec("peft") is None:
        raise OptionsError("LoRA adapters need peft (pip install 'vlm_app[lora]')")
    if os.path.isdir(os.path.expanduser(lora_adapter)):
        return os.path.abspath(os.path.expanduser(lora_adapter)), None
    if not registry.is_hub_id(lora_adapter):
        raise ModelLoadError(f"LoRA adapter {lora_adapter} is neither a folder nor a hub id (owner/name)")
    return locate(ModelRef(lora_adapter, "LoRA adapter", None, lora_adapter))
