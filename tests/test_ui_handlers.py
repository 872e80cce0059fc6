"""The app's pieces in-process: history → messages, upload policy, chat and compare handlers, timeline outputs,
grounding boxes, votes, sessions, the model panel and the `ui` command's errors."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from vlm_app.cli import main
from vlm_app.errors import LimitError, OptionsError, SourceError
from vlm_app.memory import MemoryLimit
from vlm_app.ui.answer import ERROR_TITLE, Settings, settings_from_dict, to_messages
from vlm_app.ui.backend import Backend
from vlm_app.ui.chat import ChatHandlers, answer_files, grounded_image, seek, timeline_outputs
from vlm_app.ui.compare import CompareHandlers
from vlm_app.ui.limits import UploadPolicy
from vlm_app.ui.timeline import Cue


def user(*files, text=""):
    content = [{"type": "file", "file": {"path": str(path)}} for path in files]
    return {"role": "user", "content": content + ([{"type": "text", "text": text}] if text else [])}


def bot(text, **extra):
    return {"role": "assistant", "content": [{"type": "text", "text": text}], **extra}


@pytest.fixture(scope="module")
def backend(tiny_checkpoints, ui_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui_backend")
    policy = UploadPolicy(max_file_mb=1, max_duration_s=6, upload_dir=str(ui_clip.parent))
    models = [str(tiny_checkpoints["smolvlm2"]), str(tiny_checkpoints["qwen2_5_vl"])]
    backend = Backend(models, policy, str(root / "votes.jsonl"), device="cpu")
    yield backend
    backend.close()


def request(session="s1"):
    return SimpleNamespace(session_hash=session)


def test_history_becomes_messages_with_media_remembered(tmp_path):
    clip, photo = tmp_path / "a.mp4", tmp_path / "b.png"
    history = [user(clip, text="What moves?"), bot("A square."), bot("boom", metadata={"title": ERROR_TITLE}),
               user(photo), user(text="And here?")]
    settings = Settings(fps=2, max_frames=8, max_pixels=50176, video_start=1.0, system_prompt="Be brief.")
    messages = to_messages(history, settings)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"][0] == {"type": "video", "video": str(clip), "fps": 2, "max_frames": 8,
                                         "max_pixels": 50176, "video_start": 1.0}
    assert messages[2]["content"] == [{"type": "text", "text": "A square."}]  # the error notice is skipped
    assert messages[3]["content"] == [{"type": "image", "image": str(photo), "max_pixels": 50176},
                                      {"type": "text", "text": "And here?"}]  # consecutive user turns merge


def test_settings_from_dict_rejects_unknown_names():
    assert settings_from_dict({"max_new_tokens": "12", "seed": 3.0}).generate_options() == {
        "max_new_tokens": 12, "temperature": 0.0, "top_p": 1.0, "seed": 3}
    with pytest.raises(OptionsError, match="unknown option"):
        settings_from_dict({"fsp": 1})


def test_policy_reads_only_allowed_folders(tmp_path, ui_clip, ui_long_clip):
    policy = UploadPolicy(max_file_mb=0.001, max_duration_s=6, upload_dir=str(ui_clip.parent))
    outside = tmp_path / "secret.txt"
    outside.write_text("no")
    with pytest.raises(SourceError, match="outside the folders"):
        policy.check_readable(str(outside))
    with pytest.raises(SourceError, match="outside the folders"):
        policy.fetch(f"file://{outside}", str(tmp_path))
    with pytest.raises(LimitError, match="upload limit of 0.001 MB"):
        policy.check_file(str(ui_clip), "video")
    roomy = UploadPolicy(max_file_mb=50, max_duration_s=6, upload_dir=str(ui_long_clip.parent))
    roomy.check_file(str(ui_clip), "video")
    with pytest.raises(LimitError, match="limit of 6 s"):
        roomy.check_file(str(ui_long_clip), "video")


def test_data_uri_is_fetched_into_the_session_folder(tmp_path):
    buffer = tmp_path / "dot.png"
    Image.new("RGB", (4, 4), "red").save(buffer)
    uri = "data:image/png;base64," + base64.b64encode(buffer.read_bytes()).decode()
    path = UploadPolicy(upload_dir=str(tmp_path / "uploads")).fetch(uri, str(tmp_path / "session"))
    assert path.endswith(".png") and Image.open(path).size == (4, 4)


def test_respond_streams_then_fills_gallery_stats_and_timeline(backend, ui_clip):
    chat = ChatHandlers(backend)
    history = [user(ui_clip, text="Describe.")]
    values = [None, None, None, None, None, 6, 0.0, 1.0, 0, ""]
    outputs = list(chat.respond(request(), history, backend.models[0], True, *values))
    assert len(outputs) >= 3
    shown, gallery, stats, player, cues, cue_state, files = outputs[-1]
    assert shown[-1]["role"] == "assistant" and shown[-1]["content"].strip()
    assert gallery and all(caption.startswith("#1 frame") for _, caption in gallery)
    assert "| new tokens | 6 |" in stats and "| stopped | False |" in stats
    assert player.value["path"].endswith("clip.mp4") and files is not None
    assert isinstance(cue_state, list)


def test_respond_shows_errors_in_the_chat(backend, ui_long_clip, tmp_path):
    chat = ChatHandlers(backend)
    # the long clip sits next to ui_clip, in the readable upload folder
    assert any(ui_long_clip.resolve().is_relative_to(folder) for folder in backend.policy.readable_dirs())
    shown = list(chat.respond(request(), [user(ui_long_clip, text="Hi")], backend.models[0], True,
                              *[None] * 10))[-1][0]
    assert shown[-1]["metadata"]["title"] == ERROR_TITLE and "limit of 6 s" in shown[-1]["content"]
    outside = tmp_path / "x.mp4"
    outside.write_bytes(b"x")
    shown = list(chat.respond(request(), [user(outside, text="Hi")], backend.models[0], True, *[None] * 10))[-1][0]
    assert "outside the folders" in shown[-1]["content"]
    # the client sends the whole conversation: files in earlier turns are checked too
    earlier = [user(outside, text="Hi"), bot("A square."), user(text="And now?")]
    shown = list(chat.respond(request(), earlier, backend.models[0], True, *[None] * 10))[-1][0]
    assert "outside the folders" in shown[-1]["content"]


def test_timeline_outputs_write_subtitles_and_seek(tmp_path, ui_clip, gradio_temp_dir):
    cues = [Cue(0.5, 1.5, "a red square", "00:00"), Cue(1.5, 2.0, "it leaves", "00:01")]
    tmp_path = tmp_path / "session"
    tmp_path.mkdir()
    player, dataset, state, files = timeline_outputs(cues, str(ui_clip), True, answer_files(cues, tmp_path))
    assert files.visible and sorted(path.name for path in tmp_path.iterdir()) == ["answer.json", "answer.srt",
                                                                                  "answer.vtt"]
    assert (tmp_path / "answer.srt").read_text().startswith("1\n00:00:00,500 --> 00:00:01,500\na red square")
    assert player.subtitles is not None and dataset.choices[0][0] == "00:00–00:01 · a red square"
    assert seek(1, state).playback_position == 1.5


def test_edit_regenerate_undo_keep_the_right_turns(tmp_path):
    clip = tmp_path / "a.mp4"
    history = [user(clip, text="first"), bot("one"), user(text="second"), bot("two")]
    assert ChatHandlers.for_regenerate(history) == history[:3]
    edited = ChatHandlers.for_edit(history, SimpleNamespace(index=0, value="changed"))
    assert edited == [{"role": "user", "content": [history[0]["content"][0], {"type": "text", "text": "changed"}]}]
    assert ChatHandlers.for_undo(history, SimpleNamespace(index=2)) == history[:2]


def test_grounding_boxes_are_drawn_on_the_question_image(tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (100, 50), "white").save(photo)
    answer = "<|ref|>the cat<|/ref|><|det|>[[0,0,499,999]]<|/det|>"
    drawn = grounded_image(answer, [user(photo, text="Where is the cat?")], tmp_path)
    assert drawn and Image.open(drawn).getpixel((49, 25)) != (255, 255, 255)  # the box's right edge
    assert grounded_image("no boxes here", [user(photo)], tmp_path) is None


def test_blind_compare_hides_names_until_the_vote_is_logged(backend, ui_clip):
    compare = CompareHandlers(backend)
    message = {"text": "What happens?", "files": [str(ui_clip)]}
    values = [None, None, None, None, None, 4, 0.0, 1.0, 0, ""]
    outputs = list(compare.run(request("s2"), message, backend.models, True, *values))
    first = outputs[0]
    headers = [first[3 + 4 * position] for position in range(2)]
    assert headers == ["### Model A", "### Model B"]
    assert outputs[0][-2] == {}  # nothing to vote on before every answer is in
    assert all(outputs[-2][4 + 4 * position] for position in range(2))  # both answers arrived
    state = outputs[-1][-2]
    assert sorted(state["models"]) == sorted(backend.models)
    *headers, _, state, status = compare.vote("B", state)
    assert headers[1] == f"### B: {backend.label(state['models'][1])} ✓" and "Vote recorded" in status
    record = json.loads(backend.votes_path.read_text().splitlines()[-1])
    assert record["choice"] == "B" and record["winner"] == record["models"][1] == state["models"][1]
    with pytest.raises(gr.Error, match="already has a vote"):
        compare.vote("A", state)

def test_sessions_clean_up_and_models_load_and_unload(backend):
    folder = backend.session_dir("gone")
    (folder / "file.txt").write_text("x")
    backend.end_session("gone")
    assert not folder.exists()
    backend.adapter(backend.models[1])
    row = next(row for row in backend.models_table() if row[1] == "loaded")
    assert row[4] > 0 and "MiB" in backend.memory_summary()
    backend.unload(backend.models[1])
    assert all(row[1] == "not loaded" for row in backend.models_table() if row[0] == backend.label(backend.models[1]))


def test_ui_command_rejects_missing_model_folders(capsys, tmp_path):
    assert main(["ui", "--models", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_answer_budget_reaches_prepare(tiny_deepseek_dirs, deepseek_long_video):
    """DeepSeek-VL2 sizes its frame count by the answer budget: a chat turn must prepare with the budget it then
    generates with (the max-new-tokens control), not the family default."""
    from vlm_app.adapters.deepseek_vl2 import DeepseekVL2Adapter
    from vlm_app.service import Request, Run
    from vlm_app.ui.answer import AnswerRun

    adapter = DeepseekVL2Adapter.load(str(tiny_deepseek_dirs["tiny"]), device="cpu", dtype="float32")
    history = [user(deepseek_long_video, text="What happens?")]
    settings = Settings(max_new_tokens=8)
    request = Request(to_messages(history, settings), generation=settings.generate_options())
    run = AnswerRun("deepseek", Run(adapter, request))
    list(run)
    messages = to_messages(history, settings)
    assert adapter.frame_budget(messages, 8) != adapter.frame_budget(messages, 512)  # the budget matters here
    assert run.stats()["frames"] == adapter.frame_budget(messages, 8)
    assert run.stats()["new_tokens"] <= 8


def test_the_operators_memory_limit_fits_every_chat_and_compare_request(tiny_checkpoints, memory_clip, tmp_path):
    from adapter_fixtures import midway_limit
    from vlm_app.service import execute
    from vlm_app.ui.answer import settings_from, ui_request

    values = [None, None, None, None, None, 6, 0.0, 1.0, 0, ""]
    history = [user(memory_clip, text="Describe.")]
    policy = UploadPolicy(max_file_mb=1, max_duration_s=10, upload_dir=str(memory_clip.parent))
    models = [str(tiny_checkpoints["smolvlm2"]), str(tiny_checkpoints["qwen2_5_vl"])]
    free = Backend(models, policy, str(tmp_path / "votes.jsonl"), device="cpu")
    unconstrained = execute(free.adapter(models[0]), ui_request(history, settings_from(values), free))
    free.close()
    limited = Backend(models, policy, str(tmp_path / "votes.jsonl"), device="cpu",
                      memory=MemoryLimit(midway_limit(unconstrained)))
    try:
        *_, (shown, gallery, stats, *_) = ChatHandlers(limited).respond(request(), history, models[0], True, *values)
        assert shown[-1]["content"].strip() and 0 < len(gallery) < len(unconstrained["frames_indices"]) == 8
        assert f"memory fit: lowered frames from 8 to {len(gallery)}" in stats
        assert "| estimated peak (MiB) |" in stats and "| peak memory (MiB) |" in stats
        # compare: the same limit on each model; Qwen2.5-VL's least video (4 frames of its minimum size) is over it
        message = {"text": "Describe.", "files": [str(memory_clip)]}
        *_, records = CompareHandlers(limited).api_compare(message, models, {"max_new_tokens": 6}, request("s3"))
        assert records[0]["stats"]["frames"] == len(gallery) and "memory fit" in records[0]["stats"]["notes"][0]
        assert records[0]["stats"]["memory_estimate_bytes"] <= limited.memory.max_memory
        assert "does not fit in" in records[1]["error"] and "raise --max-memory" in records[1]["error"]
        # clients cannot change the limit: it is no setting
        *_, (answer, details) = ChatHandlers(limited).api_chat(message, [], models[0], {"max_memory": "1TB"},
                                                              request())
        assert "unknown option(s) max_memory" in details["error"]
    finally:
        limited.close()


def test_ui_command_rejects_a_bad_max_memory(capsys, tiny_checkpoints):
    assert main(["ui", "--models", str(tiny_checkpoints["smolvlm2"]), "--max-memory", "lots"]) == 2
    assert "max memory 'lots' is not a size" in capsys.readouterr().err


def test_the_audio_setting_takes_auto_on_or_off():
    assert settings_from_dict({"audio": "off"}).media_options("video") == {"audio": "off"}
    assert settings_from_dict({}).media_options("video") == {}  # auto: the default of the models that hear
    with pytest.raises(OptionsError, match="option audio must be one of auto, on, off, got 'loud'"):
        settings_from_dict({"audio": "loud"})
