"""The hostile-request corpus, web-app side: scripted calls to `/chat`, `/chapters` and `/compare` of
`python -m vlm_app ui` with names off the list, server paths, wrong types and bad options. Each is refused with a specific message
within 30 s (never an internal error), and the app keeps answering. Loopback only."""

from __future__ import annotations

import time

import pytest
from gradio_client import handle_file

CASE_DEADLINE_S = 30


def ask(text, *files):
    return {"text": text, "files": [handle_file(str(path)) for path in files]}


def chat_cases(models: list[str]) -> list[tuple[str, tuple, str]]:
    """(name, /chat arguments after the message, expected words in the error)."""
    return [
        ("unknown option", ([], models[0], {"max_tokens": 4}), "unknown option(s) max_tokens"),
        ("option of the wrong type", ([], models[0], {"max_new_tokens": "many"}), "max_new_tokens must be a number"),
        ("temperature as text", ([], models[0], {"temperature": "hot"}), "temperature must be a number"),
        ("system prompt not text", ([], models[0], {"system_prompt": ["x"]}), "system_prompt must be text"),
        ("history of the wrong shape", ([{"who": "me"}], models[0], {}), "history must be a list"),
        ("history with a system turn", ([{"role": "system", "content": "x"}], models[0], {}), "history must be a list"),
        ("contradicting video options", ([], models[0], {"video_start": 5, "video_end": 1}), "video_start"),
        ("options not an object", ([], models[0], ["max_new_tokens", 4]), "options must be an object"),
        ("answer budget negative", ([], models[0], {"max_new_tokens": -5}), "max_new_tokens must be a whole number of at least 1"),
        ("seed over 64 bits", ([], models[0], {"seed": 2**80}), "seed must be a whole number within 64 bits"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_hostile_chat_calls_get_a_specific_refusal(ui_client, ui_server, ui_clip, case):
    name, arguments, words = chat_cases(ui_server.models)[case]
    started = time.monotonic()
    answer, details = ui_client.predict(ask("Describe.", ui_clip), *arguments, api_name="/chat")
    assert time.monotonic() - started < CASE_DEADLINE_S, name
    assert details == {"error": answer} and words in answer and "internal error" not in answer, (name, answer)


@pytest.mark.parametrize("model", ["smolvlm2-256m", "/tmp", "{models[0]}/.."])
def test_chat_with_a_model_off_the_list_is_refused(ui_client, ui_server, ui_clip, model):
    """Refused by the model picker's own choice check (and behind it by `security.offered_model`)."""
    with pytest.raises(Exception, match="not in the list of choices|not on offer"):
        ui_client.predict(ask("Describe.", ui_clip), [], model.format(models=ui_server.models), {}, api_name="/chat")


@pytest.mark.parametrize("models, words", [
    (["smolvlm2-256m", "qwen2.5-vl-3b"], "not on offer"),
    (["/tmp", "/etc"], "not on offer"),
    (["only-one"], "Choose 2 or 3 models"),
])
def test_hostile_compare_calls_are_refused_before_any_model_loads(ui_client, ui_server, ui_clip, models, words):
    with pytest.raises(Exception, match=words):
        ui_client.predict(ask("What happens?", ui_clip), models, {}, api_name="/compare")


@pytest.mark.parametrize("files, options, words", [
    (1, {"segment_seconds": -4}, "the segment length must be 1 to 3600 s, got -4"),
    (1, {"segment_seconds": 1e12}, "the segment length must be 1 to 3600 s"),
    (1, {"segment_seconds": "ten"}, "the segment length must be a number of seconds, got 'ten'"),
    (1, {"segment_seconds": "NaN"}, "the segment length must be a finite number"),  # JSON has no NaN
    (1, {"segment_seconds": 4, "overlap": -1}, "the overlap must be 0 to 4 s"),
    (1, {"overlap": [1]}, "the overlap must be a number of seconds"),
    (1, {"segments": 4}, "unknown option(s) segments"),
    (1, ["segment_seconds", 4], "options must be an object"),
    (1, {"video_end": 2}, "chapters cover the whole video"),
    (2, {}, "chapters take exactly one video file"),
    (0, {}, "chapters take exactly one video file"),
])
def test_hostile_chapters_calls_get_a_specific_refusal(ui_client, ui_server, ui_long_clip, files, options, words):
    started = time.monotonic()
    answer, details = ui_client.predict(ask("Describe.", *[ui_long_clip] * files), ui_server.models[0], options,
                                        api_name="/chapters")
    assert time.monotonic() - started < CASE_DEADLINE_S
    assert details == {"error": answer} and words in answer and "internal error" not in answer, answer


def test_the_app_still_answers_after_the_corpus(ui_client, ui_server, ui_clip):
    answer, details = ui_client.predict(ask("Describe.", ui_clip), [], ui_server.models[0], {"max_new_tokens": 3},
                                        api_name="/chat")
    assert "stats" in details and answer
