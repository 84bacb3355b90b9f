"""Pictures of answers: the X-ray with numbered boxes, and the numbered sentences underneath."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from preprocessing.box_geometry import cxcywh_to_xyxy

PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


@dataclass
class Annotation:
    label: str
    box: Sequence[float] | None  # normalized cx, cy, w, h of the image; None: a sentence without a box
    sentence: str


def render(image: np.ndarray, annotations: Sequence[Annotation], width: int = 768) -> Image.Image:
    """uint8 grayscale ``image`` -> RGB picture ``width`` wide with boxes and a sentence panel below."""
    h, w = image.shape
    scale = width / w
    xray = Image.fromarray(image).convert("RGB").resize((width, max(1, round(h * scale))), Image.Resampling.BILINEAR)
    font = ImageFont.load_default(size=max(12, width // 48))
    line_h = font.size + 6
    lines: list[tuple[int, str]] = []
    for i, a in enumerate(annotations):
        wrapped = textwrap.wrap(f"{i + 1}. {a.label}: {a.sentence or '(no sentence)'}", width=max(20, width // (font.size // 2 + 1)))
        lines += [(i, t) for t in wrapped]
    canvas = Image.new("RGB", (xray.width, xray.height + line_h * len(lines) + 8), (0, 0, 0))
    canvas.paste(xray, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, a in enumerate(annotations):
        if a.box is None:
            continue
        color = PALETTE[i % len(PALETTE)]
        x1, y1, x2, y2 = (cxcywh_to_xyxy(np.asarray(a.box)) * np.tile([xray.width, xray.height], 2)).tolist()
        draw.rectangle((x1, y1, x2, y2), outline=color, width=max(2, width // 256))
        draw.text((x1 + 3, y1 + 2), str(i + 1), fill=color, font=font)
    for row, (i, text) in enumerate(lines):
        draw.text((6, xray.height + 4 + row * line_h), text, fill=PALETTE[i % len(PALETTE)], font=font)
    return canvas
