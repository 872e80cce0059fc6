"""The request layer (`vlm_app.service`) on tiny checkpoints: one record and stats schema, stop strings, limits
reaching the media pipeline, and compare's Stop."""

from __future__ import annotations

from vlm_app.media.limits import Limits
from vlm_app.service import Request, Run, compare, execute, one_turn, stats

TIMING_KEYS = {"preprocess_s", "prefill_s", "decode_s", "new_tokens", "tokens_per_s", "peak_memory_bytes"}


def test_a_record_carries_the_one_stats_schema(smol_adapter, example_clip):
    record = execute(smol_adapter, one_turn("Describe.", str(example_clip), {"fps": 1}, {"max_new_tokens": 5}))
    assert record["error"] is None and record["answer"] and set(record["timings"]) == TIMING_KEYS
    assert record["finish_reason"] in ("stop", "length") and record["source"] == str(example_clip)
    assert record["media"][0]["frames_indices"] == record["frames_indices"] and record["frames_indices"]
    flat = stats(record)
    assert TIMING_KEYS <= set(flat) and flat["frames"] == len(record["frames_indices"])
    assert flat["visual_tokens"] == record["num_visual_tokens"] > 0


def test_stop_strings_end_the_answer_and_the_generation(smol_adapter, example_clip):
    request = one_turn("Describe.", str(example_clip), {"fps": 1}, {"max_new_tokens": 24})
    whole = execute(smol_adapter, request)["answer"]
    stop = whole[len(whole) // 3:len(whole) // 3 + 3]
    cut = Run(smol_adapter, one_turn("Describe.", str(example_clip), {"fps": 1},
                                     {"max_new_tokens": 24, "stop": [stop, "never appears"]}))
    pieces = list(cut)
    assert "".join(pieces) == cut.answer == whole[:whole.index(stop)] and all(pieces)
    record = cut.record
    assert record["finish_reason"] == "stop" and record["cancelled"] is False
    assert record["timings"]["new_tokens"] < 24  # the model stopped, not just the text


def test_the_request_limits_reach_media_loading(smol_adapter, example_clip):
    """A server's limits (no allowed folders) refuse a local file inside prepare: the record says why."""
    record = execute(smol_adapter, one_turn("Describe.", str(example_clip), limits=Limits.for_remote_clients()))
    assert record["error"] and record["answer"] is None


def test_stop_during_a_comparison_skips_the_models_not_yet_run(smol_adapter, qwen_adapter, example_clip):
    adapters = {"smol": smol_adapter, "qwen": qwen_adapter}
    request = Request(one_turn("Describe.", str(example_clip)).messages, {"fps": 1}, {"max_new_tokens": 64})
    seen = []
    for model, run in compare(["smol", "qwen"], request, adapters.__getitem__):
        seen.append(model if run is not None else None)
        if run is not None:
            for number, _ in enumerate(run):
                if number == 1:
                    run.cancel.set()  # Stop
            assert run.record["cancelled"] is True
    assert seen == ["smol", None]
    finished = [run.execute() for _, run in compare(["smol", "qwen"], request, adapters.__getitem__)]
    assert [record["model"] for record in finished] == [smol_adapter.info.model_id, qwen_adapter.info.model_id]
