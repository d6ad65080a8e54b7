"""Grounding markup in model answers: ``<ref>label</ref><box>[[x1, y1, x2, y2], ...]</box>``.

InternVL models answer grounding questions with this markup. Box coordinates
are integers in ``0..1000``, normalised to the image the model saw (after EXIF
orientation): ``pixel_x = x / 1000 * width`` and ``pixel_y = y / 1000 * height``,
as in InternVL's grounding evaluation. One ``<box>`` may hold several boxes
(every instance of the label); a ``<box>`` without a ``<ref>`` before it gets
no label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .tokenizer import BOX_END, BOX_START, QUAD_END, QUAD_START, REF_END, REF_START

__all__ = ["GROUNDING_TOKENS", "GroundedBox", "draw_boxes", "parse_boxes"]

# Markup tokens an answer may contain; decoding keeps them (they are special
# tokens in InternVL tokenizers, but part of the answer).
GROUNDING_TOKENS: tuple[str, ...] = (REF_START, REF_END, BOX_START, BOX_END, QUAD_START, QUAD_END)

_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")
# An optional <ref>label</ref> directly (up to whitespace) before a <box>...</box>.
_MARKUP = re.compile(
    rf"(?:{re.escape(REF_START)}(.*?){re.escape(REF_END)}\s*)?{re.escape(BOX_START)}(.*?){re.escape(BOX_END)}",
    re.DOTALL,
)


@dataclass(frozen=True)
class GroundedBox:
    """One box in pixels of the original image: ``(x1, y1, x2, y2)``, floats, as the model gave it."""

    label: str | None
    box: tuple[float, float, float, float]


def parse_boxes(text: str, width: int, height: int) -> list[GroundedBox]:
    """All boxes of the grounding markup in ``text``, scaled to a ``width`` x ``height`` image.

    Boxes come in the order of the text. A malformed box (not four numbers) is
    left out; coordinates are not clipped, so an out-of-range answer stays visible.
    Raises ``ValueError`` if the size is not positive.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    boxes = []
    for match in _MARKUP.finditer(text):
        label = match.group(1).strip() if match.group(1) is not None else None
        for numbers in _BOX.findall(match.group(2)):
            x1, y1, x2, y2 = (float(v) for v in numbers)
            scaled = (x1 / 1000 * width, y1 / 1000 * height, x2 / 1000 * width, y2 / 1000 * height)
            boxes.append(GroundedBox(label, scaled))
    return boxes


def draw_boxes(image: Image.Image, boxes: list[GroundedBox]) -> Image.Image:
    """A copy of ``image`` (RGB) with each box outlined in red and labelled at its top-left corner."""
    out = image.convert("RGB")  # convert() returns a copy: the caller's image is not drawn on
    draw = ImageDraw.Draw(out)
    line = max(2, min(out.size) // 200)
    for item in boxes:
        x1, y1, x2, y2 = item.box
        # Pillow needs x1 <= x2 and y1 <= y2; a model may give the corners in any order.
        rect = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
        draw.rectangle(rect, outline=(255, 0, 0), width=line)
        if item.label:
            left, top, right, bottom = draw.textbbox((rect[0], rect[1]), item.label)
            draw.rectangle((left, top, right + 2, bottom + 2), fill=(255, 0, 0))
            draw.text((rect[0] + 1, rect[1] + 1), item.label, fill=(255, 255, 255))
    return out
