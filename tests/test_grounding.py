"""Grounding output of DeepSeek-VL2: parsing boxes and drawing them."""

import subprocess
import sys

from PIL import Image

from vlm_app.grounding import Box, draw_boxes, parse_grounding, strip_grounding

ANSWER = ("<|ref|>The red rectangle<|/ref|><|det|>[[100, 200, 300, 400]]<|/det|> and "
          "<|ref|>two dogs<|/ref|><|det|>[[0,0,499,999], [500, 10, 999, 990]]<|/det|>"
          "<|det|>[[600,600,700,700]]<|/det|> then <|ref|>broken<|/ref|><|det|>[[1,2,3]]<|/det|>"
          "<|ref|>out of range<|/ref|><|det|>[[1200, -5, 40, 30.6]]<|/det|>")


def test_parse_several_boxes_and_labels():
    boxes = parse_grounding(ANSWER)
    assert [b.as_dict() for b in boxes] == [
        {"label": "The red rectangle", "box": [100, 200, 300, 400]},
        {"label": "two dogs", "box": [0, 0, 499, 999]},
        {"label": "two dogs", "box": [500, 10, 999, 990]},
        {"label": "two dogs", "box": [600, 600, 700, 700]},  # a bare <|det|> continues the previous label
        {"label": "out of range", "box": [40, 0, 999, 31]},  # clamped to the grid, corners ordered
    ]
    assert parse_grounding("no boxes here") == []
    assert strip_grounding("<|grounding|>See <|ref|>the cat<|/ref|><|det|>[[1,2,3,4]]<|/det|>.") == "See the cat."


def test_pixel_coordinates_use_the_999_grid():
    assert Box("x", 0, 0, 999, 999).to_pixels(640, 480) == (0.0, 0.0, 640.0, 480.0)
    assert Box("x", 333, 0, 666, 999).to_pixels(999, 100) == (333.0, 0.0, 666.0, 100.0)


def test_draw_boxes_outlines_each_box_in_its_label_colour():
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    boxes = parse_grounding("<|ref|>a<|/ref|><|det|>[[100,400,499,899]]<|/det|>"
                            "<|ref|>b<|/ref|><|det|>[[600,500,900,900]]<|/det|>")
    drawn = draw_boxes(image, boxes, width=2)
    assert drawn.size == image.size and image.getpixel((50, 80)) == (0, 0, 0)  # the input is untouched
    colour_a = drawn.getpixel((20, 80))  # left edge of box a: x = 100/999*200 = 20
    colour_b = drawn.getpixel((120, 80))  # left edge of box b: x = 600/999*200 = 120
    assert colour_a != (0, 0, 0) and colour_b != (0, 0, 0) and colour_a != colour_b
    assert drawn.getpixel((60, 70)) == (0, 0, 0)  # inside box a, away from its label: not filled


def test_module_does_not_import_torch():
    code = "import sys, vlm_app.grounding; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
