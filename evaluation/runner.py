"""Running a ChEX model over evaluation images in batches: detections, ROI tokens of given boxes, prompt
embeddings, generated sentences and grounded reports. Boxes in and out are normalized xyxy of the stored image."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from chex_model import box_ops
from chex_model.image_encoder import encoder_input
from chex_model.inference import Report, report
from chex_model.prompts import PromptSet
from evaluation.data import Row
from preprocessing.image_io import decode_png
from preprocessing.progress import track

GENERATION_CHUNK = 32  # sentences per generator call, as the reference


class ModelRunner:
    def __init__(self, model, batch_size: int = 16, max_new_tokens: int | None = None, show_progress: bool = True) -> None:
        self.model = model.eval()
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.show_progress = show_progress
        self.task = ""  # the evaluation task running (set by Evaluation.run): its progress row

    def progress(self, items: Sequence, desc: str, unit: str) -> Iterator:
        """``items``, reported as the current task's progress in phase ``desc`` (preprocessing/progress.py)."""
        if not self.show_progress or len(items) < 2:
            return iter(items)
        return track(items, self.task or desc, unit=unit, phase=desc)

    @property
    def size(self) -> int:
        return self.model.image_encoder.image_size

    def _pixels(self, rows: Sequence[Row]) -> torch.Tensor:
        images = [decode_png(r["image_png"]) for r in rows]
        return encoder_input(images, self.size, self.model.cfg.image, self.model.device)

    def batches(self, n: int, desc: str) -> Iterator[slice]:
        starts = list(range(0, n, self.batch_size))
        for s in self.progress(starts, desc, "batches"):
            yield slice(s, min(s + self.batch_size, n))

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        return F.normalize(self.model.encode_prompts(list(texts)), dim=-1)

    @torch.inference_mode()
    def detect(self, rows: Sequence[Row], prompts: Sequence[Sequence[str]], post_decoder: bool = False, desc: str = "detect"
               ) -> list[tuple[np.ndarray, np.ndarray, torch.Tensor]]:
        """Per row: its prompts' M boxes (Q, M, 4) xyxy clipped to the image, box weights (Q, M), ROI tokens (Q, d)."""
        out = []
        for sl in self.batches(len(rows), desc):
            chunk = rows[sl]
            feats = self.model.encode_image(self._pixels(chunk))
            q = max(len(prompts[i]) for i in range(sl.start, sl.stop))
            d = self.model.cfg.d_model
            tokens = torch.zeros(len(chunk), max(q, 1), d, device=self.model.device)
            mask = torch.zeros(len(chunk), max(q, 1), dtype=torch.bool, device=self.model.device)
            for j, i in enumerate(range(sl.start, sl.stop)):
                if prompts[i]:
                    tokens[j, : len(prompts[i])] = self.model.encode_prompts(list(prompts[i]))
                    mask[j, : len(prompts[i])] = True
            det = self.model.detect(feats, tokens, mask, post_decoder=post_decoder)
            boxes = box_ops.clip_unit(box_ops.cxcywh_to_xyxy(det.boxes)).cpu().numpy()
            weights = det.box_scores.cpu().numpy()
            for j, i in enumerate(range(sl.start, sl.stop)):
                k = len(prompts[i])
                out.append((boxes[j, :k], weights[j, :k], det.features[j, :k].cpu()))
        return out

    @torch.inference_mode()
    def encode_boxes(self, rows: Sequence[Row], boxes: Sequence[np.ndarray], desc: str = "encode boxes") -> list[torch.Tensor]:
        """ROI tokens (K, d) of each row's given xyxy boxes (Gaussian ROI pooling + post decoder)."""
        out = []
        for sl in self.batches(len(rows), desc):
            feats = self.model.encode_image(self._pixels(rows[sl]))
            k = max(max(len(boxes[i]) for i in range(sl.start, sl.stop)), 1)
            bx = torch.full((sl.stop - sl.start, k, 4), 0.5, device=self.model.device)
            mask = torch.zeros(bx.shape[:2], dtype=torch.bool, device=self.model.device)
            for j, i in enumerate(range(sl.start, sl.stop)):
                if len(boxes[i]):
                    bx[j, : len(boxes[i])] = box_ops.xyxy_to_cxcywh(torch.as_tensor(np.asarray(boxes[i]), dtype=torch.float32))
                    mask[j, : len(boxes[i])] = True
            feat = self.model.encode_boxes(feats, bx, mask)
            out += [feat[j, : len(boxes[i])].cpu() for j, i in enumerate(range(sl.start, sl.stop))]
        return out

    @torch.inference_mode()
    def margins(self, features: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> np.ndarray:
        """cos(f, positive) - cos(f, negative) for normalized prompt embeddings ``(C, d)`` -> ``(K, C)``."""
        f = F.normalize(features.to(positive.device), dim=-1)
        return (f @ positive.T - f @ F.normalize(negative, dim=-1).T).cpu().numpy()

    @torch.inference_mode()
    def generate(self, features: torch.Tensor, desc: str = "generate") -> list[str]:
        out: list[str] = []
        starts = list(range(0, len(features), GENERATION_CHUNK))
        for s in self.progress(starts, desc, "batches"):
            out += self.model.generate(features[s: s + GENERATION_CHUNK].to(self.model.device), self.max_new_tokens)
        return out

    def reports(self, rows: Sequence[Row], prompt_set: PromptSet) -> list[Report]:
        return [report(self.model, decode_png(r["image_png"]), prompt_set, max_new_tokens=self.max_new_tokens)
                for r in self.progress(rows, "reports", "images")]
