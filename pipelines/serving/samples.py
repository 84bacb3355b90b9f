"""Synthetic X-rays a visitor of the page can try without a file of their own (the synthetic generator's phantom)."""
from __future__ import annotations

import numpy as np

from preprocessing.image_io import encode_png
from preprocessing.synth.phantom import Lesion, render_frontal

SAMPLES: dict[str, tuple[Lesion, ...]] = {
    "normal": (),
    "right pleural effusion": (Lesion("pleural_effusion", "right", "lower"),),
    "cardiomegaly": (Lesion("cardiomegaly", None),),
    "left upper nodule": (Lesion("nodule", "left", "upper"),),
}


def sample_png(name: str, width: int = 448, height: int = 512) -> bytes:
    """The named sample as PNG bytes (the same picture for the same name; KeyError for an unknown name)."""
    phantom = render_frontal(width, height, SAMPLES[name], np.random.default_rng(sorted(SAMPLES).index(name)))
    return encode_png((phantom.image * 255).round().astype(np.uint8))
