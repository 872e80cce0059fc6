"""Shared adapter behaviour, for both families: forward, generate, stream with cancel, pass-through media."""

from __future__ import annotations

import threading

import pytest
import torch
from adapter_fixtures import video_messages

from vlm_app.errors import OptionsError
from vlm_app.media import load_video


@pytest.fixture(params=["qwen_adapter", "smol_adapter"])
def adapter(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def prepared(adapter, example_clip):
    return adapter.prepare(video_messages(str(example_clip), fps=1.0))


def test_forward_gives_all_hidden_states_and_visual_slice(adapter, prepared):
    output = adapter.forward(prepared, output_hidden_states=True)
    length = prepared.inputs["input_ids"].shape[1]
    assert len(output.hidden_states) == adapter.num_layers + 1
    assert output.logits.shape[:2] == (1, length)
    visual = output.visual_hidden(layer=1)
    assert visual.shape[0] == prepared.num_tokens.visual
    assert torch.equal(visual, output.hidden_states[1][0, prepared.visual_map.positions])
    assert output.attentions is None


def test_attentions_switch_to_eager_for_the_call_only(adapter, prepared):
    output = adapter.forward(prepared, output_attentions=True)
    assert len(output.attentions) == adapter.num_layers
    length = prepared.inputs["input_ids"].shape[1]
    assert output.attentions[0].shape[-2:] == (length, length)
    assert adapter.model.config._attn_implementation == "sdpa"


def test_greedy_generate_is_deterministic_and_equals_plain_generate(adapter, prepared):
    first = adapter.generate(prepared, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    second = adapter.generate(prepared, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    plain = adapter.model.generate(**prepared.inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert first.token_ids == second.token_ids == plain[0, prepared.inputs["input_ids"].shape[1]:].tolist()
    assert first.text == adapter.tokenizer.decode(first.token_ids, skip_special_tokens=True)
    timings = first.timings
    assert timings.new_tokens == 8 and timings.prefill_s > 0 and timings.decode_s > 0
    assert timings.tokens_per_s > 0 and timings.peak_memory_bytes > 0 and timings.preprocess_s > 0


def test_seeded_sampling_repeats(adapter, prepared):
    runs = [adapter.generate(prepared, max_new_tokens=6, temperature=1.0, seed=7, min_new_tokens=6).token_ids
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_stream_yields_the_generated_text(adapter, prepared):
    stream = adapter.stream(prepared, max_new_tokens=8, min_new_tokens=8)
    pieces = list(stream)
    assert "".join(pieces) == stream.generation.text
    assert stream.timings.new_tokens == 8 and not stream.generation.cancelled


def test_cancel_stops_within_one_token(adapter, prepared):
    cancel = threading.Event()
    cancel.set()  # already cancelled: the criterion fires after the first (prefill) token
    stream = adapter.stream(prepared, cancel=cancel, max_new_tokens=200, min_new_tokens=200)
    list(stream)
    assert stream.generation.cancelled and stream.generation.timings.new_tokens == 1


def test_cancel_mid_stream_stops_generation(adapter, prepared):
    cancel = threading.Event()
    stream = adapter.stream(prepared, cancel=cancel, max_new_tokens=400, min_new_tokens=400)
    for _ in stream:
        cancel.set()
    assert stream.generation.cancelled and stream.generation.timings.new_tokens < 400


def test_closing_a_stream_early_cancels_it(adapter, prepared):
    stream = adapter.stream(prepared, max_new_tokens=200, min_new_tokens=200)
    next(iter(stream))
    stream.close()
    assert stream.generation.cancelled and stream.generation.timings.new_tokens < 200


def test_already_sampled_video_is_used_as_is(adapter, prepared, example_clip):
    again = adapter.prepare(video_messages(prepared.media[0]))
    assert again.media[0] is prepared.media[0]
    assert torch.equal(again.inputs["input_ids"], prepared.inputs["input_ids"])


def test_per_item_options_override_call_options(adapter, example_clip):
    prepared = adapter.prepare(video_messages(str(example_clip), fps=2.0), fps=1.0)
    assert prepared.media[0].sample_fps == pytest.approx(2.0)


def test_multi_turn_with_system_prompt(adapter, example_clip):
    messages = [{"role": "system", "content": "Answer in one word."},
                *video_messages(str(example_clip), prompt="What moves?"),
                {"role": "assistant", "content": "A square."},
                {"role": "user", "content": "Which colour?"}]
    prepared = adapter.prepare(messages)
    assert "Answer in one word." in prepared.prompt and "Which colour?" in prepared.prompt
    assert prepared.prompt.index("A square.") < prepared.prompt.index("Which colour?")


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": [{"type": "video", "video": "x.mp4", "fsp": 1}]}], "unknown video option"),
    ([{"role": "robot", "content": "hi"}], "unknown role"),
    ([{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}], "system prompt must be the first"),
    ([{"role": "user", "content": [{"type": "pdf", "pdf": "a.pdf"}]}], "unknown content type"),
    ([{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]}], "qwen2_5_vl checkpoint does not take audio"),
    ([{"role": "user", "content": [{"type": "video", "video": "x.mp4", "fps": "fast"}]}], "must be a finite number"),
    ([{"role": "user", "content": [{"type": "video", "video": "x.mp4", "fps": float("inf")}]}],
     "must be a finite number"),
])
def test_bad_messages_are_options_errors(qwen_adapter, messages, message):
    with pytest.raises(OptionsError, match=message):
        qwen_adapter.prepare(messages)


def test_every_load_video_option_is_accepted_per_item(qwen_adapter, example_clip):
    """The message schema accepts exactly the media pipeline's options, string-valued ones included."""
    messages = video_messages(str(example_clip), nframes=4, resize="fast", backend="pyav")
    prepared = qwen_adapter.prepare(messages)
    assert prepared.media[0].frames_indices == load_video(str(example_clip), nframes=4).frames_indices
    with pytest.raises(OptionsError, match="resize must be one of"):
        qwen_adapter.prepare(video_messages(str(example_clip), resize="lanczos"))


def test_a_list_of_frames_is_a_video_for_every_family(adapter, deepseek_adapter, tmp_path):
    """The checkpoint's own frame caps (SmolVLM2's max_frames, DeepSeek-VL2's context budget) are for sampling a
    file; a list is already sampled, so only a frame option the caller gives is refused."""
    from PIL import Image

    frames = []
    for number in range(3):
        frames.append(tmp_path / f"frame{number}.png")
        Image.new("RGB", (64, 48), (80 * number, 30, 30)).save(frames[-1])
    for model in (adapter, deepseek_adapter):
        prepared = model.prepare(video_messages([str(frame) for frame in frames]))
        assert prepared.media[0].frames_indices[:3] == [0, 1, 2] and prepared.num_tokens.visual > 0
        with pytest.raises(OptionsError, match="max_frames do not apply to a list of frames"):
            model.prepare(video_messages([str(frame) for frame in frames], max_frames=2))
