"""The memory pre-flight and fit, through `describe` and `service.execute`, on tiny checkpoints: the predicted shape
of a video is what the processor then builds, `--max-memory` lowers pixels then frames and says so, an impossible
limit fails before decoding, `--no-fit` keeps the reference budget. (The estimate against measured peaks on
real-size models is `python -m vlm_app bench memory`, not a unit test.)"""

from __future__ import annotations

import json

import pytest

from vlm_app import memory
from vlm_app.cli import main
from vlm_app.errors import OptionsError
from vlm_app.memory import MemoryLimit
from vlm_app.service import Run, execute, one_turn

FAST = ["--max-new-tokens", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def vga_clip(make_clip, tmp_path_factory):
    """6 s of 640x480: above Qwen's minimum pixels per frame, so there are pixels to lower."""
    return make_clip(tmp_path_factory.mktemp("memory") / "vga.mp4", 6.0, 12, 640, 480)


@pytest.fixture(scope="module")
def deepseek_adapter(tmp_path_factory):
    from vlm_app import load
    from vlm_app.testing.tiny import build_tiny

    return load(str(build_tiny("deepseek_vl2", tmp_path_factory.mktemp("tiny") / "deepseek_vl2")), device="cpu")


@pytest.fixture(params=["qwen2_5_vl", "qwen3_vl", "smolvlm2", "deepseek_vl2"])
def adapter(request, qwen_adapter, qwen3_adapter, smol_adapter, deepseek_adapter):
    return {"qwen2_5_vl": qwen_adapter, "qwen3_vl": qwen3_adapter, "smolvlm2": smol_adapter,
            "deepseek_vl2": deepseek_adapter}[request.param]


def _describe(args, capsys) -> dict:
    assert main(["describe", *map(str, args), "--json", *FAST]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("options", [{}, {"fps": 4.0}, {"nframes": 6}, {"video_start": 1.0, "video_end": 4.0}])
def test_predicted_shape_is_what_the_processor_builds(adapter, vga_clip, options):
    predicted = []

    def spy(metadata, asked):
        predicted.append(adapter.video_shape(metadata, asked)[0])
        return asked

    prepared = adapter.prepare(one_turn("Describe.", str(vga_clip)).messages, max_new_tokens=16, fit=spy, **options)
    exact = adapter.prepared_shape(prepared, 16)
    assert predicted[0].visual_tokens == exact.visual_tokens > 0
    assert (predicted[0].encoder_sequences, predicted[0].encoder_sequence) == \
        (exact.encoder_sequences, exact.encoder_sequence)
    assert abs(predicted[0].media_bytes - exact.media_bytes) <= 0.5 * exact.media_bytes
    assert abs(predicted[0].text_tokens - exact.text_tokens) <= 64


def test_every_record_carries_the_estimate(adapter, vga_clip):
    record = execute(adapter, one_turn("Describe.", str(vga_clip), {}, {"max_new_tokens": 2}))
    estimate = record["memory_estimate"]
    assert record["memory_estimate_bytes"] == estimate["total"] > estimate["weights"] > 0
    assert estimate["peak_phase"] in ("vision", "prefill", "decode")
    assert record["timings"]["peak_memory_bytes"] > 0
    assert record["max_memory_bytes"] > record["memory_estimate_bytes"] and not record["notes"]  # auto: no fit needed
    more = execute(adapter, one_turn("Describe.", str(vga_clip), {"fps": 4.0}, {"max_new_tokens": 2}))
    assert more["num_visual_tokens"] > record["num_visual_tokens"]
    assert more["memory_estimate_bytes"] > record["memory_estimate_bytes"]


def _midway(record: dict, share: float = 0.5) -> int:
    """A limit between the request-independent floor (weights, runtime) and this record's estimate."""
    floor = record["memory_estimate"]["weights"] + record["memory_estimate"]["overhead"]
    return int(floor + (record["memory_estimate_bytes"] - floor) * share)


def test_max_memory_lowers_pixels_before_frames(tiny_checkpoints, vga_clip, capsys):
    model = tiny_checkpoints["qwen2_5_vl"]
    full = _describe([vga_clip, "--model", model, "--nframes", "8"], capsys)
    fitted = _describe([vga_clip, "--model", model, "--nframes", "8", "--max-memory", _midway(full, 0.7)], capsys)
    assert fitted["error"] is None and len(fitted["frames_indices"]) == 8  # frames kept: pixels went first
    assert fitted["num_visual_tokens"] < full["num_visual_tokens"]
    assert fitted["memory_estimate_bytes"] <= fitted["max_memory_bytes"] < full["memory_estimate_bytes"]
    assert any(note.startswith("memory fit: lowered pixels per frame from 306544 to") for note in fitted["notes"])


def test_max_memory_lowers_frames_once_pixels_are_at_their_minimum(tiny_checkpoints, vga_clip, capsys):
    model = tiny_checkpoints["qwen2_5_vl"]
    full = _describe([vga_clip, "--model", model, "--nframes", "16", "--max-pixels", 100352], capsys)
    fitted = _describe([vga_clip, "--model", model, "--nframes", "16", "--max-pixels", 100352,
                        "--max-memory", _midway(full)], capsys)
    frames = len(fitted["frames_indices"])
    assert 4 <= frames < 16 and frames % 2 == 0  # Qwen's rules: at least 4, in pairs
    assert fitted["memory_estimate_bytes"] <= fitted["max_memory_bytes"]
    assert any("frames from 16 to" in note for note in fitted["notes"])


@pytest.mark.parametrize("policy", ["qwen3_vl", "qwen3_vl_utils"])
def test_max_memory_fits_both_qwen3_policies(qwen3_checkpoints, vga_clip, capsys, policy):
    """qwen3_vl's budget is over the whole video (frames x height x width), qwen3_vl_utils' per frame: the fit
    lowers each in its own terms, frames kept."""
    model = qwen3_checkpoints["qwen3_vl"]
    args = [vga_clip, "--model", model, "--nframes", "8", "--policy", policy]
    full = _describe(args, capsys)
    fitted = _describe([*args, "--max-memory", _midway(full, 0.7)], capsys)
    assert fitted["error"] is None and len(fitted["frames_indices"]) == 8
    assert fitted["num_visual_tokens"] < full["num_visual_tokens"]
    assert fitted["memory_estimate_bytes"] <= fitted["max_memory_bytes"] < full["memory_estimate_bytes"]
    assert any(note.startswith("memory fit: lowered pixels") for note in fitted["notes"])


def test_max_memory_on_a_family_that_sizes_its_own_frames(tiny_checkpoints, vga_clip, capsys):
    model = tiny_checkpoints["smolvlm2"]
    full = _describe([vga_clip, "--model", model, "--fps", "2"], capsys)
    fitted = _describe([vga_clip, "--model", model, "--fps", "2", "--max-memory", _midway(full)], capsys)
    assert 1 <= len(fitted["frames_indices"]) < len(full["frames_indices"])
    assert any(note.startswith("memory fit: lowered frames from") for note in fitted["notes"])


def test_an_impossible_limit_fails_before_decoding_and_names_the_numbers(tiny_checkpoints, vga_clip, capsys,
                                                                         monkeypatch):
    import vlm_app.media.video as video

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the request cannot fit")

    monkeypatch.setattr(video, "decode_frames", no_decoding)
    assert main(["describe", str(vga_clip), "--model", str(tiny_checkpoints["qwen2_5_vl"]), "--max-memory", "1MB",
                 *FAST]) == 2
    error = capsys.readouterr().err
    assert "does not fit in 1 MiB: even 4 frame(s) of 100352 pixels need about" in error
    assert "--no-fit" in error and "Traceback" not in error


def test_no_fit_keeps_the_reference_budget_and_notes_the_excess(tiny_checkpoints, vga_clip, capsys):
    model = tiny_checkpoints["smolvlm2"]
    full = _describe([vga_clip, "--model", model], capsys)
    kept = _describe([vga_clip, "--model", model, "--max-memory", _midway(full), "--no-fit"], capsys)
    assert kept["frames_indices"] == full["frames_indices"] and kept["error"] is None
    assert any("over the" in note and "--no-fit kept the reference budget" in note for note in kept["notes"])


def test_a_folder_run_fits_every_video(tiny_checkpoints, make_clip, tmp_path, capsys):
    folder = tmp_path / "videos"
    for name in ("a.mp4", "b.mp4"):
        make_clip(folder / name, 8.0, 12, 320, 240)
    model = str(tiny_checkpoints["smolvlm2"])
    full = execute(__import__("vlm_app").load(model, device="cpu"),
                   one_turn("Describe this video.", str(folder / "a.mp4"), {"fps": 2.0}, {"max_new_tokens": 4}))
    out = tmp_path / "out.jsonl"
    assert main(["describe", str(folder), "--model", model, "--fps", "2", "--out", str(out),
                 "--max-memory", str(_midway(full)), *FAST]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        assert len(record["frames_indices"]) < len(full["frames_indices"]) and record["notes"]


def test_auto_resolves_to_this_machine_and_none_means_no_limit(smol_adapter, example_clip):
    record = Run(smol_adapter, one_turn("Describe.", str(example_clip), {}, {"max_new_tokens": 2})).execute()
    assert record["max_memory_bytes"] > record["memory_estimate"]["weights"] and record["error"] is None
    unlimited = execute(smol_adapter, one_turn("Describe.", str(example_clip), {}, {"max_new_tokens": 2},
                                               memory=MemoryLimit(None)))
    assert unlimited["max_memory_bytes"] is None and unlimited["frames_indices"] == record["frames_indices"]


def test_auto_reads_the_available_memory_stand_in(smol_adapter, example_clip, tiny_checkpoints, monkeypatch, capsys):
    """VLM_APP_AVAILABLE_MEMORY replaces the RAM auto measures: the limit is its share plus the loaded weights."""
    monkeypatch.setenv(memory.AVAILABLE_MEMORY_VARIABLE, "1GiB")
    record = Run(smol_adapter, one_turn("Describe.", str(example_clip), {}, {"max_new_tokens": 2})).execute()
    assert record["max_memory_bytes"] == int(2**30 * memory.AUTO_RAM_FRACTION) + record["memory_estimate"]["weights"]
    monkeypatch.setenv(memory.AVAILABLE_MEMORY_VARIABLE, "auto")
    assert main(["describe", str(example_clip), "--model", str(tiny_checkpoints["smolvlm2"]), *FAST]) == 2
    assert "VLM_APP_AVAILABLE_MEMORY is a size (bytes, 12GB, 512MiB), not auto" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [("12GB", 12 * 2**30), ("512MiB", 512 * 2**20), ("1.5g", int(1.5 * 2**30)),
                                            ("8000000000", 8000000000), (4096, 4096), ("auto", "auto"),
                                            (None, None)])
def test_max_memory_sizes(text, expected):
    assert memory.parse_max_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1GB", "12 parsecs", "0", 0, ""])
def test_bad_max_memory_is_a_clear_error(text):
    with pytest.raises(OptionsError, match="is not a size"):
        memory.parse_max_memory(text)


def test_a_memory_limit_is_one_typed_value():
    """Requests, the server, the web app and Ray carry the limit as a `MemoryLimit`, its size parsed once."""
    assert MemoryLimit("12GB").max_memory == 12 * 2**30 and MemoryLimit("12GB").fits
    assert not MemoryLimit(None).fits and not MemoryLimit("auto", fit=False).fits
    assert one_turn("Describe.", "clip.mp4").memory == MemoryLimit("auto")
    with pytest.raises(OptionsError, match="max memory 'lots' is not a size"):
        MemoryLimit("lots")


def test_bad_max_memory_on_the_command_line(tiny_checkpoints, example_clip, capsys):
    assert main(["describe", str(example_clip), "--model", str(tiny_checkpoints["smolvlm2"]), "--max-memory",
                 "lots", *FAST]) == 2
    assert "max memory 'lots' is not a size" in capsys.readouterr().err


@pytest.mark.parametrize("filters", [["--clip-seconds", "30"], ["--families", "qwen2_5_vl", "--clip-seconds", "600"]])
def test_bench_memory_filter_that_selects_nothing_is_a_clear_error(filters, capsys):
    assert main(["bench", "memory", *filters, "--device", "cpu"]) == 2
    assert "no bench memory case on those families and that clip (clips: 40, 600 s)" in capsys.readouterr().err
