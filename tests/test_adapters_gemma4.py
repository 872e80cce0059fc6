"""Gemma 4: our inputs equal the model card's call on the same file, the declared differences hold, and the front
doors run the tiny checkpoints."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch
from adapter_fixtures import video_messages

from vlm_app.cli import main

ONE_GREY_LEVEL = 1 / 255 + 1e-6  # pixels are rescaled to [0, 1] (mean 0, std 1)
FAST = ["--max-new-tokens", "4", "--device", "cpu"]
LABEL = re.compile(r"(\d\d+):(\d\d) <\|image>")


@pytest.fixture(scope="module")
def gemma4_checkpoints(tmp_path_factory) -> dict:
    from vlm_app.testing.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny_gemma4")
    return {name: build_tiny(name, root / name) for name in ("gemma4", "gemma4_no_audio", "gemma4_140")}


@pytest.fixture(scope="module")
def gemma4(gemma4_checkpoints):
    from vlm_app import load

    return load(str(gemma4_checkpoints["gemma4"]), device="cpu")


@pytest.fixture(scope="module")
def minute_clip(tmp_path_factory, make_clip):
    """130 s at 2 fps, 96x64: long enough for a segment past the first minute."""
    return make_clip(tmp_path_factory.mktemp("gemma4_clips") / "minutes.mp4", 130.0, 2, 96, 64)


def model_card_inputs(processor, source: str, **processor_kwargs):
    """The model card's call: the processor decodes and samples the file itself."""
    return processor.apply_chat_template(video_messages(source), tokenize=True, return_dict=True,
                                         add_generation_prompt=True, return_tensors="pt",
                                         processor_kwargs=processor_kwargs)


def assert_same_inputs(prepared, expected):
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "video_position_ids", "num_frames_per_video"):
        assert torch.equal(prepared.inputs[key], expected[key]), key
    ours, theirs = prepared.inputs["pixel_values_videos"], expected["pixel_values_videos"]
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= ONE_GREY_LEVEL


@pytest.mark.parametrize("options, processor_kwargs", [
    ({}, {}),
    ({"nframes": 8}, {"num_frames": 8}),
])
def test_default_policy_equals_the_model_card_call(gemma4, example_clip, options, processor_kwargs):
    prepared = gemma4.prepare(video_messages(str(example_clip), **options))
    expected = model_card_inputs(gemma4.processor, str(example_clip), **processor_kwargs)
    assert_same_inputs(prepared, expected)
    assert len(prepared.media[0].frames_indices) == (options.get("nframes") or 32)


def test_fps_equals_the_model_card_call_without_its_frame_count(gemma4_checkpoints, example_clip):
    """The reference takes fps only once its processor's num_frames is unset (it merges 32 in and refuses the pair);
    ours takes fps on its own."""
    from vlm_app import load

    adapter = load(str(gemma4_checkpoints["gemma4"]), device="cpu")
    prepared = adapter.prepare(video_messages(str(example_clip), fps=2.0))
    with pytest.raises(ValueError, match="mutually exclusive"):
        model_card_inputs(adapter.processor, str(example_clip), fps=2)
    adapter.processor.video_processor.num_frames = None
    assert_same_inputs(prepared, model_card_inputs(adapter.processor, str(example_clip), fps=2))
    assert len(prepared.media[0].frames_indices) == 8  # 4 s at 2 fps


def test_a_checkpoint_with_140_tokens_a_frame(gemma4_checkpoints, example_clip):
    from vlm_app import load

    adapter = load(str(gemma4_checkpoints["gemma4_140"]), device="cpu")
    prepared = adapter.prepare(video_messages(str(example_clip), nframes=8))
    assert_same_inputs(prepared, model_card_inputs(adapter.processor, str(example_clip), num_frames=8))
    assert prepared.inputs["pixel_values_videos"].shape[1] == 140 * 9
    assert prepared.num_tokens.visual == 8 * (prepared.media[0].resized_height // 48) * \
        (prepared.media[0].resized_width // 48) > 8 * 70


def test_max_pixels_is_the_token_budget(gemma4, example_clip):
    """140 tokens a frame asked of a 70-token checkpoint: the frames sized as the processor sizes them at 140."""
    prepared = gemma4.prepare(video_messages(str(example_clip), nframes=8, max_pixels=140 * 9 * 256))
    expected = model_card_inputs(gemma4.processor, str(example_clip), num_frames=8, max_soft_tokens=140)
    assert_same_inputs(prepared, expected)


def test_resize_options_of_other_families_are_refused(gemma4, example_clip):
    from vlm_app.errors import OptionsError

    with pytest.raises(OptionsError, match="Gemma 4 sizes each frame by its token budget; resized_height"):
        gemma4.prepare(video_messages(str(example_clip), resized_height=96, resized_width=96))


def test_a_short_clip_is_sampled_whole(gemma4, tmp_path, make_clip):
    """Declared difference: the reference raises on a clip with fewer frames than num_frames."""
    clip = str(make_clip(tmp_path / "short.mp4", 1.0, 12, 96, 64))
    with pytest.raises(ValueError, match="exceeds total_num_frames=12"):
        model_card_inputs(gemma4.processor, clip)
    prepared = gemma4.prepare(video_messages(clip))
    assert prepared.media[0].frames_indices == list(range(12))
    assert len(LABEL.findall(gemma4.processor.decode(prepared.inputs["input_ids"][0]))) == 12


def test_labels_are_the_frames_whole_video_times(gemma4, minute_clip):
    """From index / fps, whole seconds, minutes past 59 as the processor writes them; a range keeps the file's
    time (index 130 at 2 fps reads 01:05, not 00:05)."""
    prepared = gemma4.prepare(video_messages(str(minute_clip), nframes=4, video_start=60.0, video_end=120.0))
    video = prepared.media[0]
    text = gemma4.processor.decode(prepared.inputs["input_ids"][0])
    labels = [f"{minutes}:{seconds}" for minutes, seconds in LABEL.findall(text)]
    assert labels == gemma4.frame_labels(video)
    assert labels == [f"{int(t // 60):02d}:{int(t % 60):02d}" for t in (i / 2 for i in video.frames_indices)]
    assert labels[0] == "01:00" and all(label >= "01:00" for label in labels)


def test_labels_past_an_hour_keep_the_minutes():
    from types import SimpleNamespace

    from vlm_app.adapters.gemma4 import Gemma4Adapter

    metadata = SimpleNamespace(is_vfr=False, num_frames=10_000, fps=2.0, duration=5000.0, width=96, height=64)
    video = SimpleNamespace(metadata=metadata, frames_indices=[7806], timestamps=[3903.0])
    assert Gemma4Adapter.frame_labels(video) == ["65:03"]


def test_visual_map_and_tokens(gemma4, example_clip):
    prepared = gemma4.prepare(video_messages(str(example_clip), nframes=8))
    video = prepared.media[0]
    per_frame = (video.resized_height // 48) * (video.resized_width // 48)
    ids = prepared.inputs["input_ids"][0]
    assert torch.equal(prepared.visual_map.positions, (ids == gemma4.config.video_token_id).nonzero().flatten())
    assert prepared.visual_map.frame_index.tolist() == [k // per_frame for k in range(8 * per_frame)]
    assert len(prepared.visual_map) == gemma4.visual_tokens(video, "gemma4") == 8 * per_frame


def test_a_literal_placeholder_is_refused(gemma4, example_clip):
    from vlm_app.errors import OptionsError

    with pytest.raises(OptionsError, match="literal <\\|video\\|>"):
        gemma4.prepare(video_messages(str(example_clip), prompt="Look: <|video|>", nframes=2))


def test_the_memory_shape_is_the_prepared_one(gemma4, example_clip):
    """The pre-flight's shape of a probed video equals the prepared request's tokens and encoder batch."""
    from vlm_app.media.video import probe_cached
    from vlm_app.media.limits import DEFAULT_LIMITS

    options = gemma4.video_options(video_messages(str(example_clip)), {"nframes": 8})
    metadata = probe_cached(str(example_clip), "clip", DEFAULT_LIMITS, float("inf"))
    shape, frames, _ = gemma4.video_shape(metadata, options)
    prepared = gemma4.prepare(video_messages(str(example_clip), nframes=8))
    exact = gemma4.prepared_shape(prepared, 4)
    assert frames == 8 and shape.visual_tokens == exact.visual_tokens
    assert (shape.encoder_sequences, shape.encoder_sequence) == (exact.encoder_sequences, exact.encoder_sequence)


# ---- front doors -------------------------------------------------------------------------------------------------

def test_describe_through_the_cli(gemma4_checkpoints, example_clip, tmp_path, capsys):
    out = tmp_path / "records.jsonl"
    assert main(["describe", str(example_clip), "--model", str(gemma4_checkpoints["gemma4_no_audio"]),
                 "--nframes", "4", "--out", str(out), *FAST]) == 0
    record = json.loads(out.read_text().splitlines()[0])
    assert record["error"] is None and record["model_info"]["family"] == "gemma4"
    assert len(record["frames_indices"]) == 4 and record["num_tokens"]["visual"] > 0


def test_inspect_prints_the_labels(example_clip, capsys):
    assert main(["inspect", str(example_clip), "--model", "gemma4", "--nframes", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["family"] == "gemma4" and report["num_frames"] == 8
    assert report["frame_labels"] == ["00:00", "00:00", "00:01", "00:01", "00:02", "00:02", "00:03", "00:03"]
    assert report["num_visual_tokens"] == 8 * (report["resized_height"] // 48) * (report["resized_width"] // 48)
    assert report["resized_height"] * report["resized_width"] <= 630 * 256


def test_compare_beside_other_families(gemma4_checkpoints, tiny_checkpoints, example_clip, capsys):
    models = f"{gemma4_checkpoints['gemma4_no_audio']},{tiny_checkpoints['smolvlm2']}"
    assert main(["compare", str(example_clip), "--models", models, "--nframes", "4", "--json", *FAST]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["model_info"]["family"] for record in records] == ["gemma4", "smolvlm2"]
    assert all(record["error"] is None for record in records)
    assert len(records[0]["frames_indices"]) == 4


# ---- the video's own soundtrack ----------------------------------------------------------------------------------

def muxed(video: str, audio_args: list[str], out) -> str:
    """`video` with a soundtrack from ffmpeg input `audio_args`, padded with silence to the video's length."""
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", video, *audio_args, "-c:v", "copy", "-af", "apad",
                    "-c:a", "aac", "-shortest", str(out)], check=True)
    return str(out)


@pytest.fixture(scope="module")
def speech_clip(tmp_path_factory, example_clip) -> str:
    """The 4 s example clip with a sentence spoken by espeak-ng (synthesised offline)."""
    folder = tmp_path_factory.mktemp("gemma4_speech")
    subprocess.run(["espeak-ng", "-w", str(folder / "speech.wav"), "The red square moves to the right."], check=True)
    return muxed(str(example_clip), ["-i", str(folder / "speech.wav")], folder / "speech.mp4")


@pytest.fixture(scope="module")
def tone_clip(tmp_path_factory) -> str:
    """40 s at 2 fps, 96x64, with a 440 Hz tone: longer than the 30 s one audio holds."""
    out = tmp_path_factory.mktemp("gemma4_tone") / "tone.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=2:duration=40",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=40", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-shortest", str(out)], check=True)
    return str(out)


def model_card_with_audio(processor, source: str, **processor_kwargs):
    """transformers' own route for a video's sound: `load_audio_from_video`, an audio item right after the video."""
    messages = [{"role": "user", "content": [{"type": "video", "video": source}, {"type": "audio"},
                                             {"type": "text", "text": "Describe this video."}]}]
    return processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True,
                                         return_tensors="pt", load_audio_from_video=True,
                                         processor_kwargs=processor_kwargs)


def test_the_soundtrack_equals_the_model_cards_audio_from_video(gemma4, speech_clip):
    """Our PyAV decode of the track and transformers' (torchcodec) give the same 16 kHz samples, so the same
    features, audio tokens and prompt (frames before sound, as the template orders them)."""
    from transformers.audio_utils import load_audio

    prepared = gemma4.prepare(video_messages(speech_clip, nframes=8, audio="on"))
    expected = model_card_with_audio(gemma4.processor, speech_clip, num_frames=8)
    assert_same_inputs(prepared, expected)
    assert torch.equal(prepared.inputs["input_features_mask"], expected["input_features_mask"])
    assert torch.allclose(prepared.inputs["input_features"], expected["input_features"], atol=1e-3)
    sound = prepared.media[0].soundtrack
    reference = load_audio(speech_clip, sampling_rate=16000)
    assert len(sound.samples) == len(reference) and abs(sound.samples - reference).max() < 1e-5
    assert abs(sound.samples).max() > 0.05  # speech, not silence
    ids = prepared.inputs["input_ids"][0]
    assert sound.tokens == int((ids == gemma4.config.audio_token_id).sum()) == gemma4.audio_tokens(sound.seconds)
    text = gemma4.processor.decode(ids)
    assert text.index("<image|>") < text.index("<|audio>") < text.index("Describe this video.")


def test_audio_is_on_by_default_for_a_model_that_hears(gemma4, speech_clip):
    prepared = gemma4.prepare(video_messages(speech_clip, nframes=2))
    assert prepared.media[0].soundtrack is not None and "input_features" in prepared.inputs


def test_audio_off_is_the_model_cards_video_only_call(gemma4, speech_clip):
    prepared = gemma4.prepare(video_messages(speech_clip, nframes=8, audio="off"))
    assert_same_inputs(prepared, model_card_inputs(gemma4.processor, speech_clip, num_frames=8))
    assert "input_features" not in prepared.inputs and prepared.media[0].soundtrack is None


def test_a_file_without_a_track_gets_a_note(gemma4, example_clip):
    for mode in ("auto", "on"):
        prepared = gemma4.prepare(video_messages(str(example_clip), nframes=2, audio=mode))
        assert "input_features" not in prepared.inputs
        assert any("no sound used" in note and "has no audio track" in note for note in prepared.media[0].notes)


def test_a_range_hears_its_own_sound_and_the_cap_holds(gemma4, tone_clip):
    from vlm_app.errors import LimitError

    prepared = gemma4.prepare(video_messages(tone_clip, nframes=4, video_start=10.0, video_end=20.0, audio="on"))
    sound = prepared.media[0].soundtrack
    assert sound.start == pytest.approx(10.0, abs=0.03) and sound.seconds == pytest.approx(10.0, abs=0.05)
    assert abs(sound.samples).max() > 0.1
    with pytest.raises(LimitError, match="lasts 40.0 s, over the 30 s the model hears at once"):
        gemma4.prepare(video_messages(tone_clip, nframes=4, audio="on"))
    prepared = gemma4.prepare(video_messages(tone_clip, nframes=4))
    assert prepared.media[0].soundtrack is None
    assert any("described without its sound" in note for note in prepared.media[0].notes)


def test_a_model_that_does_not_hear(gemma4_checkpoints, speech_clip):
    from vlm_app import load
    from vlm_app.errors import OptionsError

    adapter = load(str(gemma4_checkpoints["gemma4_no_audio"]), device="cpu")
    with pytest.raises(OptionsError, match="does not take audio; use --audio auto or off"):
        adapter.prepare(video_messages(speech_clip, nframes=2, audio="on"))
    prepared = adapter.prepare(video_messages(speech_clip, nframes=2, audio="auto"))
    assert prepared.media[0].soundtrack is None and "input_features" not in prepared.inputs


def test_the_pre_flight_counts_the_audio_tokens(gemma4, speech_clip):
    from vlm_app.media.limits import DEFAULT_LIMITS
    from vlm_app.media.video import probe_cached

    metadata = probe_cached(speech_clip, "speech", DEFAULT_LIMITS, float("inf"))
    shapes = {mode: gemma4.video_shape(metadata, gemma4.video_options(video_messages(speech_clip),
                                                                      {"nframes": 2, "audio": mode}))[0]
              for mode in ("on", "off")}
    heard = gemma4.prepare(video_messages(speech_clip, nframes=2, audio="on")).media[0].soundtrack
    # the pre-flight counts the video's 4.0 s; the track runs 0.13 s (about 3 tokens) longer
    assert shapes["on"].text_tokens - shapes["off"].text_tokens == pytest.approx(heard.tokens + 2, abs=5)
    assert shapes["on"].media_bytes > shapes["off"].media_bytes


def test_describe_with_audio_through_the_cli(gemma4_checkpoints, speech_clip, tmp_path):
    out = tmp_path / "records.jsonl"
    assert main(["describe", speech_clip, "--model", str(gemma4_checkpoints["gemma4"]), "--nframes", "2",
                 "--audio", "on", "--out", str(out), *FAST]) == 0
    record = json.loads(out.read_text().splitlines()[0])
    assert record["error"] is None and record["sampling"]["audio"] == "on"
    audio = record["media"][0]["audio"]
    assert audio["used"] and audio["seconds"] == pytest.approx(4.13, abs=0.05) and audio["tokens"] > 90
    out.unlink()
    assert main(["describe", speech_clip, "--model", str(gemma4_checkpoints["gemma4"]), "--nframes", "2",
                 "--audio", "off", "--out", str(out), *FAST]) == 0
    assert json.loads(out.read_text().splitlines()[0])["media"][0]["audio"] == {"used": False}


def test_each_chapters_segment_hears_its_own_range(gemma4_checkpoints, tone_clip, tmp_path):
    out = tmp_path / "chapters.jsonl"
    assert main(["describe", tone_clip, "--model", str(gemma4_checkpoints["gemma4"]), "--chapters",
                 "--segment-seconds", "20", "--nframes", "2", "--out", str(out), *FAST]) == 0
    segments = json.loads(out.read_text().splitlines()[0])["segments"]
    assert [segment["video_start"] for segment in segments] == [0.0, 20.0]
    for segment in segments:
        assert segment["error"] is None and segment["audio"]["used"]
        assert segment["audio"]["start"] == pytest.approx(segment["video_start"], abs=0.03)
        assert segment["audio"]["seconds"] == pytest.approx(20.0, abs=0.05) and segment["audio"]["tokens"] == 500
    assert segments[1]["timestamps"][0] >= 20.0  # the frames keep the whole video's time


def test_default_chapters_segments_of_a_model_that_hears_each_hear_their_range(gemma4_checkpoints, tone_clip,
                                                                               tmp_path):
    """Without --segment-seconds, segments are as long as the sound the model hears at once allows (30 s: 20 s
    segments, a short last piece joined), so none goes deaf."""
    out = tmp_path / "chapters.jsonl"
    assert main(["describe", tone_clip, "--model", str(gemma4_checkpoints["gemma4"]), "--chapters", "--nframes", "2",
                 "--out", str(out), *FAST]) == 0
    segments = json.loads(out.read_text().splitlines()[0])["segments"]
    assert [segment["video_start"] for segment in segments] == [0.0, 20.0]
    assert all(segment["error"] is None and segment["audio"]["used"] for segment in segments)


# ---- audio items and the server ----------------------------------------------------------------------------------

def test_an_audio_file_is_described(gemma4, speech_clip, tmp_path):
    """An audio item (here a .wav of its own) goes where its item is, through the feature extractor."""
    from transformers.audio_utils import load_audio

    wav = tmp_path / "speech.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", speech_clip, "-vn", str(wav)], check=True)
    messages = [{"role": "user", "content": [{"type": "audio", "audio": str(wav)},
                                             {"type": "text", "text": "What is said?"}]}]
    prepared = gemma4.prepare(messages)
    sound = prepared.media[0]
    expected = gemma4.processor(text=["<bos><|turn>user\n<|audio|>What is said?<turn|>\n<|turn>model\n"],
                                audio=[load_audio(str(wav), sampling_rate=16000)], add_special_tokens=False,
                                return_tensors="pt")
    assert torch.equal(prepared.inputs["input_ids"], expected["input_ids"])
    assert torch.allclose(prepared.inputs["input_features"], expected["input_features"], atol=1e-3)
    assert sound.tokens == int((prepared.inputs["input_ids"] == gemma4.config.audio_token_id).sum()) > 90
    assert len(prepared.visual_map) == 0


def test_an_audio_item_for_a_model_that_does_not_hear(gemma4_checkpoints, tiny_checkpoints, speech_clip):
    from vlm_app import load
    from vlm_app.errors import OptionsError

    messages = [{"role": "user", "content": [{"type": "audio", "audio": speech_clip}, {"type": "text", "text": "?"}]}]
    for checkpoint in (gemma4_checkpoints["gemma4_no_audio"], tiny_checkpoints["smolvlm2"]):
        with pytest.raises(OptionsError, match="does not take audio"):
            load(str(checkpoint), device="cpu").prepare(messages)


def test_serve_takes_input_audio_and_a_videos_own_track(gemma4_checkpoints, speech_clip, tmp_path):
    import base64
    import os
    import sys

    from openai import BadRequestError, OpenAI
    from ui_fixtures import _free_port, running_server

    wav = tmp_path / "speech.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", speech_clip, "-vn", str(wav)], check=True)
    port = _free_port()
    command = [sys.executable, "-m", "vlm_app", "serve", "--models", str(gemma4_checkpoints["gemma4"]), "--host",
               "127.0.0.1", "--port", str(port), "--allow-dir", os.path.dirname(speech_clip), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with running_server(command, env, tmp_path / "serve.log", f"http://127.0.0.1:{port}/health"):
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        data = base64.b64encode(wav.read_bytes()).decode()
        reply = client.chat.completions.create(model=model, max_tokens=3, messages=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
            {"type": "text", "text": "What is said?"}]}])
        heard = reply.model_extra["vlm_app"]["media"][0]
        assert heard["type"] == "audio" and heard["used"] and heard["tokens"] > 90
        video = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{speech_clip}"}},
                                              {"type": "text", "text": "Describe."}]}]
        for asked, used in ((True, True), (False, False)):
            reply = client.chat.completions.create(model=model, max_tokens=3, messages=video, extra_body={
                "mm_processor_kwargs": {"num_frames": 2, "use_audio_in_video": asked}})
            assert reply.model_extra["vlm_app"]["media"][0]["audio"]["used"] is used
        with pytest.raises(BadRequestError, match="input_audio part needs"):
            client.chat.completions.create(model=model, max_tokens=3, messages=[{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": data, "format": "exe"}}]}])
        with pytest.raises(BadRequestError, match="not valid base64"):
            client.chat.completions.create(model=model, max_tokens=3, messages=[{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}]}])


def test_describe_a_sound_file_through_the_cli(gemma4_checkpoints, speech_clip, tmp_path, capsys):
    m4a = tmp_path / "speech.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", speech_clip, "-vn", "-c:a", "copy", str(m4a)],
                   check=True)
    assert main(["describe", str(m4a), "--model", str(gemma4_checkpoints["gemma4"]), "--json", *FAST]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert record["error"] is None and record["num_tokens"]["visual"] == 0
    assert record["media"] == [{"type": "audio", "used": True, "seconds": pytest.approx(4.13, abs=0.05),
                                "start": 0.0, "tokens": 104}]
    main(["describe", str(m4a), "--model", str(gemma4_checkpoints["gemma4_no_audio"]), "--json", *FAST])
    captured = capsys.readouterr()
    assert "gemma4 checkpoint does not take audio" in captured.out + captured.err


def test_inspect_prints_the_audio_tokens(speech_clip, capsys):
    assert main(["inspect", speech_clip, "--model", "gemma4", "--nframes", "2", "--audio", "auto", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["audio"]["used"] and report["audio"]["tokens"] == 104  # ceil(4.133 s / 40 ms)
    assert main(["inspect", speech_clip, "--nframes", "2", "--audio", "on"]) == 0
    text = capsys.readouterr().out
    assert text.count("the model hears: 4.13 s of sound from 0.00 s, 104 audio tokens") == 1  # Gemma 4 only


def test_hidden_states_mark_the_audio_tokens(gemma4_checkpoints, speech_clip, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "features.safetensors"
    assert main(["describe", speech_clip, "--model", str(gemma4_checkpoints["gemma4"]), "--nframes", "2",
                 "--audio", "on", "--dump-features", str(out), "--json", *FAST]) == 0
    tensors = load_file(str(out))
    ids, audio = tensors["input_ids"], tensors["audio_positions"]
    assert len(audio) == 104 and set(ids[audio].tolist()) == {int(ids[audio[0]])}
    assert not set(audio.tolist()) & set(tensors["visual_map.positions"].tolist())
    assert tensors["hidden_states"].shape[1] == len(ids)


# ---- the checkpoints and names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("repo", ["google__gemma-4-E2B-it", "google__gemma-4-E4B-it"])
def test_tiny_processor_settings_are_the_hub_files(gemma4_checkpoints, repo):
    """The tiny checkpoints' processor_config.json holds the hash-verified hub files' settings
    (tests/fixtures/real_checkpoint_files)."""
    from real_files_fixtures import REAL_FILES

    hub = json.loads((REAL_FILES / repo / "processor_config.json").read_text())
    ours = json.loads((gemma4_checkpoints["gemma4"] / "processor_config.json").read_text())
    for key in ("audio_ms_per_token", "audio_seq_length", "image_seq_length", "processor_class"):
        assert ours[key] == hub[key], key
    for part, keys in (("video_processor", ("num_frames", "max_soft_tokens", "patch_size", "pooling_kernel_size",
                                            "do_sample_frames", "do_normalize", "image_mean", "image_std",
                                            "resample", "rescale_factor", "return_metadata")),
                       ("image_processor", ("max_soft_tokens", "patch_size", "pooling_kernel_size", "do_normalize",
                                            "image_mean", "image_std", "resample", "rescale_factor")),
                       ("feature_extractor", ("feature_size", "sampling_rate", "frame_length", "hop_length",
                                              "fft_length", "min_frequency", "max_frequency", "mel_floor",
                                              "preemphasis", "dither", "input_scale_factor"))):
        for key in keys:
            assert ours[part][key] == hub[part][key], (part, key)


@pytest.mark.parametrize("model_type", ["gemma4", "gemma4_unified"])
def test_every_gemma4_model_type_is_this_family(tmp_path, model_type):
    from vlm_app.adapters.registry import family_of

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    assert family_of(str(tmp_path)) == "gemma4"


@pytest.mark.parametrize("name", ["gemma4-e2b", "gemma4-31b", "google/gemma-4-E4B-it", "google/gemma-4-12B-it"])
def test_short_names_and_hub_ids_find_the_family(name):
    from vlm_app.adapters.registry import family_of

    assert family_of(name) == "gemma4"


def test_variable_rate_clip_is_labelled_with_presentation_times(gemma4):
    """tree.avi's frames are not evenly spaced: index / fps is no time there, so the labels are the frames' own."""
    from test_media_real_clips import real_clip

    prepared = gemma4.prepare(video_messages(str(real_clip("tree_cinepak_avi")), nframes=6))
    video = prepared.media[0]
    assert video.metadata.is_vfr
    labels = [f"{minutes}:{seconds}" for minutes, seconds in
              LABEL.findall(gemma4.processor.decode(prepared.inputs["input_ids"][0]))]
    assert labels == [f"{int(t // 60):02d}:{int(t % 60):02d}" for t in video.timestamps]
    assert len(set(labels)) > 1


def test_the_web_apps_stats_say_what_it_heard(gemma4_checkpoints, speech_clip, tmp_path):
    from pathlib import Path
    from types import SimpleNamespace

    from vlm_app.ui.answer import SETTING_NAMES
    from vlm_app.ui.backend import Backend
    from vlm_app.ui.chat import ChatHandlers
    from vlm_app.ui.limits import UploadPolicy

    policy = UploadPolicy(max_file_mb=1, max_duration_s=6, upload_dir=str(Path(speech_clip).parent))
    backend = Backend([str(gemma4_checkpoints["gemma4"])], policy, str(tmp_path / "votes.jsonl"), device="cpu")
    try:
        history = [{"role": "user", "content": [{"type": "file", "file": {"path": speech_clip}},
                                                {"type": "text", "text": "What is said?"}]}]
        settings = {"max_frames": 2, "max_new_tokens": 3, "temperature": 0.0, "top_p": 1.0, "seed": 0,
                    "system_prompt": ""}
        values = [settings.get(name) for name in SETTING_NAMES]
        outputs = list(ChatHandlers(backend).respond(SimpleNamespace(session_hash="g4"), history, backend.models[0],
                                                     True, *values))
        shown, gallery, stats = outputs[-1][:3]
        assert shown[-1]["role"] == "assistant" and len(gallery) == 2
        assert "| sound heard (s) | 4.133 |" in stats
        muted = [{**settings, "audio": "off"}.get(name) for name in SETTING_NAMES]  # the sidebar's audio toggle
        outputs = list(ChatHandlers(backend).respond(SimpleNamespace(session_hash="g4"), history, backend.models[0],
                                                     True, *muted))
        assert "| sound heard (s) | 4.133 |" not in outputs[-1][2]
    finally:
        backend.close()


def test_ray_hears_each_videos_own_track(ray_local, gemma4_checkpoints, speech_clip, example_clip, tmp_path):
    """describe --engine ray: the decode workers attach each video's sound as the local engine does."""
    import shutil

    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(speech_clip, folder / "speech.mp4")
    shutil.copy(example_clip, folder / "silent.mp4")
    out = tmp_path / "ray.jsonl"
    assert main(["describe", str(folder), "--engine", "ray", "--model", str(gemma4_checkpoints["gemma4"]),
                 "--nframes", "2", "--out", str(out), *FAST]) == 0
    records = {json.loads(line)["source"].rsplit("/", 1)[-1]: json.loads(line) for line in out.read_text().splitlines()}
    assert records["speech.mp4"]["media"][0]["audio"] == {"used": True, "seconds": pytest.approx(4.133, abs=0.01),
                                                          "start": 0.0, "tokens": 104}
    assert records["silent.mp4"]["media"][0]["audio"] == {"used": False}
    assert any("has no audio track" in note for note in records["silent.mp4"]["notes"])


def test_the_audio_cap_cannot_be_raised_past_what_one_audio_holds(gemma4, speech_clip):
    from vlm_app.errors import OptionsError

    with pytest.raises(OptionsError, match="max_audio_seconds 60 is over the 30 s one audio holds"):
        gemma4.prepare(video_messages(speech_clip, nframes=2, audio="on", max_audio_seconds=60))
    from vlm_app.errors import LimitError

    with pytest.raises(LimitError, match="lasts 4.0 s, over the 3 s"):  # a lower cap holds as the model's does
        gemma4.prepare(video_messages(speech_clip, nframes=2, audio="on", max_audio_seconds=3))


def test_an_image_equals_the_model_card_call_and_sits_in_the_map(gemma4, example_clip, tmp_path):
    """Images keep their size here; the processor sizes them (280 tokens) exactly as the model card's call."""
    from PIL import Image

    image = tmp_path / "red.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    messages = [{"role": "user", "content": [{"type": "image", "image": str(image)},
                                             {"type": "text", "text": "What colour?"}]}]
    prepared = gemma4.prepare(messages)
    expected = gemma4.processor.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                    add_generation_prompt=True, return_tensors="pt")
    for key in ("input_ids", "mm_token_type_ids", "pixel_values", "image_position_ids"):
        assert torch.equal(prepared.inputs[key], expected[key]), key
    both = gemma4.prepare([{"role": "user", "content": [{"type": "video", "video": str(example_clip), "nframes": 2},
                                                        {"type": "image", "image": str(image)},
                                                        {"type": "text", "text": "Same colour?"}]}])
    rows = both.visual_map
    image_rows = rows.media_index == 1
    assert int(image_rows.sum()) == len(prepared.visual_map) and set(rows.frame_index[image_rows].tolist()) == {-1}
    assert torch.equal(rows.positions, (both.inputs["input_ids"][0] == gemma4.config.video_token_id).logical_or(
        both.inputs["input_ids"][0] == gemma4.config.image_token_id).nonzero().flatten())
