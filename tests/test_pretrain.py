"""The backbone pre-training objectives and stages: the contrastive loss and retrieval metrics against hand-written
formulas, the exported folders as ChEX loads them, and learning tests (the contrastive loss falls and held-out
image-report retrieval beats chance by a wide margin; held-out sentence perplexity falls far below the untrained
model's), in-process on toy pairs and through the Ray Train stages on the ingested synthetic tables."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from scipy.stats import hypergeom

from chex_model.backbones import train_tokenizers
from chex_model.chex import ChEX
from chex_model.config import preset
from chex_model.corpus import prompt_strings
from chex_model.pretraining import ContrastiveClip, SentenceLm, contrastive_loss
from pipelines.training.pretrain import report_text, retrieval_metrics

ROOT = Path(__file__).resolve().parents[1]
ZONES = ("right upper", "left upper", "right lower", "left lower")


def _tokenizers():
    return train_tokenizers(prompt_strings() + [f"Opacity in the {z} zone." for z in ZONES], 1024)


def test_contrastive_loss_matches_the_formula_with_identical_texts_as_positives():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 5))
    texts = ["a", "b", "a", "c", "b"]
    target = np.array([[float(s == t) for t in texts] for s in texts])
    target /= target.sum(1, keepdims=True)

    def ce(z: np.ndarray) -> float:
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(-(target * logp).sum(1).mean())

    expected = 0.5 * (ce(logits) + ce(logits.T))  # the target matrix is symmetric
    assert contrastive_loss(torch.tensor(logits), texts).item() == pytest.approx(expected, rel=1e-6)


def test_retrieval_metrics_count_hits_and_chance_by_brute_force():
    rng = np.random.default_rng(1)
    n = 12
    texts = [f"report {i % 5}" for i in range(n)]  # identical reports of other studies count as hits
    img = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(n, 8)), dtype=torch.float32), dim=-1)
    txt = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(n, 8)), dtype=torch.float32), dim=-1)
    out = retrieval_metrics(img, txt, texts, 10.0)
    sim = (img @ txt.T).numpy()
    for k in (1, 5):
        hits = [any(texts[j] == texts[i] for j in np.argsort(-sim[i])[:k]) for i in range(n)]
        assert out[f"val/i2t_recall_at_{k}"] == pytest.approx(np.mean(hits))
        good = [sum(t == texts[i] for t in texts) for i in range(n)]
        chance = np.mean([1 - hypergeom(n, g, k).pmf(0) for g in good])
        assert out[f"val/i2t_chance_at_{k}"] == pytest.approx(chance)


def test_report_text_draws_an_ordered_subset_in_training_and_the_whole_report_otherwise():
    sentences = [f"S{i}." for i in range(6)]
    assert report_text(sentences, None, 3) == " ".join(sentences)
    assert report_text(sentences, np.random.default_rng(0), 0) == " ".join(sentences)
    rng = np.random.default_rng(0)
    drawn = [report_text(sentences, rng, 3).split() for _ in range(200)]
    assert {len(d) for d in drawn} == {1, 2, 3}
    assert all(d == sorted(d, key=sentences.index) for d in drawn)


def test_exported_backbones_are_what_chex_builds_on(tmp_path):
    """The CLIP folder (towers, learned temperature, conv branch) and the GPT-2 folder load into ChEX unchanged."""
    cfg = preset("tiny")
    clip_tok, lm_tok = _tokenizers()
    torch.manual_seed(0)
    clip, lm = ContrastiveClip.build(cfg, clip_tok), SentenceLm.build(cfg, lm_tok)
    with torch.no_grad():
        clip.log_scale.fill_(3.0)
    clip.save_pretrained(tmp_path / "clip")
    lm.save_pretrained(tmp_path / "lm")
    again = ContrastiveClip.from_pretrained(tmp_path / "clip", cfg.image.conv_widths)
    assert float(again.log_scale.detach()) == pytest.approx(3.0)
    model = ChEX.build(cfg, tmp_path / "clip", tmp_path / "lm").eval()
    images = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        glob = model.image_encoder(images)[2]
        assert torch.allclose(torch.nn.functional.normalize(glob, dim=-1), clip.eval().embed_images(images), atol=1e-5)
        prompts = ["Pleural effusion", "No pleural effusion"]
        assert torch.allclose(torch.nn.functional.normalize(model.encode_prompts(prompts), dim=-1), clip.embed_texts(prompts),
                              atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(model.generator.lm.state_dict().values(), lm.lm.state_dict().values()))
    ids, mask = lm.encode(["No pleural effusion."], torch.device("cpu"))
    gen_ids, gen_mask = model.generator.encode_targets(["No pleural effusion."])  # framed as the generator frames targets
    assert torch.equal(ids, gen_ids) and torch.equal(mask, gen_mask)


FINDINGS = {"none": "No acute abnormality.", "blob": "Large opacity.", "dot": "Small nodule.", "line": "Linear atelectasis."}


def _toy_pairs(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, list[str]]:
    """Noise images with one kind of lesion anywhere (or none), the report naming the kind."""
    images = rng.normal(0.0, 0.3, size=(n, 1, 128, 128)).astype(np.float32)
    kinds = rng.choice(list(FINDINGS), size=n)
    for i, kind in enumerate(kinds):
        y, x = rng.integers(8, 80, size=2)
        patch = {"none": (slice(0, 0), slice(0, 0)), "blob": (slice(y, y + 40), slice(x, x + 40)),
                 "dot": (slice(y, y + 6), slice(x, x + 6)), "line": (slice(y, y + 3), slice(x - 8, x + 48))}[kind]
        images[i, 0][patch] += 2.0
    return torch.from_numpy(images), [FINDINGS[k] for k in kinds]


def _untrained(cls, tokenizer: int):
    """A random tiny backbone (seeded) with the test tokenizers' CLIP (0) or GPT-2 (1) tokenizer."""
    torch.manual_seed(0)
    return cls.build(preset("tiny"), _tokenizers()[tokenizer])


def _fit(model: torch.nn.Module, loss_fn, lr: float, steps: int) -> list[float]:
    """Plain AdamW steps on ``loss_fn()`` (a fresh batch each call); the losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_contrastive_pretraining_learns_and_retrieves_held_out_reports():
    model, rng = _untrained(ContrastiveClip, 0), np.random.default_rng(0)
    held_img, held_txt = _toy_pairs(64, np.random.default_rng(99))
    losses = _fit(model, lambda: model(*_toy_pairs(32, rng))["clip_contr"], 1e-3, 80)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5]), (losses[:5], losses[-10:])
    with torch.no_grad():
        out = retrieval_metrics(model.eval().embed_images(held_img), model.embed_texts(held_txt), held_txt, float(model.scale))
    assert out["val/i2t_recall_at_1"] > out["val/i2t_chance_at_1"] + 0.4, out


def test_sentence_lm_learns_held_out_sentences():
    model, rng = _untrained(SentenceLm, 1), np.random.default_rng(0)
    sentence = lambda: f"Opacity in the {ZONES[rng.integers(4)]} zone."  # noqa: E731
    held = [f"Opacity in the {z} zone." for z in ZONES]

    def held_nll() -> float:
        with torch.no_grad():
            nll, valid = model.eval().token_losses(held)
        model.train()
        return float(nll[valid].mean())

    before = held_nll()
    _fit(model, lambda: model([sentence() for _ in range(16)])["lm"], 3e-3, 60)
    after = held_nll()
    assert before > 0.9 * np.log(1024) and after < 0.25 * before, (before, after)


@pytest.mark.slow
def test_pretraining_stages_run_on_ray_train_and_feed_stage_one(ingested, ray_local, tmp_path):
    """``clip_pretrain`` and ``lm_pretrain`` as ``chex train`` runs them: DeepSpeed workers, MLflow child runs with the
    MIMIC-CXR inputs and the retrieval metrics, exported folders that the first ChEX stage's model is built from."""
    from pipelines.training.config import load_train_config
    from pipelines.training.stages import run_workflow

    tables, manifest = ingested
    cfg = load_train_config(ROOT / "configs/train/demo.yaml")
    cfg.workdir, cfg.data.tables, cfg.workers = str(tmp_path), str(tables), 1
    cfg.batch_size, cfg.micro_batch = 4, 4
    cfg.deepspeed = str(ROOT / "configs/deepspeed/zero2_cpu.json")
    for stage in (cfg.pretrain.clip, cfg.pretrain.lm):
        stage.steps, stage.val_every, stage.warmup_steps, stage.batch_size, stage.micro_batch = 6, 3, 1, 8, 8
    cfg.stages = [{**cfg.stages[0], "steps": 1, "val_every": 1, "warmup_steps": 1}]
    clip, lm, det = run_workflow(cfg)
    assert (clip.name, lm.name, det.name) == ("clip_pretrain", "lm_pretrain", "detection")

    mlflow.set_tracking_uri(cfg.tracking_uri())
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], output_format="list")}
    for name, metric in (("clip_pretrain", "val/i2t_recall_at_1"), ("lm_pretrain", "val/ppl")):
        run = runs[name]
        assert run.data.tags["mlflow.parentRunId"] == runs["workflow"].info.run_id
        assert metric in run.data.metrics
        inputs = {i.dataset.name for i in run.inputs.dataset_inputs}
        assert inputs == {n for n in ("mimic_cxr/train", "mimic_cxr/val") if n in manifest["datasets"]}
        history = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val/loss")]
        assert history == [0, 3, 6]
    lm_loss = [m.value for m in mlflow.MlflowClient().get_metric_history(runs["lm_pretrain"].info.run_id, "val/loss")]
    assert lm_loss[-1] < 0.97 * lm_loss[0]  # held-out sentence loss falls from the untrained model's (~ln vocab)

    built_from = json.loads((tmp_path / "init_model" / "built_from.json").read_text())
    assert built_from["clip"] and built_from["lm"]
    init = ChEX.from_pretrained(tmp_path / "init_model")
    clip_model = ContrastiveClip.from_pretrained(clip.model_dir, preset("tiny").image.conv_widths)
    assert all(torch.equal(a, b) for a, b in zip(init.image_encoder.conv.state_dict().values(),
                                                  clip_model.conv.state_dict().values()))
    assert init.prompt_encoder.tokenizer.get_vocab() == clip_model.tokenizer.get_vocab()
    assert all(torch.equal(a, b) for a, b in zip(init.prompt_encoder.text.state_dict().values(),
                                                  clip_model.text.state_dict().values()))
