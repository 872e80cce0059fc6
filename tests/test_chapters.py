"""describe --chapters: long videos as consecutive segments, one request each, merged into chapters, through the CLI
entry point and the Python API on tiny checkpoints; load_video_segments against load_video."""

from __future__ import annotations

import json
import re
import time
import weakref
from dataclasses import fields
from fractions import Fraction

import pytest
import torch

from media_fixtures import VideoSpec, write_video
from vlm_app.cli import main

FAST = ["--max-new-tokens", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory, make_clip):
    """30 s at 12 fps (360 frames), an mp4 whose timestamps are proven."""
    return make_clip(tmp_path_factory.mktemp("chapters") / "talk.mp4", 30.0, 12, 96, 64)


@pytest.fixture(scope="module")
def avi(tmp_path_factory):
    """30 s at 25 fps of MPEG-4 in AVI: decoded by counting frames from the start."""
    spec = VideoSpec("lecture", codec="mpeg4", container="avi", fps=Fraction(25), num_frames=25 * 30, width=64,
                     height=48, bframes=2)
    return write_video(tmp_path_factory.mktemp("chapters_avi") / spec.filename, spec)


@pytest.fixture(scope="module")
def smol(tiny_checkpoints) -> str:
    return str(tiny_checkpoints["smolvlm2"])


def _chapters_record(capsys, *argv) -> dict:
    assert main(["describe", *map(str, argv), "--chapters", "--json", *FAST]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


@pytest.mark.parametrize("overlap", [0.0, 3.0])
def test_chapters_cover_the_video_in_order_and_each_prompt_names_its_range(clip, smol, capsys, overlap):
    record = _chapters_record(capsys, clip, "--model", smol, "--segment-seconds", "8", "--overlap", overlap)
    assert record["error"] is None and record["source"] == str(clip) and record["duration"] == 30.0
    chapters, segments = record["chapters"], record["segments"]
    assert [(chapter["start"], chapter["end"]) for chapter in chapters] == [(0, 8), (8, 16), (16, 24), (24, 30)]
    for chapter, segment in zip(chapters, segments):
        assert (segment["start"], segment["end"]) == (chapter["start"], chapter["end"])
        assert (segment["video_start"], segment["video_end"]) == (chapter["start"], min(chapter["end"] + overlap, 30))
        assert f"runs from {_clock(segment['video_start'])} to {_clock(segment['video_end'])} of 00:00:30" \
            in segment["prompt"]
        assert segment["frames_indices"] and segment["error"] is None and segment["timings"]["new_tokens"] >= 1
        assert all(segment["video_start"] <= seconds <= segment["video_end"] for seconds in segment["timestamps"])
    assert isinstance(record["summary"], str) and record["answer"] == record["summary"]
    assert record["frames_indices"] == sorted({index for segment in segments for index in segment["frames_indices"]})
    assert record["chapter_options"] == {"segment_seconds": 8.0, "overlap": overlap}
    assert record["num_visual_tokens"] == sum(segment["num_visual_tokens"] for segment in segments)


SRT_TIME = r"(\d{2}):(\d{2}):(\d{2})[,.](\d{3})"


def _parse_cues(text: str, vtt: bool) -> list[tuple[float, float, str]]:
    """A strict reader: numbered (SRT) or headed (WebVTT) blocks of a time line and non-blank text lines."""
    if vtt:
        header, _, text = text.partition("\n\n")
        assert header == "WEBVTT"
    cues = []
    for block in text.strip("\n").split("\n\n"):
        lines = block.split("\n")
        if not vtt:
            assert lines.pop(0) == str(len(cues) + 1)
        separator = "." if vtt else ","
        match = re.fullmatch(SRT_TIME + " --> " + SRT_TIME, lines[0])
        assert match and separator in lines[0] and lines[1:] and all(line.strip() for line in lines[1:])
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, match.groups())
        cues.append((h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000,
                     "\n".join(lines[1:])))
    return cues


def test_chapter_exports_parse(clip, smol, tmp_path, capsys):
    srt, vtt, exported = tmp_path / "talk.srt", tmp_path / "talk.vtt", tmp_path / "out" / "talk.json"
    record = _chapters_record(capsys, clip, "--model", smol, "--segment-seconds", "10", "--max-memory", "64GB",
                              "--chapters-out", f"{srt},{vtt}", "--chapters-out", exported)
    assert record["max_memory_bytes"] and all(segment["max_memory_bytes"] == record["max_memory_bytes"]
                                              for segment in record["segments"])
    assert record["memory_estimate_bytes"] == max(segment["memory_estimate_bytes"] for segment in record["segments"])
    spans = [(chapter["start"], chapter["end"]) for chapter in record["chapters"]]
    for path, is_vtt in ((srt, False), (vtt, True)):
        cues = _parse_cues(path.read_text(), is_vtt)
        assert [(start, end) for start, end, _ in cues] == spans == [(0, 10), (10, 20), (20, 30)]
    document = json.loads(exported.read_text())
    assert document["chapters"] == record["chapters"] and document["summary"] == record["summary"]
    assert document["duration"] == 30.0 and document["source"] == str(clip)


def test_unknown_export_suffix_and_misplaced_flags_fail_before_any_model_loads(clip, capsys):
    missing_model = ["--model", "/nonexistent/model"]
    assert main(["describe", str(clip), "--chapters", "--chapters-out", "talk.txt", *missing_model]) == 2
    assert "chapter exports end in .json, .srt, .vtt" in capsys.readouterr().err
    assert main(["describe", str(clip), "--overlap", "2", *missing_model]) == 2
    assert "--overlap goes with --chapters" in capsys.readouterr().err


def test_chapters_refuse_a_time_range(clip, smol, capsys):
    assert main(["describe", str(clip), "--chapters", "--start", "5", "--model", smol, *FAST]) == 2
    assert "chapters cover the whole video" in capsys.readouterr().err


def test_each_family_shows_absolute_times(clip, tiny_checkpoints, tmp_path_factory, monkeypatch):
    """SmolVLM2's "Frame from MM:SS" and DeepSeek-VL2's "Frame at MM:SS" are times in the whole video; Qwen2.5-VL's
    frames keep absolute timestamps and a temporal spacing from the sample fps (its mRoPE counts from the segment)."""
    from vlm_app import describe_chapters, load
    from vlm_app.testing.tiny import build_tiny

    paths = {**tiny_checkpoints, "deepseek_vl2": build_tiny("deepseek_vl2", tmp_path_factory.mktemp("ds") / "ds")}
    labels = {"smolvlm2": r"Frame from (\d\d):(\d\d)", "deepseek_vl2": r"Frame at (\d\d):(\d\d)"}
    for family, path in paths.items():
        adapter = load(str(path), device="cpu")
        shown, prepare = [], adapter.prepare

        def recorded(messages, prepare=prepare, shown=shown, **options):
            shown.append(prepare(messages, **options))
            return shown[-1]

        monkeypatch.setattr(adapter, "prepare", recorded)
        record = describe_chapters(clip, model=adapter, segment_seconds=10, generation={"max_new_tokens": 2})
        assert record["error"] is None
        videos = [prepared for prepared in shown if prepared.media]
        assert len(videos) == 3
        for segment, prepared in zip(record["segments"], videos):
            video = prepared.media[0]
            assert video.timestamps[0] >= segment["video_start"]
            assert [round(t, 6) for t in video.timestamps] == segment["timestamps"]
            text = adapter.tokenizer.decode(prepared.inputs["input_ids"][0])
            assert "runs from " + _clock(segment["video_start"]) in text
            if family in labels:
                times = [int(m) * 60 + int(s) for m, s in re.findall(labels[family], text)]
                assert times == [int(seconds) for seconds in video.timestamps]
            else:
                step = prepared.inputs["second_per_grid_ts"][0].item()
                assert step == pytest.approx(2 / video.sample_fps)


def _same_video(segmented, plain) -> None:
    assert torch.equal(segmented.frames, plain.frames)
    for name in (field.name for field in fields(plain)):
        if name not in ("frames", "decode_seconds"):
            assert getattr(segmented, name) == getattr(plain, name), name


@pytest.mark.parametrize("policy", ["qwen2_5_vl", "smolvlm2"])
@pytest.mark.parametrize("video", ["clip", "avi"])
def test_segments_equal_plain_load_video_and_come_one_at_a_time(request, video, policy, monkeypatch, frame_cache):
    from vlm_app.media import load_video, load_video_segments
    from vlm_app.media import video as video_module

    path = str(request.getfixturevalue(video))
    windows = [(0.0, 9.0), (7.0, 18.5), (18.5, 30.0)]  # overlapping, then meeting
    passes, probes = [], []
    real_decode, real_probe = video_module.decode_frames, video_module.probe
    monkeypatch.setattr(video_module, "decode_frames", lambda *a, **k: passes.append(1) or real_decode(*a, **k))
    monkeypatch.setattr(video_module, "probe", lambda *a, **k: probes.append(1) or real_probe(*a, **k))
    segments = [{"video_start": start, "video_end": end} for start, end in windows]
    alive, plain_passes, plain_probes = [], 0, 0
    for number, sampled in enumerate(load_video_segments(path, policy, segments)):
        assert all(ref() is None for ref in alive)  # the previous segment's frames were let go before this decode
        alive.append(weakref.ref(sampled.frames))
        start, end = windows[number]
        before = len(passes), len(probes)
        plain = load_video(path, policy, video_start=start, video_end=end)
        plain_passes, plain_probes = plain_passes + len(passes) - before[0], plain_probes + len(probes) - before[1]
        _same_video(sampled, plain)
        del sampled, plain
    assert len(alive) == 3 and plain_passes == 3
    assert len(passes) - plain_passes == 1 and len(probes) - plain_probes == 1  # ours: one probe, one decode pass


def test_a_counted_file_is_decoded_once_for_all_chapters(avi, smol, monkeypatch, capsys):
    from vlm_app.media import video as video_module

    calls = []
    real_decode = video_module.decode_frames
    monkeypatch.setattr(video_module, "decode_frames", lambda path, metadata, indices, *rest:
                        calls.append((metadata.timestamps_proven, indices)) or real_decode(path, metadata, indices,
                                                                                             *rest))
    record = _chapters_record(capsys, avi, "--model", smol, "--segment-seconds", "6")
    assert record["error"] is None and len(record["chapters"]) == 5
    assert len(calls) == 1 and calls[0][0] is False  # one counted pass, not one per segment
    assert calls[0][1] == sorted({index for segment in record["segments"] for index in segment["frames_indices"]})


def test_the_chapters_run_holds_at_most_the_segment_described_and_the_next(clip, smol, monkeypatch, capsys):
    from vlm_app import service
    from vlm_app.media import video as video_module

    real_segments, real_execute, alive, overlapped = video_module.load_video_segments, service.execute, [], []

    def watched(*args, **kwargs):
        videos = real_segments(*args, **kwargs)
        while (sampled := next(videos, None)) is not None:
            held = [number for number, ref in enumerate(alive) if ref() is not None]
            assert held in ([], [len(alive) - 1]), f"segments {held} still held as segment {len(alive)} was decoded"
            alive.append(weakref.ref(sampled.frames))
            yield sampled
            del sampled

    def execute(adapter, request, **kwargs):  # a segment's request (the first two wait for the next's decode)
        if len(overlapped) < 2:
            deadline = time.monotonic() + 60
            while len(alive) < len(overlapped) + 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            overlapped.append(sum(ref() is not None for ref in alive))
        return real_execute(adapter, request, **kwargs)

    monkeypatch.setattr(video_module, "load_video_segments", watched)
    monkeypatch.setattr("vlm_app.chapters.execute", execute)
    record = _chapters_record(capsys, clip, "--model", smol, "--segment-seconds", "10")
    assert record["error"] is None and len(alive) == 3
    assert overlapped == [2, 2]  # the next segment was decoded while the model was at this one


def test_resume_keeps_the_finished_segments_of_an_interrupted_video(tmp_path, make_clip, smol, monkeypatch, capsys):
    from vlm_app import chapters

    folder = tmp_path / "videos"
    first, second = make_clip(folder / "a.mp4", 16.0, 8, 64, 48), make_clip(folder / "b.mp4", 24.0, 8, 64, 48)
    out = tmp_path / "results.jsonl"
    asked, real_execute = [], chapters.execute

    def interrupted(adapter, request, *args, **kwargs):
        asked.append((request.label(), request.prompt()))
        if len(asked) == 6:  # a.mp4: 2 segments + summary; b.mp4: 2 of its 3 segments done, then Ctrl-C
            raise KeyboardInterrupt
        return real_execute(adapter, request, *args, **kwargs)

    monkeypatch.setattr(chapters, "execute", interrupted)
    argv = ["describe", str(folder), "--chapters", "--segment-seconds", "8", "--model", smol, "--out", str(out), *FAST]
    assert main(argv) == 130
    assert [json.loads(line)["source"] for line in out.read_text().splitlines()] == [str(first)]
    sidecar = tmp_path / "results.segments.jsonl"
    kept = [json.loads(line) for line in sidecar.read_text().splitlines()]
    assert [(line["source"], line["start"]) for line in kept] == [(str(first), 0), (str(first), 8), (str(second), 0),
                                                                  (str(second), 8)]
    asked.clear()
    assert main(argv + ["--resume"]) == 0
    assert [label for label, _ in asked] == [str(second), "summary"]  # only b.mp4's last segment, then its summary
    assert "runs from 00:00:16 to 00:00:24" in asked[0][1]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["source"] for record in records] == [str(first), str(second)]
    resumed = records[1]
    assert resumed["error"] is None and [chapter["start"] for chapter in resumed["chapters"]] == [0, 8, 16]
    assert resumed["segments"][:2] == [{key: value for key, value in line.items() if key != "source"}
                                       for line in kept[2:]]
    asked.clear()
    assert main(argv + ["--resume"]) == 0 and asked == []  # both videos finished: nothing runs


def test_the_duration_limit_points_to_chapters_and_chapters_have_their_own(clip, smol, capsys):
    from vlm_app import describe_chapters
    from vlm_app.media import Limits

    assert main(["describe", str(clip), "--model", smol, "--max-duration", "20", *FAST]) == 2
    error = capsys.readouterr().err
    assert "over the 20 s limit" in error and "--chapters" in error
    record = _chapters_record(capsys, clip, "--model", smol, "--max-duration", "20", "--segment-seconds", "15")
    assert record["error"] is None and [chapter["end"] for chapter in record["chapters"]] == [15, 30]
    capped = describe_chapters(clip, model=smol, limits=Limits(max_chapters_duration_seconds=20),
                               generation={"max_new_tokens": 2})
    assert "over the 20 s limit for chapters" in capped["error"] and capped["chapters"] == []


def test_default_segment_length_comes_from_the_family_budget(smol, tiny_checkpoints):
    from vlm_app import load
    from vlm_app.chapters import segment_seconds, split_video

    smol_adapter, qwen_adapter = load(smol, device="cpu"), load(str(tiny_checkpoints["qwen2_5_vl"]), device="cpu")
    assert segment_seconds(smol_adapter, smol_adapter.video_options([], {})) == 60  # 8 frames at 1 fps, at least 60
    assert segment_seconds(smol_adapter, smol_adapter.video_options([], {"fps": 0.1})) == 80  # 8 frames at 0.1 fps
    assert segment_seconds(qwen_adapter, qwen_adapter.video_options([], {})) == 240  # 768 at 2 fps, at most 240
    ends = [segment.end for segment in split_video(3730.0, 240.0)]  # 1:02:10: the last 130 s stand alone
    assert ends[:2] == [240.0, 480.0] and ends[-2:] == [3600.0, 3730.0]
    assert [segment.end for segment in split_video(3700.0, 240.0)][-2:] == [3360.0, 3700.0]  # 100 s joins


def test_a_summary_that_does_not_fit_is_made_from_group_summaries(smol, monkeypatch):
    from vlm_app import load
    from vlm_app.chapters import summarize

    adapter = load(smol, device="cpu")
    monkeypatch.setattr(type(adapter), "context_tokens", property(lambda self: 400))
    parts = [(10.0 * number, 10.0 * (number + 1), "a person walks across the room " * 8) for number in range(30)]
    records = []
    summary = summarize(adapter, parts, 300.0, {"max_new_tokens": 4}, records)
    assert isinstance(summary, str) and len(records) > 1 and all(record["error"] is None for record in records)
    assert all(record["num_tokens"]["total"] + 4 <= 400 for record in records)
    assert "[00:00:00 - " in records[0]["prompt"] and "[00:00:00 - " in records[-1]["prompt"]


def test_retry_failed_redoes_only_the_failed_segments(tmp_path, make_clip, smol, monkeypatch, capsys):
    from vlm_app import chapters

    video, out = make_clip(tmp_path / "talk.mp4", 24.0, 8, 64, 48), tmp_path / "results.jsonl"
    asked, real_execute = [], chapters.execute

    def flaky(adapter, request, *args, **kwargs):
        asked.append(request.prompt())
        record = real_execute(adapter, request, *args, **kwargs)
        return {**record, "answer": None, "error": "out of luck"} if "from 00:00:08" in request.prompt() else record

    monkeypatch.setattr(chapters, "execute", flaky)
    argv = ["describe", str(video), "--chapters", "--segment-seconds", "8", "--model", smol, "--out", str(out), *FAST]
    assert main(argv) == 2
    assert "1 of 3 segments failed; the first, 00:00:08 to 00:00:16: out of luck" in capsys.readouterr().err
    def counted(adapter, request, *args, **kwargs):
        asked.append(request.prompt())
        return real_execute(adapter, request, *args, **kwargs)

    monkeypatch.setattr(chapters, "execute", counted)
    asked.clear()
    assert main(argv + ["--resume"]) == 0 and asked == []  # resume keeps the failed video, as for plain records
    assert main(argv + ["--retry-failed"]) == 0
    assert len(asked) == 2 and "runs from 00:00:08 to 00:00:16" in asked[0]  # that segment, then the summary
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 1 and records[0]["error"] is None
    assert [segment["error"] for segment in records[0]["segments"]] == [None, None, None]


def test_cancel_stops_after_the_segment_being_described(clip, smol):
    import threading

    from vlm_app import load
    from vlm_app.chapters import CANCELLED, DEFAULT_PROMPT, ChapterOptions, describe_chapters
    from vlm_app.service import one_turn

    cancel, seen = threading.Event(), []

    def finished(segment: dict) -> None:
        seen.append(segment)
        cancel.set()  # Stop pressed while the first segment was being described

    record = describe_chapters(load(smol, device="cpu"), one_turn(DEFAULT_PROMPT, clip, {}, {"max_new_tokens": 2}),
                               ChapterOptions(seconds=10), on_segment=finished, cancel=cancel)
    assert record["cancelled"] is True and record["error"] is None and record["summary"] is None
    assert len(seen) == 1 and [item["error"] for item in record["segments"]] == [None, CANCELLED, CANCELLED]
    assert [chapter["end"] for chapter in record["chapters"]] == [10.0, 20.0, 30.0]


def test_max_memory_lowers_each_segment_and_says_so(clip, smol, capsys):
    full = _chapters_record(capsys, clip, "--model", smol, "--segment-seconds", "10", "--max-new-tokens", "2")
    widest = max(full["segments"], key=lambda segment: segment["memory_estimate_bytes"])
    estimate = widest["memory_estimate_bytes"]
    floor = full["memory_estimate"]["weights"] + full["memory_estimate"]["overhead"]
    limit = int(floor + (estimate - floor) * 0.5)
    fitted = _chapters_record(capsys, clip, "--model", smol, "--segment-seconds", "10", "--max-memory", limit)
    assert fitted["error"] is None and fitted["max_memory_bytes"] == limit
    for before, after in zip(full["segments"], fitted["segments"]):
        assert 1 <= len(after["frames_indices"]) < len(before["frames_indices"])
        assert after["memory_estimate_bytes"] <= limit
        assert all(after["start"] <= time < after["end"] for time in after["timestamps"])
        assert any(note.startswith("memory fit: lowered frames from") for note in after["notes"])
    assert any(note.startswith("memory fit: lowered frames from") for note in fitted["notes"])


def test_a_limit_no_segment_fits_fails_before_any_segment_is_described(clip, smol, capsys):
    argv = [clip, "--model", smol, "--segment-seconds", "10", "--max-memory", "1MB"]
    assert main(["describe", *map(str, argv), "--chapters", "--json", *FAST]) == 2
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert "does not fit in 1 MiB" in record["error"] and record["summary"] is None
    assert all(segment["answer"] is None and "does not fit in" in segment["error"] for segment in record["segments"])


def test_a_front_door_gets_an_unplannable_video_as_an_error(clip, smol):
    from vlm_app import load
    from vlm_app.chapters import DEFAULT_PROMPT, ChapterOptions, describe_chapters
    from vlm_app.errors import MemoryLimitError, VlmAppError
    from vlm_app.memory import MemoryLimit
    from vlm_app.service import one_turn

    adapter, planned = load(smol, device="cpu"), []
    limited = one_turn(DEFAULT_PROMPT, clip, memory=MemoryLimit("1MB"))
    with pytest.raises(MemoryLimitError, match="does not fit in 1 MiB"):
        describe_chapters(adapter, limited, ChapterOptions(seconds=10),
                          raise_unreadable=True, on_plan=lambda duration, segments: planned.append(duration))
    with pytest.raises(VlmAppError):
        describe_chapters(adapter, one_turn(DEFAULT_PROMPT, clip.with_name("missing.mp4")), raise_unreadable=True)
    assert planned == []  # told of a plan only once every segment is planned


def test_the_number_of_segments_is_capped(clip, smol):
    from vlm_app import load
    from vlm_app.chapters import DEFAULT_PROMPT, ChapterOptions, describe_chapters
    from vlm_app.errors import LimitError
    from vlm_app.media import DEFAULT_LIMITS
    from vlm_app.service import one_turn

    adapter, limits = load(smol, device="cpu"), DEFAULT_LIMITS.with_overrides(max_chapters_segments=10)
    request = one_turn(DEFAULT_PROMPT, clip, {}, {"max_new_tokens": 1}, limits)
    record = describe_chapters(adapter, request, ChapterOptions(seconds=1))
    assert "makes 30 requests, over the limit of 10; use longer segments (at least 3 s)" in record["error"]
    assert all(segment["answer"] is None for segment in record["segments"])
    with pytest.raises(LimitError, match="over the limit of 10"):
        describe_chapters(adapter, request, ChapterOptions(seconds=1), raise_unreadable=True)
    assert describe_chapters(adapter, request, ChapterOptions(seconds=3))["error"] is None


def test_a_system_prompt_goes_to_every_segment_and_the_summary(clip, smol, monkeypatch):
    from vlm_app import chapters, describe_chapters, load

    adapter, asked, real_execute = load(smol, device="cpu"), [], chapters.execute

    def seen(adapter, request, *args, **kwargs):
        asked.append(request.messages)
        return real_execute(adapter, request, *args, **kwargs)

    monkeypatch.setattr(chapters, "execute", seen)
    plain = describe_chapters(clip, model=adapter, segment_seconds=10, generation={"max_new_tokens": 2})
    assert len(asked) == 4 and all(messages[0]["role"] == "user" for messages in asked)  # 3 segments, the summary
    asked.clear()
    told = describe_chapters(clip, model=adapter, segment_seconds=10, generation={"max_new_tokens": 2},
                             system="Answer in five words.")
    assert len(asked) == 4 and told["error"] is None
    assert all(messages[0] == {"role": "system", "content": [{"type": "text", "text": "Answer in five words."}]}
               for messages in asked)
    grown = {told_segment["num_tokens"]["text"] - plain_segment["num_tokens"]["text"]
             for told_segment, plain_segment in zip(told["segments"], plain["segments"])}
    assert len(grown) == 1 and grown.pop() > 0  # each segment's prompt carries it, the same tokens each
    assert told["segments"][0]["key"] != plain["segments"][0]["key"]  # a resumed run does not mix the two


@pytest.mark.parametrize("seconds, overlap, message", [(float("nan"), 0.0, "segment length must be at least 1"),
                                                       ("60", 0.0, "segment length must be at least 1"),
                                                       (None, float("nan"), "overlap must be a number of seconds"),
                                                       (None, -1.0, "overlap must be a number of seconds")])
def test_segment_options_that_are_not_numbers_are_refused(clip, smol, seconds, overlap, message):
    from vlm_app import describe_chapters, load
    from vlm_app.errors import OptionsError

    with pytest.raises(OptionsError, match=message):
        describe_chapters(clip, model=load(smol, device="cpu"), segment_seconds=seconds, overlap=overlap)


def test_a_video_whose_frames_are_minutes_apart_gets_every_chapter(tmp_path, smol, capsys):
    """A timelapse or a screencast that writes a frame at each change: a segment holding fewer than two frames
    samples from the frame on screen at its start to the next one (and says so), instead of failing the run."""
    import numpy as np

    from vlm_app.testing.videos import write_video as write_frames

    durations = [0.5] * 4 + [150.0] + [0.5] * 4 + [200.0] + [0.5] * 2  # two long stills between bursts
    frames = (np.full((48, 64, 3), 20 * index, np.uint8) for index in range(len(durations)))
    video = write_frames(tmp_path / "screencast.mp4", frames, 2, durations=durations)
    record = _chapters_record(capsys, video, "--model", smol, "--segment-seconds", "60")
    assert record["error"] is None and record["chapters"][-1]["end"] == record["duration"] > 300
    widened = [segment for segment in record["segments"] if any("frame on screen" in note
                                                                for note in segment["notes"])]
    assert widened and len(widened) < len(record["segments"])  # the bursts' segments hold frames of their own
    for segment in record["segments"]:
        assert len(segment["timestamps"]) >= 2
        assert all(segment["video_start"] <= seconds <= segment["video_end"] for seconds in segment["timestamps"])
    for segment in widened:  # the prompt names the window the model is shown
        assert segment["video_start"] <= segment["start"] or segment["video_end"] > segment["end"]
        assert f"runs from {_clock(segment['video_start'])} to {_clock(segment['video_end'])}" in segment["prompt"]


def test_a_chapters_export_that_cannot_be_written_is_a_clear_error(clip, smol, tmp_path, capsys):
    (tmp_path / "chapters.json").mkdir()
    assert main(["describe", str(clip), "--model", smol, "--chapters", "--chapters-out",
                 str(tmp_path / "chapters.json"), *FAST]) == 2
    error = capsys.readouterr().err
    assert "is a folder; give a file name" in error and "Traceback" not in error
    assert main(["describe", str(clip), "--model", smol, "--chapters", "--segment-seconds", "15", "--chapters-out",
                 "/proc/chapters.srt", *FAST]) == 2
    error = capsys.readouterr().err
    assert "cannot write the chapters to /proc/chapters.srt" in error and "Traceback" not in error
