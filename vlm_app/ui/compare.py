"""Compare tab handlers: one input, 2–3 models answering one after another (one GPU), each answer streamed
into its own column with its stats and the frames it saw; a blind mode that hides the names until a vote,
appended to a JSONL log.
"""

from __future__ import annotations

import random

import gradio as gr

from vlm_app.errors import VlmAppError
from vlm_app.security import offered_model
from vlm_app.service import compare
from vlm_app.ui.answer import Settings, answer_stream, settings_from, settings_from_dict, stats_markdown, ui_request

MAX_MODELS = 3
LETTERS = "ABC"
TIE = "Tie"


def chosen_models(models: list[str] | None, offered: list[str]) -> list[str]:
    """The 2–3 distinct models to compare, all of them on offer; gr.Error otherwise."""
    if not isinstance(models, list) or not all(isinstance(model, str) for model in models):
        raise gr.Error("Give the models to compare as a list of names.")
    models = list(dict.fromkeys(models))
    if not 2 <= len(models) <= MAX_MODELS:
        raise gr.Error(f"Choose 2 or {MAX_MODELS} models to compare (got {len(models)}).")
    try:
        return [offered_model(model, offered) for model in models]
    except VlmAppError as error:
        raise gr.Error(str(error)) from None


def as_history(message: dict) -> list[dict]:
    files = [{"type": "file", "file": {"path": path}} for path in message.get("files") or []]
    return [{"role": "user", "content": files + [{"type": "text", "text": message.get("text") or ""}]}]


class CompareHandlers:
    """Bound to one Backend. Column outputs are, per column: header, answer, stats, gallery."""

    def __init__(self, backend):
        self.backend = backend

    def results(self, message: dict, models: list[str], settings: Settings, session: str):
        """Answer with each model in turn (`service.compare`); yields (position, record, run) whenever a model's
        answer grows. A record is {model, answer, stats} (plus error); run is set once that model has finished."""
        message = message or {}
        if not (message.get("text") or "").strip() and not message.get("files"):
            raise gr.Error("Type a question and attach a video or image to compare on.")
        history = as_history(message)
        try:
            request = ui_request(history, settings, self.backend)
        except VlmAppError as error:
            raise gr.Error(str(error)) from None
        # each model gets the session's fresh Stop flag; Stop ends the whole comparison (service.compare)
        runs = compare(models, request, self.backend.adapter, lambda: self.backend.begin(session))
        for position, (model, model_run) in enumerate(runs):
            record = {"model": model, "answer": "", "stats": {}}
            if model_run is None:
                record["error"] = record["answer"] = "stopped before this model ran"
                yield position, record, None
                continue
            for text, run, error in answer_stream(self.backend, history, model, settings, model_run.cancel, model_run):
                record["answer"] = error or text
                if error:
                    record["error"] = error
                if run is not None:
                    record["stats"] = run.stats()
                yield position, record, run

    def run(self, request: gr.Request, message: dict, models: list[str], blind: bool, *settings_values):
        """Stream the comparison into the columns; blind mode shuffles the order and hides the names."""
        models = chosen_models(models, self.backend.models)
        order = random.sample(models, len(models)) if blind else models
        names = [f"Model {LETTERS[i]}" if blind else self.backend.label(model) for i, model in enumerate(order)]
        columns = [gr.Column(visible=position < len(order)) for position in range(MAX_MODELS)]
        cleared = []
        for position in range(MAX_MODELS):
            cleared += [f"### {names[position]}" if position < len(order) else "", "", "", []]
        # nothing to vote on until every model has answered: a vote on names it showed, or on answers that failed,
        # were stopped or had not arrived yet, is not a blind judgment of the answers
        yield (*columns, *cleared, gr.Row(visible=blind), gr.Radio(choices=[*LETTERS[:len(order)], TIE], value=None),
               {}, "")
        answered = set()
        for position, record, run in self.results(message, order, settings_from(settings_values), request.session_hash):
            cells = [gr.skip()] * (4 * MAX_MODELS)
            cells[4 * position + 1] = record["answer"]
            if run is not None:
                cells[4 * position + 2] = stats_markdown(record["stats"])
                cells[4 * position + 3] = run.seen()
                if "error" not in record and not record["stats"].get("cancelled"):
                    answered.add(position)
            yield (*[gr.skip()] * MAX_MODELS, *cells, gr.skip(), gr.skip(), gr.skip(), gr.skip())
        if blind and len(answered) == len(order):
            state = {"models": order, "prompt": (message or {}).get("text", ""), "voted": False}
            yield (*[gr.skip()] * MAX_MODELS, *[gr.skip()] * (4 * MAX_MODELS), gr.skip(), gr.skip(), state, gr.skip())

    def stop(self, request: gr.Request) -> None:
        self.backend.stop(request.session_hash)

    def vote(self, choice: str | None, state: dict):
        """Log the vote with the real names, then reveal them in the column headers."""
        if not state or not state.get("models"):
            raise gr.Error("Votes are for a blind comparison in which every model answered: run one in blind mode "
                           "and vote once all the answers are in.")
        if not choice:
            raise gr.Error("Pick the best answer (or Tie) before voting.")
        if state.get("voted"):
            raise gr.Error("This comparison already has a vote; run a new one.")
        models = state["models"]
        winner = None if choice == TIE else models[LETTERS.index(choice)]
        self.backend.record_vote({"prompt": state["prompt"], "models": models, "choice": choice, "winner": winner})
        headers = [f"### {LETTERS[i]}: {self.backend.label(model)}" + (" ✓" if model == winner else "")
                   for i, model in enumerate(models)]
        headers += [gr.skip()] * (MAX_MODELS - len(models))
        return (*headers, {**state, "voted": True}, f"Vote recorded: {winner or 'tie'}.")

    def api_compare(self, message: dict, models: list[str], options: dict | None, request: gr.Request):
        """`/compare` for scripts: streams the list of {model, answer, stats} records, one per model;
        `options` as {setting name: value} (see `Settings`)."""
        models = chosen_models(models, self.backend.models)
        try:
            settings = settings_from_dict(options)
        except VlmAppError as error:
            raise gr.Error(str(error)) from None
        records = [{"model": model, "answer": "", "stats": {}} for model in models]
        for position, record, _ in self.results(message, models, settings, request.session_hash):
            records[position] = dict(record)
            yield list(records)
