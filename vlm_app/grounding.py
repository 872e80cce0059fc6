"""DeepSeek-VL2 grounding output: parse `<|ref|>label<|/ref|><|det|>[[x1,y1,x2,y2],...]<|/det|>` into boxes and
draw them on an image. Coordinates are on the model's 0-999 grid over the whole image (the official demo scales
by width/999 and height/999). Pure Python + PIL, no torch, so the UI and CLI can use it cheaply.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from PIL import Image, ImageDraw

GRID = 999
_PATTERN = re.compile(r"(?:<\|ref\|>(?P<label>.*?)<\|/ref\|>\s*)?<\|det\|>(?P<boxes>.*?)<\|/det\|>", re.DOTALL)
_PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]


@dataclass(frozen=True)
class Box:
    """One detected box: its label and corners on the 0-999 grid (x1 <= x2, y1 <= y2)."""

    label: str
    x1: int
    y1: int
    x2: int
    y2: int

    def to_pixels(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The box in pixel coordinates of a width x height image."""
        return (self.x1 / GRID * width, self.y1 / GRID * height, self.x2 / GRID * width, self.y2 / GRID * height)

    def as_dict(self) -> dict:
        return {"label": self.label, "box": [self.x1, self.y1, self.x2, self.y2]}


def parse_grounding(text: str) -> list[Box]:
    """Every box in a model answer, in order. A `<|det|>` without a preceding `<|ref|>` takes the label of the
    previous one (the model lists several boxes of one object that way); malformed box lists are skipped."""
    boxes, label = [], ""
    for match in _PATTERN.finditer(text):
        if match.group("label") is not None:
            label = match.group("label").strip()
        for corners in _box_lists(match.group("boxes")):
            x1, y1, x2, y2 = (min(max(int(round(float(v))), 0), GRID) for v in corners)
            boxes.append(Box(label, min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
    return boxes


def _box_lists(raw: str) -> list[list[float]]:
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        return []
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        value = [value]  # a single box written without the outer brackets
    if not isinstance(value, (list, tuple)):
        return []
    return [list(box) for box in value
            if isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)]


def strip_grounding(text: str) -> str:
    """The answer with the box lists removed and the reference tags dropped (labels kept)."""
    text = re.sub(r"<\|det\|>.*?<\|/det\|>", "", text, flags=re.DOTALL)
    return re.sub(r"<\|/?ref\|>|<\|grounding\|>", "", text).strip()


def draw_boxes(image: Image.Image, boxes: list[Box], width: int = 3) -> Image.Image:
    """A copy of `image` with each box outlined and labelled; one colour per distinct label."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    colours = {}
    for box in boxes:
        colour = colours.setdefault(box.label, _PALETTE[len(colours) % len(_PALETTE)])
        x1, y1, x2, y2 = box.to_pixels(*out.size)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        if box.label:
            left, top, right, bottom = draw.textbbox((x1, y1), box.label)
            label_top = max(y1 - (bottom - top) - 2, 0)
            draw.rectangle((x1, label_top, x1 + right - left + 4, label_top + bottom - top + 2), fill=colour)
            draw.text((x1 + 2, label_top), box.label, fill="white")
    return out
