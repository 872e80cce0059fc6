"""The one resume rule of `describe --out` (vlm_app.results), shared by the sequential and the Ray engine: resume
skips every recorded video, failed ones too; --retry-failed replaces failed records; a torn last line is repaired;
no video is ever recorded twice."""

from __future__ import annotations

import json

import pytest

from vlm_app.cli import main
from vlm_app.distributed import ParquetParts, read_parquet_records
from vlm_app.results import JsonlResults, same_source

FAST = ["--max-new-tokens", "4", "--device", "cpu"]
GOOD = {"source": "a.mp4", "answer": "fine", "error": None}
FAILED = {"source": "b.mp4", "answer": None, "error": "b.mp4 is not a readable video"}


def sources_in(path) -> list[str]:
    return [json.loads(line)["source"] for line in path.read_text().splitlines()]


def test_jsonl_resume_skips_failed_and_retry_drops_them(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text(json.dumps(GOOD) + "\n" + json.dumps(FAILED) + "\n" + '{"source": "c.mp4", "ans')
    with JsonlResults(out) as results:
        assert results.start(resume=True) == {same_source("a.mp4"), same_source("b.mp4")}  # the torn c.mp4 is not
    with JsonlResults(out) as results:
        assert results.start(resume=True, retry_failed=True) == {same_source("a.mp4")}
        results.add({**FAILED, "error": "still broken"})
        results.add({"source": "c.mp4", "answer": "redone", "error": None})
    lines = out.read_text().splitlines()
    assert lines[1] == '{"source": "c.mp4", "ans'  # the torn line stays on its own line, later ones stay whole
    assert [json.loads(line)["source"] for line in lines[:1] + lines[2:]] == ["a.mp4", "b.mp4", "c.mp4"]
    with JsonlResults(out) as results:
        assert results.start(resume=False) == set() and out.read_text() == ""


def test_parquet_follows_the_same_rule(tmp_path):
    parts = ParquetParts(tmp_path / "results.parquet")
    assert parts.start(resume=False) == set()
    parts.add(GOOD)
    parts.add(FAILED)
    parts.close()
    assert ParquetParts(parts.path).start(resume=True) == {same_source("a.mp4"), same_source("b.mp4")}
    assert ParquetParts(parts.path).start(resume=True, retry_failed=True) == {same_source("a.mp4")}
    assert [row["source"] for row in read_parquet_records(parts.path)] == ["a.mp4"]


def test_describe_folder_resume_after_a_torn_line(tiny_checkpoints, make_clip, tmp_path, capsys):
    folder = tmp_path / "videos"
    for name in ("a", "b", "c"):
        make_clip(folder / f"{name}.mp4", 1.0, 8, 64, 48)
    out = tmp_path / "results.jsonl"
    model = str(tiny_checkpoints["smolvlm2"])
    assert main(["describe", str(folder), "--model", model, "--out", str(out), *FAST]) == 0
    complete = out.read_text().splitlines()
    out.write_text(complete[0] + "\n" + complete[1][:25])  # interrupted while writing the second record
    assert main(["describe", str(folder), "--model", model, "--out", str(out), "--resume", *FAST]) == 0
    assert "described 2 video(s), 0 failed" in capsys.readouterr().err
    lines = out.read_text().splitlines()
    assert lines[1] == complete[1][:25]  # the torn line is left alone, on a line of its own
    redone = [json.loads(line) for line in lines[:1] + lines[2:]]
    assert sorted(record["source"] for record in redone) == sorted(json.loads(line)["source"] for line in complete)


def test_describe_one_video_resume_does_not_record_it_twice(tiny_checkpoints, example_clip, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    command = ["describe", str(example_clip), "--model", str(tiny_checkpoints["smolvlm2"]), "--out", str(out), *FAST]
    assert main(command) == 0
    first = out.read_text()
    assert main(command + ["--resume"]) == 0
    assert "already in" in capsys.readouterr().err
    assert out.read_text() == first and sources_in(out) == [str(example_clip)]
    assert main(command) == 0  # without --resume the file starts afresh
    assert sources_in(out) == [str(example_clip)]


def records_in(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_output_that_cannot_be_written_is_refused_before_any_model_loads(make_clip, tmp_path, monkeypatch, capsys):
    import vlm_app.runtime

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a run whose output cannot be written")

    monkeypatch.setattr(vlm_app.runtime, "load_adapter", refuse)
    folder = tmp_path / "videos"
    clip = make_clip(folder / "a.mp4", 1.0, 8, 64, 48)
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{clip}\n")
    kept = clip.read_bytes()
    (tmp_path / "out").mkdir()
    for source, out, message in [(folder, tmp_path / "out", "is a folder; give a file name"),
                                 (folder, clip, "is an input of this run"), (clip, clip, "is an input of this run"),
                                 (listing, listing, "is an input of this run"),
                                 (folder, "/proc/version", "cannot write the output /proc/version")]:
        for resume in ([], ["--resume"]):
            assert main(["describe", str(source), "--out", str(out), *resume, *FAST]) == 2
            error = capsys.readouterr().err
            assert message in error and "Traceback" not in error
    assert clip.read_bytes() == kept and listing.read_text() == f"{clip}\n"


def test_a_second_run_on_the_same_output_is_refused(tiny_checkpoints, make_clip, tmp_path, capsys):
    clip = make_clip(tmp_path / "a.mp4", 1.0, 8, 64, 48)
    out = tmp_path / "results.jsonl"
    out.write_text(json.dumps(GOOD) + "\n")
    with JsonlResults(out) as first:  # a run in progress
        first.start(resume=True)
        for resume in ([], ["--resume"]):
            assert main(["describe", str(tmp_path), "--model", str(tiny_checkpoints["smolvlm2"]), "--out", str(out),
                         *resume, *FAST]) == 2
            assert "another describe run is writing" in capsys.readouterr().err
        first.add({"source": str(clip), "answer": "done", "error": None})
    assert sources_in(out) == ["a.mp4", str(clip)]  # the first run's records, not emptied or interleaved


def test_a_messy_list_file_names_each_video_once(tiny_checkpoints, make_clip, tmp_path, monkeypatch, capsys):
    """A byte order mark, CRLF line ends, comments, blank lines, a video listed twice (two spellings) and a file
    name that is not UTF-8."""
    monkeypatch.chdir(tmp_path)
    first = make_clip(tmp_path / "a.mp4", 1.0, 8, 64, 48)
    odd = make_clip(tmp_path / "b.mp4", 1.0, 8, 64, 48)
    odd = odd.rename(tmp_path / b"caf\xe9.mp4".decode("utf-8", "surrogateescape"))
    listing = tmp_path / "videos.txt"
    listing.write_bytes(b"\xef\xbb\xbf# clips\r\n" + bytes(first) + b"\r\n\r\n./a.mp4\r\n" + bytes(odd) + b"\r\n")
    out = tmp_path / "results.jsonl"
    assert main(["describe", str(listing), "--model", str(tiny_checkpoints["smolvlm2"]), "--out", str(out), *FAST]) == 0
    assert "described 2 video(s), 0 failed" in capsys.readouterr().err
    assert [record["source"] for record in records_in(out)] == [str(first), str(odd)]


def test_a_folder_skips_hidden_files_and_follows_links_once(tiny_checkpoints, make_clip, tmp_path, capsys):
    folder = tmp_path / "videos"
    clip = make_clip(folder / "a.mp4", 1.0, 8, 64, 48)
    elsewhere = make_clip(tmp_path / "elsewhere" / "b.MP4", 1.0, 8, 64, 48)
    (folder / "._a.mp4").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata beside a copied clip
    (folder / ".DS_Store").write_bytes(b"\x00")
    make_clip(folder / ".Trashes" / "old.mp4", 1.0, 8, 64, 48)
    (folder / "loop").symlink_to(folder)  # a link loop ends
    (folder / "linked").symlink_to(elsewhere.parent)  # a linked folder is walked, once
    (folder / "again").symlink_to(elsewhere.parent)
    out = tmp_path / "results.jsonl"
    assert main(["describe", str(folder), "--model", str(tiny_checkpoints["smolvlm2"]), "--out", str(out), *FAST]) == 0
    assert "described 2 video(s), 0 failed" in capsys.readouterr().err
    assert [record["source"] for record in records_in(out)] == [str(clip), str(folder / "again" / "b.MP4")]


def test_resume_refuses_records_made_with_other_settings(tiny_checkpoints, make_clip, tmp_path, monkeypatch,
                                                         capsys):
    """Checked before any model loads; a resume with nothing left to do loads none either."""
    from vlm_app import runtime

    monkeypatch.chdir(tmp_path)
    make_clip(tmp_path / "videos" / "a.mp4", 1.0, 8, 64, 48)
    out = tmp_path / "results.jsonl"
    model = str(tiny_checkpoints["smolvlm2"])
    argv = ["describe", "videos", "--model", model, "--out", str(out), *FAST]
    assert main(argv) == 0
    first = out.read_text()
    monkeypatch.setattr(runtime, "load_adapter", lambda *args, **options: pytest.fail("a model was loaded"))
    for changed in (["--max-new-tokens", "3"], ["--fps", "2"], ["--prompt", "What moves?"],
                    ["--model", str(tiny_checkpoints["qwen2_5_vl"])]):
        assert main(argv + ["--resume", *changed]) == 2
        error = capsys.readouterr().err
        assert "holds records made with other settings" in error and "give another --out" in error
    for same in (argv, ["describe", str(tmp_path / "videos") + "/", "--model", model + "/", "--out", str(out), *FAST]):
        assert main(same + ["--resume"]) == 0  # the same folder and model, however spelled: nothing to redo
        assert "described 0 video(s)" in capsys.readouterr().err
    assert main(["describe", "videos/a.mp4", "--model", model, "--out", str(out), "--resume", "--fps", "2",
                 *FAST]) == 2
    assert "holds records made with other settings" in capsys.readouterr().err
    assert out.read_text() == first


def test_a_hub_model_name_on_resume_does_not_depend_on_the_current_folder(tmp_path, monkeypatch):
    """A record names a hub model by its id: resuming from another folder is the same model (an id is no path)."""
    from vlm_app.results import resumed_settings

    record = {"model": "HuggingFaceTB/SmolVLM2-256M-Video-Instruct", "model_info": {}}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    monkeypatch.chdir(tmp_path / "one")
    here = resumed_settings(record)
    monkeypatch.chdir(tmp_path / "two")
    assert resumed_settings(record) == here and here["model"] == record["model"]


def test_resume_compares_the_lora_adapter_as_its_records_name_it(tiny_loras, make_clip, tmp_path, capsys):
    """The check reads the adapter's files (not its weights) to name it as the loaded model's records do."""
    pair = tiny_loras["smolvlm2"]
    make_clip(tmp_path / "videos" / "a.mp4", 1.0, 8, 64, 48)
    out = tmp_path / "results.jsonl"
    argv = ["describe", str(tmp_path / "videos"), "--model", str(pair.checkpoint), "--out", str(out), *FAST]
    assert main(argv + ["--adapter", str(pair.lora)]) == 0
    capsys.readouterr()
    assert main(argv + ["--adapter", str(pair.lora), "--resume"]) == 0
    assert "described 0 video(s)" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 2
    assert "model_info.lora_adapter" in capsys.readouterr().err
