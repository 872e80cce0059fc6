"""The one resume rule of `describe --out` (vlm_app.results), shared by the sequential and the Ray engine: resume
skips every recorded video, failed ones too; --retry-failed replaces failed records; a torn last line is repaired;
no video is ever recorded twice."""

from __future__ import annotations

import json

from vlm_app.cli import main
from vlm_app.distributed import ParquetParts, read_parquet_records
from vlm_app.results import JsonlResults

FAST = ["--max-new-tokens", "4", "--device", "cpu"]
GOOD = {"source": "a.mp4", "answer": "fine", "error": None}
FAILED = {"source": "b.mp4", "answer": None, "error": "b.mp4 is not a readable video"}


def sources_in(path) -> list[str]:
    return [json.loads(line)["source"] for line in path.read_text().splitlines()]


def test_jsonl_resume_skips_failed_and_retry_drops_them(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text(json.dumps(GOOD) + "\n" + json.dumps(FAILED) + "\n" + '{"source": "c.mp4", "ans')
    assert JsonlResults(out).start(resume=True) == {"a.mp4", "b.mp4"}  # the torn c.mp4 line is not done
    with JsonlResults(out) as results:
        assert results.start(resume=True, retry_failed=True) == {"a.mp4"}
        results.add({**FAILED, "error": "still broken"})
        results.add({"source": "c.mp4", "answer": "redone", "error": None})
    lines = out.read_text().splitlines()
    assert lines[1] == '{"source": "c.mp4", "ans'  # the torn line stays on its own line, later ones stay whole
    assert [json.loads(line)["source"] for line in lines[:1] + lines[2:]] == ["a.mp4", "b.mp4", "c.mp4"]
    assert JsonlResults(out).start(resume=False) == set() and not out.exists()


def test_parquet_follows_the_same_rule(tmp_path):
    parts = ParquetParts(tmp_path / "results.parquet")
    assert parts.start(resume=False) == set()
    parts.add(GOOD)
    parts.add(FAILED)
    parts.close()
    assert ParquetParts(parts.path).start(resume=True) == {"a.mp4", "b.mp4"}
    assert ParquetParts(parts.path).start(resume=True, retry_failed=True) == {"a.mp4"}
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
