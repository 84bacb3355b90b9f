"""Hand-made ingested rows for the training-data tests: a blob on the image's left (the patient's right), with the
boxes, labels, phrases and sentences that say so."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

S = 128


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def raw_row(source: str, sample_id: str = "1") -> dict:
    img = np.zeros((S, S), np.uint8)
    img[40:60, 10:30] = 200  # a blob on the image's left = the patient's right
    box = {"cx": 20 / S, "cy": 50 / S, "w": 20 / S, "h": 20 / S}
    row = {"sample_id": f"{source}-{sample_id}", "source": source, "copy": 0, "image_png": _png(img), "labels": [], "boxes": [],
           "region_boxes": [], "region_labels": [], "region_phrases": [], "report_sentences": []}
    if source == "vindr_cxr":
        row["boxes"] = [{"name": "Nodule/Mass", **box}]
        row["labels"] = [{"name": "Nodule/Mass", "value": 1}]
    else:
        row["region_boxes"] = [{"name": "right lung", **box}, {"name": "left lung", "cx": 0.75, "cy": 0.5, "w": 0.3, "h": 0.6},
                               {"name": "right atrium", "cx": 0.4, "cy": 0.6, "w": 0.1, "h": 0.1}]
        row["region_labels"] = [{"region": "right lung", "finding": "lung opacity", "value": 1}]
        row["region_phrases"] = [{"region": "right lung", "phrases": ["Opacity in the right lower lobe."]}]
        row["report_sentences"] = ["Opacity in the right lower lobe.", "The left lung is clear."]
    return row
