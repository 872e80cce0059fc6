"""The decoding controls (`vlm_app.decoding`) through the public entry points: the penalties equal a hand computation
on a tiny model's logits, log-probabilities come in OpenAI's shape, and JSON under a schema always parses and
validates, from random-weight tiny models of every family sampling at temperature 1 (the Python API and the CLI)."""

from __future__ import annotations

import json
import math

import jsonschema
import pytest
import torch

from vlm_app.cli import EXIT_USER_ERROR, main

EVENTS = {  # "list the people, objects and events with their times"
    "type": "object", "additionalProperties": False, "required": ["people", "objects", "events"],
    "properties": {
        "people": {"type": "array", "items": {"type": "object", "required": ["name", "start", "end"],
                                              "properties": {"name": {"type": "string"}, "start": {"type": "number"},
                                                             "end": {"type": "number"}}}},
        "objects": {"type": "array", "items": {"type": "string"}},
        "events": {"type": "array", "items": {"type": "object", "required": ["what", "time"],
                                              "properties": {"what": {"type": "string", "maxLength": 40},
                                                             "time": {"type": "integer", "minimum": 0}}}}}}
QUESTION = [{"role": "user", "content": [{"type": "text", "text": "List the people, objects and events."}]}]


@pytest.fixture(scope="module")
def family_checkpoints(tmp_path_factory) -> dict:
    from vlm_app.adapters.registry import FAMILIES
    from vlm_app.testing.tiny import build_tiny

    root = tmp_path_factory.mktemp("decoding_tiny")
    return {family: build_tiny(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("decoding_media") / "frame.png"
    Image.new("RGB", (64, 48), (30, 140, 200)).save(path)
    return path


# ---- penalties: the recorded log-probabilities and the greedy choices equal the hand computation -------------------
def next_token_logits(adapter, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """The raw logits of the token after `prompt` and `generated`, from one forward pass over both."""
    ids = torch.tensor([prompt + generated])
    with torch.inference_mode():
        return adapter.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float()


def openai_penalties(logits, prompt, generated, frequency_penalty=0.0, presence_penalty=0.0):
    """OpenAI's formula: mu[j] - c[j] * frequency - (c[j] > 0) * presence, over the generated tokens only."""
    penalized = logits.clone()
    for token in set(generated):
        count = generated.count(token)
        penalized[token] -= count * frequency_penalty + (count > 0) * presence_penalty
    return penalized


def repetition_penalty(logits, prompt, generated, penalty):
    """transformers' (and vLLM's): divide a positive logit of a prompt or answer token by the penalty, multiply a
    negative one."""
    penalized = logits.clone()
    for token in set(prompt + generated):
        value = penalized[token]
        penalized[token] = value * penalty if value < 0 else value / penalty
    return penalized


@pytest.mark.parametrize("options, hand", [
    ({"frequency_penalty": 1.5, "presence_penalty": 0.5},
     lambda logits, prompt, done: openai_penalties(logits, prompt, done, 1.5, 0.5)),
    ({"frequency_penalty": -2.0}, lambda logits, prompt, done: openai_penalties(logits, prompt, done, -2.0)),
    ({"presence_penalty": 2.0}, lambda logits, prompt, done: openai_penalties(logits, prompt, done, 0.0, 2.0)),
    ({"repetition_penalty": 1.8}, lambda logits, prompt, done: repetition_penalty(logits, prompt, done, 1.8))],
    ids=["frequency+presence", "negative-frequency", "presence", "repetition"])
def test_penalties_equal_the_hand_computation(smol_adapter, options, hand):
    prepared = smol_adapter.prepare(QUESTION)
    generation = smol_adapter.generate(prepared, max_new_tokens=8, logprobs=True, top_logprobs=5, **options)
    prompt = prepared.inputs["input_ids"][0].tolist()
    tokenizer = smol_adapter.tokenizer
    special = set(tokenizer.all_special_ids) | {index for index, token in tokenizer.added_tokens_decoder.items()
                                                 if token.special}
    entries = iter(generation.logprobs)
    changed = 0
    for step, token in enumerate(generation.token_ids):
        logits = next_token_logits(smol_adapter, prompt, generation.token_ids[:step])
        penalized = hand(logits, prompt, generation.token_ids[:step])
        assert token == int(penalized.argmax()), f"step {step}: greedy decoding did not follow the penalties"
        expected = torch.log_softmax(penalized, -1)
        changed += torch.topk(penalized, 5).indices.tolist() != torch.topk(logits, 5).indices.tolist()
        if token in special:  # the end token and the like: not in the answer's text, nor in its log-probabilities
            continue
        entry = next(entries)
        assert entry["logprob"] == pytest.approx(float(expected[token]), abs=1e-3)
        assert [alternative["logprob"] for alternative in entry["top_logprobs"]] == pytest.approx(
            torch.topk(expected, 5).values.tolist(), abs=1e-3)
    assert next(entries, None) is None
    assert changed, "the penalties changed no top-5 choice: the test would not see them missing"


def test_logprobs_in_openai_shape_in_the_python_api(smol_adapter, image):
    from vlm_app import describe

    record = describe(str(image), model=smol_adapter, prompt="What is it?",
                      generation={"max_new_tokens": 6, "logprobs": True, "top_logprobs": 3})
    entries = record["logprobs"]
    assert entries and b"".join(bytes(entry["bytes"]) for entry in entries).decode(errors="replace") == record["answer"]
    for entry in entries:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"} and entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["logprob"] >= entry["logprob"] - 1e-6  # greedy takes the likeliest
        assert all(set(alternative) == {"token", "logprob", "bytes"} for alternative in entry["top_logprobs"])
    assert describe(str(image), model=smol_adapter, generation={"max_new_tokens": 2})["logprobs"] is None


# ---- JSON under a schema ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip(tmp_path_factory, make_clip):
    return make_clip(tmp_path_factory.mktemp("decoding_clip") / "clip.mp4", 1.0, 4, 96, 96)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "gemma4", "smolvlm2", "deepseek_vl2"])
def test_json_schema_answers_always_parse_and_validate_in_every_family(family_checkpoints, family, clip):
    from vlm_app import describe, load

    adapter = load(str(family_checkpoints[family]), device="cpu")
    for seed in range(3):
        for schema in (EVENTS, {"type": "object"}):  # a schema, and JSON mode (any object)
            record = describe(str(clip), model=adapter, prompt="List the people, objects and events.", nframes=2,
                              generation={"json_schema": schema, "max_new_tokens": 120, "temperature": 1.0,
                                          "seed": seed})
            assert record["error"] is None
            jsonschema.validate(json.loads(record["answer"]), schema)
            assert record["timings"]["new_tokens"] <= 120


def test_json_schema_fits_a_small_budget(smol_adapter, image):
    """However little room: when the budget holds the shortest valid document, the answer is one."""
    from vlm_app import describe

    record = describe(str(image), model=smol_adapter, generation={"json_schema": EVENTS, "max_new_tokens": 48,
                                                                   "temperature": 1.0, "seed": 5})
    assert json.loads(record["answer"]) == {"people": [], "objects": [], "events": []}


@pytest.mark.parametrize("schema, message", [
    ({"type": "objec"}, "not a valid JSON schema"), ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"properties": {"a": {"if": {"type": "string"}}}}, "'if'"), ([1], "a JSON schema object")])
def test_an_invalid_or_unenforceable_schema_is_refused_before_loading(image, schema, message):
    from vlm_app import describe
    from vlm_app.errors import OptionsError

    with pytest.raises(OptionsError, match=message):
        describe(str(image), model="/nonexistent-model-never-loaded", generation={"json_schema": schema})


def test_cli_json_schema_file_and_logprobs_in_the_json_record(tiny_checkpoints, image, tmp_path, capsys):
    schema_file = tmp_path / "events.json"
    schema_file.write_text(json.dumps(EVENTS))
    model = str(tiny_checkpoints["smolvlm2"])
    assert main(["describe", str(image), "--model", model, "--device", "cpu", "--json", "--json-schema",
                 str(schema_file), "--logprobs", "2", "--max-new-tokens", "100", "--temperature", "1",
                 "--seed", "2", "--frequency-penalty", "0.3"]) == 0
    record = json.loads(capsys.readouterr().out)
    jsonschema.validate(json.loads(record["answer"]), EVENTS)
    assert all(len(entry["top_logprobs"]) == 2 for entry in record["logprobs"])
    assert record["generation"]["frequency_penalty"] == 0.3 and record["generation"]["json_schema"] == EVENTS
    assert not math.isnan(sum(entry["logprob"] for entry in record["logprobs"]))


@pytest.mark.parametrize("content, message", [("{not json", "is not JSON"), ('{"type": "objec"}', "json_schema")])
def test_cli_bad_schema_file_is_a_clear_error(tiny_checkpoints, image, tmp_path, capsys, content, message):
    schema_file = tmp_path / "bad.json"
    schema_file.write_text(content)
    assert main(["describe", str(image), "--model", str(tiny_checkpoints["smolvlm2"]), "--device", "cpu",
                 "--json-schema", str(schema_file)]) == EXIT_USER_ERROR
    assert message in capsys.readouterr().err
