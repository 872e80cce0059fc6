"""DeepseekVLV2Processor against the official processor outputs (reference fixtures)."""

import hashlib

import PIL
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from deepseek_fixtures import CASES, FIXTURES, checkpoint, reference, run_processor
from vlm_app.models.deepseek_vl2 import DeepseekVLV2Processor

# The reference ran Pillow 13; Pillow 12's bicubic downscale differs by at most one grey level on a few pixels
# (gradio 6 pins pillow<13), so exact hashes are only expected on Pillow >= 13.
PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13


@pytest.fixture(scope="module")
def processor():
    return DeepseekVLV2Processor.from_pretrained(checkpoint("tiny_mha"))


@pytest.mark.parametrize("case", CASES)
def test_processor_matches_official(processor, case):
    out = run_processor(processor, case)
    expected = load_file(FIXTURES / "processor" / f"{case}.safetensors")
    ref = reference()["cases"][case]
    assert torch.equal(out.input_ids, expected["input_ids"])
    assert torch.equal(out.attention_mask, expected["attention_mask"])
    assert torch.equal(out.labels, expected["target_ids"])
    assert out.images_seq_mask.dtype == torch.bool
    assert torch.equal(out.images_seq_mask, expected["images_seq_mask"])
    assert torch.equal(out.images_spatial_crop, expected["images_spatial_crop"])
    assert out.sft_format == [row["sft_format"] for row in ref["rows"]]
    assert out.seq_lens == ref["batched"]["seq_lens"]
    assert list(out.images.shape) == ref["batched"]["images_shape"]
    if "images_uint8" in expected:  # stored as the uint8 pixels the official float tiles are made of (exact)
        assert (out.images - (expected["images_uint8"].float() / 255 - 0.5) / 0.5).abs().max() <= 1e-6
    tile_tolerance = 1e-6 if PILLOW_13 else 1e-5
    for b, row in enumerate(out.images):
        for n, tile in enumerate(row):
            tile64 = tile.double()
            assert abs(tile64.mean().item() - ref["batched"]["tile_mean"][b][n]) <= tile_tolerance
            assert abs(tile64.std(unbiased=False).item() - ref["batched"]["tile_std"][b][n]) <= tile_tolerance
    if PILLOW_13:
        assert hashlib.sha256(out.images.numpy().tobytes()).hexdigest() == ref["batched"]["images_sha256"]


@pytest.mark.parametrize("case", CASES)
def test_per_sample_fields(processor, case):
    from deepseek_fixtures import row_calls
    for call, row in zip(row_calls(case), reference()["cases"][case]["rows"]):
        sample = processor(**call, force_batchify=False)
        assert sample.num_image_tokens == row["num_image_tokens"]
        assert sample.images_spatial_crop.tolist() == (row["tile_grids_w_h"] or [[0, 0]])
        assert len(sample) == row["seq_len"]
        assert sample.images.shape[0] == max(row["num_tiles"], 1)  # text only: one blank view
        assert int(sample.images_seq_mask.sum()) == sum(row["num_image_tokens"])


def test_special_tokens_and_template(processor):
    ids = reference()["special_token_ids"]
    for token, token_id in ids.items():
        assert processor.tokenizer.convert_tokens_to_ids(token) == token_id
    assert processor.image_token_id == ids["<image>"]
    assert processor.format_prompts("hi", system_prompt="Be brief.") == "Be brief.\n\n<|User|>: hi\n\n<|Assistant|>:"
    conversation = [{"role": "<|User|>", "content": "a"}, {"role": "<|Assistant|>", "content": "b"},
                    {"role": "<|User|>", "content": "c"}, {"role": "<|Assistant|>", "content": ""}]
    assert processor.format_messages(conversation) == \
        "<|User|>: a\n\n<|Assistant|>: b<｜end▁of▁sentence｜><|User|>: c\n\n<|Assistant|>:"
    out = processor(conversations=conversation, images=[], force_batchify=False)
    # the assistant answer is a label, the prompts are masked, the trailing eos is dropped in inference mode
    answer = processor.encode("b", bos=False, eos=True)
    labelled = [t for t in out.target_ids.tolist() if t != -100]
    assert labelled == [processor.bos_id] + answer


def test_prompt_path_and_token_formula(processor):
    image = Image.new("RGB", (640, 480), (10, 200, 30))
    out = processor(prompt="<image>\nDescribe.", images=[image], apply_sft_format=True, force_batchify=False)
    assert out.sft_format == "<|User|>: <image>\nDescribe.\n\n<|Assistant|>:"
    assert out.images_spatial_crop.tolist() == [[2, 2]]  # 640x480 is upscaled to 768x768
    assert out.num_image_tokens == [14 * 15 + 1 + 28 * 29] == [processor.num_image_tokens_for(2, 2)]
    assert processor.num_image_tokens_for(1, 9) == 2101
    with pytest.raises(ValueError, match="one image per tag"):
        processor(prompt="<image><image>", images=[image])


def test_batch_of_different_lengths_keeps_a_bool_mask(processor):
    image = Image.new("RGB", (300, 200), (1, 2, 3))
    short = processor(prompt="hi", images=[], apply_sft_format=True, force_batchify=False)
    long = processor(prompt="<image> what?", images=[image], apply_sft_format=True, force_batchify=False)
    for padding in ("left", "right"):
        batch = processor.batchify([short, long], padding=padding)
        assert batch.images_seq_mask.dtype == torch.bool
        assert batch.attention_mask.sum(1).tolist() == [len(short), len(long)]
        assert int(batch.images_seq_mask[0].sum()) == 0 and int(batch.images_seq_mask[1].sum()) == 421
        assert batch.images_spatial_crop.tolist() == [[[0, 0]], [[1, 1]]]
