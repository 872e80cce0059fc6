"""describe / compare / bench through the CLI entry point, on tiny checkpoints."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from vlm_app.cli import main

FAST = ["--max-new-tokens", "4", "--device", "cpu"]


def test_describe_one_video_json(tiny_checkpoints, example_clip, capsys):
    model = str(tiny_checkpoints["smolvlm2"])
    assert main(["describe", str(example_clip), "--model", model, "--json", "--seed", "3", *FAST]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["source"] == str(example_clip) and record["model"] == model and record["error"] is None
    assert isinstance(record["answer"], str)
    assert record["frames_indices"] == [0, 31, 63, 95] and len(record["timestamps"]) == 4
    assert record["num_visual_tokens"] == 16 and record["timings"]["new_tokens"] <= 4
    assert record["model_info"]["dtype"] == "float32" and record["model_info"]["device"] == "cpu"
    assert record["generation"]["seed"] == 3 and record["sampling"]["policy"] == "smolvlm2"


def test_describe_plain_text_and_stream(tiny_checkpoints, example_clip, capsys):
    model = str(tiny_checkpoints["qwen2_5_vl"])
    assert main(["describe", str(example_clip), "--model", model, "--fps", "1", *FAST]) == 0
    plain = capsys.readouterr().out
    assert main(["describe", str(example_clip), "--model", model, "--fps", "1", "--stream", *FAST]) == 0
    assert capsys.readouterr().out == plain  # greedy: the streamed text is the same answer


def test_describe_folder_jsonl_resume_and_failures(tiny_checkpoints, example_clip, make_clip, tmp_path, capsys):
    folder = tmp_path / "videos"
    make_clip(folder / "a.mp4", 2.0, 12, 96, 64)
    make_clip(folder / "nested" / "b.mp4", 3.0, 12, 96, 64)
    (folder / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "results.jsonl"
    model = str(tiny_checkpoints["smolvlm2"])
    assert main(["describe", str(folder), "--model", model, "--out", str(out), *FAST]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    by_name = {record["source"].rsplit("/", 1)[-1]: record for record in records}
    assert set(by_name) == {"a.mp4", "b.mp4", "broken.mp4"}
    assert by_name["a.mp4"]["error"] is None and by_name["b.mp4"]["error"] is None
    assert by_name["broken.mp4"]["error"] and by_name["broken.mp4"]["answer"] is None
    assert "2 video(s), 1 failed" in capsys.readouterr().err
    assert main(["describe", str(folder), "--model", model, "--out", str(out), "--resume", "--json", *FAST]) == 0
    assert capsys.readouterr().out == ""  # resume skips every recorded video, the failed one too
    assert main(["describe", str(folder), "--model", model, "--out", str(out), "--retry-failed", "--json", *FAST]) == 0
    retried = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["source"].rsplit("/", 1)[-1] for record in retried] == ["broken.mp4"]  # only the failure
    assert len(out.read_text().splitlines()) == 3  # its old record replaced, not duplicated


def test_describe_folder_finds_ogg_and_camcorder_videos(tiny_checkpoints, tmp_path, capsys):
    """Ogg video (.ogv) and AVCHD camcorder files (.mts, .m2ts: MPEG-TS) are videos of a folder too."""
    from vlm_app.testing.videos import moving_square, write_video

    folder = tmp_path / "videos"
    for name, codec in (("a.ogv", "libvpx"), ("b.mts", "libx264"), ("c.m2ts", "libx264")):
        write_video(folder / name, (moving_square(index, 24, 96, 64) for index in range(24)), 12, codec=codec)
    out = tmp_path / "results.jsonl"
    assert main(["describe", str(folder), "--model", str(tiny_checkpoints["smolvlm2"]), "--out", str(out), *FAST]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(record["source"].rsplit("/", 1)[-1] for record in records) == ["a.ogv", "b.mts", "c.m2ts"]
    assert all(record["error"] is None and record["frames_indices"] for record in records)


def test_describe_list_file_same_records_as_one_by_one(tiny_checkpoints, make_clip, tmp_path, capsys):
    """A .txt list (one video per line, # comments) works on the single-machine engine as on Ray."""
    clips = [make_clip(tmp_path / f"clip{number}.mp4", 2.0, 12, 96, 64) for number in range(2)]
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# two clips\n{clips[0]}\n\n{clips[1]}\n")
    model = str(tiny_checkpoints["smolvlm2"])
    assert main(["describe", str(listing), "--model", model, "--json", *FAST]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["source"] for record in records] == [str(clip) for clip in clips]
    assert main(["describe", str(clips[1]), "--model", model, "--json", *FAST]) == 0
    assert json.loads(capsys.readouterr().out)["answer"] == records[1]["answer"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    assert main(["describe", str(tmp_path / "empty.txt"), "--model", model, *FAST]) == 2
    assert "lists no videos" in capsys.readouterr().err


def test_describe_dump_features(tiny_checkpoints, example_clip, tmp_path, capsys):
    dump = tmp_path / "features.safetensors"
    model = str(tiny_checkpoints["qwen2_5_vl"])
    assert main(["describe", str(example_clip), "--model", model, "--fps", "1", "--json",
                 "--dump-features", str(dump), *FAST]) == 0
    record = json.loads(capsys.readouterr().out)
    with safe_open(str(dump), "pt") as features:
        hidden = features.get_tensor("hidden_states")
        positions = features.get_tensor("visual_map.positions")
        assert hidden.shape[0] == 3  # 2 layers + embeddings
        assert hidden.shape[1] == features.get_tensor("input_ids").numel() == record["num_tokens"]["total"]
        assert positions.numel() == record["num_visual_tokens"]
        assert features.get_tensor("visual_hidden").equal(hidden[-1][positions])
        assert json.loads(features.metadata()["frames_indices"]) == record["frames_indices"]


def test_describe_template_and_user_errors(tiny_checkpoints, example_clip, tmp_path, capsys):
    model = str(tiny_checkpoints["smolvlm2"])
    assert main(["describe", str(example_clip), "--model", model, "--template", "qa", "--prompt", "What moves?",
                 "--json", *FAST]) == 0
    record = json.loads(capsys.readouterr().out)
    assert "Question: What moves?" in record["prompt"]
    assert main(["describe", str(example_clip), "--model", model, "--template", "qa", *FAST]) == 2
    assert "needs a question" in capsys.readouterr().err
    assert main(["describe", str(tmp_path / "missing.mp4"), "--model", model, *FAST]) == 2
    assert "\nerror: no such file" in "\n" + capsys.readouterr().err


def test_compare_two_families(tiny_checkpoints, example_clip, capsys):
    models = f"{tiny_checkpoints['qwen2_5_vl']},{tiny_checkpoints['smolvlm2']}"
    assert main(["compare", str(example_clip), "--models", models, "--fps", "1", *FAST]) == 0
    table = capsys.readouterr().out
    assert "visual tokens" in table and "first token s" in table
    assert str(tiny_checkpoints["qwen2_5_vl"]) in table and str(tiny_checkpoints["smolvlm2"]) in table
    assert main(["compare", str(example_clip), "--models", models, "--fps", "1", "--json", *FAST]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["model_info"]["family"] for r in records] == ["qwen2_5_vl", "smolvlm2"]
    assert records[0]["num_visual_tokens"] == 280 and records[1]["num_visual_tokens"] == 16


def test_bench_adapter_runs(capsys):
    assert main(["bench", "adapter", "--repeats", "1", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "worst generate/forward overhead" in out and out.count("generate") >= 2


@pytest.fixture
def no_model_loading(monkeypatch):
    import vlm_app.runtime

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a source that cannot work")
    monkeypatch.setattr(vlm_app.runtime, "load_adapter", refuse)
    monkeypatch.setattr(vlm_app.runtime.CACHE, "get", refuse)


@pytest.mark.parametrize("command", ["describe", "compare"])
@pytest.mark.parametrize("source, message", [("missing.mp4", "no such file"), ("empty.mp4", "is empty"),
                                             ("ftp://example.com/clip.mp4", "unsupported URL scheme")])
def test_bad_source_is_reported_before_any_model_loads(no_model_loading, command, source, message, tmp_path,
                                                       capsys):
    (tmp_path / "empty.mp4").write_bytes(b"")
    path = source if "://" in source else str(tmp_path / source)
    models = ["--model", "smolvlm2-256m"] if command == "describe" else ["--models", "smolvlm2-256m,qwen2.5-vl-3b"]
    assert main([command, path, *models]) == 2
    assert message in capsys.readouterr().err


def test_api_describe_checks_the_source_before_loading(no_model_loading, tmp_path):
    from vlm_app import describe
    from vlm_app.errors import SourceError

    with pytest.raises(SourceError, match="no such file"):
        describe(str(tmp_path / "missing.mp4"), model="smolvlm2-256m")


@pytest.mark.parametrize("flags, message", [
    (["--max-new-tokens", "0"], "max_new_tokens must be a whole number of at least 1, got 0"),
    (["--temperature", "-1"], "temperature must be a number of at least 0 (0: greedy), got -1.0"),
    (["--temperature", "nan"], "temperature must be a number of at least 0 (0: greedy), got nan"),
    (["--top-p", "0"], "top_p must be a number above 0 and at most 1, got 0.0"),
    (["--top-p", "1.5"], "top_p must be a number above 0 and at most 1, got 1.5")])
def test_bad_generation_options_are_refused_before_any_model_loads(no_model_loading, example_clip, flags, message,
                                                                   capsys):
    assert main(["describe", str(example_clip), "--model", "smolvlm2-256m", *flags]) == 2
    assert message in capsys.readouterr().err


def test_an_answer_budget_over_the_context_is_refused(tiny_checkpoints, example_clip, capsys):
    assert main(["describe", str(example_clip), "--model", str(tiny_checkpoints["smolvlm2"]), "--device", "cpu",
                 "--max-new-tokens", "100000000"]) == 2
    assert "an answer of 100000000 tokens leaves no room in the model's 8192-token context" in capsys.readouterr().err


def test_api_checks_generation_options_before_loading(no_model_loading, example_clip):
    from vlm_app import describe, describe_chapters
    from vlm_app.errors import OptionsError

    with pytest.raises(OptionsError, match="top_p must be"):
        describe(str(example_clip), model="smolvlm2-256m", generation={"top_p": True})
    with pytest.raises(OptionsError, match="stop must be a string or a list of strings"):
        describe_chapters(str(example_clip), model="smolvlm2-256m", generation={"stop": [3]})


@pytest.mark.parametrize("source, message", [
    (None, "cannot read a video from a value of type NoneType"), (123, "cannot read a video from a value of type int"),
    (b"clip.mp4", "cannot read a video from a value of type bytes"), ("", "the video source is empty"),
    ("  ", "the video source is empty")])
def test_api_refuses_what_is_no_source_before_loading(no_model_loading, source, message):
    from vlm_app import describe
    from vlm_app.errors import SourceError

    with pytest.raises(SourceError, match=message):
        describe(source, model="smolvlm2-256m")


def test_a_gif_is_a_video_at_every_front_door(tiny_checkpoints, tmp_path, capsys):
    from PIL import Image

    from vlm_app.ui.answer import media_kind

    frames = [Image.new("RGB", (64, 48), (30 * number, 20, 20)) for number in range(8)]  # 4 s
    frames[0].save(tmp_path / "wave.gif", save_all=True, append_images=frames[1:], duration=500, loop=0)
    assert main(["describe", str(tmp_path / "wave.gif"), "--model", str(tiny_checkpoints["smolvlm2"]), "--json",
                 *FAST]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["error"] is None and record["media"][0]["type"] == "video"
    assert len(set(record["media"][0]["frames_indices"])) >= 2
    assert media_kind(str(tmp_path / "wave.gif")) == "video" and media_kind(str(tmp_path / "still.png")) == "image"
