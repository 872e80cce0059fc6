"""The OpenAI-compatible server through the official `openai` client, against `python -m vlm_app serve` on tiny
checkpoints (loopback only)."""

from __future__ import annotations

import base64
import json
import re
import threading
import time

import httpx
import openai
import pytest

from server_fixtures import API_KEY


def video_message(api_server, text: str = "What happens?", name: str = "clip.mp4") -> list[dict]:
    url = f"file://{api_server.allowed / name}"
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def png_data_uri(api_server) -> str:
    return "data:image/png;base64," + base64.b64encode((api_server.allowed / "image.png").read_bytes()).decode()


def test_models_lists_exactly_the_models_on_offer(client, api_server):
    assert [model.id for model in client.models.list()] == api_server.models


@pytest.mark.parametrize("position, options, frames", [
    (0, {"mm_processor_kwargs": {"fps": 1.5, "max_frames": 3}}, 3),
    (1, {"media_io_kwargs": {"video": {"num_frames": 4}}, "mm_processor_kwargs": {"max_pixels": 128 * 28 * 28}}, 4)],
    ids=["smolvlm2", "qwen2_5_vl"])
def test_video_answer_with_usage_and_what_the_model_saw(client, api_server, position, options, frames):
    model = api_server.models[position]
    response = client.chat.completions.create(model=model, messages=video_message(api_server), max_tokens=6, seed=1,
                                              extra_body=options)
    choice = response.choices[0]
    assert response.model == model and choice.message.role == "assistant" and choice.message.content
    shown = response.model_extra["vlm_app"]
    assert len(shown["frames_indices"]) == len(shown["timestamps"]) == frames  # vLLM's option names, mapped
    assert shown["media"][0]["type"] == "video"
    counts = shown["num_tokens"]
    assert counts["visual"] > 0 and response.usage.prompt_tokens == counts["text"] + counts["visual"]
    assert 0 < response.usage.completion_tokens <= 6 and shown["timings"]["new_tokens"] == response.usage.completion_tokens
    assert choice.finish_reason == ("length" if response.usage.completion_tokens == 6 else "stop")
    assert shown["timings"]["prefill_s"] > 0


def test_image_from_a_data_uri(client, api_server):
    response = client.chat.completions.create(
        model=api_server.models[1], max_completion_tokens=4,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri(api_server)}},
                                               {"type": "text", "text": "Colour?"}]}])
    shown = response.model_extra["vlm_app"]
    assert shown["media"] == [{"type": "image", "size": shown["media"][0]["size"]}]
    assert shown["num_tokens"]["visual"] > 0 and response.usage.completion_tokens <= 4


def test_streaming_gives_the_same_answer_in_pieces_then_usage(client, api_server):
    model = api_server.models[0]
    options = {"model": model, "messages": video_message(api_server), "max_tokens": 12, "temperature": 0}
    whole = client.chat.completions.create(**options)
    chunks = list(client.chat.completions.create(**options, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2 and "".join(pieces) == whole.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].model_extra["vlm_app"]["frames_indices"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_strings_cut_the_answer(client, api_server):
    model = api_server.models[0]
    options = {"model": model, "messages": video_message(api_server), "max_tokens": 16}
    whole = client.chat.completions.create(**options).choices[0].message.content
    stop = whole[len(whole) // 2:len(whole) // 2 + 2]
    assert stop.strip(), whole
    cut = client.chat.completions.create(**options, stop=[stop])
    assert cut.choices[0].message.content == whole[:whole.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(**options, stop=stop, stream=True) if c.choices)
    assert streamed == whole[:whole.index(stop)]


def test_errors_are_openai_error_objects(client, api_server):
    with pytest.raises(openai.AuthenticationError) as raised:
        openai.OpenAI(base_url=api_server.url, api_key="wrong", max_retries=0).models.list()
    assert raised.value.status_code == 401 and raised.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="smolvlm2-256m", messages=video_message(api_server))
    assert raised.value.body["param"] == "model" and "not on offer" in raised.value.body["message"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=api_server.models[0], messages=video_message(api_server), max_tokens=0)
    assert set(raised.value.body) == {"message", "type", "param", "code"} and raised.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as raised:  # a media mistake found while sampling, still a 400
        client.chat.completions.create(model=api_server.models[0], messages=video_message(api_server),
                                       extra_body={"mm_processor_kwargs": {"fps": 2, "num_frames": 4}})
    assert "fps" in raised.value.body["message"]


def _finished_jobs(api_server) -> list[tuple[str, int]]:
    return [(reason, int(tokens)) for reason, tokens in
            re.findall(r"finish=(\w+) new_tokens=(\d+)", api_server.log_text())]


def _stream_request(api_server, max_tokens: int) -> dict:
    return {"model": api_server.models[0], "messages": video_message(api_server), "max_tokens": max_tokens,
            "stream": True}


def test_a_client_that_disconnects_stops_generation(api_server):
    before = len(_finished_jobs(api_server))
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", api_server.url + "/chat/completions", json=_stream_request(api_server, 4000),
                         headers=headers) as response:
            assert response.status_code == 200
            received = 0
            for line in response.iter_lines():
                received += line.startswith("data: ")
                if received == 4:
                    break  # leaving the block closes the connection
    deadline = time.monotonic() + 20
    while len(_finished_jobs(api_server)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    reason, tokens = _finished_jobs(api_server)[-1]
    assert reason == "cancelled" and tokens < 400, (reason, tokens)  # a 4000-token answer, stopped early


def test_a_client_that_gives_up_on_a_whole_answer_stops_generation(api_server):
    before = len(_finished_jobs(api_server))
    body = {**_stream_request(api_server, 4000), "stream": False}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1 s and closes the connection
        httpx.post(api_server.url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"},
                   timeout=httpx.Timeout(10, read=1.0))
    deadline = time.monotonic() + 20
    while len(_finished_jobs(api_server)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    reason, tokens = _finished_jobs(api_server)[-1]
    assert reason == "cancelled" and tokens < 4000, (reason, tokens)


def test_a_streamed_chapters_job_keeps_the_connection_alive_while_the_model_works(api_server):
    """Between chapter lines (a whole segment described each) the stream sends SSE comments, which clients skip."""
    body = {**_stream_request(api_server, 200), **HOUR_CHAPTERS, "messages": video_message(api_server, name="long.mp4")}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", api_server.url + "/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {API_KEY}"}) as response:
            lines = [line for line in response.iter_lines() if line]
    data = [line for line in lines if line.startswith("data: ")]
    assert set(lines) - set(data) == {": keep-alive"}
    assert data[-1] == "data: [DONE]" and all(json.loads(line[6:])["choices"] for line in data[:-1])
    first_chapter = next(index for index, line in enumerate(lines) if "[00:00:00 - 01:00:00]" in line)
    assert ": keep-alive" in lines[:first_chapter]  # the first segment was being described


def test_a_stream_whose_client_leaves_while_queued_is_not_run(api_server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(timeout=120) as http:
        with http.stream("POST", api_server.url + "/chat/completions", json=_stream_request(api_server, 4000),
                         headers=headers) as running:
            lines = running.iter_lines()
            next(lines)  # the first job holds the model
            with pytest.raises(httpx.ReadTimeout):  # the second waits in the queue; its client gives up after 1 s
                with httpx.stream("POST", api_server.url + "/chat/completions", headers=headers,
                                  json=_stream_request(api_server, 4000), timeout=httpx.Timeout(10, read=1.0)):
                    pass
    deadline = time.monotonic() + 30
    while "the client left while it waited; not run" not in api_server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "the client left while it waited; not run" in api_server.log_text()


def test_a_full_queue_answers_429(client, api_server):
    """One job runs, one waits (--max-queue 1): the third gets 429 at once; the waiting one is served after."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    waited: dict = {}
    with httpx.Client(timeout=120) as http:
        with http.stream("POST", api_server.url + "/chat/completions", json=_stream_request(api_server, 4000),
                         headers=headers) as running:
            lines = running.iter_lines()
            next(lines)  # the first job holds the model (keep `lines`: dropping it closes the stream)

            def second():
                waited["response"] = client.chat.completions.create(model=api_server.models[0], max_tokens=2,
                                                                    messages=video_message(api_server))

            waiting = threading.Thread(target=second)
            waiting.start()
            time.sleep(1.0)  # let it reach the queue
            with pytest.raises(openai.RateLimitError) as raised:
                client.chat.completions.create(model=api_server.models[0], max_tokens=2,
                                               messages=video_message(api_server))
            assert raised.value.status_code == 429 and raised.value.body["code"] == "queue_full"
    waiting.join(timeout=60)
    assert waited["response"].usage.completion_tokens <= 2


HOUR_CHAPTERS = {"vlm_app": {"chapters": {"segment_seconds": 3600}}}
HOURS = ["[00:00:00 - 01:00:00] ", "[01:00:00 - 02:00:00] ", "[02:00:00 - 03:00:00] "]  # then 03:00:00 to the end


def chapters_request(api_server, max_tokens: int = 4) -> dict:
    return {"model": api_server.models[0], "messages": video_message(api_server, name="long.mp4"),
            "max_tokens": max_tokens, "temperature": 0, "extra_body": HOUR_CHAPTERS}


def test_a_video_over_the_plain_cap_is_refused_with_the_chapters_option(client, api_server):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=api_server.models[0], max_tokens=2,
                                       messages=video_message(api_server, name="long.mp4"))
    body = raised.value.body
    assert body["code"] == "limit_exceeded" and "over this server's 14400 s limit" in body["message"]
    assert '"vlm_app": {"chapters": {}}' in body["message"]


def test_chapters_cover_the_video_in_order_and_end_with_a_summary(client, api_server):
    """The 4 h 20 min video, over a plain request's cap, in hour-long chapters: the chapters cap applies."""
    response = client.chat.completions.create(**chapters_request(api_server))
    shown = response.model_extra["vlm_app"]
    chapters, segments = shown["chapters"], shown["segments"]
    assert shown["duration"] > 4 * 3600 and shown["error"] is None and not shown["cancelled"]
    assert [chapter["start"] for chapter in chapters] == [0, 3600, 7200, 10800]
    assert [chapter["end"] for chapter in chapters] == [3600, 7200, 10800, shown["duration"]]
    assert response.choices[0].message.content == shown["summary"] and shown["summary"]
    for chapter, segment in zip(chapters, segments):  # frames at their times in the whole video
        assert segment["error"] is None and segment["frames_indices"]
        assert all(chapter["start"] <= time <= chapter["end"] for time in segment["timestamps"])
    assert shown["timestamps"] == sorted({time for segment in segments for time in segment["timestamps"]})
    segment_prompts = sum(segment["num_tokens"]["total"] for segment in segments)
    segment_answers = sum(segment["timings"]["new_tokens"] for segment in segments)
    assert response.usage.prompt_tokens > segment_prompts  # the summary's request is counted too
    assert response.usage.completion_tokens == shown["timings"]["new_tokens"] > segment_answers


def test_a_chapters_request_takes_a_system_message_for_every_segment(client, api_server):
    plain = client.chat.completions.create(**chapters_request(api_server)).model_extra["vlm_app"]
    told = client.chat.completions.create(**{**chapters_request(api_server), "messages": [
        {"role": "system", "content": "Answer in five words."}, *video_message(api_server, name="long.mp4")]})
    shown = told.model_extra["vlm_app"]
    grown = {segment["num_tokens"]["text"] - before["num_tokens"]["text"]
             for segment, before in zip(shown["segments"], plain["segments"])}
    assert shown["error"] is None and len(grown) == 1 and grown.pop() > 0


def test_streamed_chapters_come_in_order_then_the_summary_then_usage(client, api_server):
    whole = client.chat.completions.create(**chapters_request(api_server)).model_extra["vlm_app"]
    chunks = list(client.chat.completions.create(**chapters_request(api_server), stream=True,
                                                 stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    shown = finals[0].model_extra["vlm_app"]
    assert shown["chapters"] == whole["chapters"] and shown["summary"] == whole["summary"]  # greedy: the same
    assert len(pieces) == 5  # each chapter as it finishes, then the summary
    for piece, hour, chapter in zip(pieces, HOURS + ["[03:00:00 - "], shown["chapters"]):
        assert piece.startswith(hour) and piece == piece[:piece.index("] ") + 2] + chapter["text"] + "\n"
    assert pieces[-1] == f"\nSummary: {shown['summary']}"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == shown["timings"]["new_tokens"]


def _chapter_jobs(api_server) -> list[tuple[int, int, str, int]]:
    return [(int(described), int(total), cancelled, int(tokens)) for described, total, cancelled, tokens in
            re.findall(r"chapters: (\d+) of (\d+) segments described, cancelled=(\w+), new tokens (\d+)",
                       api_server.log_text())]


def test_a_client_that_disconnects_cancels_a_chapters_job(api_server):
    """4000-token answers for each of 4 segments; the client leaves once the stream starts (the video probed): the
    segment being described stops, no later one runs, no summary."""
    before = len(_chapter_jobs(api_server))
    body = {**_stream_request(api_server, 4000), **HOUR_CHAPTERS,
            "messages": video_message(api_server, name="long.mp4")}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", api_server.url + "/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {API_KEY}"}) as response:
            assert response.status_code == 200
            next(line for line in response.iter_lines() if line.startswith("data: "))
    deadline = time.monotonic() + 30
    while len(_chapter_jobs(api_server)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    described, total, cancelled, tokens = _chapter_jobs(api_server)[-1]
    assert cancelled == "True" and described < total == 4 and tokens < 400, (described, total, cancelled, tokens)
