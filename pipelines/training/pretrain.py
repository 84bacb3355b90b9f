"""Backbone pre-training stages on the ingested tables, before the ChEX stages and on the same Ray Train engines:

- ``clip_pretrain``: CLIP's image and text towers trained contrastively on MIMIC-CXR image-report pairs, as CheXzero
  was made (:class:`~chex_model.pretraining.ContrastiveClip`); exports the ``clip_dir`` stage 1 loads;
- ``lm_pretrain``: GPT-2 trained on the reports' sentences (:class:`~chex_model.pretraining.SentenceLm`); exports the
  ``lm_dir``.

Both tokenizers are byte-level BPE trained on the train split's report sentences plus every prompt string, so the
vocabulary comes from the data being trained on, not from the synthetic generator.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chex_model.pretraining import ContrastiveClip, SentenceLm
from pipelines.training.config import TrainConfig
from pipelines.training.data import build_dataset, ms_cxr_image_ids, read_table_file, table_paths
from pipelines.training.fit import StageResult, fit_stage, log_export, quiet_data
from pipelines.training.trainer import MODEL_DIR, StageTrainer

log = logging.getLogger(__name__)
KINDS = {"clip": "clip_pretrain", "lm": "lm_pretrain"}
LOSS = {"clip": "clip_contr", "lm": "lm"}  # each stage's one loss term
INIT = "init"
VAL_SENTENCES = 512  # held-out sentences the language model is validated on


def corpus(tables: Path, exclude_ids: set[str]) -> list[str]:
    """The tokenizers' training text: every prompt string, then the MIMIC-CXR train split's report sentences."""
    import polars as pl

    from chex_model.corpus import prompt_strings

    frame = pl.read_parquet(table_paths(tables, "mimic_cxr", "train"), columns=["image_id", "report_sentences"])
    frame = frame.filter(~pl.col("image_id").is_in(sorted(exclude_ids)))
    return prompt_strings() + [s for row in frame["report_sentences"].to_list() for s in row or []]


def init_backbone(cfg: TrainConfig, kind: str, out: Path) -> Path:
    """The random starting model of stage ``kind`` with its trained tokenizer, as a Hugging Face folder."""
    from chex_model.backbones import train_tokenizers
    from chex_model.config import preset

    model_cfg = preset(cfg.model_preset)
    tables = Path(cfg.data.tables)
    clip_tok, lm_tok = train_tokenizers(corpus(tables, _excluded(cfg)), min(model_cfg.clip.text_vocab, model_cfg.lm.vocab_size))
    torch.manual_seed(cfg.data.seed)
    if kind == "clip":
        ContrastiveClip.build(model_cfg, clip_tok).save_pretrained(out)
    else:
        SentenceLm.build(model_cfg, lm_tok).save_pretrained(out)
    return out


def _excluded(cfg: TrainConfig) -> set[str]:
    return ms_cxr_image_ids(Path(cfg.data.tables)) if cfg.data.exclude_ms_cxr else set()


def _sentences(batch) -> dict[str, list[str]]:
    """``map_batches`` body: table rows -> one row per report sentence."""
    return {"text": [s for row in batch["report_sentences"].to_pylist() for s in row or []]}


def val_split(cfg: TrainConfig) -> str:
    """``val``, or ``train`` (with a warning) for tables without a MIMIC-CXR val split (a handful of studies): the
    stage still trains, and its validation then measures fit, not generalization."""
    if table_paths(Path(cfg.data.tables), "mimic_cxr", "val"):
        return "val"
    log.warning("no mimic_cxr val split under %s: validating the backbone pre-training on train rows", cfg.data.tables)
    return "train"


def sentence_dataset(cfg: TrainConfig, split: str, shuffle: bool = False):
    """One row per report sentence of ``split`` (blocks in a seeded random order with ``shuffle``)."""
    import ray.data

    paths = table_paths(Path(cfg.data.tables), "mimic_cxr", split)
    if not paths:
        raise FileNotFoundError(f"no mimic_cxr tables for split {split!r} under {cfg.data.tables}/tables")
    kwargs = {"columns": ["sample_id", "report_sentences"], "exclude_ids": sorted(_excluded(cfg)), "factors": {},
              "frontal_only": cfg.data.frontal_only}
    ds = (ray.data.from_items([{"path": p, "source": "mimic_cxr"} for p in paths])
          .map_batches(read_table_file, batch_size=1, batch_format="pyarrow", fn_kwargs=kwargs)
          .map_batches(_sentences, batch_format="pyarrow"))
    return ds.randomize_block_order(seed=cfg.data.seed) if shuffle else ds


def image_text_datasets(cfg: TrainConfig, size: int) -> dict[str, Any]:
    exclude, d = _excluded(cfg), cfg.data
    train = build_dataset(Path(d.tables), "train", size, d.augment, d.seed, 0, exclude, reproducible_augment=d.reproducible,
                          cache_rows=d.cache_rows, sources=("mimic_cxr",), frontal_only=d.frontal_only)[0]
    val = build_dataset(Path(d.tables), val_split(cfg), size, None, d.seed, 1, exclude, limit=d.val_max_images,
                        sources=("mimic_cxr",), frontal_only=d.frontal_only)[0]
    return {"train": train, "val": val.materialize()}


def report_text(sentences: list[str], rng: np.random.Generator | None, max_sentences: int) -> str:
    """The report as one text; in training a random subset of 1..``max_sentences`` of its sentences, in report
    order (short texts like the prompts ChEX asks are then in the text tower's training distribution)."""
    if rng is None or not max_sentences or not sentences:
        return " ".join(sentences)
    k = int(rng.integers(1, min(max_sentences, len(sentences)) + 1))
    return " ".join(sentences[i] for i in sorted(rng.choice(len(sentences), size=k, replace=False)))


class ClipTrainer(StageTrainer):
    """Contrastive image-report training of both CLIP towers; validation: loss and retrieval on held-out pairs."""

    def build(self) -> ContrastiveClip:
        from chex_model.config import preset

        self.image_cfg = preset(self.cfg.model_preset).image
        return ContrastiveClip.from_pretrained(self.loop.init_model, self.image_cfg.conv_widths).to(self.device)

    def _inputs(self, nb: dict[str, np.ndarray], rng: np.random.Generator | None) -> tuple[torch.Tensor, list[str]]:
        from chex_model.image_encoder import normalize

        texts = [report_text(json.loads(t)["sentences"], rng, self.cfg.pretrain.clip.max_sentences) for t in nb["texts"]]
        keep = [i for i, t in enumerate(texts) if t]  # a row without report text has no pair to learn from
        images = torch.from_numpy(np.ascontiguousarray(nb["image"][keep], dtype=np.float32))[:, None]
        return normalize(images, self.image_cfg).to(self.device, self.dtype), [texts[i] for i in keep]

    def losses(self, nb: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        images, texts = self._inputs(nb, rng)
        if not texts:  # every rank still back-propagates through the same parameters
            return {"clip_contr": sum(p.sum() * 0.0 for p in self.model.parameters())}
        return self.engine(images, texts)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        was = self.model.training
        self.model.eval()
        pairs = [self._inputs(nb, None) for nb in self.val.batches()]
        img = torch.cat([self.model.embed_images(i) for i, _ in pairs]).float()
        texts = [t for _, ts in pairs for t in ts]
        txt = torch.cat([self.model.embed_texts(ts) for _, ts in pairs if ts]).float()
        self.model.train(was)
        return retrieval_metrics(img, txt, texts, float(self.model.scale))


def retrieval_metrics(img: torch.Tensor, txt: torch.Tensor, texts: list[str], scale: float) -> dict[str, float]:
    """Held-out image -> report retrieval over all pairs: a hit retrieves the image's own report text (an identical
    report of another study counts too), with chance levels beside; plus the contrastive loss over the whole set."""
    n = len(texts)
    sim = img @ txt.T
    target = torch.arange(n)
    loss = 0.5 * (torch.nn.functional.cross_entropy(scale * sim, target) + torch.nn.functional.cross_entropy(scale * sim.T, target))
    same = np.array([[a == b for b in texts] for a in texts])
    ranked = sim.argsort(dim=1, descending=True).numpy()
    out = {"val/loss": float(loss), "val/images": float(n)}
    for k in (1, 5):
        hits = same[np.arange(n)[:, None], ranked[:, :k]].any(1)
        out[f"val/i2t_recall_at_{k}"] = float(hits.mean())
        # chance: a random k-subset of the n reports contains one of the query's identical reports
        m = same.sum(1)
        out[f"val/i2t_chance_at_{k}"] = float(np.mean([1 - _none_drawn(n, int(mi), k) for mi in m]))
    return out


def _none_drawn(n: int, good: int, k: int) -> float:
    """Probability that k draws without replacement from n items miss all ``good`` ones."""
    p = 1.0
    for j in range(min(k, n)):
        p *= max(0.0, (n - good - j) / (n - j))
    return p


class LmTrainer(StageTrainer):
    """Next-token training of GPT-2 on report sentences; validation: token loss and perplexity on held-out ones."""

    def build(self) -> SentenceLm:
        from chex_model.config import preset

        return SentenceLm.from_pretrained(self.loop.init_model, preset(self.cfg.model_preset).generator.max_length).to(self.device)

    def losses(self, nb: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return self.engine([str(t) for t in nb["text"]])

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        was = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        for nb in self.val.batches():
            nll, valid = self.model.token_losses([str(t) for t in nb["text"]])
            total, count = total + float(nll[valid].sum()), count + int(valid.sum())
        self.model.train(was)
        loss = total / max(1, count)
        return {"val/loss": loss, "val/ppl": float(np.exp(loss)), "val/tokens": float(count)}


def exported(cfg: TrainConfig, kind: str) -> Path:
    """Where stage ``kind`` exports its backbone (``<workdir>/<clip|lm>_pretrain/model``)."""
    return Path(cfg.workdir).resolve() / KINDS[kind] / MODEL_DIR


def use_own_backbones(cfg: TrainConfig) -> None:
    """Point ``clip_dir`` / ``lm_dir`` at the backbones this config pre-trains itself (a stage or sweep run on its
    own builds on them; a missing folder is one clear line when the model is built)."""
    for kind, own in cfg.pretrained_backbones().items():
        if own:
            setattr(cfg, f"{kind}_dir", str(exported(cfg, kind)))


def run_pretrain(cfg: TrainConfig, kind: str, parent_run_id: str | None = None, attempt: str | None = None) -> StageResult:
    """Pre-train backbone ``kind`` ("clip" or "lm") and export it to ``<workdir>/<clip|lm>_pretrain/model``
    (``attempt``: see :func:`~pipelines.training.fit.fit_stage`)."""
    from chex_model.config import preset

    settings = getattr(cfg.pretrain, kind)
    stage = replace(settings.as_stage(KINDS[kind]), loss_weights={LOSS[kind]: 1.0})
    scfg = cfg.for_stage(stage)
    out = exported(cfg, kind)
    root = out.parent
    root.mkdir(parents=True, exist_ok=True)
    with quiet_data(cfg):
        init = init_backbone(cfg, kind, root / INIT)
        if not stage.steps:  # the ablation: the data's tokenizer, random weights
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(init, out)
            return StageResult(stage.name, out, {}, "")
        if kind == "clip":
            datasets, trainer = image_text_datasets(scfg, preset(cfg.model_preset).clip.image_size), ClipTrainer
        else:
            val = sentence_dataset(scfg, val_split(scfg)).limit(VAL_SENTENCES).materialize()
            datasets, trainer = {"train": sentence_dataset(scfg, "train", shuffle=True), "val": val}, LmTrainer
        best, metrics, state = fit_stage(scfg, stage, init, datasets, parent_run_id, trainer, attempt=attempt)
    log_export(cfg, state.get("mlflow_run_id"), out, best, state["step"])
    return StageResult(stage.name, out, metrics, best)
