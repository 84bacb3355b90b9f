"""CheXbert, the labeler the reference's clinical-efficacy metrics use, for users who have its checkpoint locally.

CheXbert is bert-base-uncased with 14 linear heads on the [CLS] hidden state: heads 0-12 score blank / positive /
negative / uncertain, head 13 (No Finding) blank / positive; its argmax is therefore already our label code. The
released `chexbert.pth` is a torch pickle {"model_state_dict": ...} saved from DataParallel, so keys read
"module.bert.<...>" and "module.linear_heads.<i>.weight|bias". Nothing is downloaded: the BERT config and
vocabulary come from a local folder (by default "bert" next to the checkpoint).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from preprocessing.labeler import BLANK, CONDITIONS, POSITIVE, Labeler, RuleLabeler

_PREFIX = "module."
_IGNORED_BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")  # saved by old transformers
MAX_TOKENS = 512


class _CheXbert(nn.Module):
    """BERT encoder + per-condition heads, with the attribute names the checkpoint's keys use."""

    def __init__(self, config, with_pooler: bool) -> None:
        from transformers import BertModel

        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=with_pooler)
        hidden = config.hidden_size
        self.linear_heads = nn.ModuleList([nn.Linear(hidden, 4) for _ in range(13)] + [nn.Linear(hidden, 2)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        cls = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        return [head(cls) for head in self.linear_heads]


def _state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = raw.get("model_state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint}: not a CheXbert checkpoint (expected a dict with 'model_state_dict')")
    out = {(k[len(_PREFIX):] if k.startswith(_PREFIX) else k): v for k, v in state.items()}
    return {k: v for k, v in out.items() if k not in _IGNORED_BUFFERS}


class CheXbertLabeler:
    """The CheXbert labeler from a local checkpoint; `label` returns the same codes as `RuleLabeler`."""

    def __init__(self, checkpoint: str | Path, bert_dir: str | Path | None = None, batch_size: int = 32,
                 device: str | torch.device = "cpu") -> None:
        from transformers import AutoTokenizer, BertConfig

        checkpoint = Path(checkpoint)
        bert_dir = Path(bert_dir) if bert_dir is not None else checkpoint.parent / "bert"
        self.name = f"chexbert:{checkpoint.name}"
        self.batch_size = batch_size
        self.device = torch.device(device)
        config = BertConfig.from_pretrained(bert_dir, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(bert_dir, local_files_only=True)
        state = _state_dict(checkpoint)
        self.model = _CheXbert(config, with_pooler=any(k.startswith("bert.pooler.") for k in state))
        expected = set(self.model.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"{checkpoint} does not match CheXbert (BERT config from {bert_dir}; key names without "
                             f"'module.'): missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
                             f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as err:  # same names, other shapes: a config that is not the checkpoint's
            raise ValueError(f"{checkpoint} does not match the BERT config in {bert_dir}: {err}") from err
        self.model.to(self.device).eval()

    def label(self, texts: Sequence[str]) -> np.ndarray:
        """Codes (len(texts), 14); texts longer than 512 tokens are truncated, empty ones get only No Finding."""
        out = np.zeros((len(texts), len(CONDITIONS)), np.int8)
        cleaned = [" ".join((t or "").split()) for t in texts]
        todo = [i for i, t in enumerate(cleaned) if t]
        out[[i for i, t in enumerate(cleaned) if not t], -1] = POSITIVE
        with torch.inference_mode():
            for k in range(0, len(todo), self.batch_size):
                rows = todo[k:k + self.batch_size]
                enc = self.tokenizer([cleaned[i] for i in rows], padding=True, truncation=True,
                                     max_length=MAX_TOKENS, return_tensors="pt")
                logits = self.model(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
                codes = torch.stack([head.argmax(-1) for head in logits], dim=1).cpu().numpy()
                codes[:, -1] = np.where(codes[:, -1] == 1, POSITIVE, BLANK)
                out[rows] = codes
        return out


USAGE = 'labeler must be "rules" or "chexbert:<path to chexbert.pth>[,<bert-base-uncased folder>]"'


def labeler_files(spec: str) -> tuple[Path, Path] | None:
    """``None`` for "rules", else the (checkpoint, BERT folder) a "chexbert:<checkpoint>[,<bert dir>]" spec names
    (the BERT folder defaults to "bert" next to the checkpoint). Raises ValueError for another spec."""
    if spec is None or (isinstance(spec, str) and spec.strip() == "rules"):
        return None
    if not isinstance(spec, str) or not spec.strip().startswith("chexbert:"):
        raise ValueError(f"{USAGE}; got {spec!r}")
    checkpoint, _, bert_dir = spec.strip()[len("chexbert:"):].partition(",")
    if not checkpoint.strip():
        raise ValueError(f"{USAGE}; the checkpoint path is missing in {spec!r}")
    ckpt = Path(checkpoint.strip()).expanduser()
    return ckpt, Path(bert_dir.strip()).expanduser() if bert_dir.strip() else ckpt.parent / "bert"


def check_labeler(spec: str) -> None:
    """One line naming what a CheXbert labeler lacks (the checkpoint file, the bert-base-uncased folder), before any
    work starts; nothing for the rule labeler."""
    files = labeler_files(spec)
    if files is None:
        return
    ckpt, bert = files
    missing = ([f"the CheXbert checkpoint {ckpt} (chexbert.pth)"] if not ckpt.is_file() else []) + \
              ([f"the BERT folder {bert} (bert-base-uncased: config + vocabulary)"] if not bert.is_dir() else [])
    if missing:
        raise FileNotFoundError(f"clinical-efficacy scoring with CheXbert needs {' and '.join(missing)}; see "
                                f"docs/weights.md, or score with the rule labeler (labeler: rules)")


def load_labeler(spec: str | None) -> Labeler:
    """`None` / "rules" -> RuleLabeler; "chexbert:<checkpoint>[,<bert dir>]" -> CheXbertLabeler (local files only)."""
    files = labeler_files(spec)
    if files is None:
        return RuleLabeler()
    check_labeler(spec)
    return CheXbertLabeler(*files)
