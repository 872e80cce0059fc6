"""The Gradio app: layout and event wiring. `python -m vlm_app ui` calls `launch`.

Every event that runs a model (chat, regenerate, edit, chapters, compare, load) shares the "gpu" concurrency group
with a limit of 1, so one model job runs at a time and the rest wait in the queue. Stop buttons bypass the queue.
Named endpoints for scripts: `/chat`, `/chapters`, `/compare`, `/stop` (see `ChatHandlers.api_chat`,
`ChapterHandlers.api_chapters`, `CompareHandlers.api_compare`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import gradio as gr

from gradio.utils import get_upload_folder
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

from vlm_app.memory import MemoryLimit
from vlm_app.prompts import prompt_templates
from vlm_app.errors import OptionsError, VlmAppError
from vlm_app.security import check_exposure
from vlm_app.ui.answer import SETTING_NAMES, Settings
from vlm_app.ui.backend import Backend
from vlm_app.ui.chapters import LONGEST_SEGMENT_S, SHORTEST_SEGMENT_S, ChapterHandlers
from vlm_app.ui.chat import ChatHandlers, seek, toggle_subtitles
from vlm_app.ui.compare import MAX_MODELS, TIE, CompareHandlers
from vlm_app.ui.limits import UploadPolicy

GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}
PRIVATE = {"api_visibility": "private"}
MEDIA_TYPES = ["video", "image"]
MODEL_COLUMNS = ["model", "state", "family", "device", "MiB"]
QUEUE_SIZE = 64
UPLOAD_FILES = 8  # files one upload request may carry, each up to --max-upload-mb
MAX_PATH = 1024  # characters of a request's path


def load_templates() -> dict[str, str]:
    """Prompt templates from `prompts/` (shared with `describe --template`), by name."""
    return {name: path.read_text(encoding="utf-8").strip() for name, path in prompt_templates().items()}


def fill_template(templates: dict[str, str], name: str | None, current: dict | None) -> dict:
    """The chosen template in the input box, keeping attached files; typed text fills a {question} slot."""
    current = current or {}
    text = templates.get(name or "", "")
    typed = (current.get("text") or "").strip()
    if "{question}" in text and typed:
        text = text.replace("{question}", typed)
    return {"text": text, "files": current.get("files") or []}


def _settings_controls() -> list[gr.components.Component]:
    """The sampling and generation controls, in `SETTING_NAMES` order."""
    with gr.Accordion("Video sampling (blank = the model's own policy)", open=False):
        fps = gr.Number(label="fps", value=None, minimum=0, elem_id="fps")
        max_frames = gr.Number(label="max frames", value=None, minimum=0, precision=0, elem_id="max-frames")
        max_pixels = gr.Number(label="max pixels per frame", value=None, minimum=0, precision=0)
        with gr.Row():
            start = gr.Number(label="start (s)", value=None, minimum=0)
            end = gr.Number(label="end (s)", value=None, minimum=0)
    with gr.Accordion("Generation", open=False):
        max_new_tokens = gr.Slider(1, 2048, value=256, step=1, label="max new tokens", elem_id="max-new-tokens")
        temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0 = greedy)")
        top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top-p")
        seed = gr.Number(label="seed (blank = random)", value=0, precision=0)
        system_prompt = gr.Textbox(label="system prompt", lines=3)
    audio = gr.Radio(list(Settings.AUDIO_CHOICES), value="auto", label="the video's sound (models that hear)",
                     elem_id="audio")
    controls = [fps, max_frames, max_pixels, start, end, max_new_tokens, temperature, top_p, seed, system_prompt,
                audio]
    assert len(controls) == len(SETTING_NAMES)
    return controls


def _model_panel(backend: Backend):
    gr.Markdown("### Models")
    model = gr.Dropdown(backend.choices(), value=backend.models[0], label="chat model", elem_id="model")
    with gr.Row():
        load = gr.Button("Load", size="sm", elem_id="load-model")
        unload = gr.Button("Unload", size="sm", elem_id="unload-model")
    table = gr.Dataframe(value=backend.models_table(), headers=MODEL_COLUMNS, interactive=False,
                         elem_id="models-table")
    memory = gr.Markdown(backend.memory_summary())

    def status():
        return backend.models_table(), backend.memory_summary()

    def act(action, name):
        try:
            action(name)
        except VlmAppError as error:  # a model not on offer, or one that fails to load
            raise gr.Error(str(error)) from None
        return status()

    def load_model(name):
        return act(backend.adapter, name)

    def unload_model(name):
        return act(backend.unload, name)

    load.click(load_model, model, [table, memory], **PRIVATE, **GPU)
    unload.click(unload_model, model, [table, memory], **PRIVATE, **GPU)
    return model, table, memory, status


def cleared_chat():
    """Empty conversation, gallery, stats and timeline (made per call: building components inside the layout
    would render them)."""
    return [], [], "", gr.Video(value=None), gr.Radio(choices=[], visible=False), [], gr.File(value=None, visible=False)


def build_app(backend: Backend, templates: dict[str, str] | None = None) -> gr.Blocks:
    templates = load_templates() if templates is None else templates
    chat, chapters, compare = ChatHandlers(backend), ChapterHandlers(backend), CompareHandlers(backend)
    with gr.Blocks(title="vlm_app", delete_cache=(1800, 3600)) as demo:
        with gr.Sidebar(label="Settings", open=True):
            model, table, memory, status = _model_panel(backend)
            settings = _settings_controls()
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                with gr.Row():
                    with gr.Column(scale=3):
                        chatbot = gr.Chatbot(label="Conversation", height=480, editable="user", allow_tags=False,
                                             buttons=["copy", "copy_all"], elem_id="chatbot",
                                             placeholder="Upload a video or image and ask about it.")
                        textbox = gr.MultimodalTextbox(file_types=MEDIA_TYPES, file_count="multiple",
                                                       sources=["upload"], show_label=False, elem_id="chat-input",
                                                       placeholder="Ask about your video or image…")
                        with gr.Row():
                            urls = gr.Textbox(label="or paste video / image URLs", scale=3, elem_id="urls")
                            template = gr.Dropdown(list(templates), value=None, label="prompt template", scale=2,
                                                   elem_id="template")
                        with gr.Row():
                            stop = gr.Button("Stop", variant="stop", elem_id="stop")
                            regenerate = gr.Button("Regenerate", elem_id="regenerate")
                            clear = gr.Button("Clear", elem_id="clear")
                            chapters_button = gr.Button("Chapters", elem_id="chapters")
                        with gr.Accordion("Chapters: the last video part by part, then a summary (long videos)",
                                          open=False):
                            with gr.Row():
                                segment_seconds = gr.Number(label="segment length (s; blank = the model's own)",
                                                            value=None, minimum=SHORTEST_SEGMENT_S,
                                                            maximum=LONGEST_SEGMENT_S, elem_id="segment-seconds")
                                overlap = gr.Number(label="overlap (s)", value=0, minimum=0, elem_id="overlap")
                    with gr.Column(scale=2):
                        # accordions, not nested tabs: Gradio 6.31 drops updates to a video in an unmounted inner tab
                        with gr.Accordion("What it saw", open=True):
                            stats = gr.Markdown(elem_id="chat-stats")
                            seen = gr.Gallery(label="frames shown to the model", columns=4, height=300,
                                              elem_id="seen")
                        with gr.Accordion("Timeline", open=True):
                            player = gr.Video(label="video", interactive=False, elem_id="player")
                            show_subtitles = gr.Checkbox(label="show the answer as subtitles", value=True)
                            cues = gr.Radio([], type="index", visible=False, elem_id="cues",
                                            label="timestamps in the answer, or chapters (click one to jump there)")
                            downloads = gr.File(label="subtitles (SRT / VTT / JSON)", visible=False,
                                                elem_id="downloads")
                            cue_state = gr.State([])
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    compare_models = gr.CheckboxGroup(backend.choices(), value=backend.models[:2], scale=3,
                                                      label=f"models (2 to {MAX_MODELS})", elem_id="compare-models")
                    blind = gr.Checkbox(label="blind mode (names hidden until you vote)", elem_id="blind")
                compare_input = gr.MultimodalTextbox(file_types=MEDIA_TYPES, file_count="multiple",
                                                     sources=["upload"], show_label=False, elem_id="compare-input",
                                                     placeholder="One question for every model…")
                compare_stop = gr.Button("Stop", variant="stop", elem_id="compare-stop")
                columns, cells = [], []
                with gr.Row():
                    for position in range(MAX_MODELS):
                        with gr.Column(visible=position < 2, elem_id=f"compare-col-{position}") as column:
                            cells += [gr.Markdown(elem_id=f"compare-header-{position}"),
                                      gr.Markdown(elem_id=f"compare-answer-{position}", min_height=80),
                                      gr.Markdown(elem_id=f"compare-stats-{position}"),
                                      gr.Gallery(label="what it saw", columns=4, height=200)]
                        columns.append(column)
                with gr.Row(visible=False) as vote_row:
                    vote_choice = gr.Radio([TIE], label="best answer", elem_id="vote-choice")
                    vote = gr.Button("Vote", elem_id="vote")
                vote_status = gr.Markdown()
                compare_state = gr.State({})

        # API-only components: the named endpoints' inputs and outputs, never shown
        with gr.Column(visible=False):
            api_message = gr.MultimodalTextbox(file_types=MEDIA_TYPES, file_count="multiple", label="message")
            api_history = gr.JSON(value=[], label="history")
            api_models = gr.JSON(value=backend.models[:2], label="models")
            api_options = gr.JSON(value={}, label="options")
            api_answer = gr.Textbox(label="answer")
            api_details = gr.JSON(label="details")
            api_records = gr.JSON(label="records")
            api_chat, api_chapters, api_compare, api_stop = gr.Button(), gr.Button(), gr.Button(), gr.Button()

        # ---- named endpoints for scripts (registered first so that they own their names) ----
        api_chat.click(chat.api_chat, [api_message, api_history, model, api_options], [api_answer, api_details],
                       api_name="chat", **GPU)
        api_chapters.click(chapters.api_chapters, [api_message, model, api_options], [api_answer, api_details],
                           api_name="chapters", **GPU)
        api_compare.click(compare.api_compare, [api_message, api_models, api_options], api_records,
                          api_name="compare", **GPU)
        api_stop.click(chat.stop, None, None, api_name="stop", queue=False)

        # ---- chat ----
        chat_outputs = [chatbot, seen, stats, player, cues, cue_state, downloads]
        respond = {"fn": chat.respond, "inputs": [chatbot, model, show_subtitles, *settings],
                   "outputs": chat_outputs, **PRIVATE, **GPU}
        textbox.submit(chat.add_turn, [textbox, urls, chatbot], [textbox, urls, chatbot], **PRIVATE,
                       concurrency_limit=4).success(**respond).then(status, None, [table, memory], **PRIVATE)
        regenerate.click(chat.for_regenerate, chatbot, chatbot, queue=False, **PRIVATE).then(**respond)
        chatbot.retry(chat.for_regenerate, chatbot, chatbot, queue=False, **PRIVATE).then(**respond)
        chatbot.edit(chat.for_edit, chatbot, chatbot, queue=False, **PRIVATE).then(**respond)
        chatbot.undo(chat.for_undo, chatbot, chatbot, queue=False, **PRIVATE)
        for trigger in (clear.click, chatbot.clear):
            trigger(chat.stop, None, None, queue=False, **PRIVATE).then(cleared_chat, None, chat_outputs,
                                                                        queue=False, **PRIVATE)
        chapters_button.click(chapters.add_turn, [textbox, urls, chatbot], [textbox, urls, chatbot], **PRIVATE,
                              concurrency_limit=4).success(
            chapters.run, [chatbot, model, show_subtitles, segment_seconds, overlap, *settings], chat_outputs,
            **PRIVATE, **GPU).then(status, None, [table, memory], **PRIVATE)
        stop.click(chat.stop, None, None, queue=False, **PRIVATE)
        cues.select(seek, [cues, cue_state], player, queue=False, **PRIVATE)
        show_subtitles.change(toggle_subtitles, [show_subtitles, cue_state], player, queue=False, **PRIVATE)
        template.select(partial(fill_template, templates), [template, textbox], textbox, queue=False, **PRIVATE)

        # ---- compare ----
        compare_input.submit(compare.run, [compare_input, compare_models, blind, *settings],
                             [*columns, *cells, vote_row, vote_choice, compare_state, vote_status],
                             **PRIVATE, **GPU).then(status, None, [table, memory], **PRIVATE)
        compare_stop.click(compare.stop, None, None, queue=False, **PRIVATE)
        vote.click(compare.vote, [vote_choice, compare_state], [*cells[::4], compare_state, vote_status],
                   queue=False, **PRIVATE)

        def end_session(request: gr.Request) -> None:
            backend.end_session(request.session_hash)

        demo.unload(end_session)
    return demo


def create_app(models: list[str], max_upload_mb: float = 200, max_duration_s: float = 600,
               max_chapters_duration_s: float = 4 * 3600, allow_dirs: tuple[str, ...] = (),
               allow_hosts: tuple[str, ...] = (),
               votes_path: str = "vlm_app_votes.jsonl", device: str = "auto", dtype: str = "auto",
               memory_budget_gb: float | None = None, memory: MemoryLimit = MemoryLimit(None),
               loras: list[str] | None = None) -> tuple[gr.Blocks, Backend]:
    """The app and its backend, queued (one model job at a time), not yet launched. `memory`: every request's
    memory limit (`service.Request`); `loras`: `--lora NAME=PATH` values, adapters on offer as models."""
    from vlm_app.adapters.registry import resolve
    from vlm_app.served import served_models

    for source in served_models(models).values():
        resolve(source)  # unknown names and missing folders fail here, before the server starts
    policy = UploadPolicy(max_file_mb=max_upload_mb, max_duration_s=max_duration_s,
                          max_chapters_duration_s=max_chapters_duration_s, upload_dir=get_upload_folder(),
                          allowed_dirs=tuple(allow_dirs), allowed_hosts=tuple(allow_hosts))
    backend = Backend(models, policy, votes_path, device=device, dtype=dtype, memory_budget_gb=memory_budget_gb,
                      memory=memory, loras=loras)
    demo = build_app(backend)
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    return demo, backend


class GuardedRoutes:
    """ASGI middleware in front of Gradio's routes: a path over MAX_PATH characters gets 414, and two routes are
    guarded. `/gradio_api/deep_link` answers 404: this app does not use it, and that GET writes the state of the
    session it names (any session whose id the client knows) into the upload folder, with a link that loads it.
    `/gradio_api/upload` takes at most `max_request_bytes` a request, refused from its Content-Length before a
    byte is read (one is required): Gradio caps each file's size, not how many files a request carries."""

    DEEP_LINK, UPLOAD = "/gradio_api/deep_link", "/gradio_api/upload"

    def __init__(self, app, max_request_bytes: int):
        self.app, self.max_request_bytes = app, max_request_bytes

    async def __call__(self, scope, receive, send):
        refusal = self._refusal(scope) if scope["type"] == "http" else None
        await (refusal or self.app)(scope, receive, send)

    def _refusal(self, scope) -> PlainTextResponse | None:
        path = scope["path"].rstrip("/")
        if len(path) > MAX_PATH:  # Gradio's static routes fail on a name the file system refuses (a 500)
            return PlainTextResponse(f"paths are at most {MAX_PATH} characters", status_code=414)
        if path == self.DEEP_LINK:
            return PlainTextResponse("deep links are turned off in this app", status_code=404)
        if path != self.UPLOAD or scope["method"] != "POST":
            return None
        length = dict(scope["headers"]).get(b"content-length", b"")
        if not length.isdigit():
            return PlainTextResponse("an upload must state its Content-Length", status_code=411)
        if int(length) > self.max_request_bytes:
            return PlainTextResponse(f"one upload may carry at most {self.max_request_bytes / 2**20:.0f} MB "
                                     f"({UPLOAD_FILES} files of this app's upload limit); upload fewer files at a time",
                                     status_code=413)
        return None


def launch_options(backend: Backend, host: str, port: int | None, share: bool,
                   auth: list[tuple[str, str]] | None = None) -> dict:
    """`demo.launch` keyword arguments: uploads capped at the policy's size, Gradio's login when `auth` holds
    (user, password) pairs. The scratch folder is not among Gradio's `allowed_paths`: those are served inline
    under their own type, so a fetched .html or .svg would run as a page of this app; what a handler returns
    from there is copied into Gradio's cache (it lies in the temp folder), which serves script-capable types as
    attachments."""
    return {"server_name": host, "server_port": port, "share": share, "auth": auth or None,
            "max_file_size": int(backend.policy.max_file_mb * 2**20),
            "app_kwargs": {"middleware": [Middleware(GuardedRoutes, max_request_bytes=int(
                (backend.policy.max_file_mb * UPLOAD_FILES + 1) * 2**20))]},  # 1 MB for the multipart framing
            "theme": gr.themes.Soft(), "footer_links": ["api", "settings"], "show_error": True}


def auth_pairs(auth: str | None, auth_file: str | None) -> list[tuple[str, str]]:
    """(user, password) pairs from `--auth USER:PASSWORD` and `--auth-file FILE` (one USER:PASSWORD a line, so
    that passwords stay out of the process list)."""
    lines = [auth] if auth else []
    if auth_file:
        try:
            lines += [line.strip() for line in Path(auth_file).read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeError) as error:
            raise OptionsError(f"cannot read --auth-file {auth_file} ({error}); give a readable text file") from None
    pairs = [tuple(line.partition(":")[::2]) for line in lines]
    if any(not user or not password for user, password in pairs):
        raise OptionsError("--auth and --auth-file take USER:PASSWORD (both non-empty)")
    return pairs


def serve(models: list[str], host: str = "127.0.0.1", port: int | None = None, *, share: bool = False,
          auth: list[tuple[str, str]] | None = None, insecure_no_auth: bool = False, **options) -> int:
    """`python -m vlm_app ui`: refuse an unauthenticated exposed bind (`auth`: `auth_pairs`), build the app
    (`options`: `create_app`'s), launch it and block until interrupted; scratch files go with the app."""
    check_exposure(host, authenticated=bool(auth), insecure=insecure_no_auth, share=share,
                   auth_option="--auth USER:PASSWORD (or --auth-file FILE)")
    demo, backend = create_app(models, **options)
    try:
        demo.launch(**launch_options(backend, host, port, share, auth))
    finally:
        backend.close()
    return 0
