"""The registered ChEX pyfunc, logged as MLflow "models from code": this file travels with the model as text and is
run on load, so no Python object is ever pickled into the registry or unpickled from it (the weights are safetensors
+ JSON, read by ``ChEX.from_pretrained``).

Self-contained on purpose: MLflow copies this one file next to the MLmodel and executes it under a fresh module name.
"""
from __future__ import annotations

import base64
import io
from typing import Any

import mlflow
import numpy as np
import pandas as pd

ARTIFACT = "chex"  # the artifact key of the model folder (config + safetensors)


def image_pixels(value: Any) -> np.ndarray:
    """PNG/JPEG bytes, or base64 text of them (what a REST client sends) -> pixels. Never a path: a served pyfunc
    would otherwise read whatever server file a request names."""
    from PIL import Image

    try:
        data = base64.b64decode(value, validate=True) if isinstance(value, str) else bytes(value)
    except (ValueError, TypeError):
        raise ValueError("image: send the file's bytes or their base64 text (a path is never read)") from None
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"))


def _given(row: dict[str, Any], key: str) -> Any:
    """A row's optional field, None when absent: a frame of mixed rows fills a key other rows lack with NaN."""
    value = row.get(key)
    return None if pd.api.types.is_scalar(value) and pd.isna(value) else value


def _listed(row: dict[str, Any], key: str) -> list:
    """A row's optional list field (a list or an array), empty when absent."""
    value = _given(row, key)
    return [] if value is None else list(value)


class ChexPyfunc(mlflow.pyfunc.PythonModel):
    """Rows with ``image`` (bytes or base64), optional ``prompts`` (list of text queries), ``boxes`` (list of
    normalized cx, cy, w, h) and ``report`` (bool) -> one dict per row: ``answers`` (box + sentence per query) and,
    when asked, the grounded ``report``."""

    def load_context(self, context) -> None:
        from chex_model.chex import ChEX

        self.model = ChEX.from_pretrained(context.artifacts[ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        out = []
        for row in model_input.to_dict("records"):
            image = image_pixels(row["image"])
            prompts = [str(p) for p in _listed(row, "prompts")]
            boxes = [list(map(float, b)) for b in _listed(row, "boxes")]
            answer: dict[str, Any] = {"answers": []}
            if prompts or boxes:
                answer["answers"] = [r.to_dict() for r in self.model.query(image, prompts, boxes)]
            if _given(row, "report"):
                answer["report"] = self.model.report(image).to_dict()
            out.append(answer)
        return out


mlflow.models.set_model(ChexPyfunc())
