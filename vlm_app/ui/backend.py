"""State the web app shares across browser sessions: the models on offer (LoRA adapters among them, each on its
base: `vlm_app.lora.Offer`), the loaded-model cache (through `vlm_app.runtime`), one cancel flag per session, the
upload policy, the memory limit of every request (`--max-memory`, `--no-fit`: the operator's, no client changes it)
and a scratch folder per session.

Session ids come from the client (Gradio's session hash), so they only look things up: a session's scratch
folder gets a random name chosen here, and only models on offer ever load.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from vlm_app.memory import MemoryLimit
from vlm_app.security import offered_model
from vlm_app.served import served_models
from vlm_app.ui.limits import UploadPolicy

MIB = 2**20


class Backend:
    def __init__(self, models: list[str], policy: UploadPolicy, votes_path: str, device: str = "auto",
                 dtype: str = "auto", memory_budget_gb: float | None = None, memory: MemoryLimit = MemoryLimit(None),
                 loras: list[str] | None = None):
        from vlm_app.lora import make_offer
        from vlm_app.runtime import ModelCache

        served = served_models(list(models))  # `--models NAME=PATH`: the picker shows NAME, as `serve` serves it
        self.names = {source: name for name, source in served.items()}
        self.offer = make_offer(list(served.values()), loras)  # loras: `--lora NAME=PATH` values
        self.models = self.offer.names
        self.workdir = Path(tempfile.mkdtemp(prefix="vlm_app_ui_"))
        # fetched URLs and exports live in the scratch folder, which is readable like the upload folder
        self.policy = replace(policy, allowed_dirs=(*policy.allowed_dirs, str(self.workdir)))
        self.votes_path = Path(votes_path)
        self.load_options = {"device": device, "dtype": dtype}
        self.memory = memory  # every request's (`service.Request`)
        self.cache = ModelCache(budget_bytes=None if memory_budget_gb is None else int(memory_budget_gb * 2**30))
        self._cancels: dict[str, threading.Event] = {}
        self._folders: dict[str, Path] = {}

    # ---- models -----------------------------------------------------------------------------------------------
    def label(self, model: str) -> str:
        """How a model is shown: the name `serve` would serve it under (`vlm_app.served`)."""
        return self.names.get(model, model)

    def choices(self) -> list[tuple[str, str]]:
        return [(self.label(model), model) for model in self.models]

    def adapter(self, name: str):
        """The loaded adapter for `name` (one of the models on offer), loading it (and evicting others under the
        budget) when needed; a LoRA adapter's is its base's, answering with it."""
        return self.offer.adapter(self.cache, offered_model(name, self.models), **self.load_options)

    def unload(self, name: str) -> None:
        """Unload `name`'s model (a LoRA adapter's base, with every adapter on it)."""
        self.cache.unload(self.offer.base_of(offered_model(name, self.models)))

    def models_table(self) -> list[list]:
        """One row per model on offer: name, state, family, device, memory in MiB."""
        loaded = {entry["name"]: entry for entry in self.cache.loaded()}
        rows = []
        for name in self.models:
            entry = loaded.get(self.offer.base_of(name))
            if entry is None:
                rows.append([self.label(name), "not loaded", "", "", 0.0])
            else:
                rows.append([self.label(name), "loaded", entry["family"], entry["device"],
                             round(entry["bytes"] / MIB, 1)])
        return rows

    def memory_summary(self) -> str:
        budget = self.cache.budget_bytes
        return (f"Loaded models use {self.cache.used_bytes / MIB:.1f} MiB of a {budget / MIB:.0f} MiB budget; "
                "the least recently used model is unloaded when a new one would not fit.")

    # ---- sessions ---------------------------------------------------------------------------------------------
    def begin(self, session: str) -> threading.Event:
        """A fresh cancel flag for the session's next generation."""
        event = threading.Event()
        self._cancels[session] = event
        return event

    def stop(self, session: str) -> None:
        event = self._cancels.get(session)
        if event is not None:
            event.set()

    def session_dir(self, session: str) -> Path:
        """The session's scratch folder, under a random name: the client's id never becomes a path."""
        folder = self._folders.setdefault(session, self.workdir / uuid.uuid4().hex)
        folder.mkdir(exist_ok=True)
        return folder

    def end_session(self, session: str) -> None:
        """Drop what a closed browser tab left behind: its cancel flag and its scratch files."""
        self.stop(session)
        self._cancels.pop(session, None)
        folder = self._folders.pop(session, None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- votes ------------------------------------------------------------------------------------------------
    def record_vote(self, record: dict) -> None:
        """Append one blind-comparison vote to the JSONL log."""
        self.votes_path.parent.mkdir(parents=True, exist_ok=True)
        with self.votes_path.open("a", encoding="utf-8") as log:
            log.write(json.dumps({"time": time.time(), **record}, ensure_ascii=False) + "\n")
