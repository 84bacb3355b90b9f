"""Hand-made ingested rows for the training-data tests: a blob on the image's left (the patient's right), with the
boxes, labels, phrases and sentences that say so."""
from __future__ import annotations

import io
import sys

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


def kill_once_trainer(step: int, marker: str) -> type:
    """A Trainer whose last worker dies once at ``step`` (a fault drill): Ray must restart the group from the latest
    reported checkpoint. ``marker`` is touched first, so the restarted worker trains on."""
    import os
    import time
    from pathlib import Path

    import ray.cloudpickle

    from pipelines.training.trainer import Trainer

    class KillOnce(Trainer):
        def after_step(self, done: int) -> None:
            if done == step and self.rank == self.world - 1 and not Path(marker).exists():
                Path(marker).touch()
                time.sleep(5)  # past the controller's 2 s poll, so the last reported checkpoint is registered
                os._exit(1)

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    return KillOnce
