"""Per-task figures: precision-recall curves of detection, and example X-rays with predicted and true boxes and
generated vs reference text."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from chex_model.draw import Annotation, render
from preprocessing.box_geometry import xyxy_to_cxcywh


def pr_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (recall, precision) in curves.items():
        ax.plot(recall, precision, label=name, lw=1.5)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def example_picture(image: np.ndarray, predicted: Sequence[tuple[str, np.ndarray, str]],
                    true: Sequence[tuple[str, np.ndarray, str]], path: Path, width: int = 512) -> Path:
    """``(label, xyxy box or None, text)`` triples; predictions are listed first, then the ground truth."""
    notes = [Annotation("pred", None if box is None else xyxy_to_cxcywh(box).tolist(), f"{label}: {text}" if text else label)
             for label, box, text in predicted]
    notes += [Annotation("true", xyxy_to_cxcywh(box).tolist(), f"{label}: {text}" if text else label) for label, box, text in true]
    path.parent.mkdir(parents=True, exist_ok=True)
    render(image, notes, width=width).save(path)
    return path
