"""Batched generation (`vlm_app.batching`): one left-padded generate over several requests answers each exactly as
it would alone (greedy, fp32, CPU), for every family, with videos of different lengths in one batch; rows finish,
stop and cancel on their own; requests that cannot share a batch run alone; the pre-flight sizes the batch."""

from __future__ import annotations

import threading

import pytest

from adapter_fixtures import video_messages
from vlm_app.adapters.registry import FAMILIES

NEW_TOKENS = 8


@pytest.fixture(scope="module")
def clips(tmp_path_factory, make_clip) -> list:
    """Three clips of different lengths (so different frame counts and prompt lengths in one batch)."""
    folder = tmp_path_factory.mktemp("batch_clips")
    return [make_clip(folder / f"clip{seconds}.mp4", seconds, 12, width, 120)
            for seconds, width in ((1.0, 160), (3.0, 200), (2.0, 160))]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict:
    """family -> a loaded tiny checkpoint of it (built on first use)."""
    from vlm_app import load
    from vlm_app.testing.tiny import build_tiny

    root, loaded = tmp_path_factory.mktemp("batch_tiny"), {}

    def adapter(family: str):
        if family not in loaded:
            loaded[family] = load(str(build_tiny(family, root / family)), device="cpu")
        return loaded[family]

    return adapter


def requests(clips, **generation) -> list:
    from vlm_app.memory import MemoryLimit
    from vlm_app.service import Request

    prompts = ("Describe this video.", "What moves, and where does it go?", "Name the colours.")
    return [Request(video_messages(str(clip), prompt), generation={"max_new_tokens": NEW_TOKENS, **generation},
                    memory=MemoryLimit(None)) for clip, prompt in zip(clips, prompts)]


SAME_FIELDS = ("answer", "num_tokens", "num_visual_tokens", "frames_indices", "timestamps", "media", "finish_reason",
               "cancelled", "memory_estimate_bytes", "notes")


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_greedy_answers_equal_alone(adapters, clips, family):
    from vlm_app.batching import execute_batch, generate_batch
    from vlm_app.service import execute

    adapter = adapters(family)
    alone = [execute(adapter, request) for request in requests(clips)]
    batched = execute_batch(adapter, requests(clips), max_batch=3)
    lengths = {record["num_tokens"]["total"] for record in alone}
    assert len(lengths) == 3, "the batch must mix prompt lengths"
    for one, row in zip(alone, batched):
        assert {name: row[name] for name in SAME_FIELDS} == {name: one[name] for name in SAME_FIELDS}
        assert row["timings"]["new_tokens"] == one["timings"]["new_tokens"]
        assert row["timings"]["preprocess_s"] > 0 and row["timings"]["prefill_s"] > 0
    # the adapter-level API: per-row budgets, token ids equal to the adapter's own generate
    prepared = [adapter.prepare(request.messages, max_new_tokens=NEW_TOKENS) for request in requests(clips)]
    generations = generate_batch(adapter, prepared, max_new_tokens=[NEW_TOKENS, 3, NEW_TOKENS])
    singles = [adapter.generate(item, max_new_tokens=NEW_TOKENS) for item in prepared]
    assert [len(generation.token_ids) for generation in generations] == [len(singles[0].token_ids),
                                                                         min(3, len(singles[1].token_ids)),
                                                                         len(singles[2].token_ids)]
    for generation, single in zip(generations, singles):
        assert generation.token_ids == single.token_ids[:len(generation.token_ids)]
        assert generation.text == adapter.decode(generation.token_ids)
        assert not generation.cancelled


def test_a_cancelled_row_leaves_and_the_others_finish(adapters, clips):
    from vlm_app.batching import stream_batch

    adapter = adapters("smolvlm2")
    prepared = [adapter.prepare(request.messages, max_new_tokens=NEW_TOKENS) for request in requests(clips)]
    singles = [adapter.generate(item, max_new_tokens=NEW_TOKENS) for item in prepared]
    gate = threading.Event()
    gate.set()  # row 1 is cancelled from the start: it leaves after its first token
    streams = stream_batch(adapter, prepared, max_new_tokens=NEW_TOKENS, cancels=[None, gate, None])
    pieces = ["".join(stream) for stream in streams]
    cancelled = streams[1].generation
    assert cancelled.cancelled and cancelled.timings.new_tokens == 1
    for index in (0, 2):
        assert streams[index].generation.token_ids == singles[index].token_ids
        assert pieces[index] == singles[index].text and not streams[index].generation.cancelled


def test_a_row_closed_while_streaming_leaves_the_batch(adapters, clips):
    from vlm_app.batching import stream_batch

    adapter, budget = adapters("smolvlm2"), 256  # long enough that the batch is still going when row 0 closes
    prepared = [adapter.prepare(request.messages, max_new_tokens=budget) for request in requests(clips)[:2]]
    singles = [adapter.generate(item, max_new_tokens=budget) for item in prepared]
    first, second = stream_batch(adapter, prepared, max_new_tokens=budget)
    next(iter(first))
    first.close()
    assert first.generation.cancelled and first.generation.timings.new_tokens < len(singles[0].token_ids)
    assert first.generation.token_ids == singles[0].token_ids[:len(first.generation.token_ids)]
    assert "".join(second) == singles[1].text and second.generation.token_ids == singles[1].token_ids


def test_stop_strings_cut_their_own_row(adapters, clips):
    from vlm_app.batching import execute_batch
    from vlm_app.service import execute

    adapter = adapters("smolvlm2")
    alone = [execute(adapter, request) for request in requests(clips)]
    answer = alone[1]["answer"]
    stop = answer[len(answer) // 2:len(answer) // 2 + 2]
    assert len(stop) == 2
    batch = requests(clips)
    batch[1].generation["stop"] = [stop]
    records = execute_batch(adapter, batch, max_batch=3)
    assert records[1]["answer"] == answer[:answer.find(stop)] and records[1]["finish_reason"] == "stop"
    assert not records[1]["cancelled"]
    assert [records[0]["answer"], records[2]["answer"]] == [alone[0]["answer"], alone[2]["answer"]]


def test_other_sampling_settings_run_alone(adapters, clips):
    """A seeded sampled request is answered as it is alone (a batch would change its draws); requests with other
    settings or decoding controls do not share a batch."""
    from vlm_app.batching import execute_batch, settings_key
    from vlm_app.service import execute

    assert settings_key({"temperature": 0.0, "seed": 3}) == settings_key({}) == settings_key({"do_sample": False})
    assert settings_key({"temperature": 0.7}) == settings_key({"temperature": 0.7, "top_p": 1.0})
    assert settings_key({"temperature": 0.7}) not in (settings_key({"temperature": 0.9}), settings_key({}))
    for alone in ({"temperature": 0.9, "seed": 7}, {"logprobs": True}, {"json_schema": {"type": "object"}},
                  {"frequency_penalty": 0.5}, {"repetition_penalty": 1.2}):
        assert settings_key(alone) is None
    adapter = adapters("smolvlm2")
    batch = requests(clips)
    batch[1].generation.update(temperature=0.9, seed=7)
    records = execute_batch(adapter, batch, max_batch=8)
    assert records[1]["answer"] == execute(adapter, requests(clips, temperature=0.9, seed=7)[1])["answer"]
    assert records[1]["generation"]["seed"] == 7


def test_the_pre_flight_counts_every_row_and_splits_a_batch_that_does_not_fit(adapters, clips):
    from vlm_app.batching import batch_estimate, prepared_run, split_by_memory

    adapter = adapters("smolvlm2")
    runs = [prepared_run(adapter, request) for request in requests(clips)]
    shapes = [adapter.prepared_shape(run.prepared, NEW_TOKENS) for run in runs]
    one = adapter.memory_estimate(shapes[1])
    two = batch_estimate(adapter, [shapes[1], shapes[1]])
    assert two.weights == one.weights and two.overhead == one.overhead
    assert (two.media, two.prefill, two.decode) == (2 * one.media, 2 * one.prefill, 2 * one.decode)
    padded = batch_estimate(adapter, [shapes[0], shapes[1]])  # the short row counts at the long row's length
    assert padded.decode == 2 * one.decode
    assert batch_estimate(adapter, shapes[:2], ahead=shapes[2]).media == padded.media + shapes[2].media_bytes
    three = batch_estimate(adapter, shapes).total
    for run in runs:
        run.limit = (batch_estimate(adapter, shapes[:2]).total + three) // 2
    assert split_by_memory(adapter, runs, [0, 1, 2], max_batch=8) == [[0, 1], [2]]
    assert split_by_memory(adapter, runs, [0, 1, 2], max_batch=1) == [[0], [1], [2]]
    largest = max(shapes, key=lambda shape: shape.media_bytes)  # counted for the request prepared meanwhile
    for run in runs:
        run.limit = batch_estimate(adapter, shapes, ahead=largest).total - 1
    assert split_by_memory(adapter, runs, [0, 1, 2], max_batch=8) == [[0, 1, 2]]
    assert split_by_memory(adapter, runs, [0, 1, 2], max_batch=8, one_ahead=True) == [[0, 1], [2]]
    for run in runs:
        run.limit = None
    assert split_by_memory(adapter, runs, [0, 1, 2], max_batch=8, one_ahead=True) == [[0, 1, 2]]


def test_an_input_without_a_batching_rule_is_refused():
    import torch

    from vlm_app.batching import collate_rows

    with pytest.raises(ValueError, match="no batching rule for model input"):
        collate_rows([{"input_ids": torch.ones(1, 3, dtype=torch.long), "extra": torch.ones(1)}], {"input_ids": 0})


# ---- the front doors ------------------------------------------------------------------------------------------

def _records(path) -> dict:
    import json

    return {record["source"]: record for record in map(json.loads, path.read_text().splitlines())}


@pytest.mark.parametrize("family", ["smolvlm2", "qwen3_vl"])
def test_describe_folder_in_batches_equals_one_by_one(adapters, clips, tmp_path, family, capsys):
    """`describe DIR --batch-size 3`: the records of a folder with videos of three lengths (and a broken file)
    equal those of batch size 1; the run stays resumable."""
    import shutil

    from vlm_app.cli import main

    folder = tmp_path / "videos"
    folder.mkdir()
    for clip in clips:
        shutil.copy(clip, folder / clip.name)
    (folder / "broken.mp4").write_bytes(b"not a video")
    model = adapters(family).info.model_id
    common = ["describe", str(folder), "--model", model, "--device", "cpu", "--max-new-tokens", str(NEW_TOKENS)]
    assert main([*common, "--out", str(tmp_path / "one.jsonl")]) == 0
    assert main([*common, "--out", str(tmp_path / "three.jsonl"), "--batch-size", "3"]) == 0
    assert "described 3 video(s), 1 failed" in capsys.readouterr().err
    one, three = _records(tmp_path / "one.jsonl"), _records(tmp_path / "three.jsonl")
    assert set(one) == set(three) and len(one) == 4
    for source, record in one.items():
        assert {name: three[source][name] for name in ("error", *SAME_FIELDS)} == \
            {name: record[name] for name in ("error", *SAME_FIELDS)}
    assert main([*common, "--out", str(tmp_path / "three.jsonl"), "--batch-size", "3", "--resume"]) == 0
    assert "described 0 video(s)" in capsys.readouterr().err


def test_batch_size_flag_errors(clips, tmp_path, capsys):
    from vlm_app.cli import main

    for flags in (["--batch-size", "0"], ["--batch-size", "2.5"]):
        with pytest.raises(SystemExit):
            main(["describe", str(clips[0]), "--model", "smolvlm2-256m", *flags])
        assert "whole number of at least 1" in capsys.readouterr().err
    assert main(["describe", str(clips[0]), "--model", "smolvlm2-256m", "--batch-size", "2"]) != 0
    assert "--batch-size batches the videos of a folder" in capsys.readouterr().err
    assert main(["describe", str(clips[0].parent), "--model", "smolvlm2-256m", "--batch-size", "2", "--chapters"]) != 0
    assert "not --chapters" in capsys.readouterr().err


def _chat(clip, prompt: str, max_tokens: int, stream: bool) -> dict:
    return {"max_tokens": max_tokens, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{clip}"}},
                                                      {"type": "text", "text": prompt}]}]}


def _streamed_text(http, url: str, body: dict, leave_after_first: bool = False) -> str:
    import json

    text = ""
    with http.stream("POST", url, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            text += delta
            if delta and leave_after_first:
                return text  # closing the response disconnects: the server cancels this request
    return text


def test_serve_gathers_concurrent_streams_into_one_batch(adapters, clips, tmp_path):
    """`serve --max-batch 4`: four concurrent streaming requests generate in one batch; one client leaves after
    its first piece (its row is cancelled), the others get the answers each gets alone."""
    import os
    import sys
    import threading

    import httpx

    from ui_fixtures import _free_port, running_server

    model = adapters("smolvlm2").info.model_id
    port = _free_port()
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "vlm_app", "serve", "--models", model, "--port", str(port), "--device", "cpu",
               "--allow-dir", str(clips[0].parent), "--max-batch", "4", "--batch-wait-ms", "1500"]
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    prompts = ("Describe this video.", "What moves, and where does it go?", "Name the colours.")
    with running_server(command, {**os.environ, "HF_HUB_OFFLINE": "1"}, log, f"http://127.0.0.1:{port}/health"):
        with httpx.Client(timeout=120) as http:
            model = http.get(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]["id"]  # as served
            bodies = [{**_chat(clip, prompt, NEW_TOKENS, False), "model": model}
                      for clip, prompt in zip(clips, prompts)]
            alone = [http.post(url, json=body).json()["choices"][0]["message"]["content"] for body in bodies]
        answers: dict = {}

        def client(index: int) -> None:
            with httpx.Client(timeout=120) as http:
                if index == 3:  # a long answer, left after its first piece
                    body = {**_chat(clips[1], prompts[0], 200, True), "model": model}
                    answers[index] = _streamed_text(http, url, body, leave_after_first=True)
                else:
                    answers[index] = _streamed_text(http, url, {**bodies[index], "stream": True})

        threads = [threading.Thread(target=client, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        text = log.read_text()
        for _ in range(50):  # the cancelled row's record is logged once the model noticed
            if "finish=cancelled" in text:
                break
            threading.Event().wait(0.1)
            text = log.read_text()
    assert [answers[index] for index in range(3)] == alone
    assert answers[3]
    assert "4 requests generate in one batch" in text
    assert "finish=cancelled" in text


def test_ray_replicas_take_batches(ray_local, ray_videos, tiny_checkpoints, tmp_path):
    """`describe DIR --engine ray --batch-size 3`: the replica generates three videos at a time; the records equal
    the local engine's one by one (a broken file included)."""
    from vlm_app.cli import main

    common = ["describe", str(ray_videos), "--model", str(tiny_checkpoints["smolvlm2"]), "--device", "cpu",
              "--max-new-tokens", str(NEW_TOKENS)]
    assert main([*common, "--out", str(tmp_path / "local.jsonl")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray.jsonl"), "--engine", "ray", "--decode-workers", "1",
                 "--batch-size", "3"]) == 0
    local, ray = _records(tmp_path / "local.jsonl"), _records(tmp_path / "ray.jsonl")
    assert set(local) == set(ray) and len(ray) == 7
    for source, record in local.items():
        assert {name: ray[source][name] for name in ("error", "source", "generation", *SAME_FIELDS)} == \
            {name: record[name] for name in ("error", "source", "generation", *SAME_FIELDS)}


def test_bench_batch_reports_every_batch_size(adapters, capsys):
    """`bench batch`, shrunk to a tiny model and two short clips: a row per batch size with its rate against the
    first (no speed is asserted: that is the benchmark's job)."""
    import re

    from vlm_app.cli import main

    model = adapters("smolvlm2").info.model_id
    assert main(["bench", "batch", "--model", model, "--videos", "3", "--seconds", "2", "--max-new-tokens", "4",
                 "--batch-sizes", "1,3"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+(\d)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+[0-9.]+ [KMG]iB\s+[0-9.]+ [KMG]iB"
                      r"\s+([0-9.]+)x\s+([0-9.]+)x$", out, re.MULTILINE)
    assert [row[0] for row in rows] == ["1", "3"] and rows[0][4] == "1.00" and rows[0][5] == "1.00"
    assert all(float(row[1]) > 0 and float(row[2]) > 0 for row in rows)
    assert 1.0 < float(rows[1][5]) < 3.0  # Amdahl's bound: decoding shared by 3 rows, prefill not
    phases = re.search(r"preprocessing ([0-9.e-]+) s .*prefill ([0-9.e-]+) s, decoding ([0-9.e-]+) s", out)
    assert phases and float(phases[2]) > 0 and float(phases[3]) > 0


def test_serve_refuses_max_batch_with_lora_adapters(tiny_loras, capsys):
    """A batch generates on one active LoRA adapter while the server switches adapters per job: refused at start."""
    from vlm_app.cli import main

    tiny = tiny_loras["smolvlm2"]
    assert main(["serve", "--models", str(tiny.checkpoint), "--lora", f"tuned={tiny.lora}", "--max-batch", "2",
                 "--device", "cpu"]) != 0
    assert "--max-batch does not go with --lora yet" in capsys.readouterr().err
